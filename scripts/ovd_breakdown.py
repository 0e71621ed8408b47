"""Where a model's OVD answers go wrong on the synthetic world: finding objects, or naming them.

    padt eval --data synthetic:task=ovd,n=500,seed=1001 --task ovd --out runs/eval_ovd --max-new-tokens 192
    python scripts/ovd_breakdown.py runs/eval_ovd

Class-agnostic first: a predicted box is *on an object* when it is matched to a ground-truth object of the image
(IoU ≥ 0.5, one to one, greedily by IoU: :func:`padt.evaluation.metrics.greedy_match`), and an object is *found*
when a predicted box matches it. Then, of the boxes on an object, how many carry that object's kind (the label
mAP scores). Also the confusion between kinds (rows: true kind, columns: predicted label) among matched
boxes. Prints Markdown; ``--json`` writes the numbers too.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from padt.data.synthetic import SHAPES
from padt.evaluation.driver import evaluated_records, read_prediction_lines
from padt.evaluation.metrics import greedy_match


def breakdown(eval_dir: Path) -> dict:
    records = evaluated_records(eval_dir)
    predictions = {p["index"]: p for p in read_prediction_lines(eval_dir / "predictions.jsonl")}
    boxes = matched = named = objects = 0
    confusion: Counter[tuple[str, str]] = Counter()
    for index, record in enumerate(records):
        pred = predictions.get(index)
        if pred is None:
            continue
        w, h = pred["width"], pred["height"]
        truth = [[o.bbox[0] * w, o.bbox[1] * h, o.bbox[2] * w, o.bbox[3] * h] for o in record.objects]
        kinds = [o.label for o in record.objects]
        ours = pred["objects"]
        boxes += len(ours)
        objects += len(truth)
        if not ours or not truth:
            continue
        matches = greedy_match([o["bbox"] for o in ours], truth)
        for i, j in matches:
            label = ours[i].get("label", "")
            named += label == kinds[j]
            confusion[(kinds[j], label)] += 1
        matched += len(matches)
    return {
        "images": len(predictions),
        "objects": objects,
        "boxes": boxes,
        "boxes_on_an_object": matched / max(boxes, 1),
        "objects_found": matched / max(objects, 1),
        "kind_right_when_on_an_object": named / max(matched, 1),
        "confusion": {f"{t} -> {p}": n for (t, p), n in sorted(confusion.items())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "eval_dir", type=Path, help="folder written by padt eval --task ovd on synthetic data"
    )
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    table = breakdown(args.eval_dir)
    print(f"{table['images']} images, {table['objects']} objects, {table['boxes']} predicted boxes\n")
    print("| boxes on an object (IoU ≥ 0.5) | objects found | kind right, of the boxes on an object |")
    print("|---:|---:|---:|")
    print(
        f"| {table['boxes_on_an_object']:.3f} | {table['objects_found']:.3f} "
        f"| {table['kind_right_when_on_an_object']:.3f} |"
    )
    pairs = Counter({tuple(k.split(" -> ")): n for k, n in table["confusion"].items()})
    predicted = sorted(
        {p for _, p in pairs}, key=lambda p: (p not in SHAPES, SHAPES.index(p) if p in SHAPES else 0)
    )
    print("\n| true \\ predicted | " + " | ".join(p or "(none)" for p in predicted) + " |")
    print("|---" * (len(predicted) + 1) + "|")
    for kind in SHAPES:
        print(f"| {kind} | " + " | ".join(str(pairs.get((kind, p), 0)) for p in predicted) + " |")
    if args.json:
        args.json.write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
