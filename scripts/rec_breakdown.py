"""Where a model's REC answers go wrong on the synthetic world, by kind of expression.

    padt eval --data synthetic:task=rec,n=500,seed=1001 --task rec --out runs/eval_rec
    python scripts/rec_breakdown.py runs/eval_rec

For each expression form (``attribute``: "the small red circle", ``extreme``: "the leftmost triangle",
``relation``: "the square above the green star") it prints the number of queries, ``acc@0.5`` (first box) and
how often the first VRT the model wrote lies on the referred object (selection, separate from box decoding), plus
``acc@0.5`` among the queries whose first VRT is on the object. Prints a Markdown table; ``--json`` writes it too.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from padt.data.synthetic import expression_form
from padt.evaluation.driver import evaluated_records, read_prediction_lines
from padt.evaluation.metrics import box_iou_matrix


def breakdown(eval_dir: Path) -> dict[str, dict[str, float]]:
    records = evaluated_records(eval_dir)
    predictions = {p["index"]: p for p in read_prediction_lines(eval_dir / "predictions.jsonl")}
    rows: dict[str, list[tuple[bool, bool]]] = {}
    for index, record in enumerate(records):
        if index not in predictions:
            continue
        target = record.objects[0]
        pred = predictions[index]
        w, h = pred["width"], pred["height"]
        gt = [target.bbox[0] * w, target.bbox[1] * h, target.bbox[2] * w, target.bbox[3] * h]
        first = pred["objects"][0] if pred["objects"] else None
        hit = first is not None and box_iou_matrix([first["bbox"]], [gt])[0, 0] >= 0.5
        on_target = (
            first is not None and bool(first["vrt_ids"]) and first["vrt_ids"][0] in set(target.patches)
        )
        for form in (expression_form(target.label), "all"):
            rows.setdefault(form, []).append((hit, on_target))
    table = {}
    for form in ("attribute", "extreme", "relation", "all"):
        if form not in rows:
            continue
        hits, on = (np.array(v) for v in zip(*rows[form], strict=True))
        table[form] = {
            "n": len(hits),
            "acc@0.5": float(hits.mean()),
            "first_vrt_on_target": float(on.mean()),
            "acc@0.5_given_on_target": float(hits[on].mean()) if on.any() else float("nan"),
        }
    return table


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "eval_dir", type=Path, help="folder written by padt eval --task rec on synthetic data"
    )
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    table = breakdown(args.eval_dir)
    print("| expression | n | acc@0.5 | first VRT on the object | acc@0.5 when it is |")
    print("|---|---:|---:|---:|---:|")
    for form, row in table.items():
        print(
            f"| {form} | {row['n']} | {row['acc@0.5']:.3f} | {row['first_vrt_on_target']:.3f} "
            f"| {row['acc@0.5_given_on_target']:.3f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
