"""``padt demo``: fresh synthetic scenes through REC, RES, OVD and RIC, with overlays.

Until trained weights ship with padt, the demo runs a tiny PaDT model with random weights: it exercises the whole
pipeline (processor, VRT generation, parsing, decoder, post-processing, overlays) in seconds on a CPU, but its
answers are noise. Pass ``--model PATH`` to run a real checkpoint on the same scenes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from padt.data.synthetic import make_scene, sample_referring_expression
from padt.inference import PaDT, Prediction
from padt.processing import PaDTProcessor


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="checkpoint folder (default: a tiny random model)")
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"), help="folder for overlays and JSON")
    parser.add_argument("--scenes", type=int, default=2)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--max-new-tokens", type=int, default=40)


def _pipeline(model: str | None) -> tuple[PaDT, str]:
    if model:
        return PaDT.from_pretrained(model), model
    from padt.testing import tiny_model, tiny_processor

    net = tiny_model(seed=0)
    return PaDT(net, PaDTProcessor(tiny_processor(max_pixels=336 * 336), net.vocab_size)), "tiny random model"


def run(args: argparse.Namespace) -> int:
    from padt.visualize import draw_prediction

    pipe, name = _pipeline(args.model)
    if args.model is None:
        print("padt demo: no trained weights are bundled yet; running a tiny model with RANDOM weights, so the "
              "answers below are noise (the pipeline is real). Use --model PATH for a trained checkpoint.")
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    summary = []
    for s in range(args.scenes):
        scene = make_scene(rng)
        image = scene.image
        image_path = args.out / f"scene{s}.png"
        image.save(image_path)
        picked = sample_referring_expression(scene, rng)
        sentence = picked[1].text if picked else f"the {scene.objects[0].shape}"
        shapes = sorted({o.shape for o in scene.objects})
        jobs = [("rec", sentence), ("res", sentence), ("ovd", ", ".join(shapes)), ("ric", "")]
        for task, text in jobs:
            [pred] = pipe([image], [text], task=task, max_new_tokens=args.max_new_tokens)
            overlay = args.out / f"scene{s}_{task}.png"
            draw_prediction(image, pred, show_vrt=True, processor=pipe.processor).save(overlay)
            _print(s, task, text, pred, overlay)
            summary.append({"scene": s, "task": task, "text": text, "overlay": str(overlay)} | pred.to_json())
    (args.out / "demo.json").write_text(json.dumps(summary, indent=2))
    print(f"\nmodel: {name}; overlays and demo.json written to {args.out.resolve()}")
    return 0


def _print(scene: int, task: str, text: str, pred: Prediction, overlay: Path) -> None:
    print(f"\n[scene {scene}] {task.upper()}{': ' + text if text else ''}")
    print(f"  answer: {pred.text[:160]}{'...' if len(pred.text) > 160 else ''}")
    for obj in pred.objects[:5]:
        box = ", ".join(f"{v:.0f}" for v in obj.box_xyxy)
        print(f"  object {obj.label or '(no label)'}: box [{box}] score {obj.score:.2f} VRTs {obj.vrt_ids[:8]}")
    print(f"  overlay: {overlay}")
