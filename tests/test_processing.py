"""PaDTProcessor: chat template, VRT strings, id conversions, parsing; parity with the reference fixtures."""

from __future__ import annotations

import json
import time

import pytest
import torch
from PIL import Image
from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessorPil

from padt import prompts
from padt.backbones import get_backbone
from padt.backbones.base import QWEN_SPECIAL_TOKENS
from padt.errors import PaDTError
from padt.processing import (
    PaDTProcessor,
    load_image,
    parse_completion,
)
from padt.tiny import TINY_VOCAB_SIZE, tiny_processor, tiny_tokenizer
from padt.vrt import vrt_token
from parity import fixture_dirs, load_processor

V = TINY_VOCAB_SIZE
QWEN2_5_VL_CHAT_TEMPLATE = get_backbone("qwen2_5_vl").chat_template


def vrt_run(indices) -> str:
    """VRT strings of a run of local indices, with no separator (the reference's ``pid2vrt``)."""
    return "".join(vrt_token(j) for j in indices)


DEFAULT_FIXTURE = fixture_dirs()[0]


@pytest.fixture(scope="module")
def proc() -> PaDTProcessor:
    return PaDTProcessor(tiny_processor(max_pixels=224 * 224), V)


def image(width: int, height: int, colour: tuple[int, int, int] = (200, 30, 30)) -> Image.Image:
    return Image.new("RGB", (width, height), colour)


# ---------------------------------------------------------------------------------------------- tiny factory
def test_tiny_tokenizer_is_fast_cached_and_qwen_shaped():
    tiny_tokenizer()
    start = time.perf_counter()
    tok = tiny_tokenizer()
    assert time.perf_counter() - start < 2.0
    base = len(tok) - len(QWEN_SPECIAL_TOKENS)
    assert tok.convert_tokens_to_ids(list(QWEN_SPECIAL_TOKENS)) == list(range(base, len(tok)))
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert len(tok) <= TINY_VOCAB_SIZE
    text = 'There are 2 "traffic light" (…) — naïve ünïcode too.'
    assert tok.decode(tok(text).input_ids) == text
    assert tiny_tokenizer() is not tok  # callers get their own wrapper


def test_tiny_processor_is_a_qwen_processor():
    processor = tiny_processor(min_pixels=28 * 28, max_pixels=60 * 60)
    assert isinstance(processor, Qwen2_5_VLProcessor)
    assert isinstance(processor.image_processor, Qwen2VLImageProcessorPil)
    out = processor.image_processor(images=[image(300, 300)], return_tensors="pt")
    assert out["image_grid_thw"].tolist() == [[1, 4, 4]]  # capped: at most 60x60 px -> 56x56


def test_chat_template_and_pretokenisation_are_the_reference_ones():
    saved = json.loads((DEFAULT_FIXTURE / "chat_template.json").read_text())["chat_template"]
    assert saved == QWEN2_5_VL_CHAT_TEMPLATE
    reference = json.loads((DEFAULT_FIXTURE / "tokenizer.json").read_text())
    ours = json.loads(tiny_tokenizer().backend_tokenizer.to_str())
    for part in ("normalizer", "pre_tokenizer", "decoder"):
        assert ours[part] == reference[part], part


# ---------------------------------------------------------------------------------------------- encoding
def test_vrt_text_round_trip(proc):
    text = 'The "red square" refers to <|VRT_3|><|VRT_0|><|VRT_17|> in this image.<|im_end|>'
    ids = proc.encode(text)
    vrts = [i for i in ids if i >= V]
    assert vrts == [V + 3, V + 0, V + 17]
    head = proc.tokenizer('The "red square" refers to ', add_special_tokens=False).input_ids
    assert ids[: len(head)] == head
    assert ids[-1] == proc.eos_token_id
    assert proc.decode(ids) == text
    assert [proc.decode([t]) for t in (V + 5, proc.eos_token_id)] == ["<|VRT_5|>", "<|im_end|>"]
    assert vrt_run([1, 22]) == "<|VRT_1|><|VRT_22|>"


