"""``padt score`` on bad input: predictions and ground truth made elsewhere are checked where they enter; a
malformed mask, box or score is one line naming the file and line, never a hang in pycocotools and never a
silent miss."""

from __future__ import annotations

import pytest

from badinput import Case, check_all, make_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"))


def sc(pred: str, task: str = "res", gt: str = "{w}/res/records.jsonl", *more: str) -> list[str]:
    return ["score", "--task", task, "--gt", gt, "--pred", pred, *more]


CASES = [
    Case(
        "pred-garbage-rle",  # used to spin for good inside pycocotools' merge
        sc("{w}/p_garbage_rle.jsonl"),
        ["p_garbage_rle.jsonl: line 1", "mask", "not a character of the COCO compressed format"],
        timeout=60,
    ),
    Case(
        "pred-rle-size-wrong", sc("{w}/p_wrong_size_rle.jsonl"), ["p_wrong_size_rle.jsonl: line 1", "[3, 3]"]
    ),
    Case("gt-garbage-rle", sc("{w}/p_good.jsonl", "res", "{w}/res/garbage_rle.jsonl"), ["objects[0].rle"]),
    *(
        Case(f"{task}-{name}", sc(f"{{w}}/{file}", task), [f"{file}: line 1", fragment])
        for task in ("rec", "res")
        for name, file, fragment in [
            ("nan-box", "p_nan_box.jsonl", "NaN or infinite"),
            ("inf-box", "p_inf_box.jsonl", "NaN or infinite"),
            ("inverted-box", "p_inverted_box.jsonl", "is inverted"),
            ("text-box", "p_text_box.jsonl", "must be [x1, y1, x2, y2] in pixels"),
            ("nan-score", "p_nan_score.jsonl", "'score' nan is not a finite number"),
        ]
    ),
    Case("res-no-mask", sc("{w}/p_no_mask.jsonl"), ["an object without 'mask'", "RES needs predicted masks"]),
    Case("pred-empty", sc("{w}/p_empty.jsonl"), ["p_empty.jsonl", "no predictions"]),
    Case("pred-not-json", sc("{w}/p_not_json.jsonl"), ["p_not_json.jsonl: line 1", "invalid JSON"]),
    Case("pred-index-out-of-range", sc("{w}/p_bad_index.jsonl"), ["index 7 is not a record position (0..2)"]),
    Case("pred-missing", sc("{w}/nope.jsonl"), ["nope.jsonl"]),
    Case(
        "ovd-gt-without-annotations",
        sc("{w}/c_good.json", "ovd", "{w}/coco_no_annotations.json"),
        ["no annotations", "mAP is undefined"],
    ),
    Case(
        "ovd-unknown-image",
        sc("{w}/c_unknown_image.json", "ovd", "{w}/coco.json"),
        ["item 0", "image_id 9 is not in the ground truth's images"],
    ),
    Case(
        "ovd-nan-score",
        sc("{w}/c_nan_score.json", "ovd", "{w}/coco.json"),
        ["score nan is not a finite number"],
    ),
    Case("ovd-negative-size", sc("{w}/c_negative_size.json", "ovd", "{w}/coco.json"), ["item 0", "bbox"]),
    Case("ovd-empty", sc("{w}/c_empty.json", "ovd", "{w}/coco.json"), ["c_empty.json", "no predictions"]),
    Case(
        "output-under-a-file",
        sc("{w}/p_good.jsonl", "res", "{w}/res/records.jsonl", "--output", "{w}/afile/m.json"),
        ["cannot create the folder of --output"],
    ),
    Case(
        "iou-threshold-2",
        sc("{w}/p_good.jsonl", "rec", "{w}/res/records.jsonl", "--iou-threshold", "2"),
        ["argument --iou-threshold: must be in (0, 1], got 2"],
        one_line=False,
    ),
]


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_score_refuses(case, tmp_path, world):
    check_all(case, tmp_path, world)


def test_good_predictions_score(tmp_path, world):
    """The control row: the same files with nothing wrong score, exit 0."""
    result = check_all(Case("good", sc("{w}/p_good.jsonl"), [], code=0, one_line=False), tmp_path, world)
    assert (
        '"num_missing": 2' in result.stdout
    )  # one prediction for three records: the other two count as missed
