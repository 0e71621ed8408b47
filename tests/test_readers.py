"""Dataset readers on tiny files written in the original formats (COCO json, RefCOCO refs pickle, user JSONL)."""

from __future__ import annotations

import importlib.util
import json
import os
import pickle

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from padt.data import readers
from padt.data.readers import (
    load_plain_pickle,
    ovd_class_order,
    read_coco_ovd,
    read_padt,
    read_refcoco,
    read_user_jsonl,
    segmentation_to_rle,
)
from padt.data.records import write_jsonl
from padt.errors import PaDTError
from padt.prompts import OVD_ANSWER_NONE, ovd_prompt, rec_answer_template, rec_prompt

HAS_PATCHES = importlib.util.find_spec("padt.data.patches") is not None


def _area(rle):
    return int(mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode()}))


@pytest.fixture
def fake_patches(monkeypatch):
    """A stand-in patch rule, so these tests check the readers alone: one patch if the mask (or, without a
    mask, the box) has at least 30 pixels, else none."""

    def fake(rle, box_xywh, height, width, strict=False):
        area = _area(rle) if rle is not None else box_xywh[2] * box_xywh[3]
        return [0] if area >= 30 else []

    monkeypatch.setattr(readers, "object_patches", fake)


# ----------------------------------------------------------------------------------------------- masks


def test_segmentation_to_rle_polygons_rle_and_multipart():
    # Two overlapping 10x10 squares: OR-ed, so the area is the union (175), not the sum (200).
    squares = [[0, 0, 10, 0, 10, 10, 0, 10], [5, 5, 15, 5, 15, 15, 5, 15]]
    rle = segmentation_to_rle(squares, 20, 20)
    assert rle["size"] == [20, 20] and isinstance(rle["counts"], str)
    single = [_area(segmentation_to_rle([sq], 20, 20)) for sq in squares]
    assert _area(rle) < sum(single)
    assert _area(rle) == int(mask_utils.area(mask_utils.merge(mask_utils.frPyObjects(squares, 20, 20))))
    # A flat polygon is one part; a 4-number part is not read as a box.
    assert _area(segmentation_to_rle(squares[0], 20, 20)) == single[0]
    assert _area(segmentation_to_rle([[1, 1, 5, 5]], 20, 20)) == 0
    # Uncompressed RLE (COCO crowd annotations) is compressed; compressed RLE is kept as is.
    crowd = {"size": [4, 5], "counts": [3, 4, 13]}
    compressed = segmentation_to_rle(crowd, 4, 5)
    assert _area(compressed) == 4
    assert segmentation_to_rle(compressed, 4, 5) == compressed
    with pytest.raises(PaDTError, match="does not match the image"):
        segmentation_to_rle(crowd, 5, 5)


# ----------------------------------------------------------------------------------------------- RefCOCO


def _refcoco_files(tmp_path):
    instances = {
        "images": [
            {"id": 581857, "file_name": "COCO_train2014_000000581857.jpg", "width": 64, "height": 48},
            {"id": 42, "file_name": "COCO_train2014_000000000042.jpg", "width": 32, "height": 32},
        ],
        "annotations": [
            # Two-part polygon.
            {
                "id": 1,
                "image_id": 581857,
                "category_id": 1,
                "iscrowd": 0,
                "area": 300.0,
                "bbox": [2, 2, 30, 20],
                "segmentation": [[2, 2, 20, 2, 20, 12, 2, 12], [22, 10, 32, 10, 32, 22, 22, 22]],
            },
            # Crowd annotation with uncompressed RLE.
            {
                "id": 2,
                "image_id": 581857,
                "category_id": 1,
                "iscrowd": 1,
                "area": 96.0,
                "bbox": [40, 0, 2, 48],
                "segmentation": {"size": [48, 64], "counts": [40 * 48, 96, 48 * 64 - 40 * 48 - 96]},
            },
            # Too small to cover a patch (for the fake rule).
            {
                "id": 3,
                "image_id": 42,
                "category_id": 2,
                "iscrowd": 0,
                "area": 4.0,
                "bbox": [0, 0, 2, 2],
                "segmentation": [[0, 0, 2, 0, 2, 2, 0, 2]],
            },
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "cup"}],
    }

    def ref(ref_id, ann_id, image_id, split, sents):
        return {
            "sent_ids": [ref_id * 10 + i for i in range(len(sents))],
            "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",
            "ann_id": ann_id,
            "ref_id": ref_id,
            "image_id": image_id,
            "split": split,
            "category_id": 1,
            "sentences": [
                {"tokens": s.split(), "raw": s.upper(), "sent_id": ref_id * 10 + i, "sent": s}
                for i, s in enumerate(sents)
            ],
        }

    refs = [
        ref(0, 1, 581857, "train", ["man on the left"]),
        ref(1, 1, 581857, "val", ["left guy", "person in red"]),
        ref(2, 2, 581857, "val", ["crowd on right"]),
        ref(3, 3, 42, "val", ["tiny cup"]),
        ref(4, 2, 581857, "testA", ["right people"]),
    ]
    (tmp_path / "instances.json").write_text(json.dumps(instances))
    with open(tmp_path / "refs(unc).p", "wb") as f:
        pickle.dump(refs, f, protocol=2)  # the released files come from Python 2
    return tmp_path / "instances.json", tmp_path / "refs(unc).p"


