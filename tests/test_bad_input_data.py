"""``padt data`` on bad input: records are checked where they enter (masks decoded and sized, boxes ordered),
every change a reader makes is reported, and numeric options are range-checked."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from badinput import Case, check_all, jsonl, make_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"))


def prep(source: str, *more: str) -> list[str]:
    return ["data", "prepare", "--source", source, "--out", "{tmp}/out.jsonl", "--no-progress", *more]


def syn(*more: str) -> list[str]:
    return ["data", "synthetic", "--task", "rec", "--out", "{tmp}/scenes", "--no-progress", *more]


LINE = {"image": "{img}", "task": "rec", "objects": [{"phrase": "the box", "box": [1, 1, 30, 30]}]}


def user_line(**change) -> str:
    return jsonl({**LINE, **change})


CASES = [
    Case(
        "padt-garbage-rle", prep("padt", "--input", "{w}/res/garbage_rle.jsonl"), ["line 1", "objects[0].rle"]
    ),
    Case("padt-rle-size-wrong", prep("padt", "--input", "{w}/res/wrong_size_rle.jsonl"), ["size [5, 5]"]),
    Case("padt-torn-line", prep("padt", "--input", "{w}/res/torn.jsonl"), ["line 2", "invalid JSON"]),
    Case("padt-missing", prep("padt", "--input", "{w}/nope.jsonl"), ["nope.jsonl"]),
    Case(
        "out-under-a-file",
        [
            "data",
            "prepare",
            "--source",
            "padt",
            "--input",
            "{w}/res/records.jsonl",
            "--out",
            "{w}/afile/x.jsonl",
        ],
        ["cannot create the folder of --out"],
    ),
    Case(
        "jsonl-garbage-mask",
        prep("jsonl", "--input", "{tmp}/in.jsonl", "--image-root", "{w}"),
        ["in.jsonl: line 1", "objects[0].mask"],
        files={
            "in.jsonl": jsonl(
                {
                    **LINE,
                    "image": "ok.png",
                    "objects": [
                        {
                            "phrase": "x",
                            "box": [1, 1, 30, 30],
                            "mask": {"size": [48, 64], "counts": "!!!garbage###"},
                        }
                    ],
                }
            )
        },
    ),
    Case(
        "jsonl-box-inverted",
        prep("jsonl", "--input", "{tmp}/in.jsonl", "--image-root", "{w}"),
        ["in.jsonl: line 1", "x2 <= x1"],
        files={
            "in.jsonl": jsonl(
                {**LINE, "image": "ok.png", "objects": [{"phrase": "x", "box": [30, 30, 1, 1]}]}
            )
        },
    ),
    Case(
        "jsonl-box-outside",
        prep("jsonl", "--input", "{tmp}/in.jsonl", "--image-root", "{w}"),
        ["lies outside the 64x48 image"],
        files={
            "in.jsonl": jsonl(
                {**LINE, "image": "ok.png", "objects": [{"phrase": "x", "box": [70, 1, 90, 9]}]}
            )
        },
    ),
    Case(
        "jsonl-image-unreadable",
        prep("jsonl", "--input", "{tmp}/in.jsonl", "--image-root", "{w}"),
        ["in.jsonl: line 1", "cannot read the size of", "bad.png"],
        files={"in.jsonl": jsonl({**LINE, "image": "bad.png"})},
    ),
    Case(
        "jsonl-task-unknown",
        prep("jsonl", "--input", "{tmp}/in.jsonl", "--image-root", "{w}"),
        ["field 'task' is 'vqa'"],
        files={"in.jsonl": jsonl({**LINE, "image": "ok.png", "task": "vqa"})},
    ),
    Case("coco-without-instances", prep("coco"), ["--source coco needs --instances"]),
    Case("coco-not-coco", prep("coco", "--instances", "{w}/afile"), ["not a COCO annotation file"]),
    Case(
        "coco-garbage-rle",
        prep("coco", "--instances", "{tmp}/inst.json", "--no-patches"),
        ["annotation 5", "not a character of the COCO compressed format"],
        files={
            "inst.json": json.dumps(
                {
                    "images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}],
                    "categories": [{"id": 1, "name": "dog"}],
                    "annotations": [
                        {
                            "id": 5,
                            "image_id": 1,
                            "category_id": 1,
                            "bbox": [1, 1, 9, 9],
                            "area": 81,
                            "iscrowd": 1,
                            "segmentation": {"size": [48, 64], "counts": "!!!garbage###"},
                        }
                    ],
                }
            )
        },
    ),
    Case("refcoco-without-files", prep("refcoco"), ["refcoco"]),
    *(
        Case(f"synthetic-{name}", syn(*args), [fragment], one_line=one_line)
        for name, args, fragment, one_line in [
            ("n-0", ["--n", "0"], "argument --n: must be at least 1, got 0", False),
            ("seed-negative", ["--n", "2", "--seed", "-1"], "argument --seed", False),
            (
                "min-size-too-small",
                ["--n", "2", "--min-size", "10"],
                "84 <= min_size <= max_size <= 1024",
                True,
            ),
            ("sizes-swapped", ["--n", "2", "--min-size", "300", "--max-size", "200"], "min_size=300", True),
        ]
    ),
    Case(
        "synthetic-out-is-a-file",
        ["data", "synthetic", "--task", "rec", "--n", "2", "--out", "{w}/afile"],
        ["exists and is not a folder"],
    ),
]


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_data_refuses(case, tmp_path, world):
    check_all(case, tmp_path, world)


def test_prepare_reports_what_it_changes(tmp_path, world):
    """Clipping a box to its image and skipping annotations of unknown images are reported, with counts."""
    inst = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}],
        "categories": [{"id": 1, "name": "dog"}],
        "annotations": [
            {"id": 5, "image_id": 1, "category_id": 1, "bbox": [40, 20, 40, 40], "area": 81, "iscrowd": 0},
            {"id": 6, "image_id": 2, "category_id": 1, "bbox": [1, 1, 9, 9], "area": 81, "iscrowd": 0},
        ],
    }
    case = Case(
        "report",
        prep("coco", "--instances", "{tmp}/inst.json", "--no-patches"),
        [],
        code=0,
        one_line=False,
        files={"inst.json": json.dumps(inst)},
    )
    result = check_all(case, tmp_path, world)
    assert (
        "note: " in result.stdout and "clipped 1 box(es)" in result.stdout and "annotation 5" in result.stdout
    )
    assert "skipped 1 annotation(s) whose image_id is not among the file's images" in result.stdout
    (record,) = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert record["objects"][0]["bbox"] == [40 / 64, 20 / 48, 1.0, 1.0]


def test_prepare_reads_boxes_in_the_displayed_frame(tmp_path, world):
    """A phone JPEG stored landscape with EXIF orientation 6 is shown portrait; boxes given on the shown image
    are normalised by the shown size."""
    image = Image.new("RGB", (80, 40))
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(tmp_path / "phone.jpg", exif=exif)
    line = {"image": "phone.jpg", "task": "rec", "objects": [{"phrase": "x", "box": [0, 0, 20, 40]}]}
    case = Case(
        "exif",
        prep("jsonl", "--input", "{tmp}/in.jsonl", "--no-patches"),
        [],
        code=0,
        one_line=False,
        files={"in.jsonl": jsonl(line)},
    )
    check_all(case, tmp_path, world)
    (record,) = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert record["objects"][0]["bbox"] == [0.0, 0.0, 0.5, 0.5]  # 20/40 wide, 40/80 high
