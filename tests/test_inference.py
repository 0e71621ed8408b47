"""End to end on a tiny random model: generate -> parse -> decode -> pixels, the Python API and `padt predict`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from padt.answers import NO_MASK_BOXES
from padt.cli import main
from padt.errors import PaDTError
from padt.generation import VRTStateRecorder
from padt.inference import PaDT, predict
from padt.postprocess import rle_to_mask
from padt.processing import PaDTProcessor
from padt.tiny import tiny_model, tiny_processor


@pytest.fixture(scope="module")
def pipe():
    model = tiny_model(seed=0)
    return PaDT(model, PaDTProcessor(tiny_processor(max_pixels=224 * 224), model.vocab_size))


def image(seed: int, w: int, h: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def test_batched_generation_equals_one_by_one(pipe):
    images = [image(0, 112, 140), [image(1, 168, 84), image(2, 112, 112)], None]
    prompts = ["the red circle", "compare the two images", "hello there"]
    batched = pipe(images, prompts, max_new_tokens=10)
    for b in range(3):
        [single] = pipe([images[b]], [prompts[b]], max_new_tokens=10)
        assert single.text == batched[b].text
        assert len(single.objects) == len(batched[b].objects)
        for a, s in zip(batched[b].objects, single.objects):
            assert a.vrt_ids == s.vrt_ids and a.label == s.label
            np.testing.assert_allclose(a.box_xyxy, s.box_xyxy, atol=1e-3)
            assert abs(a.score - s.score) < 1e-4
            assert (a.mask == s.mask).mean() > 0.999


def test_objects_pair_with_the_states_that_emitted_them(pipe):
    """Each decoded object is the decoder applied to the recorded states of its VRT steps."""
    model, processor = pipe.model, pipe.processor
    img = image(3, 140, 112)
    [pred] = pipe([img], ["find the object"], max_new_tokens=8)
    assert pred.objects, "this seed emits VRTs"
    batch = processor(["find the object"], [img])
    recorder = VRTStateRecorder(model.vocab_size, batch.inputs["input_ids"].shape[1])
    with torch.no_grad():
        seq = model.generate(**batch.inputs, max_new_tokens=8, do_sample=False, vrt_recorder=recorder)
    new = seq[0, batch.inputs["input_ids"].shape[1] :]
    steps = (new >= model.vocab_size).nonzero().flatten().tolist()
    # A teacher-forced pass over the generated sequence gives the same states at the step before each VRT.
    with torch.no_grad():
        out = model(
            input_ids=seq,
            attention_mask=torch.ones_like(seq),
            pixel_values=batch.inputs["pixel_values"],
            image_grid_thw=batch.inputs["image_grid_thw"],
        )
    prompt = batch.inputs["input_ids"].shape[1]
    expected = out.last_hidden_state[0, [prompt - 1 + s for s in steps]]
    torch.testing.assert_close(recorder.features(0, steps), expected, atol=1e-4, rtol=1e-4)


def test_boxes_and_masks_are_on_the_original_image(pipe):
    img = image(4, 150, 90)
    [pred] = pipe([img], ["locate it"], max_new_tokens=6)
    for obj in pred.objects:
        x0, y0, x1, y1 = obj.box_xyxy
        assert 0 <= x0 <= x1 <= 150 and 0 <= y0 <= y1 <= 90
        assert obj.mask.shape == (90, 150)
        assert (rle_to_mask(obj.mask_rle) == obj.mask).all()
        assert 0 < obj.score < 1


def test_predict_function_single_sample(pipe):
    preds = predict(pipe.model, pipe.processor, image(5, 112, 112), "the thing", max_new_tokens=4)
    assert len(preds) == 1 and isinstance(preds[0].text, str)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, pipe):
    folder = tmp_path_factory.mktemp("ckpt")
    pipe.model.save_pretrained(folder)
    pipe.processor.save_pretrained(folder)
    img = folder / "scene.png"
    image(6, 140, 112).save(img)
    return folder, img


def test_cli_predict_writes_json_and_overlay(checkpoint, tmp_path, capsys):
    folder, img = checkpoint
    out_json, out_png = tmp_path / "out.json", tmp_path / "out.png"
    code = main(
        [
            "predict",
            "--model",
            str(folder),
            "--image",
            str(img),
            "--prompt",
            "the red square",
            "--task",
            "rec",
            "--json",
            str(out_json),
            "--overlay",
            str(out_png),
            "--show-vrt",
            "--max-new-tokens",
            "8",
        ]
    )
    assert code == 0
    data = json.loads(out_json.read_text())
    assert set(data) >= {"text", "objects"}
    for obj in data["objects"]:
        assert set(obj) >= {"label", "vrt_ids", "box_xyxy", "score", "mask_rle"}
    # The CLI is a thin layer: the same numbers as the Python API on the same checkpoint.
    api = PaDT.from_pretrained(folder, device="cpu")
    [pred] = api([str(img)], ["the red square"], task="rec", max_new_tokens=8)
    assert data["text"] == pred.text
    assert [o["box_xyxy"] for o in data["objects"]] == [list(o.box_xyxy) for o in pred.objects]
    overlay = Image.open(out_png)
    assert overlay.size == (140, 112)
    if data["objects"]:
        assert (
            np.abs(
                np.asarray(overlay, dtype=int) - np.asarray(Image.open(img).convert("RGB"), dtype=int)
            ).sum()
            > 0
        )


def test_cli_predict_bad_input(checkpoint, tmp_path, capsys):
    folder, img = checkpoint
    assert (
        main(["predict", "--model", str(folder), "--image", str(tmp_path / "nope.png"), "--prompt", "x"]) == 2
    )
    assert "image file not found" in capsys.readouterr().err
    assert main(["predict", "--model", str(tmp_path / "none"), "--image", str(img), "--prompt", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["predict", "--model", str(folder), "--image", str(img), "--prompt", " "]) == 2
    assert "prompt is empty" in capsys.readouterr().err
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    assert main(["predict", "--model", str(folder), "--image", str(broken), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("padt: error: cannot read image") and "broken.png" in err


def test_public_api_exports():
    import padt

    assert padt.PaDTForConditionalGeneration.__name__ == "PaDTForConditionalGeneration"
    assert callable(padt.predict) and padt.PaDTProcessor.__name__ == "PaDTProcessor"


def test_vrt_repeat_penalty_lowers_the_current_run_only():
    from padt.generation import VRTRepeatPenaltyLogitsProcessor

    vocab = 10  # ids >= 10 are VRTs; scores have 10 text + 6 VRT columns
    ids = torch.tensor(
        [
            [1, 12, 13, 12],  # run 12 13 12: 12 and 13 are penalised
            [12, 14, 3, 15],  # run 15 only (14 and 12 belong to an earlier object)
            [12, 13, 14, 3],
        ]
    )  # no open run
    scores = torch.arange(48, dtype=torch.float32).reshape(3, 16)
    out = VRTRepeatPenaltyLogitsProcessor(vocab, 2.5)(ids, scores.clone())
    expected = scores.clone()
    expected[0, [12, 13]] -= 2.5
    expected[1, 15] -= 2.5
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    banned = VRTRepeatPenaltyLogitsProcessor(vocab, float("inf"))(ids, scores.clone())
    assert [set(torch.isinf(row).nonzero().flatten().tolist()) for row in banned] == [{12, 13}, {15}, set()]
    with pytest.raises(PaDTError, match="vrt_repeat_penalty must be >= 0"):
        VRTRepeatPenaltyLogitsProcessor(vocab, -1.0)


def test_vrt_reuse_penalty_lowers_the_earlier_runs_of_the_answer():
    from padt.generation import VRTRepeatPenaltyLogitsProcessor

    vocab = 10  # ids >= 10 are VRTs; scores have 10 text + 6 VRT columns
    ids = torch.tensor(
        [
            [11, 2, 1, 12, 13, 12],  # 11 is in the prompt (first 2 positions): never lowered; run 12 13 12
            [2, 1, 12, 14, 3, 15],  # earlier run 12 14, current run 15
            [2, 1, 12, 13, 3, 13],  # 13 is in both: lowered once, by the larger penalty
        ]
    )
    scores = torch.arange(48, dtype=torch.float32).reshape(3, 16)
    out = VRTRepeatPenaltyLogitsProcessor(vocab, 2.5, 4.0, prompt_length=2)(ids, scores.clone())
    expected = scores.clone()
    expected[0, [12, 13]] -= 2.5
    expected[1, [12, 14]] -= 4.0
    expected[1, 15] -= 2.5
    expected[2, [12, 13]] -= 4.0
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    # Reuse alone leaves the current run alone; inf forbids the earlier runs' patches.
    alone = VRTRepeatPenaltyLogitsProcessor(vocab, 0.0, float("inf"), prompt_length=2)(ids, scores.clone())
    assert [set(torch.isinf(row).nonzero().flatten().tolist()) for row in alone] == [
        set(),
        {12, 14},
        {12, 13},
    ]
    with pytest.raises(PaDTError, match="vrt_reuse_penalty must be >= 0"):
        VRTRepeatPenaltyLogitsProcessor(vocab, 0.0, -1.0)


def test_vrt_repeat_penalty_in_generation(pipe):
    img = image(5, 140, 112)

    def runs(**kwargs):
        [pred] = pipe([img], ["find the object"], max_new_tokens=12, **kwargs)
        return [obj.vrt_ids for obj in pred.objects]

    plain = runs()
    assert any(len(set(r)) < len(r) for r in plain), "this seed repeats a VRT when decoding greedily"
    assert runs(vrt_repeat_penalty=0.0) == plain
    distinct = runs(vrt_repeat_penalty=float("inf"))
    assert distinct and all(len(set(r)) == len(r) for r in distinct)
    # The checkpoint's generation_config sets the default.
    pipe.model.generation_config.vrt_repeat_penalty = float("inf")
    try:
        assert runs() == distinct
    finally:
        del pipe.model.generation_config.vrt_repeat_penalty


def test_vrt_reuse_penalty_in_generation(pipe):
    img = image(5, 140, 112)

    def runs(**kwargs):
        [pred] = pipe(
            [img], ["find the object"], max_new_tokens=40, vrt_repeat_penalty=float("inf"), **kwargs
        )
        return [obj.vrt_ids for obj in pred.objects]

    plain = runs()
    assert len(plain) > 1 and set(plain[0]) & set(plain[1]), "this seed's second object reuses patches"
    assert runs(vrt_reuse_penalty=0.0) == plain
    fresh = runs(vrt_reuse_penalty=float("inf"))
    used = [i for run in fresh for i in run]
    assert len(fresh) > 1 and len(used) == len(set(used))  # no patch in two objects
    assert fresh[0] == plain[0]  # the first object has nothing earlier to avoid
    pipe.model.generation_config.vrt_reuse_penalty = float("inf")
    try:
        assert runs() == fresh
    finally:
        del pipe.model.generation_config.vrt_reuse_penalty


def test_mask_box_weight_in_prediction(pipe):
    """Weight 1 gives each object's mask's tight box, 0 the box head's; masks are decoded for the boxes even when
    they are not asked for; the checkpoint's generation_config sets the default."""

    img = image(5, 140, 112)

    def objects(**kwargs):
        [pred] = pipe(
            [img], ["find the object"], max_new_tokens=24, vrt_repeat_penalty=float("inf"), **kwargs
        )
        assert pred.objects, "this seed's answer holds objects"
        return pred.objects

    head = objects(mask_box_weight=0.0)
    tight = objects(mask_box_weight=1.0)
    half = objects(mask_box_weight=0.5, decode_masks=False)
    assert [o.vrt_ids for o in tight] == [o.vrt_ids for o in head]  # the answer itself is unchanged
    found = [o for o in head if o.mask.any()]
    assert found, "this seed's masks are not empty"
    for h, t, m in zip(head, tight, half, strict=True):
        assert np.array_equal(h.mask, t.mask) and m.mask is None
        if h.mask.any():
            rows, cols = np.nonzero(h.mask)
            assert t.box_xyxy == pytest.approx((cols.min(), rows.min(), cols.max() + 1, rows.max() + 1))
            assert m.box_xyxy == pytest.approx(tuple((a + b) / 2 for a, b in zip(h.box_xyxy, t.box_xyxy)))
            assert t.box_xyxy != pytest.approx(h.box_xyxy)
    pipe.model.generation_config.mask_box_weight = 1.0
    try:
        assert [o.box_xyxy for o in objects()] == [o.box_xyxy for o in tight]
        with pytest.raises(PaDTError, match="mask_box_weight must be a number from 0"):
            objects(mask_box_weight=2.0)
    finally:
        del pipe.model.generation_config.mask_box_weight
    assert [o.box_xyxy for o in objects()] == [o.box_xyxy for o in head]
    # A decoder without a mask head: the box head's boxes, and a warning rather than silence.
    pipe.model.vl_decoder.config.use_mask_loss = False
    try:
        [pred] = pipe(
            [img],
            ["find the object"],
            max_new_tokens=24,
            vrt_repeat_penalty=float("inf"),
            mask_box_weight=1.0,
        )
    finally:
        pipe.model.vl_decoder.config.use_mask_loss = True
    assert [o.box_xyxy for o in pred.objects] == [o.box_xyxy for o in head]
    assert NO_MASK_BOXES in pred.warnings and all(o.mask is None for o in pred.objects)