def test_encoding_ignores_vrt_tokens_held_by_the_tokenizer():
    plain = PaDTProcessor(tiny_processor(), V)
    holding = tiny_processor()
    holding.tokenizer.add_tokens([f"<|VRT_{j}|>" for j in range(8)])  # at ids len(tok)+j, not V+j
    grown = PaDTProcessor(holding, V)
    text = "a <|VRT_2|><|VRT_7|> b"
    assert grown.encode(text) == plain.encode(text)
    assert grown.decode(grown.encode(text)) == text


def test_completions_are_right_padded_local_ids(proc):
    batch = proc(["x", "y"], [image(56, 56), image(112, 56)])  # 4 and 8 VRTs
    out = proc.encode_completions(["<|VRT_3|> a", "b <|VRT_7|><|VRT_1|>"], layout=batch.layout)
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids[0, 0].item() == V + 3 and ids[1, -2:].tolist() == [V + 1, proc.eos_token_id]
    assert mask[0].tolist()[-1] == 0 and ids[0, -1].item() == proc.pad_token_id
    assert (ids == proc.eos_token_id).sum().item() == 2  # appended once, not twice
    again = proc.encode_completions(["<|VRT_3|> a<|im_end|>"])["input_ids"]
    assert again[0].tolist() == ids[0, : again.shape[1]].tolist()
    with pytest.raises(PaDTError, match="out of range"):
        proc.encode_completions(["<|VRT_4|>", "x"], layout=batch.layout)


# ------------------------------------------------------------------------------------------- prompt batches
def test_multi_image_and_text_only_batch(proc):
    texts = ["compare <|VRT_1|> with <|VRT_6|>", "hello there", "<|VRT_3|> is what?"]
    images = [[image(56, 56), image(112, 56)], None, image(56, 112)]
    batch = proc(texts, images)
    ids = batch.inputs["input_ids"]
    assert batch.inputs["image_grid_thw"].tolist() == [[1, 4, 4], [1, 4, 8], [1, 8, 4]]
    assert batch.inputs["pixel_values"].shape[0] == 16 + 32 + 32
    image_tokens = (ids == proc.image_token_id).sum(-1).tolist()
    assert image_tokens == [4 + 8, 0, 8]
    assert batch.layout.sample_num_vrts.tolist() == [12, 0, 8]
    # Global ids: sample 0 starts at offset 0, sample 2 after sample 0's 12 VRTs.
    assert [i - V for i in ids[0].tolist() if i >= V and i != proc.image_token_id] == [1, 6]
    assert [i - V for i in ids[2].tolist() if i >= V] == [12 + 3]
    local = batch.layout.to_local(ids)
    decoded = proc.decode(local[0][batch.inputs["attention_mask"][0].bool()])
    assert decoded.endswith("compare <|VRT_1|> with <|VRT_6|><|im_end|>\n<|im_start|>assistant\n")
    assert decoded.count("<|image_pad|>") == 12
    assert torch.equal(batch.layout.to_global(local), ids)
    # The second image of sample 0 owns local VRTs 4..11.
    assert batch.layout.locate(0, 6) == (1, 2)
    # Left padding, text-only sample rendered without vision tokens.
    mask = batch.inputs["attention_mask"]
    assert mask[1, 0].item() == 0 and mask[:, -1].tolist() == [1, 1, 1]
    assert "<|vision_start|>" not in batch.prompts[1]
    assert batch.prompts[0].count("<|vision_start|><|image_pad|><|vision_end|>") == 2
    assert batch.prompts[0].index("<|image_pad|>") < batch.prompts[0].index("compare")
    assert torch.equal(batch.inputs["mm_token_type_ids"], (ids == proc.image_token_id).long())
    assert batch.image_sizes == [[(56, 56), (112, 56)], [], [(56, 112)]]
    assert batch.to("cpu").layout.num_samples == 3


def test_text_only_batch_has_no_pixels(proc):
    batch = proc(["hi", "hello"], padding_side="right")
    assert "pixel_values" not in batch.inputs
    assert batch.layout.num_vrts == 0
    assert batch.inputs["attention_mask"][:, 0].tolist() == [1, 1]