def test_read_refcoco_one_record_per_sentence(tmp_path, fake_patches):
    instances, refs = _refcoco_files(tmp_path)
    records = read_refcoco(instances, refs, "val")
    # "tiny cup" covers no patch: dropped.
    assert [r.objects[0].label for r in records] == ["left guy", "person in red", "crowd on right"]
    rec = records[0]
    assert rec.id == 581857 and rec.image == "COCO_train2014_000000581857.jpg" and rec.task == "rec"
    assert rec.prompt == rec_prompt("left guy") and rec.answer_template == rec_answer_template("left guy")
    assert rec.extra == {"ref_id": 1, "ann_id": 1, "sent_id": 10}
    obj = rec.objects[0]
    assert obj.bbox == pytest.approx([2 / 64, 2 / 48, 32 / 64, 22 / 48])
    assert obj.area == 300.0 and obj.iscrowd == 0
    assert _area(obj.rle) == _area(segmentation_to_rle([[2, 2, 20, 2, 20, 12, 2, 12]], 48, 64)) + _area(
        segmentation_to_rle([[22, 10, 32, 10, 32, 22, 22, 22]], 48, 64)
    )
    crowd = records[2].objects[0]
    assert crowd.iscrowd == 1 and _area(crowd.rle) == 96
    assert len(read_refcoco(instances, refs, "testA")) == 1
    assert len(read_refcoco(instances, refs, "val", with_patches=False)) == 4
    with pytest.raises(PaDTError, match=r"no split 'test'; this file has testA, train, val"):
        read_refcoco(instances, refs, "test")


@pytest.mark.skipif(not HAS_PATCHES, reason="padt.data.patches (foreground_patches) is not in this tree yet")
def test_read_refcoco_real_patches(tmp_path):
    instances, refs = _refcoco_files(tmp_path)
    records = read_refcoco(instances, refs, "val")
    assert all(r.objects[0].patches for r in records)
    assert "tiny cup" not in [r.objects[0].label for r in records]


class _Exploit:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_refs_pickle_with_code_is_refused(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([{"split": "val", "payload": _Exploit(target)}], protocol=2))
    with pytest.raises(PaDTError, match=r"refused to load this pickle \(.*system"):
        load_plain_pickle(path)
    assert not target.exists()
    # A class instance is refused as well, whatever the class.
    path.write_bytes(pickle.dumps([np.float64(1.0)]))
    with pytest.raises(PaDTError, match="refused"):
        load_plain_pickle(path)
    # Plain data loads, sets included.
    path.write_bytes(pickle.dumps([{"a": (1, 2.5, "x", b"y", {3})}], protocol=2))
    assert load_plain_pickle(path) == [{"a": (1, 2.5, "x", b"y", {3})}]


# ----------------------------------------------------------------------------------------------- COCO OVD


def _coco_ovd_file(tmp_path):
    images = [
        {"id": 1, "file_name": "1.jpg", "width": 60, "height": 40},
        {"id": 2, "file_name": "2.jpg", "width": 60, "height": 40},  # no annotations: a negative
        {"id": 3, "file_name": "3.jpg", "width": 1300, "height": 40},  # longer side > 1288: skipped
        {"id": 4, "file_name": "4.jpg", "width": 60, "height": 40},
    ]
    categories = [{"id": i, "name": f"c{i}"} for i in (7, 1, 5, 3)]  # ids out of order in the file
    box = [[0, 0, 20, 0, 20, 20, 0, 20]]
    anns = [
        {
            "id": 10,
            "image_id": 1,
            "category_id": 5,
            "bbox": [0, 0, 20, 20],
            "area": 400,
            "iscrowd": 0,
            "segmentation": box,
        },
        {
            "id": 11,
            "image_id": 1,
            "category_id": 1,
            "bbox": [30, 10, 20, 20],
            "area": 400,
            "iscrowd": 1,
            "segmentation": {"size": [40, 60], "counts": [0, 400, 2000]},
        },  # uncompressed RLE
        {
            "id": 12,
            "image_id": 1,
            "category_id": 5,
            "bbox": [1, 1, 2, 2],
            "area": 4,
            "iscrowd": 0,
            "segmentation": [[1, 1, 3, 1, 3, 3, 1, 3]],
        },  # too small: dropped, c5 keeps its other instance
        *(
            {
                "id": 20 + k,
                "image_id": 4,
                "category_id": 3,
                "bbox": [k, k, 10, 10],
                "area": 100,
                "iscrowd": 0,
                "segmentation": [],
            }
            for k in range(3)
        ),  # box-only, 3 instances of c3
        {
            "id": 30,
            "image_id": 3,
            "category_id": 1,
            "bbox": [0, 0, 10, 10],
            "area": 100,
            "iscrowd": 0,
            "segmentation": box,
        },
    ]
    path = tmp_path / "instances_val2017.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    return path


