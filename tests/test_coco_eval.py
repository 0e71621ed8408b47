"""COCO bbox mAP: faster-coco-eval against pycocotools on random data; the reference's rebuilt ground truth."""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
import pytest

from padt.data.records import ObjectRecord, Record
from padt.errors import PaDTError
from padt.evaluation.coco import STAT_NAMES, coco_bbox_map, rebuild_coco_gt, results_from_named


def _random_coco(seed: int, num_images: int = 12, num_categories: int = 4):
    rng = np.random.default_rng(seed)
    images = [
        {
            "id": i + 1,
            "file_name": f"{i + 1}.jpg",
            "width": int(rng.integers(200, 640)),
            "height": int(rng.integers(200, 640)),
        }
        for i in range(num_images)
    ]
    categories = [{"id": c + 1, "name": f"class{c}"} for c in range(num_categories)]
    annotations, results = [], []
    for img in images:
        for _ in range(int(rng.integers(0, 6))):
            w, h = rng.uniform(4, 200, size=2)
            x, y = rng.uniform(0, img["width"] - w), rng.uniform(0, img["height"] - h)
            cat = int(rng.integers(1, num_categories + 1))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": img["id"],
                    "category_id": cat,
                    "bbox": [x, y, w, h],
                    "area": float(w * h),
                    "iscrowd": int(rng.random() < 0.1),
                }
            )
            for _ in range(int(rng.integers(0, 3))):  # jittered detections, sometimes with the wrong class
                jitter = rng.normal(0, 0.15, size=4) * [w, h, w, h]
                results.append(
                    {
                        "image_id": img["id"],
                        "category_id": cat
                        if rng.random() < 0.8
                        else int(rng.integers(1, num_categories + 1)),
                        "bbox": [float(v) for v in np.maximum(np.array([x, y, w, h]) + jitter, [0, 0, 1, 1])],
                        "score": float(rng.random()),
                    }
                )
        for _ in range(int(rng.integers(0, 3))):  # background false positives
            results.append(
                {
                    "image_id": img["id"],
                    "category_id": int(rng.integers(1, num_categories + 1)),
                    "bbox": [float(v) for v in rng.uniform(0, 150, size=4) + np.array([0, 0, 5, 5])],
                    "score": float(rng.random()),
                }
            )
    return {"images": images, "annotations": annotations, "categories": categories}, results


def _pycocotools_stats(gt, results):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_faster_coco_eval_matches_pycocotools(seed):
    gt, results = _random_coco(seed)
    ours = coco_bbox_map(gt, results)
    reference = _pycocotools_stats(gt, results)
    assert list(ours) == list(STAT_NAMES)
    np.testing.assert_allclose([ours[k] for k in STAT_NAMES], reference, atol=1e-6)
    assert 0 < ours["map"] < 1


def test_perfect_and_empty_results():
    gt, _ = _random_coco(3)
    perfect = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in gt["annotations"]
        if not a["iscrowd"]
    ]
    assert coco_bbox_map(gt, perfect)["map"] == pytest.approx(1.0)
    assert coco_bbox_map(gt, [])["map"] == 0.0
    with pytest.raises(PaDTError, match="image_id 999 is not in the ground truth"):
        coco_bbox_map(gt, [{"image_id": 999, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1.0}])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"bbox": [float("nan"), 0, 5, 5]}, "is not a box"),
        ({"bbox": [0, 0, -5, 5]}, "is not a box"),
        ({"bbox": [0, 0, float("inf"), 5]}, "is not a box"),
        ({"bbox": [0, 0, 5]}, "bbox must be four numbers"),
        ({"bbox": "0 0 5 5"}, "bbox must be four numbers"),
        ({"score": float("nan")}, "score nan is not a finite number"),
        ({"score": "high"}, "score a number"),
        ({"category_id": 999}, "category_id 999 is not a ground-truth category"),
    ],
)
def test_bad_results_are_named_not_counted_as_misses(change, message):
    gt, _ = _random_coco(3)
    result = {"image_id": gt["images"][0]["id"], "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}
    result |= change | {"_where": "preds.jsonl: line 7"}
    with pytest.raises(PaDTError, match=f"preds.jsonl: line 7.*{message}"):
        coco_bbox_map(gt, [result])


def test_ground_truth_without_annotations_is_refused():
    gt, results = _random_coco(3)
    with pytest.raises(PaDTError, match="no annotations, so mAP is undefined"):
        coco_bbox_map({**gt, "annotations": []}, results)


def test_results_from_named_lowercases_and_drops_unknown():
    categories = [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}]
    preds = [
        {"image_id": 1, "category": "Person", "bbox": [0, 0, 1, 1], "score": 0.5},
        {"image_id": 1, "category": "dogs", "bbox": [0, 0, 1, 1], "score": 0.5},  # no exact match: dropped
        {"image_id": 1, "category_id": 18, "bbox": [0, 0, 1, 1], "score": 0.5},
    ]
    results, dropped = results_from_named(preds, categories)
    assert [r["category_id"] for r in results] == [1, 18] and dropped == 1


