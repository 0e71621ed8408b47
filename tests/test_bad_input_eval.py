"""``padt eval`` on bad input: every row ends in time with exit 2 and one line naming the problem and the fix;
the data and settings are checked before a query is answered, and a refused run leaves nothing that blocks the
corrected rerun."""

from __future__ import annotations

import json

import pytest

from badinput import Case, check_all, make_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"))


def ev(data: str, *more: str, task: str = "res") -> list[str]:
    return ["eval", "--data", data, "--task", task, "--out", "{tmp}/run", "--no-progress", *more]


CASES = [
    Case(
        "gt-garbage-rle",  # used to hang in pycocotools after predicting
        ev("{w}/res/garbage_rle.jsonl"),
        ["garbage_rle.jsonl: line 1", "objects[0].rle", "not a character of the COCO compressed format"],
        timeout=60,
    ),
    Case(
        "gt-rle-size-wrong",
        ev("{w}/res/wrong_size_rle.jsonl"),
        ["wrong_size_rle.jsonl: line 1", "size [5, 5]"],
    ),
    Case("gt-inverted-box", ev("{w}/res/inverted_box.jsonl"), ["inverted_box.jsonl: line 1", "x2 < x1"]),
    Case(
        "gt-image-missing",
        ev("{w}/res/missing_image.jsonl"),
        ["image file not found", "gone.png", "--image-root"],
    ),
    Case("gt-torn-line", ev("{w}/res/torn.jsonl"), ["torn.jsonl: line 2", "invalid JSON"]),
    Case("gt-empty", ev("{w}/res/empty.jsonl"), ["empty.jsonl", "no records"]),
    Case("gt-missing", ev("{w}/res/nope.jsonl"), ["does not exist", "synthetic:"]),
    Case("gt-wrong-task", ev("{w}/res/records.jsonl", task="ovd"), ["not ovd", "their own --task"]),
    Case("synthetic-unknown-key", ev("synthetic:nn=4"), ["unknown item 'nn=4'", "keys task, n, seed"]),
    Case("synthetic-no-scenes", ev("synthetic:n=0"), ["n must be at least 1"]),
    Case("synthetic-not-a-number", ev("synthetic:n=many"), ["n must be an integer"]),
    Case("synthetic-wrong-task", ev("synthetic:task=ovd,n=2"), ["cannot be evaluated as res"]),
    Case(
        "out-is-a-file",
        ["eval", "--data", "{w}/res/records.jsonl", "--task", "res", "--out", "{w}/afile"],
        ["is a file"],
    ),
    Case("model-weights-empty", ev("{w}/res/records.jsonl", "--model", "{w}/m_zero"), ["(0 bytes)"]),
    Case("model-missing", ev("{w}/res/records.jsonl", "--model", "{w}/nope"), ["does not exist", "--model"]),
    Case("device-cuda-without-gpu", ev("{w}/res/records.jsonl", "--device", "cuda"), ["no CUDA"]),
    Case("coco-with-res", ev("{w}/res/records.jsonl", "--coco", "{w}/coco.json"), ["--coco", "--task ovd"]),
    *(
        Case(f"option-{name}", ev("{w}/res/records.jsonl", *args), [fragment], one_line=False)
        for name, args, fragment in [
            ("batch-size-0", ["--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
            ("limit-negative", ["--limit", "-1"], "argument --limit: must be at least 1, got -1"),
            ("max-new-tokens-0", ["--max-new-tokens", "0"], "argument --max-new-tokens: must be at least 1"),
            ("protocol-unknown", ["--protocol", "mine"], "argument --protocol: invalid choice"),
        ]
    ),
]


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_eval_refuses(case, tmp_path, world):
    check_all(case, tmp_path, world)


def test_refused_run_leaves_no_settings_behind(tmp_path, world):
    """A run refused for its data must not write OUT/eval.json, or the corrected rerun would be refused as a
    change of settings."""
    check_all(Case("bad", ev("{w}/res/garbage_rle.jsonl"), ["objects[0].rle"]), tmp_path, world)
    assert not (tmp_path / "run" / "eval.json").exists()
    done = check_all(Case("fixed", ev("{w}/res/records.jsonl"), [], code=0, one_line=False), tmp_path, world)
    assert json.loads(done.stdout)["num_samples"] == 3


def test_resumed_run_with_other_dtype_or_masks_is_refused(tmp_path, world):
    check_all(
        Case("first", ev("{w}/res/records.jsonl", "--limit", "1"), [], code=0, one_line=False),
        tmp_path,
        world,
    )
    settings = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert settings["dtype"] == "fp32"
    check_all(Case("dtype", ev("{w}/res/records.jsonl", "--dtype", "bf16"), ["dtype"]), tmp_path, world)