def test_ovd_list_ends_follow_the_answer_template_for_any_tokenizer():
    """Where an OVD answer can end after an object group: ')' then '.' or ' in' for a tokenizer that keeps ')'
    apart; straight after the VRT for one that merges ')' with what follows."""
    from padt.generation import ovd_list_ends

    processor = PaDTProcessor(tiny_processor(), 2048)
    close, stop, inside = (processor.encode(t) for t in (")", ".", " in"))
    assert processor.encode("), ")[:1] == close and len(close) == len(stop) == len(inside) == 1
    assert ovd_list_ends(processor.encode) == [(tuple(close), stop[0]), (tuple(close), inside[0])]

    merged = {").": [1], "),": [2], ")": [3], " in": [4], " this": [5], " image.": [6]}

    def encode(text):  # a toy tokenizer with ")." and ")," as single tokens
        out = []
        while text:
            piece = next((p for p in sorted(merged, key=len, reverse=True) if text.startswith(p)), text[0])
            out += merged[piece] if piece in merged else [100 + ord(piece)]
            text = text[len(piece) :]
        return out

    assert ovd_list_ends(encode) == [((), 1), ((), 3)]  # ')." and ')' (of ') in this image.') end it


def test_ovd_end_penalty_lowers_the_ends_after_a_group_of_ovd_answers_only():
    from padt.generation import OVDEndPenaltyLogitsProcessor, ovd_prompt_signature

    processor = PaDTProcessor(tiny_processor(), 2048)
    vocab = 2048
    ovd = processor.encode('Please carefully check the image and detect the following objects: ["star"].')
    rec = processor.encode(
        'Please carefully check the image and detect the object this sentence describes: "x".'
    )
    width = max(len(ovd), len(rec))
    pad = processor.pad_token_id
    prompts = torch.tensor([[pad] * (width - len(p)) + p for p in (ovd, rec, ovd)])
    signature = processor.tokenizer.decode(ovd_prompt_signature(processor.encode))
    assert signature == "Please carefully check the image and detect the following objects:"
    [close], [stop], [inside], [comma] = (processor.encode(t) for t in (")", ".", " in", ","))
    vrt = vocab + 3
    ids = torch.cat(
        [prompts, torch.tensor([[vrt, close], [vrt, close], [comma, close]])], dim=1
    )  # rows: OVD after a group, REC after a VRT run, OVD after ')' that closes no VRT run
    scores = torch.zeros(3, vocab + 10)
    out = OVDEndPenaltyLogitsProcessor(processor.encode, vocab, 4.0, prompts)(ids, scores.clone())
    expected = scores.clone()
    expected[0, [stop, inside]] = -4.0
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    off = OVDEndPenaltyLogitsProcessor(processor.encode, vocab, 0.0, prompts)(ids, scores.clone())
    assert torch.equal(off, scores)
    with pytest.raises(PaDTError, match="ovd_end_penalty must be a number >= 0"):
        OVDEndPenaltyLogitsProcessor(processor.encode, vocab, -1.0, prompts)


