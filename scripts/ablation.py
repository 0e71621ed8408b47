"""PaDT's central claim at small scale: VRTs vs text coordinates, and what the robust loss and VRT sampling do.

Trains four variants of the same tiny model on the same synthetic data for the same number of steps, then
evaluates each on fresh scenes from a seed never used in training:

- ``padt``: PaDT as specified (5 sampled VRTs per object, robust token loss, decoder losses);
- ``text``: the same model writing Qwen2.5-VL-style ``[x1,y1,x2,y2]`` text coordinates (no decoder);
- ``no_robust``: PaDT with plain cross-entropy at VRT targets;
- ``all_vrts``: PaDT writing every foreground VRT of an object instead of 5 sampled ones;
- ``qwen3``: PaDT on the tiny Qwen3-VL architecture (32-px VRT cells, DeepStack, interleaved MRoPE) instead of
  Qwen2.5-VL, everything else the same; a VRT fed back as input is its prototype alone;
- ``qwen3_deepstack``: the same, a VRT input also getting the DeepStack features of its patch (docs/method.md §13).

    python scripts/ablation.py                       # configs/ablation.yaml, 500 scenes per task
    python scripts/ablation.py --n 100 --out runs/ablation_small
    python scripts/ablation.py --variants padt qwen3 qwen3_deepstack --ric --out runs/bases

Training and evaluation both resume. The table goes to ``OUT/ablation.md`` and ``OUT/ablation.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

VARIANTS = {
    "padt": ("PaDT (5 sampled VRTs, robust loss)", []),
    "text": ("text coordinates", ["padt.answer_format=text"]),
    "no_robust": ("PaDT without the robust loss", ["padt.robust_loss=false"]),
    "all_vrts": ("PaDT with all foreground VRTs", ["padt.vrts_per_object=-1"]),
    # Qwen3-VL's cells are 32 px: the generator's patch lists (28-px cells) are recomputed on its grid.
    "qwen3": (
        "PaDT on Qwen3-VL (VRT input: prototype)",
        ["model.tiny.backbone=qwen3_vl", "padt.patches=auto"],
    ),
    "qwen3_deepstack": (
        "PaDT on Qwen3-VL (VRT input: prototype + DeepStack)",
        ["model.tiny.backbone=qwen3_vl", "padt.patches=auto", "model.tiny.vrt_deepstack=true"],
    ),
}
# (task, metric key, column title)
COLUMNS = [
    ("rec", "acc@0.5", "REC Acc@0.5"),
    ("rec", "acc@0.75", "REC Acc@0.75"),
    ("res", "miou", "RES mIoU"),
    ("ovd", "map", "OVD mAP"),
    ("ric", "greedy_precision", "RIC greedy P"),
    ("ric", "greedy_recall", "RIC greedy R"),
]
MAX_NEW_TOKENS = {"rec": 64, "res": 64, "ovd": 192, "ric": 192}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/ablation.yaml")
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    parser.add_argument(
        "--variants", nargs="*", default=["padt", "text", "no_robust", "all_vrts"], choices=list(VARIANTS)
    )
    parser.add_argument("--ric", action="store_true", help="also evaluate RIC (greedy precision and recall)")
    parser.add_argument("--n", type=int, default=500, help="fresh evaluation scenes per task")
    parser.add_argument("--seed", type=int, default=9001, help="evaluation seed (never used in training)")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    import torch

    from padt.evaluation.driver import evaluate
    from padt.training.config import load_config
    from padt.training.trainer import train

    columns = [c for c in COLUMNS if args.ric or c[0] != "ric"]
    torch.manual_seed(0)
    results: dict[str, dict] = {}
    for name in args.variants:
        title, overrides = VARIANTS[name]
        run_dir = args.out / name
        model_dir = run_dir / "train"  # padt train writes the final model there, next to its checkpoints
        started = time.time()
        if not (model_dir / "train_summary.json").is_file():  # written once training has finished
            train(load_config(args.config, [*overrides, f"training.output_dir={model_dir}"]))
        train_s = time.time() - started
        metrics: dict[str, float | None] = {}
        for task in dict.fromkeys(t for t, _, _ in columns):
            if name == "text" and task == "res":
                continue  # text coordinates give no mask
            spec = (
                f"synthetic:task={task},n={args.n},seed={args.seed},min_size=112,max_size=140,max_objects=4"
            )
            scores = evaluate(
                str(model_dir),
                spec,
                task,
                run_dir / f"eval_{task}",
                batch_size=args.batch_size,
                max_new_tokens=MAX_NEW_TOKENS[task],
                meteor=False,
                progress=True,
            )
            for t, key, _ in columns:
                if t == task:
                    metrics[f"{task}/{key}"] = scores.get(key) if scores else None
        results[name] = {"title": title, "overrides": overrides, "metrics": metrics, "train_seconds": train_s}
        print(name, json.dumps(metrics))

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ablation.json").write_text(json.dumps(results, indent=2))
    lines = ["| variant | " + " | ".join(c for _, _, c in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for result in results.values():
        cells = [result["metrics"].get(f"{t}/{k}") for t, k, _ in columns]
        lines.append(
            f"| {result['title']} | " + " | ".join("–" if v is None else f"{v:.3f}" for v in cells) + " |"
        )
    table = "\n".join(lines)
    (args.out / "ablation.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
