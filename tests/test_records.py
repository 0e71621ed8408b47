"""The record schema: validation, reading .json/.jsonl, writing, and one-line errors for bad records."""

from __future__ import annotations

import json

import pytest

from padt.data.records import ObjectRecord, Record, read_records, write_jsonl
from padt.errors import PaDTError


def _record(**over):
    rec = {
        "id": 139,
        "image": "000000000139.jpg",
        "conversations": [{"from": "human", "value": "<image>Please describe this image."}],
        "answer_template": "A man (<|Obj_0|>) next to a dog (<|Obj_1|>).",
        "objects": [
            {
                "bbox": [0.1, 0.2, 0.5, 0.9],
                "rle": {"size": [4, 4], "counts": "52203"},  # a 2x2 square
                "patches": [0, 3],
                "label": "",
                "iscrowd": 0,
                "area": 12.0,
            },
            {"bbox": [0.0, 0.0, 1.0, 1.0], "rle": None, "patches": [1], "label": "", "iscrowd": 1, "area": 3},
        ],
        "task": "ric",
    }
    rec.update(over)
    return rec


def test_roundtrip_jsonl_and_json_list(tmp_path):
    records = [
        _record(),
        _record(id=7, task="refering", objects=[], answer_template="No objects here.", source="x"),
    ]
    path = tmp_path / "r.jsonl"
    assert write_jsonl([Record.from_dict(r) for r in records], path) == 2
    back = read_records(path)
    assert back[0].to_dict()["objects"][0]["bbox"] == [0.1, 0.2, 0.5, 0.9]
    assert back[0].prompt == "Please describe this image."
    assert back[1].task == "rec"  # the reference's "refering" (sic)
    assert back[1].extra == {"source": "x"}  # unknown keys survive
    list_path = tmp_path / "r.json"
    list_path.write_text(json.dumps(records))
    assert [r.to_dict() for r in read_records(list_path)] == [r.to_dict() for r in back]
    # Published .json files hold one record per line.
    lines_path = tmp_path / "published.json"
    lines_path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    assert len(read_records(lines_path)) == 2


def test_multi_image_and_negative_sample():
    rec = Record.from_dict(
        _record(image=["a.jpg", "b.jpg"], objects=[], answer_template="Nothing.", task="ovd")
    )
    assert rec.images == ["a.jpg", "b.jpg"] and rec.objects == []


def test_direct_construction_is_validated():
    obj = ObjectRecord(bbox=[0.1, 0.1, 0.2, 0.2], patches=[3, 5])
    Record(
        id=1,
        image="a.jpg",
        conversations=[{"from": "human", "value": "p"}],
        answer_template="<|Obj_0|>",
        objects=[obj],
        task="ovd",
    )
    with pytest.raises(PaDTError, match="answer_template has placeholders"):
        Record(
            id=1,
            image="a.jpg",
            conversations=[{"from": "human", "value": "p"}],
            answer_template="none",
            objects=[obj],
            task="ovd",
        )
    with pytest.raises(PaDTError, match="sorted and unique"):
        ObjectRecord(bbox=[0.1, 0.1, 0.2, 0.2], patches=[5, 3])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"objects": [{"bbox": [0.1, 0.2, 0.5]}]},
            r"line 2 \(id=139\): objects\[0\]\.bbox: expected 4 finite numbers",
        ),
        ({"objects": [{"bbox": [10, 20, 50, 90]}]}, r"objects\[0\]\.bbox: .* is not normalised"),
        ({"objects": [{"bbox": [0.5, 0.2, 0.1, 0.9]}]}, r"objects\[0\]\.bbox: .* x2 < x1"),
        (
            {"objects": [{"bbox": [0, 0, 1, 1], "rle": {"size": [4], "counts": ""}}]},
            r"objects\[0\]\.rle: RLE size must be \[height, width\]",
        ),
        (
            {"objects": [{"bbox": [0, 0, 1, 1], "rle": {"size": [120, 140], "counts": "!!!garbage###"}}]},
            r"objects\[0\]\.rle: RLE counts hold '!', which is not a character of the COCO compressed format",
        ),
        (
            {"objects": [{"bbox": [0, 0, 1, 1], "rle": {"size": [4, 4], "counts": "522"}}]},
            r"objects\[0\]\.rle: RLE runs cover 9 pixels but its size \[4, 4\] has 16",
        ),
        ({"objects": [{"bbox": [0, 0, 1, 1], "iscrowd": 2}]}, r"objects\[0\]\.iscrowd: expected 0 or 1"),
        ({"objects": [{"bbox": [0, 0, 1, 1], "patches": ["a"]}]}, r"objects\[0\]\.patches"),
        ({"task": "caption"}, r"field 'task' is 'caption'; use one of"),
        ({"image": ""}, r"field 'image' is empty"),
        ({"conversations": []}, r"conversations: expected a non-empty list"),
        ({"conversations": [{"from": "gpt", "value": "x"}]}, r"first turn must be from 'human'"),
        (
            {"answer_template": "A man (<|Obj_1|>) and (<|Obj_0|>)."},
            r"placeholders \[<\|Obj_1\|>, <\|Obj_0\|>\]",
        ),
        ({"answer_template": "A man (<|Obj_0|>)."}, r"has 2 object\(s\)"),
    ],
)
def test_malformed_record_names_file_line_and_field(tmp_path, change, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(_record()) + "\n" + json.dumps(_record(**change)) + "\n")
    with pytest.raises(PaDTError, match=message) as info:
        read_records(path)
    text = str(info.value)
    assert text.startswith(f"{path}: line 2") and "\n" not in text


def test_missing_field_and_bad_json(tmp_path):
    rec = _record()
    del rec["answer_template"]
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    with pytest.raises(PaDTError, match=r"line 1 \(id=139\): missing field 'answer_template'"):
        read_records(path)
    path.write_text(json.dumps(_record()) + "\n{oops\n")
    with pytest.raises(PaDTError, match=r"bad.jsonl: line 2: invalid JSON"):
        read_records(path)
    with pytest.raises(PaDTError, match="no such file"):
        read_records(tmp_path / "missing.jsonl")
    list_path = tmp_path / "bad.json"
    list_path.write_text(json.dumps([_record(), _record(id=5, task=3)]))
    with pytest.raises(PaDTError, match=r"bad.json: record 1 \(id=5\): field 'task'"):
        read_records(list_path)