def test_rebuilt_gt_from_records():
    official = {
        "images": [
            {"id": 5, "file_name": "5.jpg", "width": 200, "height": 100},
            {"id": 6, "file_name": "6.jpg", "width": 50, "height": 50},
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
        "annotations": [],
    }
    rec = Record(
        id=5,
        image="5.jpg",
        conversations=[{"from": "human", "value": "p"}],
        answer_template="<|Obj_0|> <|Obj_1|>",
        task="ovd",
        objects=[
            ObjectRecord(bbox=[0.1004, 0.2, 0.5, 0.9], label="car", area=1234.5, iscrowd=1),
            ObjectRecord(bbox=[0.0, 0.0, 1.0, 1.0], label="person", area=20000.0),
        ],
    )
    gt = rebuild_coco_gt([rec], official)
    assert [img["id"] for img in gt["images"]] == [5, 6]  # images without objects stay
    a0, a1 = gt["annotations"]
    # x1 = round(0.1004*200) = 20, y1 = 20, x2 = 100, y2 = 90 -> xywh [20, 20, 80, 70]
    assert a0 == {
        "id": 1,
        "image_id": 5,
        "category_id": 3,
        "bbox": [20, 20, 80, 70],
        "area": 1234.5,
        "iscrowd": 1,
    }
    assert a1["bbox"] == [0, 0, 200, 100] and a1["category_id"] == 1
    with pytest.raises(PaDTError, match="label 'truck' is not a category"):
        rebuild_coco_gt(
            [
                Record(
                    id=5,
                    image="5.jpg",
                    conversations=[{"from": "human", "value": "p"}],
                    answer_template="<|Obj_0|>",
                    task="ovd",
                    objects=[ObjectRecord(bbox=[0, 0, 1, 1], label="truck")],
                )
            ],
            official,
        )


def test_score_ovd_leaves_a_caller_s_ground_truth_as_it_was_and_scores_a_file_the_same(tmp_path):
    """A ground-truth dict from the caller is copied before the engine indexes it; one read from a file is
    padt's own and indexed in place (no copy): both give the same numbers."""
    import json

    from padt.evaluation.score import score_ovd

    gt, results = _random_coco(4)
    names = {c["id"]: c["name"] for c in gt["categories"]}
    preds = [
        {
            "image_id": r["image_id"],
            "category": names[r["category_id"]],
            "bbox": r["bbox"],
            "score": r["score"],
        }
        for r in results
    ]
    before = copy.deepcopy(gt)
    from_dict = score_ovd(gt, preds)
    assert gt == before
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    from_file = score_ovd(path, preds)
    assert from_dict == from_file and 0 < from_file["map"] < 1
    reference = _pycocotools_stats(gt, results)
    np.testing.assert_allclose([from_file[k] for k in STAT_NAMES], reference, atol=1e-6)


def test_lean_evaluate_equals_the_stock_engine_on_ties_and_crowded_images():
    """The lean ``evaluate`` feeds faster-coco-eval's matcher the same IoUs as its own ``evaluate``: checked where
    the ordering matters (tied scores, more than 100 detections on an image, crowd boxes, images without any)."""
    from faster_coco_eval import COCO, COCOeval_faster

    from padt.evaluation.coco import _evaluator_class

    gt, results = _random_coco(5, num_images=30)
    rng = np.random.default_rng(5)
    for r in results:
        r["score"] = round(r["score"], 1)  # many ties
    crowded = gt["images"][0]["id"]
    results += [
        {
            "image_id": crowded,
            "category_id": 1,
            "bbox": [float(v) for v in rng.uniform(0, 100, size=4) + np.array([0, 0, 2, 2])],
            "score": float(rng.integers(0, 3)) / 2,
        }
        for _ in range(150)
    ]
    gt["images"].append({"id": 10_000, "file_name": "empty.jpg", "width": 50, "height": 50})

    stats = []
    for cls in (COCOeval_faster, _evaluator_class()):
        coco_gt = COCO(copy.deepcopy(gt))
        ev = cls(
            coco_gt, coco_gt.loadRes(copy.deepcopy(results)), iouType="bbox", print_function=lambda *a: None
        )
        with contextlib.redirect_stdout(io.StringIO()):
            ev.run()
        stats.append(np.asarray(ev.stats))
    assert 0 < stats[0][0] < 1
    np.testing.assert_array_equal(stats[1], stats[0])
    np.testing.assert_allclose(stats[1], _pycocotools_stats(gt, results), atol=1e-6)