def _answer_ids(encode, template: str, vocab: int, run: int = 2) -> list[int]:
    """An answer template's ids as a model writes them: its objects as runs of ``run`` VRTs (``vocab + 4``,
    ``vocab + 5``, ... in order), the text between runs tokenized on its own."""
    from padt.prompts import template_texts

    ids: list[int] = []
    for k, text in enumerate(template_texts(template)):
        ids += [vocab + 3 + k] * run if k else []
        ids += encode(text)
    return ids


def _merging_encode(text: str) -> list[int]:
    """A toy tokenizer that merges ')' with what follows (')."', '),') and spells everything else by character."""
    merged = {").": 1, "),": 2}
    out = []
    while text:
        piece = text[:2] if text[:2] in merged else text[0]
        out.append(merged[piece] if piece in merged else 100 + ord(piece))
        text = text[len(piece) :]
    return out


def test_template_texts_cut_an_answer_template_at_its_objects():
    from padt.prompts import ovd_answer_template, rec_answer_template, template_texts

    assert template_texts(ovd_answer_template(["cat", "dog"], [2, 1])) == [
        'In this image, there are 2 "cat" (',
        ", ",
        '), 1 "dog" (',
        ").",
    ]
    assert template_texts(rec_answer_template("the cat")) == ['The "the cat" refers to ', " in this image."]
    assert template_texts("No objects.") == ["No objects."]