def test_read_coco_ovd_val(tmp_path, fake_patches):
    records = read_coco_ovd(_coco_ovd_file(tmp_path), train=False, max_instances_per_class=2)
    assert [r.id for r in records] == [1, 2, 4]
    r1, r2, r4 = records
    # Val: all classes in id order.
    assert r1.prompt == ovd_prompt(["c1", "c3", "c5", "c7"])
    assert r1.answer_template == 'In this image, there are 1 "c1" (<|Obj_0|>), 1 "c5" (<|Obj_1|>).'
    assert [o.label for o in r1.objects] == ["c1", "c5"]
    assert r1.objects[0].iscrowd == 1  # crowd kept
    assert r2.objects == [] and r2.answer_template == OVD_ANSWER_NONE
    # Image 4 has 3 instances of c3 > cap 2: c3 leaves prompt and answer.
    assert r4.prompt == ovd_prompt(["c1", "c5", "c7"]) and r4.answer_template == OVD_ANSWER_NONE
    # Box-only annotations have no mask but a box.
    r4_all = read_coco_ovd(tmp_path / "instances_val2017.json", train=False)[2]
    assert r4_all.answer_template == 'There are 3 "c3" (<|Obj_0|>, <|Obj_1|>, <|Obj_2|>) in this image.'
    assert all(o.rle is None for o in r4_all.objects)


def test_read_coco_ovd_train_is_seeded(tmp_path, fake_patches):
    path = _coco_ovd_file(tmp_path)
    a = read_coco_ovd(path, train=True, seed=3)
    b = read_coco_ovd(path, train=True, seed=3)
    assert [r.to_dict() for r in a] == [r.to_dict() for r in b]
    prompts = {read_coco_ovd(path, train=True, seed=s)[0].prompt for s in range(12)}
    assert len(prompts) > 1  # the shuffle depends on the seed
    for rec in a:  # answer classes follow prompt order
        names = json.loads(rec.prompt[rec.prompt.index("[") : rec.prompt.rindex("]") + 1])
        labels = [o.label for o in rec.objects]
        assert labels == sorted(labels, key=names.index)


def test_ovd_class_order_rules():
    ids = list(range(10))
    counts = {2: 1, 7: 60}
    # Drop always: absent classes among the first 4 shuffled go; the 60-instance class goes anyway.
    order = ovd_class_order(ids, counts, train=True, rng=np.random.default_rng(0), drop_rate=1.0, droppable=4)
    perm = [int(c) for c in np.random.default_rng(0).permutation(10)]
    assert order == [c for i, c in enumerate(perm) if (i >= 4 or c == 2) and c != 7]
    # Never drop: every class but the crowded one, shuffled.
    order = ovd_class_order(ids, counts, train=True, rng=np.random.default_rng(0), drop_rate=0.0, droppable=4)
    assert order == [c for c in perm if c != 7]
    kept_tail = ovd_class_order(
        ids, counts, train=True, rng=np.random.default_rng(0), drop_rate=1.0, droppable=0
    )
    assert sorted(kept_tail) == [c for c in ids if c != 7]
    assert ovd_class_order(ids, counts, train=False) == [c for c in ids if c != 7]
    assert ovd_class_order(ids, {}, train=False, max_classes=3) == [0, 1, 2]


# ----------------------------------------------------------------------------------------------- user JSONL


