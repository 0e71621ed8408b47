"""``padt data prepare`` on tiny files in the original formats: records written once, read back by the schema."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from padt.cli import main
from padt.data.prepare import prepare
from padt.data.readers import read_coco_ovd, read_refcoco, read_user_jsonl
from padt.data.records import read_records, write_jsonl
from padt.errors import PaDTError
from test_readers import _coco_ovd_file, _refcoco_files


def _dicts(records):
    return [r.to_dict() for r in records]


def test_prepare_refcoco_writes_the_readers_records(tmp_path, capsys):
    instances, refs = _refcoco_files(tmp_path)
    out = tmp_path / "out" / "refcoco_val.jsonl"
    argv = [
        "data",
        "prepare",
        "--source",
        "refcoco",
        "--instances",
        str(instances),
        "--refs",
        str(refs),
        "--split",
        "val",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(argv) == 0
    written = read_records(out)
    assert _dicts(written) == _dicts(read_refcoco(instances, refs, "val"))
    assert all(r.objects[0].patches for r in written)
    text = capsys.readouterr().out
    assert f"{out}: {len(written)} record(s) ({len(written)} rec)" in text
    assert "note:" in text and "covers no merged patch" in text  # the tiny cup
    # The refer toolkit's layout: ROOT/DATASET/instances.json and refs(unc).p.
    (tmp_path / "refcoco").mkdir()
    shutil.copy(instances, tmp_path / "refcoco" / "instances.json")
    shutil.copy(refs, tmp_path / "refcoco" / "refs(unc).p")
    summary = prepare(
        "refcoco", tmp_path / "again.jsonl", root=tmp_path, dataset="refcoco", split="val", progress=False
    )
    assert _dicts(read_records(summary.path)) == _dicts(written)
    assert summary.images == 1 and summary.objects == len(written)


def test_prepare_coco_ovd_val_and_seeded_train(tmp_path, capsys):
    instances = _coco_ovd_file(tmp_path)
    out = tmp_path / "ovd.jsonl"
    assert (
        main(
            [
                "data",
                "prepare",
                "--source",
                "coco",
                "--instances",
                str(instances),
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    assert _dicts(read_records(out)) == _dicts(read_coco_ovd(instances, train=False))
    assert "larger than 1288 px" in capsys.readouterr().out
    assert (
        main(
            [
                "data",
                "prepare",
                "--source",
                "coco",
                "--instances",
                str(instances),
                "--out",
                str(out),
                "--train",
                "--seed",
                "3",
                "--drop-rate",
                "1.0",
                "--no-progress",
            ]
        )
        == 0
    )
    assert _dicts(read_records(out)) == _dicts(read_coco_ovd(instances, train=True, seed=3, drop_rate=1.0))


def test_prepare_user_jsonl_and_padt_files(tmp_path, capsys):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (84, 56)).save(tmp_path / "img" / "a.png")
    line = {"image": "a.png", "task": "rec", "objects": [{"phrase": "the box", "box": [10, 10, 60, 40]}]}
    source = tmp_path / "user.jsonl"
    source.write_text(json.dumps(line) + "\n")
    out = tmp_path / "user_records.jsonl"
    assert (
        main(
            [
                "data",
                "prepare",
                "--source",
                "jsonl",
                "--input",
                str(source),
                "--image-root",
                str(tmp_path / "img"),
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    records = read_records(out)
    assert _dicts(records) == _dicts(read_user_jsonl(source, image_root=tmp_path / "img"))
    assert records[0].objects[0].patches
    # A PaDT file (a JSON list here) is checked and rewritten as JSONL.
    listed = tmp_path / "padt.json"
    listed.write_text(json.dumps(_dicts(records)))
    assert (
        main(
            [
                "data",
                "prepare",
                "--source",
                "padt",
                "--input",
                str(listed),
                "--out",
                str(tmp_path / "padt.jsonl"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert _dicts(read_records(tmp_path / "padt.jsonl")) == _dicts(records)
    assert "1 record(s) (1 rec), 1 object(s), 1 image(s)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--source", "coco"], "--source coco needs --instances"),
        (["--source", "refcoco", "--instances", "i.json", "--refs", "r.p"], "needs --split"),
        (["--source", "refcoco", "--root", "."], "--root and --dataset go together"),
        (
            ["--source", "coco", "--instances", "i.json", "--refs", "r.p"],
            "--refs do(es) not apply to --source coco",
        ),
        (["--source", "jsonl", "--input", "missing.jsonl"], "missing.jsonl: no such file"),
        (["--source", "padt"], "--source padt needs --input"),
    ],
)
def test_prepare_errors_are_one_line(tmp_path, capsys, args, message):
    assert main(["data", "prepare", *args, "--out", str(tmp_path / "x.jsonl"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("padt: error: ") and message in err[0]
    assert not (tmp_path / "x.jsonl").exists()


def test_prepare_leaves_no_partial_file(tmp_path):
    bad = tmp_path / "bad.jsonl"
    write_jsonl([{"id": 1}], bad)  # not a record: the reader fails before anything is written
    with pytest.raises(PaDTError, match="missing field"):
        prepare("padt", tmp_path / "out.jsonl", input=bad, progress=False)
    assert list(tmp_path.iterdir()) == [bad]