@pytest.mark.parametrize("tokenizer", ["tiny", "merging"])
def test_ovd_grammar_follows_every_answer_the_template_writes_and_nothing_else(tokenizer):
    """Each of the reference's answer forms (none, one object, one class of three, three classes) is followed
    token by token: every next token is allowed, and the end allows nothing more. A name outside the prompt's
    list, a count's runs cut short and a run added to a full group are refused."""
    from padt.generation import OVDAnswerGrammar
    from padt.prompts import ovd_answer_template

    vocab = 2048
    encode = PaDTProcessor(tiny_processor(), vocab).encode if tokenizer == "tiny" else _merging_encode
    names = ["person", "dog", "cat"]
    grammar = OVDAnswerGrammar(names, encode, max_count=5)
    for counts in ([0, 0, 0], [0, 1, 0], [3, 0, 0], [2, 1, 3], [1, 1, 1]):
        ids = _answer_ids(encode, ovd_answer_template(names, counts), vocab)
        for i, token in enumerate(ids):
            text, vrt = grammar.allowed(ids[:i], vocab, 10_000)
            assert vrt if token >= vocab else token in text, (counts, i, ids[:i])
        assert grammar.allowed(ids, vocab, 10_000) == (set(), False)  # only the end of the answer is left
    assert grammar.allowed(encode('There is 1 "horse" ('), vocab, 10_000) is None
    lead = encode('There is 1 "')
    assert encode("horse")[0] not in grammar.allowed(lead, vocab, 10_000)[0]
    # a count of 2 needs a second run: after the first only ", " may follow; after the second only the end
    two = _answer_ids(encode, ovd_answer_template(names, [0, 2, 0]), vocab)
    first_run_end = two.index(vocab + 4) + 2
    text, vrt = grammar.allowed(two[:first_run_end], vocab, 10_000)
    assert text == {encode(", ")[0]} and vrt
    second_run_end = len(two) - len(encode(") in this image."))
    text, vrt = grammar.allowed(two[:second_run_end], vocab, 10_000)
    assert text == {encode(") in this image.")[0]}
    # in the several-classes form a group's end may start another group or end the answer
    several = _answer_ids(encode, ovd_answer_template(names, [1, 1, 0]), vocab)
    after_first = several.index(vocab + 4) + 2
    text, _ = grammar.allowed(several[:after_first], vocab, 10_000)
    assert {encode('), 1 "dog" (')[0], encode(").")[0]} == text


