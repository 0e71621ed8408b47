"""RIC caption metrics: grounding removal, and one tiny end-to-end case through the Java tokenizer/METEOR."""

from __future__ import annotations

import shutil

import pytest

from padt.errors import PaDTError
from padt.evaluation.caption import caption_metrics, plain_caption, ptb_tokenize


def test_plain_caption_removes_grounding():
    assert plain_caption("A man (<|Obj_0|>) rides a motorcycle (<|Obj_1|>, <|Obj_2|>) on a path.") == (
        "A man rides a motorcycle on a path."
    )
    assert (
        plain_caption("Two dogs (<|VRT_3|><|VRT_9|><|VRT_4|>, <|VRT_80|><|VRT_81|>) play.")
        == "Two dogs play."
    )
    assert (
        plain_caption("A stray <|VRT_5|> token , and (a real aside).") == "A stray token, and (a real aside)."
    )


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("java") is None, reason="caption metrics need Java for the PTB tokenizer")
def test_caption_metrics_tiny_case():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    refs = {
        1: ["A man rides a red motorcycle on a dirt path.", "Someone riding a motorbike outside."],
        2: ["Two small dogs play with a ball in the park."],
    }
    # Our tokenizer call is the toolkit's, with its temporary file elsewhere: same tokens.
    toolkit = PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in refs.items()})
    assert ptb_tokenize(refs) == toolkit

    perfect = caption_metrics(refs, {1: refs[1][0], 2: refs[2][0]})
    assert perfect["bleu4"] == pytest.approx(1.0, abs=1e-6)
    assert perfect["rouge_l"] == pytest.approx(1.0)
    assert perfect["meteor"] > 0.95
    assert perfect["num_images"] == 2

    worse = caption_metrics(refs, {1: "A man on a motorcycle.", 2: "A cat sleeps."}, meteor=False)
    assert "meteor" not in worse
    for name in ("bleu4", "rouge_l", "cider"):
        assert worse[name] < perfect[name]

    with pytest.raises(PaDTError, match="1 image\\(s\\) without a prediction"):
        caption_metrics(refs, {1: "x"}, meteor=False)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("java") is None, reason="caption metrics need Java for the PTB tokenizer")
def test_score_cli_ric(tmp_path, capsys):
    import json

    from padt.cli import main
    from padt.data.records import ObjectRecord, Record, write_jsonl

    def rec(image_id, caption, boxes):
        return Record(
            id=image_id,
            image=f"{image_id}.jpg",
            task="ric",
            answer_template=caption,
            conversations=[{"from": "human", "value": "Please describe this image."}],
            objects=[ObjectRecord(bbox=b, rle={"size": [10, 20], "counts": "X6"}) for b in boxes],
        )

    man, bike, dog = [0.0, 0.0, 0.5, 1.0], [0.5, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.5]
    records = [
        rec(1, "A man (<|Obj_0|>) rides a bike (<|Obj_1|>).", [man, bike]),
        rec(1, "A person (<|Obj_0|>) on a bicycle.", [man]),  # same man: one GT object, not two
        rec(2, "A dog (<|Obj_0|>) sleeps.", [dog]),
    ]
    write_jsonl(records, tmp_path / "gt.jsonl")
    preds = [
        {
            "id": 1,
            "caption": "A man (<|VRT_1|><|VRT_2|>) rides a bike.",
            "objects": [{"bbox": [0, 0, 10, 10]}],
        },
        {
            "index": 2,
            "caption": "A dog (<|VRT_0|>) sleeps.",
            "objects": [{"bbox": [0, 0, 20, 5]}, {"bbox": [0, 5, 20, 10]}],
        },
    ]
    (tmp_path / "pred.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
    argv = [
        "score",
        "--task",
        "ric",
        "--gt",
        str(tmp_path / "gt.jsonl"),
        "--pred",
        str(tmp_path / "pred.jsonl"),
    ]
    assert main([*argv, "--no-meteor"]) == 0
    m = json.loads(capsys.readouterr().out)
    # Matched: the man and the dog; predicted 3; GT objects man, bike, dog.
    assert (m["num_matched"], m["num_pred"], m["num_gt"]) == (2, 3, 3)
    assert m["greedy_precision"] == pytest.approx(2 / 3) and m["greedy_recall"] == pytest.approx(2 / 3)
    assert m["num_images"] == 2 and m["bleu4"] > 0.5 and "meteor" not in m