def test_task_prompts_are_the_reference_wording(proc):
    batch = proc(["the red square", "person, car", None], [image(56, 56)] * 3, task=["rec", "ovd", "ric"])
    expected = [
        prompts.rec_prompt("the red square"),
        prompts.ovd_prompt(["person", "car"]),
        prompts.ric_prompt(),
    ]
    assert batch.prompts == [proc.render_prompt(p) for p in expected]
    assert batch.prompts[1].endswith('["person", "car"].<|im_end|>\n<|im_start|>assistant\n')
    ric = proc(images=image(56, 56), task="ric")
    assert ric.prompts == [proc.render_prompt(prompts.ric_prompt())]


def test_bad_inputs_raise_padt_error(proc, tmp_path):
    with pytest.raises(PaDTError, match="needs an image"):
        proc("the red square", task="rec")
    with pytest.raises(PaDTError, match="needs an image"):
        proc([prompts.rec_prompt("a dog"), "hi"], [None, None])
    with pytest.raises(PaDTError, match="not found"):
        proc("x", str(tmp_path / "missing.png"))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image at all")
    with pytest.raises(PaDTError, match="cannot read image"):
        proc("x", broken)
    with pytest.raises(PaDTError, match="out of range"):
        proc("look at <|VRT_4|>", image(56, 56))  # 4 VRTs: indices 0..3
    with pytest.raises(PaDTError, match="one entry per prompt"):
        proc(["a", "b"], [image(56, 56)])
    with pytest.raises(PaDTError, match="referring sentence"):
        proc(" ", image(56, 56), task="rec")
    with pytest.raises(PaDTError, match="unknown task"):
        proc("a", image(56, 56), task="vqa")


def test_image_paths_small_images_and_max_side(proc, tmp_path):
    path = tmp_path / "tiny.png"
    image(10, 40).save(path)
    loaded, original = load_image(path)
    assert original == (10, 40) and loaded.size == (28, 112)
    capped, original = load_image(image(1000, 500), max_side=644)
    assert original == (1000, 500) and capped.size == (644, 322)
    batch = proc("what is this?", path)
    assert batch.inputs["image_grid_thw"].tolist() == [[1, 8, 2]]
    assert batch.image_sizes == [[(10, 40)]]
    demo = PaDTProcessor(proc.processor, V, max_side=112)
    assert demo("x", image(300, 150)).inputs["image_grid_thw"].tolist() == [[1, 4, 8]]


def test_save_and_load_round_trip(proc, tmp_path):
    proc.save_pretrained(tmp_path)
    loaded = PaDTProcessor.from_pretrained(tmp_path, vocab_size=V)
    text = 'The "x" refers to <|VRT_2|> in this image.'
    assert loaded.encode(text) == proc.encode(text)
    assert loaded.render_prompt("hi", 2) == proc.render_prompt("hi", 2)
    assert loaded.image_processor.size["longest_edge"] == 224 * 224
    with pytest.raises(PaDTError, match="vocab_size"):
        PaDTProcessor.from_pretrained(tmp_path)


# ---------------------------------------------------------------------------------------------- parsing
def run(*js: int) -> str:
    return vrt_run(js)


def test_parse_ovd_two_categories(proc):
    answer = f'In this image, there are 2 "person" ({run(1, 2)}, {run(3)}), 1 "dog" ({run(9, 8, 7)}).'
    text = answer + "<|im_end|>junk"
    ids = proc.encode(text)
    parsed = proc.parse(ids)
    assert parsed.finished and parsed.warnings == []
    assert [o.label for o in parsed.objects] == ["person", "person", "dog"]
    assert [o.vrt_indices for o in parsed.objects] == [[1, 2], [3], [9, 8, 7]]
    for obj in parsed.objects:
        assert [ids[p] - V for p in obj.positions] == obj.vrt_indices
    assert parsed.text == text.split("<|im_end|>")[0]


def test_parse_rec_and_ric(proc):
    rec = proc.parse(
        proc.encode(prompts.rec_answer_template("the red square").replace("<|Obj_0|>", run(5, 6)))
    )
    assert [(o.label, o.vrt_indices) for o in rec.objects] == [("the red square", [5, 6])]
    assert not rec.finished  # no eos in this completion
    ric = proc.parse(proc.encode(f"A red square ({run(1)}) next to a circle ({run(2, 3)}).<|im_end|>"))
    assert [(o.label, o.vrt_indices) for o in ric.objects] == [("", [1]), ("", [2, 3])]