def test_ovd_grammar_ends_the_answer_within_its_token_budget():
    """With little room left no new object begins: a full group may only end the answer, a group still short of its
    count ends too, and a run stops taking VRTs when only the end still fits."""
    from padt.generation import RUN_BUDGET, OVDAnswerGrammar
    from padt.prompts import ovd_answer_template

    vocab = 2048
    encode = PaDTProcessor(tiny_processor(), vocab).encode
    grammar = OVDAnswerGrammar(["person", "dog"], encode, max_count=3)
    several = _answer_ids(encode, ovd_answer_template(["person", "dog"], [1, 2]), vocab)
    after_first = several.index(vocab + 4) + 2
    end, group = encode(").")[0], encode('), 1 "dog" (')[0]
    roomy = grammar.end_length + 1 + grammar.group_length + RUN_BUDGET + 1
    assert grammar.allowed(several[:after_first], vocab, roomy)[0] == {end, group}
    assert grammar.allowed(several[:after_first], vocab, roomy - 1)[0] == {end}
    # the walk judges each past choice by the room there was then: the group begun with room goes on with less
    assert grammar.allowed(several[: after_first + 3], vocab, roomy - 3) is not None
    # a group of 2 whose second run no longer fits ends after its first; a run takes no VRT once only the end fits
    two = _answer_ids(encode, ovd_answer_template(["person", "dog"], [0, 2]), vocab)
    first = two.index(vocab + 4) + 2
    more, close = encode(", ")[0], encode(") in this image.")[0]
    assert grammar.allowed(two[:first], vocab, 10_000) == ({more}, True)
    assert grammar.allowed(two[:first], vocab, grammar.end_length + 2) == ({close}, True)
    assert grammar.allowed(two[:first], vocab, grammar.end_length + 1) == ({close}, False)


