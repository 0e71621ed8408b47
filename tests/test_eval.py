"""``padt eval`` on a tiny random model: every task end to end, resume, sharding, index files, CLI errors."""

from __future__ import annotations

import json
import shutil

import pytest

from padt.cli import main
from padt.data.records import read_records, write_jsonl
from padt.errors import PaDTError
from padt.evaluation.driver import (
    PREDICTIONS_FILE,
    evaluate,
    evaluated_records,
    merge_predictions,
    ovd_official_from_records,
    predict_shard,
    read_prediction_lines,
    read_vlmr1_index,
    score_predictions,
    weights_fingerprint,
)
from padt.evaluation.metrics import paper_key
from padt.inference import PaDT
from padt.processing import PaDTProcessor
from padt.tiny import tiny_model, tiny_processor

SPEC = "synthetic:n=4,seed=1,max_size=160"
RUN = {"batch_size": 2, "max_new_tokens": 10, "progress": False}
EXPECTED = {
    "rec": ("acc@0.5", "acc@0.75", "acc@0.5_best"),
    "res": ("miou", "ciou"),
    "ovd": ("map", "map50", "map75", "mar100"),
    "ric": ("cider", "bleu4", "meteor", "rouge_l", "greedy_precision", "greedy_recall"),
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pipe():
    model = tiny_model(seed=0)
    return PaDT(model, PaDTProcessor(tiny_processor(max_pixels=112 * 112), model.vocab_size))


class Counting:
    """A pipeline that counts the queries it answers and can crash after ``fail_after`` batches."""

    def __init__(self, pipe, fail_after=None):
        self.pipe, self.model, self.fail_after = pipe, pipe.model, fail_after
        self.batches = self.queries = 0

    def __call__(self, images, prompts, **kwargs):
        if self.fail_after is not None and self.batches >= self.fail_after:
            raise RuntimeError("injected crash")
        self.batches += 1
        self.queries += len(prompts)
        return self.pipe(images, prompts, **kwargs)


@pytest.fixture(scope="module")
def reference(pipe, tmp_path_factory):
    """An uninterrupted REC run on 6 scenes."""
    out = tmp_path_factory.mktemp("reference")
    evaluate(pipe, "synthetic:n=6,seed=2,max_size=160", "rec", out, **RUN)
    return out


def _lines(out):
    return (out / PREDICTIONS_FILE).read_text().splitlines()


@pytest.mark.slow
@pytest.mark.parametrize("task", ["rec", "res", "ovd", "ric"])
def test_each_task_end_to_end_matches_padt_score(pipe, tmp_path, capsys, task):
    metrics = evaluate(pipe, SPEC, task, tmp_path, meteor=task == "ric", **RUN)
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    for key in EXPECTED[task]:
        assert 0.0 <= metrics[key] <= 1.0, key
    preds = read_prediction_lines(tmp_path / PREDICTIONS_FILE)
    assert [p["index"] for p in preds] == list(range(4))
    assert all({"objects", "width", "height", "text"} <= set(p) for p in preds)
    if task == "res":
        assert all("mask" in o for p in preds for o in p["objects"])
    # The same numbers as 'padt score' on the written files.
    gt = tmp_path / "data" / "records.jsonl"
    argv = ["score", "--task", task, "--gt", str(gt), "--pred", str(tmp_path / PREDICTIONS_FILE)]
    if task == "ovd":
        official = tmp_path / "official.json"
        official.write_text(json.dumps(ovd_official_from_records(read_records(gt), preds)))
        argv += ["--coco", str(official)]
    if task == "ric":
        argv.append("--no-meteor")  # METEOR's Java start-up is slow; checked above
    capsys.readouterr()
    assert main(argv) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored == {k: v for k, v in metrics.items() if k != "meteor"}


@pytest.mark.slow
def test_resume_after_a_crash_redoes_only_the_rest(pipe, reference, tmp_path):
    spec = "synthetic:n=6,seed=2,max_size=160"
    crashing = Counting(pipe, fail_after=1)
    with pytest.raises(RuntimeError, match="injected crash"):
        evaluate(crashing, spec, "rec", tmp_path, model_name="in-memory model", **RUN)
    assert len(_lines(tmp_path)) == 2  # the first batch was flushed
    resumed = Counting(pipe)
    evaluate(resumed, spec, "rec", tmp_path, model_name="in-memory model", **RUN)
    assert resumed.queries == 4
    assert _lines(tmp_path) == _lines(reference)
    assert (tmp_path / "metrics.json").read_text() == (reference / "metrics.json").read_text()


def test_torn_last_line_is_redone(pipe, reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    path = out / PREDICTIONS_FILE
    path.write_bytes(path.read_bytes()[:-25])  # a crash in the middle of the last line
    assert len(read_prediction_lines(path)) == 5
    counting = Counting(pipe)
    evaluate(counting, "synthetic:n=6,seed=2,max_size=160", "rec", out, model_name="in-memory model", **RUN)
    assert counting.queries == 1
    assert _lines(out) == _lines(reference)


def test_other_settings_are_refused(pipe, reference):
    with pytest.raises(PaDTError, match=r"other settings \(data: .* use another --out or delete"):
        evaluate(pipe, "synthetic:n=7,seed=2,max_size=160", "rec", reference, **RUN)
    with pytest.raises(PaDTError, match="max_new_tokens: 10 -> 11"):
        evaluate(pipe, "synthetic:n=6,seed=2,max_size=160", "rec", reference, **{**RUN, "max_new_tokens": 11})
    # The same data spec written differently is the same data.
    counting = Counting(pipe)
    evaluate(
        counting,
        "synthetic:seed=2,max_size=160,n=6,task=rec",
        "rec",
        reference,
        model_name="in-memory model",
        **RUN,
    )
    assert counting.queries == 0


@pytest.mark.slow
def test_sharded_run_equals_single_process(pipe, reference, tmp_path):
    spec = "synthetic:n=6,seed=2,max_size=160"
    records = read_records(reference / "data" / "records.jsonl")
    root = reference / "data"
    for rank in (0, 1):
        predict_shard(
            pipe,
            records,
            "rec",
            tmp_path,
            image_root=root,
            batch_size=2,
            max_new_tokens=10,
            rank=rank,
            world_size=2,
            progress=False,
        )
    assert [p["index"] for p in read_prediction_lines(tmp_path / "predictions.rank1.jsonl")] == [1, 3, 5]
    counting = Counting(pipe)
    metrics = evaluate(counting, spec, "rec", tmp_path, model_name="in-memory model", **RUN)
    assert counting.queries == 0  # everything came from the rank files
    assert not list(tmp_path.glob("predictions.rank*"))
    single = [json.loads(x) for x in _lines(reference)]
    sharded = [json.loads(x) for x in _lines(tmp_path)]
    assert [p["index"] for p in sharded] == list(range(6))
    for a, b in zip(single, sharded, strict=True):
        assert a["text"] == b["text"] and len(a["objects"]) == len(b["objects"])
        for oa, ob in zip(a["objects"], b["objects"]):
            assert oa["bbox"] == pytest.approx(ob["bbox"], abs=0.05)
    assert metrics == json.loads((reference / "metrics.json").read_text())
    assert merge_predictions(tmp_path) == sharded


def test_vlmr1_index_file_rekeys_the_paper_protocol(reference, tmp_path):
    records = read_records(reference / "data" / "records.jsonl")[:3]
    sentences = [r.objects[0].label for r in records]

    def box(r):  # the ground truth in pixels (synthetic masks carry the image size)
        h, w = r.objects[0].rle["size"]
        x1, y1, x2, y2 = r.objects[0].bbox
        return [x1 * w, y1 * h, x2 * w, y2 * h]

    preds = [
        {"index": 0, "objects": [{"bbox": box(records[0]), "label": sentences[0]}]},  # right, echoed
        {"index": 1, "objects": [{"bbox": box(records[1]), "label": "something else"}]},  # not echoed
        {"index": 2, "objects": [{"bbox": box(records[2]), "label": sentences[2]}]},  # right, not indexed
    ]
    index = [
        {
            "image": f"coco/train2014/COCO_train2014_{records[0].id:012d}.jpg",
            "normal_caption": sentences[0],
            "solution": [0, 0, 1, 1],
        },
        {"image": f"COCO_train2014_{records[0].id:012d}.jpg", "normal_caption": sentences[0]},  # duplicate
        {"image": f"COCO_train2014_{records[1].id:012d}.jpg", "normal_caption": sentences[1]},
        {"image": "COCO_train2014_000000999999.jpg", "normal_caption": "no such sentence"},  # no ground truth
    ]
    path = tmp_path / "refcoco_val.json"
    path.write_text(json.dumps(index))
    assert read_vlmr1_index(path) == [
        paper_key(records[0].id, sentences[0]),
        paper_key(records[1].id, sentences[1]),
        "999999_no such sentence",
    ]
    metrics = score_predictions(records, preds, "rec", index_file=path)
    assert metrics["acc@0.5"] == pytest.approx(1 / 3)
    assert metrics["num_keys"] == 3 and metrics["num_missing"] == 2
    assert metrics["num_keys_without_ground_truth"] == 1
    # Without the index file every record is a key.
    assert score_predictions(records, preds, "rec", protocol="paper")["acc@0.5"] == pytest.approx(2 / 3)
    path.write_text(json.dumps([{"image": "x.jpg"}]))
    with pytest.raises(PaDTError, match=r"entry 0 needs 'image' .* and 'normal_caption'"):
        read_vlmr1_index(path)


@pytest.fixture(scope="module")
def checkpoint(pipe, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    pipe.model.save_pretrained(folder)
    pipe.processor.save_pretrained(folder)
    return folder


def test_weights_retrained_into_the_same_folder_are_another_model(pipe, checkpoint, tmp_path):
    """A resumed evaluation must not mix answers of old weights with new ones saved under the same path."""
    import torch

    folder = tmp_path / "model"
    shutil.copytree(checkpoint, folder)
    before = weights_fingerprint(folder)
    assert before == weights_fingerprint(checkpoint) and weights_fingerprint(tmp_path / "nothing") is None
    spec = "synthetic:n=2,seed=2,max_size=160"
    evaluate(str(folder), spec, "rec", tmp_path / "out", device="cpu", dtype="fp32", **RUN)
    model = tiny_model(seed=0)
    with torch.no_grad():
        next(model.vl_decoder.parameters()).add_(0.01)  # one tensor changes
    model.save_pretrained(folder)
    assert weights_fingerprint(folder) != before
    with pytest.raises(PaDTError, match=r"other settings \(weights: '[0-9a-f]{16}' -> '[0-9a-f]{16}'\)"):
        evaluate(str(folder), spec, "rec", tmp_path / "out", device="cpu", dtype="fp32", **RUN)


def test_weights_fingerprint_of_a_large_file_reads_samples(tmp_path, monkeypatch):
    """Above the whole-file limit (published checkpoints' shards are GBs) only the size, both ends and 64 spaced
    samples are read: a changed byte there is another model, a changed byte between samples is not seen."""
    import numpy as np

    import padt.evaluation.driver as driver

    monkeypatch.setattr(driver, "WHOLE_FILE_DIGEST_LIMIT", 1 << 20)
    size = 32 << 20  # samples of 64 KiB every ~504 KiB, 1 MiB at each end
    data = bytearray(np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes())
    shard = tmp_path / "model-00001-of-00002.safetensors"

    def fingerprint_with(offset: int | None = None, length: int = size) -> str | None:
        changed = bytearray(data[:length])
        if offset is not None:
            changed[offset] ^= 0xFF
        shard.write_bytes(changed)
        return weights_fingerprint(tmp_path)

    base = fingerprint_with()
    assert base == fingerprint_with() and len(base) == 16
    sampled = size * 10 // 65 + 100  # inside the 10th sample
    between = size * 10 // 65 + (1 << 16) + 1000  # just after it, before the 11th
    assert fingerprint_with(sampled) != base
    assert fingerprint_with(size - 1) != base and fingerprint_with(0) != base
    assert fingerprint_with(between) == base
    assert fingerprint_with(length=size - 1) != base  # a truncated shard
    monkeypatch.setattr(driver, "WHOLE_FILE_DIGEST_LIMIT", 256 << 20)
    assert fingerprint_with(between) != fingerprint_with()  # small enough: every byte counts


def test_cli_eval_on_a_records_file(checkpoint, reference, tmp_path, capsys, monkeypatch):
    data = tmp_path / "records.jsonl"
    write_jsonl(read_records(reference / "data" / "records.jsonl"), data)
    argv = [
        "eval",
        "--model",
        str(checkpoint),
        "--data",
        str(data),
        "--image-root",
        str(reference / "data"),
        "--task",
        "rec",
        "--out",
        str(tmp_path / "out"),
        "--batch-size",
        "3",
        "--max-new-tokens",
        "10",
        "--limit",
        "3",
        "--no-progress",
        "--dtype",
        "fp32",
        "--device",
        "cpu",
    ]
    assert main(argv) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["num_samples"] == 3 and set(EXPECTED["rec"]) <= set(metrics)
    settings = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert settings == {
        "model": str(checkpoint.resolve()),
        "data": str(data.resolve()),
        "task": "rec",
        "max_new_tokens": 10,
        "dtype": "fp32",  # auto on the CPU: recorded as resolved, so a bf16 rerun cannot mix into the file
        "masks": False,
        "weights": weights_fingerprint(checkpoint),
    }
    # A checkpoint's answers are the in-memory pipeline's.
    texts = [json.loads(x)["text"] for x in _lines(tmp_path / "out")]
    assert texts == [json.loads(x)["text"] for x in _lines(reference)[:3]]

    # --vrt-repeat-penalty reaches generation; both penalties are part of the settings.
    def repeats(out):
        return [
            len(set(o["vrt_ids"])) < len(o["vrt_ids"]) for x in _lines(out) for o in json.loads(x)["objects"]
        ]

    assert any(repeats(tmp_path / "out"))  # this tiny model repeats VRTs when decoding plainly
    out = str(tmp_path / "out")
    from padt.inference import PaDT

    calls, call = [], PaDT.__call__
    monkeypatch.setattr(PaDT, "__call__", lambda self, *a, **kw: calls.append(kw) or call(self, *a, **kw))
    assert (
        main(
            [str(tmp_path / "inf") if a == out else a for a in argv]
            + ["--vrt-repeat-penalty", "inf", "--vrt-reuse-penalty", "2.5"]
        )
        == 0
    )
    capsys.readouterr()
    written = json.loads((tmp_path / "inf" / "eval.json").read_text())
    assert written["vrt_repeat_penalty"] == float("inf") and written["vrt_reuse_penalty"] == 2.5
    assert calls and all(
        (c["vrt_repeat_penalty"], c["vrt_reuse_penalty"]) == (float("inf"), 2.5) for c in calls
    )  # both reach generation (one answer of REC holds one object, so the reuse penalty shows only here)
    assert repeats(tmp_path / "inf") and not any(repeats(tmp_path / "inf"))

    # --mask-box-weight reaches the boxes and the settings; so does the checkpoint's own generation_config, so a
    # changed one refuses to resume into answers decoded the other way.
    calls.clear()
    blend = [str(tmp_path / "blend") if a == out else a for a in argv]
    decoding = [
        "--mask-box-weight",
        "0.5",
        "--ovd-end-penalty",
        "2",
        "--ovd-duplicate-iou",
        "0.6",
        "--ovd-grammar",
    ]
    assert main([*blend, *decoding]) == 0
    capsys.readouterr()
    written = json.loads((tmp_path / "blend" / "eval.json").read_text())
    names = ("mask_box_weight", "ovd_end_penalty", "ovd_duplicate_iou", "ovd_grammar")
    assert tuple(written[k] for k in names) == (0.5, 2.0, 0.6, True)
    assert calls and all(tuple(c[k] for k in names) == (0.5, 2.0, 0.6, True) for c in calls)
    plain = [json.loads(x)["objects"][0]["bbox"] for x in _lines(tmp_path / "out")]
    blended = [json.loads(x)["objects"][0]["bbox"] for x in _lines(tmp_path / "blend")]
    assert blended != plain and len(blended) == len(plain)
    config = checkpoint / "generation_config.json"
    saved = config.read_text()
    try:
        config.write_text(json.dumps(json.loads(saved) | {"mask_box_weight": 0.5}))
        assert main(argv) == 2
        assert "other settings (mask_box_weight: None -> 0.5)" in capsys.readouterr().err
        assert main([*blend, *decoding[2:]]) == 0  # the same settings as given before
    finally:
        config.write_text(saved)


def _error(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("padt: error: ")
    return err[0]


def test_cli_eval_on_a_dataset_folder_and_the_records_it_read(checkpoint, reference, tmp_path, capsys):
    """--data takes the folder padt data synthetic writes; the breakdown scripts find its records again."""
    records_file = reference / "data" / "records.jsonl"
    out = tmp_path / "out"
    argv = ["eval", "--model", str(checkpoint), "--data", str(reference / "data"), "--task", "rec"]
    argv += ["--out", str(out), "--max-new-tokens", "10", "--limit", "2", "--no-progress", "--device", "cpu"]
    assert main(argv) == 0
    capsys.readouterr()
    assert json.loads((out / "eval.json").read_text())["data"] == str(records_file.resolve())
    assert [json.loads(x)["text"] for x in _lines(out)] == [
        json.loads(x)["text"] for x in _lines(reference)[:2]
    ]
    assert evaluated_records(out) == read_records(records_file)  # named by eval.json
    assert evaluated_records(reference) == read_records(records_file)  # synthetic: its data/ folder
    with pytest.raises(PaDTError, match=r"no readable eval\.json"):
        evaluated_records(tmp_path)


def test_cli_eval_bad_input(checkpoint, reference, tmp_path, capsys):
    base = ["eval", "--model", str(checkpoint), "--task", "rec", "--no-progress", "--max-new-tokens", "4"]
    assert "does not exist" in _error(
        [*base, "--data", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "a")], capsys
    )
    (tmp_path / "empty").mkdir()
    assert "is a folder without records.jsonl" in _error(
        [*base, "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "a")], capsys
    )
    assert "unknown item 'colour=red'" in _error(
        [*base, "--data", "synthetic:n=2,colour=red", "--out", str(tmp_path / "b")], capsys
    )
    assert "needs n=" in _error([*base, "--data", "synthetic:seed=2", "--out", str(tmp_path / "b")], capsys)
    assert "cannot be evaluated as rec" in _error(
        [*base, "--data", "synthetic:task=ovd,n=2", "--out", str(tmp_path / "b")], capsys
    )
    data = tmp_path / "records.jsonl"
    shutil.copy(reference / "data" / "records.jsonl", data)  # its images are elsewhere
    msg = _error([*base, "--data", str(data), "--out", str(tmp_path / "c")], capsys)
    assert "image file not found" in msg and "000000.png" in msg and "--image-root" in msg
    msg = _error([*base, "--data", str(data), "--task", "ovd", "--out", str(tmp_path / "d")], capsys)
    assert "not ovd" in msg
    assert "does not exist" in _error(
        [
            "eval",
            "--model",
            str(tmp_path / "nope"),
            "--task",
            "rec",
            "--data",
            SPEC,
            "--out",
            str(tmp_path / "e"),
        ],
        capsys,
    )


def test_ovd_scores_against_official_annotations_or_the_rebuilt_ground_truth(tmp_path):
    from padt.data.synthetic import generate_dataset
    from padt.evaluation.driver import score_predictions

    summary = generate_dataset("ovd", 4, 3, tmp_path, max_size=160, progress=False)
    records = read_records(summary.records_path)
    preds, annotations = [], []
    for i, r in enumerate(records):
        w, h = 160, 160
        objs = [
            {
                "label": o.label,
                "bbox": [o.bbox[0] * w, o.bbox[1] * h, o.bbox[2] * w, o.bbox[3] * h],
                "score": 0.9,
            }
            for o in r.objects
        ]
        preds.append({"index": i, "id": r.id, "objects": objs, "width": w, "height": h})
        for o in objs:
            x1, y1, x2, y2 = o["bbox"]
            annotations.append({"image_id": r.id, "label": o["label"], "bbox": [x1, y1, x2 - x1, y2 - y1]})
    official = ovd_official_from_records(records, preds)
    names = {c["name"]: c["id"] for c in official["categories"]}
    official["images"] = [{"id": r.id, "width": 160, "height": 160} for r in records]
    official["annotations"] = [
        {
            "id": k + 1,
            "image_id": a["image_id"],
            "category_id": names[a["label"]],
            "bbox": a["bbox"],
            "area": a["bbox"][2] * a["bbox"][3],
            "iscrowd": 0,
        }
        for k, a in enumerate(annotations)
    ]
    # An object the records do not hold (e.g. one covering no patch): missed against the official file only.
    extra = dict(official["annotations"][0], id=len(annotations) + 1, bbox=[0, 0, 5, 5], area=25)
    official["annotations"].append(extra)
    standard = score_predictions(records, preds, "ovd", coco=official)
    rebuilt = score_predictions(records, preds, "ovd", coco=official, rebuilt_gt=True)
    assert standard["ground_truth"] == "official" and rebuilt["ground_truth"] == "rebuilt"
    assert rebuilt["map"] == pytest.approx(1.0) and standard["mar100"] < 1.0
