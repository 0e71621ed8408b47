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
    python scripts/ablation.py --vision-from runs/bundled/vision --seeds 0 1 --ric --out runs/ablation_staged
    python scripts/ablation.py --variants text padt --vision-from runs/bundled/vision --tasks rec --n 300 \
        --set data.synthetic.task=rec data.synthetic.max_objects=1 data.synthetic.out=runs/one_object/data \
        --max-objects 1 --out runs/one_object          # the easiest setting: one object per scene

``--vision-from`` gives every variant the same stage-1 vision tower, frozen (the bundled recipe's stage 2);
``--seeds`` trains each variant once per seed and reports means with standard errors over seeds, and each
variant's seed-paired difference to PaDT with its standard error.

Training and evaluation both resume. The table goes to ``OUT/ablation.md`` and ``OUT/ablation.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

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
    parser.add_argument(
        "--tasks", nargs="*", choices=["rec", "res", "ovd", "ric"], help="evaluate only these"
    )
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides for every variant, e.g. data.synthetic.max_objects=1 data.synthetic.task=rec",
    )
    parser.add_argument("--max-objects", type=int, default=4, help="objects per evaluation scene, at most")
    parser.add_argument("--n", type=int, default=500, help="fresh evaluation scenes per task")
    parser.add_argument("--seed", type=int, default=9001, help="evaluation seed (never used in training)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="*",
        default=[0],
        help="training seeds (data order, VRT draws, initial weights); two or more give standard errors",
    )
    parser.add_argument(
        "--vision-from",
        help="start every variant from this vision tower (a vision stage's folder, e.g. runs/bundled/vision) "
        "and keep it frozen, as the bundled recipe does",
    )
    args = parser.parse_args()

    import torch

    from padt.evaluation.driver import evaluate
    from padt.training.config import load_config
    from padt.training.trainer import train

    columns = [c for c in COLUMNS if (args.ric or c[0] != "ric") and (not args.tasks or c[0] in args.tasks)]
    shared = [f"model.vision_from={args.vision_from}", "components.vision=freeze"] if args.vision_from else []
    shared += args.set
    torch.manual_seed(0)
    results: dict[str, dict] = {}
    for name in args.variants:
        title, overrides = VARIANTS[name]
        per_seed: dict[int, dict[str, float | None]] = {}
        train_seconds = 0.0
        for seed in args.seeds:
            # One seed keeps the single-run layout (OUT/NAME); several get OUT/NAME/seedS.
            run_dir = args.out / name if len(args.seeds) == 1 else args.out / name / f"seed{seed}"
            model_dir = run_dir / "train"  # padt train writes the final model there, next to its checkpoints
            started = time.time()
            if not (model_dir / "train_summary.json").is_file():  # written once training has finished
                seeding = [f"seed={seed}", f"model.tiny.seed={seed}"] if len(args.seeds) > 1 else []
                train(
                    load_config(
                        args.config, [*shared, *overrides, *seeding, f"training.output_dir={model_dir}"]
                    )
                )
            train_seconds += time.time() - started
            metrics: dict[str, float | None] = {}
            for task in dict.fromkeys(t for t, _, _ in columns):
                if name == "text" and task == "res":
                    continue  # text coordinates give no mask
                spec = (
                    f"synthetic:task={task},n={args.n},seed={args.seed},min_size=112,max_size=140,"
                    f"max_objects={args.max_objects}"
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
            per_seed[seed] = metrics
            print(name, seed, json.dumps(metrics))
        keys = [f"{t}/{k}" for t, k, _ in columns]
        results[name] = {
            "title": title,
            "overrides": shared + overrides,
            "seeds": {str(s): m for s, m in per_seed.items()},
            "metrics": {k: mean_and_se([m.get(k) for m in per_seed.values()]) for k in keys},
            "train_seconds": train_seconds,
        }
    if "padt" in results and len(args.seeds) > 1:
        base = results["padt"]["seeds"]
        for name, result in results.items():
            if name == "padt":
                continue
            result["difference_to_padt"] = {
                k: difference([result["seeds"][s].get(k) for s in base], [base[s].get(k) for s in base])
                for k in result["metrics"]
            }

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ablation.json").write_text(json.dumps(results, indent=2))
    table = render(results, columns, len(args.seeds))
    (args.out / "ablation.md").write_text(table + "\n")
    print(table)


def mean_and_se(values: list[float | None]) -> dict[str, float] | None:
    """Mean over training seeds and its standard error (``None`` with one seed)."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None
    return {"mean": mean, "se": se}


def difference(ours: list[float | None], base: list[float | None]) -> dict[str, Any] | None:
    """Seed-paired difference ``ours - base``: mean, standard error over seeds, and whether it is resolved
    (every seed's difference has the same sign and the mean is at least two standard errors from zero)."""
    pairs = [(a - b) for a, b in zip(ours, base, strict=True) if a is not None and b is not None]
    if len(pairs) < 2:
        return None
    mean = statistics.fmean(pairs)
    se = statistics.stdev(pairs) / math.sqrt(len(pairs))
    same_sign = all(d > 0 for d in pairs) or all(d < 0 for d in pairs)
    return {"mean": mean, "se": se, "per_seed": pairs, "resolved": bool(same_sign and abs(mean) >= 2 * se)}


def render(results: dict[str, dict], columns: list[tuple[str, str, str]], seeds: int) -> str:
    """The Markdown table: mean (± SE over seeds), then each variant's difference to PaDT with its SE."""

    def cell(value: dict[str, float] | None) -> str:
        if value is None:
            return "–"
        return f"{value['mean']:.3f}" + (f" ± {value['se']:.3f}" if value.get("se") is not None else "")

    keys = [f"{t}/{k}" for t, k, _ in columns]
    lines = ["| variant | " + " | ".join(c for _, _, c in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for result in results.values():
        lines.append(
            f"| {result['title']} | " + " | ".join(cell(result["metrics"].get(k)) for k in keys) + " |"
        )
    diffs = {n: r["difference_to_padt"] for n, r in results.items() if "difference_to_padt" in r}
    if diffs:
        lines += [
            "",
            f"Difference to PaDT (mean ± SE over {seeds} seed-paired runs; * resolved: every seed agrees "
            "in sign and |mean| ≥ 2 SE):",
            "",
            lines[0].replace("| variant |", "| variant − PaDT |"),
            lines[1],
        ]
        for name, diff in diffs.items():
            cells = []
            for k in keys:
                d = diff.get(k)
                cells.append(
                    "–" if d is None else f"{d['mean']:+.3f} ± {d['se']:.3f}{' *' if d['resolved'] else ''}"
                )
            lines.append(f"| {results[name]['title']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
