"""``padt demo``: fresh synthetic scenes through REC, RES, OVD and RIC, with overlays.

By default it runs the bundled model (a tiny PaDT trained on the synthetic world, see ``configs/bundled.yaml``);
``--model PATH`` runs any checkpoint on the same scenes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from padt.commands import non_negative_int, positive_int, writable_folder
from padt.data.synthetic import BUNDLED_SCENES, make_scene, sample_referring_expression
from padt.inference import PaDT, Prediction, default_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="checkpoint folder (default: the bundled model)")
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"), help="folder for overlays and JSON")
    parser.add_argument("--scenes", type=positive_int, default=2)
    parser.add_argument("--seed", type=non_negative_int, default=2026)
    parser.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=192,
        help="per answer (default 192: a caption or class list of up to six objects; answers stop at their end)",
    )


def _pipeline(model: str | None) -> tuple[PaDT, str]:
    path = model or default_model()
    return PaDT.from_pretrained(path), ("bundled model" if model is None else str(path))


def run(args: argparse.Namespace) -> int:
    from padt.visualize import draw_prediction

    writable_folder(args.out, "--out")  # before the model loads
    pipe, name = _pipeline(args.model)
    rng = np.random.default_rng(args.seed)
    summary = []
    for s in range(args.scenes):
        scene = make_scene(rng, **dataclasses.asdict(BUNDLED_SCENES))
        image = scene.image
        image_path = args.out / f"scene{s}.png"
        image.save(image_path)
        picked = sample_referring_expression(scene, rng)
        sentence = picked[1].text if picked else f"the {scene.objects[0].shape}"
        jobs = [("rec", sentence), ("res", sentence), ("ovd", ", ".join(scene.kinds)), ("ric", "")]
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
        print(
            f"  object {obj.label or '(no label)'}: box [{box}] score {obj.score:.2f} VRTs {obj.vrt_ids[:8]}"
        )
    print(f"  overlay: {overlay}")