def test_read_user_jsonl(tmp_path, fake_patches):
    Image.new("RGB", (80, 60)).save(tmp_path / "a.png")
    lines = [
        {
            "image": "a.png",
            "task": "rec",
            "objects": [
                {"phrase": "the red box", "box": [10, 10, 40, 30]},
                {
                    "phrase": "the blue box",
                    "box": [50, 20, 70, 50],
                    "mask": {"size": [60, 80], "counts": [50 * 60 + 20, 30, 30, 30, 80 * 60 - 50 * 60 - 110]},
                },
            ],
        },
        {
            "image": "b.jpg",
            "width": 100,
            "height": 50,
            "task": "ovd",
            "classes": ["dog", "cat", "bird"],
            "id": "x1",
            "objects": [
                {"label": "cat", "box": [0, 0, 20, 20], "mask": [[0, 0, 20, 0, 20, 20, 0, 20]]},
                {"label": "dog", "box": [30, 0, 60, 20]},
                {"label": "dog", "box": [70, 0, 99, 20], "iscrowd": 1},
            ],
        },
        {"image": "b.jpg", "width": 100, "height": 50, "task": "ovd", "classes": ["dog"], "objects": []},
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    records = read_user_jsonl(path)
    assert [(r.id, r.task) for r in records] == [(1, "rec"), (1, "rec"), ("x1", "ovd"), (3, "ovd")]
    red, blue, ovd, neg = records
    assert red.prompt == rec_prompt("the red box") and red.objects[0].rle is None
    assert red.objects[0].bbox == pytest.approx([10 / 80, 10 / 60, 40 / 80, 30 / 60])
    assert blue.objects[0].area == 60 and blue.objects[0].rle["size"] == [60, 80]
    assert ovd.prompt == ovd_prompt(["dog", "cat", "bird"])
    assert (
        ovd.answer_template == 'In this image, there are 2 "dog" (<|Obj_0|>, <|Obj_1|>), 1 "cat" (<|Obj_2|>).'
    )
    assert [o.label for o in ovd.objects] == ["dog", "dog", "cat"] and ovd.objects[1].iscrowd == 1
    assert neg.answer_template == OVD_ANSWER_NONE
    # Records round-trip through the schema file.
    write_jsonl(records, tmp_path / "records.jsonl")
    assert [r.to_dict() for r in read_padt(tmp_path / "records.jsonl")] == [r.to_dict() for r in records]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"image": "a.png", "task": "vqa", "objects": []}, r"line 1: field 'task' is 'vqa'"),
        (
            {"image": "missing.png", "task": "rec", "objects": []},
            r"line 1: cannot read the size of .*missing.png",
        ),
        (
            {"image": "a.png", "task": "rec", "objects": [{"phrase": "x", "box": [30, 10, 10, 40]}]},
            r"line 1: objects\[0\]: 'box' .* x2 <= x1",
        ),
        (
            {"image": "a.png", "task": "rec", "objects": [{"box": [0, 0, 10, 10]}]},
            r"objects\[0\]: needs a non-empty 'phrase'",
        ),
        (
            {
                "image": "a.png",
                "task": "ovd",
                "classes": ["dog"],
                "objects": [{"label": "cat", "box": [0, 0, 5, 5]}],
            },
            r"labels \['cat'\] are not in 'classes'",
        ),
        ({"image": "a.png", "task": "ovd", "objects": []}, r"needs objects or a non-empty 'classes'"),
    ],
)
def test_user_jsonl_errors(tmp_path, line, message):
    Image.new("RGB", (80, 60)).save(tmp_path / "a.png")
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(PaDTError, match=message):
        read_user_jsonl(path, with_patches=False)


def test_readers_report_clipped_boxes_and_orphan_annotations(tmp_path, fake_patches, caplog):
    """A box past the image border is clipped and reported; an annotation of no listed image is counted, not
    silently lost."""
    coco = {
        "images": [{"id": 1, "file_name": "1.jpg", "width": 60, "height": 40}],
        "categories": [{"id": 1, "name": "c1"}],
        "annotations": [
            {"id": 5, "image_id": 1, "category_id": 1, "bbox": [40, 20, 30, 30], "area": 400, "iscrowd": 0},
            {"id": 6, "image_id": 99, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
            {"id": 7, "image_id": 98, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(coco))
    with caplog.at_level("WARNING"):
        (record,) = read_coco_ovd(path, train=False)
    assert record.objects[0].bbox == [40 / 60, 20 / 40, 1.0, 1.0]
    assert "clipped 1 box(es)" in caplog.text and "annotation 5" in caplog.text
    assert "skipped 2 annotation(s) whose image_id" in caplog.text

    caplog.clear()
    line = {
        "image": "a.jpg",
        "width": 80,
        "height": 60,
        "task": "rec",
        "objects": [
            {"phrase": "inside", "box": [0, 0, 20, 20]},
            {"phrase": "over the edge", "box": [70, 50, 90, 70]},
        ],
    }
    (tmp_path / "u.jsonl").write_text(json.dumps(line) + "\n")
    with caplog.at_level("WARNING"):
        records = read_user_jsonl(tmp_path / "u.jsonl")
    assert records[1].objects[0].bbox == [70 / 80, 50 / 60, 1.0, 1.0]
    assert "clipped 1 box(es)" in caplog.text and "objects[1]" in caplog.text
    assert "objects[0]" not in caplog.text