def test_parse_labels_do_not_leak_across_a_new_quote(proc):
    parsed = proc.parse(proc.encode(f'1 "car" ({run(1)}), 1 "" ({run(2)}), and "a dog {run(3)}<|im_end|>'))
    assert [o.label for o in parsed.objects] == ["car", "", "a dog"]
    assert any("unclosed quote" in w for w in parsed.warnings)


def test_parse_cut_off_run_and_vrt_first(proc):
    parsed = proc.parse(proc.encode(f"{run(4, 5)} then {run(6, 7, 8)}"))
    assert not parsed.finished
    assert [o.vrt_indices for o in parsed.objects] == [[4, 5], [6, 7, 8]]
    assert parsed.objects[0].positions == [0, 1]
    assert len(parsed.warnings) == 1 and "cut off" in parsed.warnings[0]
    no_eos = proc.parse(proc.encode("just words"))
    assert (
        not no_eos.finished and no_eos.objects == [] and no_eos.warnings == [] and no_eos.text == "just words"
    )


def test_parse_garbage_keeps_what_it_can(proc):
    unused = len(proc.tokenizer)  # in [len(tokenizer), V): an unused row
    ids = [*proc.encode(f'"a" {run(1)}'), -100, unused, V + 2, V + 999, V + 3, proc.eos_token_id]
    parsed = proc.parse(ids, num_vrts=64)
    assert [o.vrt_indices for o in parsed.objects] == [[1], [2], [3]]
    assert [o.label for o in parsed.objects] == ["a", "a", "a"]
    assert len(parsed.warnings) == 2
    assert "neither text nor VRTs" in parsed.warnings[0] and "beyond" in parsed.warnings[1]
    assert parsed.finished


def test_parse_extra_eos_and_batch_padding(proc):
    endoftext = proc.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    stopped = proc.parse([*proc.encode(run(1)), endoftext, V + 2], eos_token_ids=[endoftext])
    assert stopped.finished and [o.vrt_indices for o in stopped.objects] == [[1]]
    rows = [proc.encode(f'"x" {run(1, 2)}<|im_end|>'), proc.encode(f"{run(3)}")]
    width = max(map(len, rows))
    ids = torch.full((2, width), proc.pad_token_id)
    mask = torch.zeros(2, width, dtype=torch.long)
    for b, row in enumerate(rows):  # left padding
        ids[b, width - len(row) :] = torch.tensor(row)
        mask[b, width - len(row) :] = 1
    parsed = proc.parse(ids, attention_mask=mask)
    assert [o.vrt_indices for o in parsed[1].objects] == [[3]]
    assert parsed[1].objects[0].positions == [width - 1]
    assert parsed[0].objects[0].label == "x" and parsed[0].finished and not parsed[1].finished


def test_parse_completion_is_a_pure_function(proc):
    ids = torch.tensor(proc.encode(f"{run(1)}<|im_end|>"))
    parsed = parse_completion(ids, tokenizer=proc.tokenizer, vocab_size=V)
    assert parsed == proc.parse(ids.tolist())


# ------------------------------------------------------------------------------------------ parity fixtures
@pytest.fixture(scope="module", params=fixture_dirs(), ids=lambda d: d.name)
def fx(request):
    folder = request.param
    assert (folder / "meta.json").is_file(), f"parity fixture {folder} is missing or malformed (no meta.json)"
    from safetensors.torch import load_file

    meta = json.loads((folder / "meta.json").read_text())
    processor = load_processor(folder)
    texts = [s["problem"] for s in meta["samples"]]
    batch = processor(texts, [folder / s["image_file"] for s in meta["samples"]])
    return {
        "meta": meta,
        "inputs": load_file(folder / "inputs.safetensors"),
        "expected": load_file(folder / "expected.safetensors"),
        "proc": processor,
        "batch": batch,
    }