def test_ovd_grammar_processor_masks_ovd_rows_only_and_ends_with_eos():
    from padt.generation import OVDGrammarLogitsProcessor

    vocab = 2048
    processor = PaDTProcessor(tiny_processor(), vocab)
    ovd = processor.encode(
        'Please carefully check the image and detect the following objects: ["dog", "cat"].'
    )
    rec = processor.encode(
        'Please carefully check the image and detect the object this sentence describes: "x".'
    )
    width, pad, eos = max(len(ovd), len(rec)), processor.pad_token_id, processor.eos_token_id
    prompts = torch.tensor([[pad] * (width - len(p)) + p for p in (ovd, rec, ovd, ovd)])
    grammar = OVDGrammarLogitsProcessor(processor.encode, processor.decode, vocab, prompts, eos, 64)
    scores = torch.randn(4, vocab + 10)

    def step(completions):  # the rows' answers so far, all as long
        return grammar(torch.cat([prompts, torch.tensor(completions)], dim=1), scores.clone())

    started = processor.encode('There is 1 "')
    out = step([started] * 4)  # the REC row (1) writes an OVD answer's words too: it is not held to them
    allowed = torch.isfinite(out[0]).nonzero().flatten().tolist()
    assert sorted(allowed) == sorted({processor.encode(n + '"')[0] for n in ("dog", "cat")})
    assert torch.equal(out[0, allowed], scores[0, allowed])
    assert torch.equal(out[1], scores[1])
    done = [*processor.encode('There is 1 "cat" ('), vocab + 1, *processor.encode(") in this image.")]
    out = step([done, done, done, [*done[:-1], eos]])
    assert torch.isfinite(out[0]).nonzero().flatten().tolist() == [eos]  # the answer is complete: only EOS
    assert torch.equal(out[1], scores[1]) and torch.equal(out[3], scores[3])  # REC, and a row that has ended


