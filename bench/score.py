"""``padt score --task ovd`` against pycocotools and faster-coco-eval on a COCO-sized detection set.

Generates a random set shaped like COCO val (default: 5,000 images, ~24.7k ground-truth boxes, ~74k detections,
80 classes), writes the ground truth as a COCO annotation file and the detections as a COCO results file, then
times, side by side in one process and in alternating order, the whole path from files to metrics:

- pycocotools: ``COCO(gt)``, ``loadRes(results)``, ``COCOeval`` evaluate + accumulate + summarize;
- faster-coco-eval: the same with ``COCOeval_faster`` (the engine padt uses);
- ``padt score --task ovd --gt gt.json --pred results.json`` run in-process through its CLI entry point.

It prints each median time and the ratios, and checks that the three give the same mAP.

    python bench/score.py                    # the COCO-sized set
    python bench/score.py --images 500       # a quick run
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def make_set(images: int, classes: int, seed: int) -> tuple[dict, list[dict]]:
    """Random COCO-like ground truth (about 5 boxes per image) and detections (about 3 per GT box, a third of
    them near a ground-truth box)."""
    rng = np.random.default_rng(seed)
    gt_images, annotations, results = [], [], []
    for image_id in range(1, images + 1):
        w, h = int(rng.integers(320, 641)), int(rng.integers(240, 481))
        gt_images.append({"id": image_id, "width": w, "height": h, "file_name": f"{image_id:012d}.jpg"})
        n = int(rng.poisson(4.95))
        boxes = []
        for _ in range(n):
            bw, bh = float(rng.uniform(8, w / 2)), float(rng.uniform(8, h / 2))
            x, y = float(rng.uniform(0, w - bw)), float(rng.uniform(0, h - bh))
            category = int(rng.integers(1, classes + 1))
            boxes.append((x, y, bw, bh, category))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": [x, y, bw, bh],
                    "area": bw * bh,
                    "iscrowd": 0,
                }
            )
        for _ in range(int(rng.poisson(3 * max(n, 1) * 1.0))):
            if boxes and rng.random() < 0.35:
                x, y, bw, bh, category = boxes[int(rng.integers(len(boxes)))]
                x, y = x + float(rng.normal(0, 4)), y + float(rng.normal(0, 4))
                bw, bh = bw * float(rng.uniform(0.85, 1.15)), bh * float(rng.uniform(0.85, 1.15))
            else:
                bw, bh = float(rng.uniform(8, w / 2)), float(rng.uniform(8, h / 2))
                x, y = float(rng.uniform(0, w - bw)), float(rng.uniform(0, h - bh))
                category = int(rng.integers(1, classes + 1))
            results.append(
                {
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": [round(x, 2), round(y, 2), round(bw, 2), round(bh, 2)],
                    "score": round(float(rng.random()), 4),
                }
            )
    gt = {
        "images": gt_images,
        "annotations": annotations,
        "categories": [{"id": c, "name": f"class{c}"} for c in range(1, classes + 1)],
    }
    return gt, results


def pycocotools_map(gt_path: Path, pred_path: Path) -> float:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_path))
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(str(pred_path)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[0])


def faster_coco_eval_map(gt_path: Path, pred_path: Path) -> float:
    from faster_coco_eval import COCO, COCOeval_faster

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_path))
        evaluator = COCOeval_faster(
            coco_gt, coco_gt.loadRes(str(pred_path)), iouType="bbox", print_function=lambda *a, **k: None
        )
        evaluator.run()
    return float(evaluator.stats[0])


def padt_score_map(gt_path: Path, pred_path: Path) -> float:
    from padt.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["score", "--task", "ovd", "--gt", str(gt_path), "--pred", str(pred_path)])
    if code != 0:
        raise SystemExit(f"padt score failed with exit code {code}")
    return float(json.loads(out.getvalue())["map"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    gt, results = make_set(args.images, args.classes, args.seed)
    runners: dict[str, Callable[[Path, Path], float]] = {
        "pycocotools": pycocotools_map,
        "faster-coco-eval": faster_coco_eval_map,
        "padt score": padt_score_map,
    }
    with tempfile.TemporaryDirectory() as tmp:
        gt_path, pred_path = Path(tmp) / "gt.json", Path(tmp) / "results.json"
        gt_path.write_text(json.dumps(gt))
        pred_path.write_text(json.dumps(results))
        print(
            f"{args.images} images, {len(gt['annotations'])} boxes, {len(results)} detections, "
            f"{args.classes} classes"
        )
        padt_score_map(gt_path, pred_path)  # warm-up: imports
        times: dict[str, list[float]] = {name: [] for name in runners}
        maps: dict[str, float] = {}
        for r in range(args.repeats):
            order = list(runners) if r % 2 == 0 else list(reversed(runners))
            for name in order:
                start = time.perf_counter()
                maps[name] = runners[name](gt_path, pred_path)
                times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(t) for name, t in times.items()}
    for name in runners:
        print(f"{name:18s} {med[name]:7.2f} s   mAP {maps[name]:.6f}")
    print(f"padt score vs pycocotools:      {med['pycocotools'] / med['padt score']:.1f}x faster")
    print(f"padt score vs faster-coco-eval: {med['padt score'] / med['faster-coco-eval']:.2f}x its time")
    spread = max(maps.values()) - min(maps.values())
    if spread > 1e-6:
        raise SystemExit(f"the three mAPs differ by {spread:.2e}")


if __name__ == "__main__":
    main()