def test_fixture_prompts_ids_and_pixels(fx):
    meta, inputs, batch = fx["meta"], fx["inputs"], fx["batch"]
    assert fx["proc"].vocab_size == meta["vrt_id_convention"]["V"]
    assert batch.prompts == [s["rendered_prompt"] for s in meta["samples"]]
    assert torch.equal(batch.inputs["input_ids"], inputs["prompt_input_ids"])
    assert torch.equal(batch.inputs["attention_mask"], inputs["prompt_attention_mask"])
    assert torch.equal(batch.inputs["image_grid_thw"], inputs["image_grid_thw"])
    t0 = inputs["pixel_values_t0"]
    expected = t0.view(t0.shape[0], 3, 1, -1).repeat(1, 1, 2, 1).flatten(1)
    assert (batch.inputs["pixel_values"] - expected).abs().max().item() <= 1e-5


def test_fixture_completion_ids_and_global_ids(fx):
    meta, inputs, batch, proc = fx["meta"], fx["inputs"], fx["batch"], fx["proc"]
    texts = [s["completion_text"] for s in meta["samples"]]
    out = proc.encode_completions(texts, layout=batch.layout)
    assert torch.equal(out["input_ids"], inputs["completion_input_ids_local"])
    assert torch.equal(out["attention_mask"], inputs["completion_attention_mask"])
    # The fixture tokenizer holds <|VRT_i|> at V+i: our splitting reproduces its own tokenisation.
    own = proc.tokenizer(texts[0], add_special_tokens=False).input_ids
    assert proc.encode(texts[0]) == own
    assert torch.equal(batch.layout.to_global(inputs["input_ids_local"]), inputs["input_ids_global"])
    assert torch.equal(batch.layout.to_local(inputs["input_ids_global"]), inputs["input_ids_local"])


def test_fixture_teacher_forced_parse(fx):
    meta, inputs, proc = fx["meta"], fx["inputs"], fx["proc"]
    parsed = proc.parse(
        inputs["completion_input_ids_local"], attention_mask=inputs["completion_attention_mask"]
    )
    for sample, result in zip(meta["samples"], parsed):
        ref = sample["tf_parse"]
        assert [len(o.vrt_indices) for o in result.objects] == ref["feat_counts"]
        assert [vrt_run(o.vrt_indices) for o in result.objects] == ref["vrts"]
        assert [o.label for o in result.objects] == ref["labels"]
        assert result.finished and result.text + "<|im_end|>" == sample["completion_text"]


def vrt_runs(tokens: list[str], eos: str = "<|im_end|>") -> list[int]:
    """Lengths of the maximal VRT runs of a per-token decode, up to the first eos."""
    lengths, current = [], 0
    for token in tokens:
        if token == eos:
            break
        if token.startswith("<|VRT_"):
            current += 1
        elif current:
            lengths.append(current)
            current = 0
    return [*lengths, current] if current else lengths


def test_fixture_generated_parse(fx):
    meta, expected, proc, batch = fx["meta"], fx["expected"], fx["proc"], fx["batch"]
    prompt_len = batch.inputs["input_ids"].shape[1]
    completions = expected["gen_sequences_local"][:, prompt_len:]
    parsed = proc.parse(completions, layout=batch.layout)
    for sample, row, result in zip(meta["samples"], completions, parsed):
        tokens = sample["gen_completion_tokens"]
        assert [proc.decode([t]) for t in row.tolist()] == tokens
        counts = [len(o.vrt_indices) for o in result.objects]
        assert counts == vrt_runs(tokens)
        if sample["gen_parse"]["feat_counts"]:  # the reference parsed it: same objects
            assert counts == sample["gen_parse"]["feat_counts"]
            assert [vrt_run(o.vrt_indices) for o in result.objects] == sample["gen_parse"]["vrts"]
        for obj in result.objects:
            assert [int(row[p]) - proc.vocab_size for p in obj.positions] == obj.vrt_indices
    if meta.get("set") == "tied":
        assert [len(o.vrt_indices) for o in parsed[1].objects] == [2, 7, 5, 3]
        # The reference dropped every object of sample 0 (a run cut off without eos, docs/method.md §6.4).
        assert meta["samples"][0]["gen_parse"]["feat_counts"] == []
        assert [len(o.vrt_indices) for o in parsed[0].objects] == [3, 6, 4, 7]
        assert not parsed[0].finished and "cut off" in parsed[0].warnings[0]