def test_ovd_grammar_makes_a_random_model_write_answers_that_parse(pipe):
    """A random model writes noise; held to the grammar its OVD answers parse without a warning, name only the
    prompt's classes and end with EOS within a tight budget. A REC prompt in the same batch is unchanged."""
    img = image(6, 140, 112)
    names = ["dog", "cat"]
    batch = dict(task=["ovd", "ovd", "rec"], max_new_tokens=40, vrt_repeat_penalty=float("inf"))
    texts = [", ".join(names), "cat", "the dog"]
    plain = pipe([img] * 3, texts, ovd_grammar=False, **batch)
    held = pipe([img] * 3, texts, ovd_grammar=True, **batch)
    assert any(p.warnings or not p.finished for p in plain[:2])  # without it, not an answer
    for prediction, listed in zip(held[:2], (names, ["cat"]), strict=True):
        assert prediction.finished and not prediction.warnings, prediction.text
        assert prediction.objects and {o.label for o in prediction.objects} <= set(listed), prediction.text
    assert held[2].text == plain[2].text
    with pytest.raises(PaDTError, match="ovd_grammar must be true or false"):
        pipe([img], ["cat"], task="ovd", ovd_grammar=1)


def test_ovd_grammar_holds_only_prompts_that_end_with_the_ovd_prompt():
    """A free prompt that asks for more after an OVD prompt is left alone; the rendered OVD prompt is held. The
    OVD end penalty and duplicate marking take their rows by the same rule (:func:`ovd_rows`)."""
    from padt.generation import OVDEndPenaltyLogitsProcessor, OVDGrammarLogitsProcessor, ovd_rows
    from padt.prompts import ovd_prompt, ovd_prompt_names

    vocab = 2048
    processor = PaDTProcessor(tiny_processor(), vocab)
    ovd = ovd_prompt(["dog", "cat"])
    end = processor.prompt_end
    assert end and processor.render_prompt(ovd, 0).endswith(ovd + end)
    assert ovd_prompt_names(ovd + end, followed_by=end) == ["dog", "cat"]
    assert ovd_prompt_names(ovd + " Then describe it." + end, followed_by=end) is None
    assert ovd_prompt_names(ovd + " Then describe it.") == ["dog", "cat"]  # without followed_by: anywhere
    rows = [processor.encode(processor.render_prompt(t, 0)) for t in (ovd, ovd + " Then describe it.")]
    width, pad = max(map(len, rows)), processor.pad_token_id
    prompts = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    held = OVDGrammarLogitsProcessor(
        processor.encode, processor.decode, vocab, prompts, processor.eos_token_id, 64, prompt_end=end
    )
    assert list(held.grammars) == [0]
    assert ovd_rows(prompts, processor.encode).tolist() == [True, True]  # the prompt's words, anywhere
    rows = ovd_rows(prompts, processor.encode, decode=processor.decode, prompt_end=end)
    assert rows.tolist() == [True, False]
    penalty = OVDEndPenaltyLogitsProcessor(
        processor.encode, vocab, 4.0, prompts, decode=processor.decode, prompt_end=end
    )
    assert penalty.rows.tolist() == [True, False]
