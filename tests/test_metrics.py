"""REC/RES/RIC metrics against hand-computed cases, and the paper protocol's keying rules."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from padt.errors import PaDTError
from padt.evaluation.metrics import (
    GroundedObject,
    box_iou_matrix,
    greedy_match,
    paper_key,
    paper_rec_res_metrics,
    rec_metrics,
    res_metrics,
    ric_grounding_metrics,
)


def test_box_iou_hand_computed():
    # [0,0,10,10] vs [5,0,15,10]: intersection 50, union 150.
    iou = box_iou_matrix([[0, 0, 10, 10]], [[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30]])
    np.testing.assert_allclose(iou, [[1 / 3, 1.0, 0.0]])
    assert box_iou_matrix([], [[0, 0, 1, 1]]).shape == (0, 1)
    assert box_iou_matrix([[0, 0, 0, 0]], [[0, 0, 0, 0]])[0, 0] == 0.0  # degenerate: no NaN


def test_rec_first_object_versus_best():
    gt = [[0, 0, 10, 10]] * 4
    preds = [
        [[0, 0, 10, 10]],  # IoU 1
        [[0, 0, 10, 6], [0, 0, 10, 10]],  # first IoU 0.6, best 1
        [[50, 50, 60, 60], [0, 0, 10, 8]],  # first 0, best 0.8
        [],  # miss
    ]
    m = rec_metrics(preds, gt)
    assert m["acc@0.5"] == pytest.approx(2 / 4)
    assert m["acc@0.75"] == pytest.approx(1 / 4)
    assert m["acc@0.5_best"] == pytest.approx(3 / 4)
    assert m["num_samples"] == 4
    with pytest.raises(PaDTError, match="3 predictions for 4 queries"):
        rec_metrics(preds[:3], gt)


def _mask(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), dtype=np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def test_res_miou_versus_ciou():
    # Sample 1: GT 4x4=16 px, pred 4x2 inside it: I=8, U=16, IoU 0.5.
    # Sample 2: GT 2x2=4 px, pred equal: I=4, U=4, IoU 1.
    # Sample 3: GT 10x10=100 px, no prediction: I=0, U=100, IoU 0.
    gt = [_mask(10, 10, 0, 4, 0, 4), _mask(10, 10, 0, 2, 0, 2), _mask(10, 10, 0, 10, 0, 10)]
    preds = [
        [_mask(10, 10, 0, 4, 0, 2), _mask(10, 10, 0, 4, 0, 4)],
        [mask_utils.encode(np.asfortranarray(gt[1]))],
        [],
    ]
    m = res_metrics(preds, gt)
    assert m["miou"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)  # first mask of sample 1 only
    assert m["ciou"] == pytest.approx((8 + 4 + 0) / (16 + 4 + 100))
    # RLE with string counts (as records store them) is accepted.
    rle = mask_utils.encode(np.asfortranarray(gt[0]))
    rle = {"size": rle["size"], "counts": rle["counts"].decode()}
    assert res_metrics([[rle]], [gt[0]])["miou"] == 1.0
    with pytest.raises(PaDTError, match="predict masks at the original image size"):
        res_metrics([[np.ones((5, 5), dtype=np.uint8)]], [gt[0]])


def test_greedy_match_takes_highest_iou_first():
    gts = [[0, 0, 10, 10], [0, 0, 10, 8]]
    # Pred 0 overlaps both GTs (IoU 1.0 with GT0, 0.8 with GT1); pred 1 only GT0 (IoU 0.9).
    preds = [[0, 0, 10, 10], [0, 0, 10, 9]]
    # Pairs by IoU: (p0,g0)=1.0, (p1,g0)=0.9, (p1,g1)=8/9, (p0,g1)=0.8 -> take (p0,g0), then (p1,g1).
    assert greedy_match(preds, gts) == [(0, 0), (1, 1)]
    assert greedy_match(preds, gts, iou_threshold=0.95) == [(0, 0)]
    assert greedy_match([], gts) == []


def test_ric_greedy_precision_recall():
    preds = [
        [[0, 0, 10, 10], [0, 0, 10, 10], [100, 100, 110, 110]],  # 1 match (duplicate cannot match twice)
        [[0, 0, 4, 4]],  # 1 match
        [],
    ]
    gts = [[[0, 0, 10, 10]], [[0, 0, 4, 4], [5, 5, 9, 9]], [[0, 0, 1, 1]]]
    m = ric_grounding_metrics(preds, gts)
    assert m["greedy_precision"] == pytest.approx(2 / 4)
    assert m["greedy_recall"] == pytest.approx(2 / 4)
    assert (m["num_matched"], m["num_pred"], m["num_gt"]) == (2, 4, 4)
    assert ric_grounding_metrics([[]], [[]])["greedy_precision"] == 0.0


def test_paper_protocol_keys_max_and_missing():
    gt = {
        paper_key(1, "the dog"): GroundedObject([0, 0, 10, 10], _mask(20, 20, 0, 10, 0, 10)),
        paper_key(1, "the cat"): GroundedObject([10, 10, 20, 20], _mask(20, 20, 10, 20, 10, 20)),
        paper_key(2, "a car"): GroundedObject([0, 0, 10, 10], _mask(20, 20, 0, 10, 0, 10)),
    }
    pred = {
        # Two objects: the second one is right; the max counts.
        paper_key(1, " the dog "): [
            GroundedObject([5, 5, 15, 15], _mask(20, 20, 5, 15, 5, 15)),
            GroundedObject([0.4, 0.3, 10.2, 9.6], _mask(20, 20, 0, 10, 0, 5)),
        ],
        # Echo differs ("cat" -> "kitten"): no key, counts 0 like the missing "a car".
        paper_key(1, "the kitten"): [GroundedObject([10, 10, 20, 20], _mask(20, 20, 10, 20, 10, 20))],
    }
    m = paper_rec_res_metrics(gt, pred)
    # Rounded pred box [0, 0, 10, 10] gives IoU 1 for "the dog".
    assert m["acc@0.5"] == pytest.approx(1 / 3)
    assert m["acc@0.75"] == pytest.approx(1 / 3)
    # Mask IoUs for "the dog": 25/175 and 50/100 -> max 0.5 (taken separately from the boxes).
    assert m["miou"] == pytest.approx(0.5 / 3)
    assert (m["num_keys"], m["num_missing"]) == (3, 2)


# ----------------------------------------------------------------------------------------------- padt score


def _rle(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def _write_jsonl(path, items):
    path.write_text("".join(json.dumps(x) + "\n" for x in items))
    return path


def _rec_records(tmp_path):
    from padt.data.records import ObjectRecord, Record, write_jsonl
    from padt.prompts import rec_answer_template, rec_prompt

    def rec(image_id, sentence, box, mask):
        return Record(
            id=image_id,
            image=f"{image_id}.jpg",
            task="rec",
            conversations=[{"from": "human", "value": rec_prompt(sentence)}],
            answer_template=rec_answer_template(sentence),
            objects=[
                ObjectRecord(
                    bbox=[box[0] / 20, box[1] / 10, box[2] / 20, box[3] / 10],
                    label=sentence,
                    rle=_rle(mask),
                    patches=[0],
                )
            ],
        )

    records = [
        rec(1, "the dog", [0, 0, 10, 10], _mask(10, 20, 0, 10, 0, 10)),
        rec(1, "the cat", [10, 0, 20, 10], _mask(10, 20, 0, 10, 10, 20)),
        rec(2, "a car", [0, 0, 20, 10], _mask(10, 20, 0, 10, 0, 20)),
    ]
    write_jsonl(records, tmp_path / "gt.jsonl")
    return tmp_path / "gt.jsonl"


def _score(capsys, *argv):
    from padt.cli import main

    assert main(["score", *[str(a) for a in argv]]) == 0
    return json.loads(capsys.readouterr().out)


def test_score_cli_rec_res_both_protocols(tmp_path, capsys):
    gt = _rec_records(tmp_path)
    pred = _write_jsonl(
        tmp_path / "pred.jsonl",
        [
            # the dog: first object right.
            {
                "index": 0,
                "objects": [
                    {"bbox": [0, 0, 10, 10], "label": "the dog", "mask": _rle(_mask(10, 20, 0, 10, 0, 5))}
                ],
            },
            # the cat: first object wrong, second right; the echo differs ("kitty").
            {
                "index": 1,
                "objects": [
                    {"bbox": [0, 0, 5, 5], "label": "the kitty", "mask": _rle(_mask(10, 20, 0, 5, 0, 5))},
                    {
                        "bbox": [10, 0, 20, 10],
                        "label": "the kitty",
                        "mask": _rle(_mask(10, 20, 0, 10, 10, 20)),
                    },
                ],
            },
            # a car: no line at all.
        ],
    )
    rec = _score(capsys, "--task", "rec", "--gt", gt, "--pred", pred)
    assert (rec["acc@0.5"], rec["acc@0.5_best"], rec["num_missing"]) == (
        pytest.approx(1 / 3),
        pytest.approx(2 / 3),
        1,
    )
    res = _score(capsys, "--task", "res", "--gt", gt, "--pred", pred)
    # IoUs: 50/100, 0/(25+100), miss 0/200.
    assert res["miou"] == pytest.approx(0.5 / 3) and res["ciou"] == pytest.approx(50 / (100 + 125 + 200))
    paper = _score(capsys, "--task", "rec", "--protocol", "paper", "--gt", gt, "--pred", pred)
    assert paper["acc@0.5"] == pytest.approx(1 / 3) and paper["num_missing"] == 2
    # The reference's per-object result lines (xywh) give the same paper numbers.
    per_object = _write_jsonl(
        tmp_path / "ref.jsonl",
        [
            {
                "image_id": 1,
                "category": "the dog",
                "bbox": [0, 0, 10, 10],
                "score": 0.9,
                "mask": _rle(_mask(10, 20, 0, 10, 0, 5)),
            },
            {
                "image_id": 2,
                "category": "a car",
                "bbox": [0, 0, 20, 10],
                "score": 0.9,
                "mask": _rle(_mask(10, 20, 0, 10, 0, 20)),
            },
        ],
    )
    paper = _score(capsys, "--task", "res", "--protocol", "paper", "--gt", gt, "--pred", per_object)
    assert paper["acc@0.5"] == pytest.approx(2 / 3) and paper["miou"] == pytest.approx(1.5 / 3)
    from padt.cli import main

    assert main(["score", "--task", "rec", "--gt", str(gt), "--pred", str(per_object)]) == 2
    assert "per-object predictions carry no query index" in capsys.readouterr().err


def test_score_cli_ovd_official_and_rebuilt(tmp_path, capsys):
    from padt.data.records import ObjectRecord, Record, write_jsonl

    official = {
        "images": [{"id": 1, "file_name": "1.jpg", "width": 100, "height": 50}],
        "categories": [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [50, 10, 30, 30], "area": 900, "iscrowd": 0},
        ],
    }
    (tmp_path / "instances.json").write_text(json.dumps(official))
    preds = _write_jsonl(
        tmp_path / "pred.jsonl",
        [
            {
                "image_id": 1,
                "objects": [
                    {"bbox": [10, 10, 30, 30], "label": "Dog", "score": 0.9},
                    {"bbox": [0, 0, 5, 5], "label": "unicorn", "score": 0.8},
                ],
            },
        ],
    )
    m = _score(capsys, "--task", "ovd", "--gt", tmp_path / "instances.json", "--pred", preds)
    assert m["ground_truth"] == "official" and m["num_dropped_unknown_class"] == 1
    assert m["map"] == pytest.approx(0.5)  # dog found, cat missed
    # Rebuilt ground truth: only the dog was kept by preprocessing.
    write_jsonl(
        [
            Record(
                id=1,
                image="1.jpg",
                task="ovd",
                conversations=[{"from": "human", "value": "p"}],
                answer_template="<|Obj_0|>",
                objects=[ObjectRecord(bbox=[0.1, 0.2, 0.3, 0.6], label="dog", area=400)],
            )
        ],
        tmp_path / "val.jsonl",
    )
    m = _score(
        capsys,
        "--task",
        "ovd",
        "--gt",
        tmp_path / "val.jsonl",
        "--coco",
        tmp_path / "instances.json",
        "--pred",
        preds,
    )
    assert m["ground_truth"] == "rebuilt" and m["map"] == pytest.approx(1.0)
