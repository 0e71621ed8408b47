"""PaDT on Qwen3-VL: 32-px VRT cells, the raster-only decoder, DeepStack, generation, save/load, training, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from padt.backbones import get_backbone
from padt.cli import main
from padt.data.patches import foreground_patches
from padt.errors import PaDTError
from padt.generation import VRTStateRecorder
from padt.inference import PaDT, predict
from padt.modeling import PaDTForConditionalGeneration
from padt.processing import PaDTProcessor
from padt.tiny import tiny_model, tiny_processor

pytestmark = pytest.mark.usefixtures("one_torch_thread")
QWEN3 = get_backbone("qwen3_vl")


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=3, backbone="qwen3_vl", hidden_size=64)


@pytest.fixture(scope="module")
def processor(model):
    return PaDTProcessor(tiny_processor(max_pixels=160 * 160, backbone="qwen3_vl"), model.vocab_size)


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


# ------------------------------------------------------------------------------------------------ geometry
def test_a_vrt_is_a_32_px_cell(processor):
    assert QWEN3.geometry.cell_px == 32 and processor.geometry.patch_px == 16
    # smart_resize with factor 32: 100 x 70 -> 96 x 64 px -> 3 x 2 cells; 16-px ViT patches 6 x 4.
    batch = processor(["x"], [noise(100, 70)])
    assert batch.inputs["image_grid_thw"].tolist() == [[1, 4, 6]]
    assert batch.layout.num_vrts == 6 and processor.vrt_grid(100, 70) == (2, 3)
    assert (batch.inputs["input_ids"] == processor.image_token_id).sum() == 6


def test_foreground_patches_on_the_32_px_grid():
    # A 96 x 64 image is 3 x 2 cells of 32 px. Column x in [32, 64) covers cells 1 and 4.
    mask = np.zeros((64, 96), dtype=bool)
    mask[:, 32:64] = True
    assert foreground_patches(mask, geometry=QWEN3.geometry, min_pixels=1, max_pixels=10**7) == [1, 4]
    # The 1/28 coverage rule on a 1024-px cell: 36 pixels (3.5%) are not enough, 37 (3.6%) are.
    for pixels, expected in ((36, []), (37, [0])):
        mask = np.zeros((64, 96), dtype=bool)
        mask.reshape(-1)[[r * 96 + c for r in range(32) for c in range(32)][:pixels]] = True
        got = foreground_patches(mask, geometry=QWEN3.geometry, min_pixels=1, max_pixels=10**7)
        assert got == expected, pixels


def test_the_decoder_reads_raster_order_only():
    with pytest.raises(PaDTError, match="ordering 'reference' does not apply to qwen3_vl"):
        tiny_model(seed=0, backbone="qwen3_vl", decoder_ordering="reference")


# ------------------------------------------------------------------------------------------------ VRT ids
def test_vrt_round_trip_several_images_and_text_only(model, processor):
    v = model.vocab_size
    batch = processor(["two images", "no image"], [[noise(96, 64, 1), noise(64, 64, 2)], None])
    layout = batch.layout
    assert layout.sample_num_vrts.tolist() == [6 + 4, 0]
    completion = processor.encode_completions(["<|VRT_1|><|VRT_7|> and text", "only text"], layout=layout)
    local = completion["input_ids"]
    glob = layout.to_global(local)
    assert torch.equal(layout.to_local(glob), local)
    assert layout.split(0, [1, 7]) == [(0, 1), (1, 1)]  # local 7 = patch 1 of the second image
    with torch.no_grad():
        out = model(**batch.inputs)
    assert torch.isinf(out.logits[1, :, v:]).all() and torch.isfinite(out.logits[0, -1, v:]).all()
    with pytest.raises(PaDTError, match="out of range"):
        processor.encode_completions(["<|VRT_10|>", ""], layout=layout)


@torch.inference_mode()
def test_cached_generation_matches_full_forward(model, processor):
    """Interleaved M-RoPE positions and the cached prototypes of decode steps give what one full forward gives."""
    batch = processor(
        ["the red thing", "what is it?"], [noise(96, 64, 3), noise(64, 96, 4)], task=["rec", None]
    )
    inputs = dict(batch.inputs)
    recorder = VRTStateRecorder(model.vocab_size, inputs["input_ids"].shape[1])
    out = model.generate(
        **inputs,
        max_new_tokens=8,
        min_new_tokens=8,
        do_sample=False,
        vrt_repeat_penalty=0.0,
        return_dict_in_generate=True,
        output_logits=True,
        vrt_recorder=recorder,
    )
    full = torch.cat([inputs["input_ids"], out.sequences[:, inputs["input_ids"].shape[1] :]], 1)
    mask = torch.cat([inputs["attention_mask"], torch.ones_like(full[:, inputs["input_ids"].shape[1] :])], 1)
    forward = {
        k: v for k, v in inputs.items() if k != "mm_token_type_ids"
    }  # derived again for the longer ids
    ref = model(**(forward | {"input_ids": full, "attention_mask": mask})).logits
    steps = torch.stack(out.logits, 1)
    prompt = inputs["input_ids"].shape[1]
    finite = torch.isfinite(steps)
    diff = (steps[finite] - ref[:, prompt - 1 : -1][finite]).abs().max()
    assert diff < 1e-4, diff
    assert torch.equal(finite, torch.isfinite(ref[:, prompt - 1 : -1]))


@torch.inference_mode()
def test_deepstack_reaches_vrt_inputs_only_when_asked(processor):
    model = tiny_model(seed=5, backbone="qwen3_vl", hidden_size=64)
    v = model.vocab_size
    batch = processor(["x"], [noise(96, 64, 5)])
    completion = processor.encode_completions(["look <|VRT_2|><|VRT_4|> here"], layout=batch.layout)
    ids = torch.cat([batch.inputs["input_ids"], batch.layout.to_global(completion["input_ids"])], 1)
    mask = torch.cat([batch.inputs["attention_mask"], completion["attention_mask"]], 1)
    inputs = {k: v for k, v in batch.inputs.items() if k != "mm_token_type_ids"}
    inputs |= {"input_ids": ids, "attention_mask": mask}
    plain = model(**inputs).logits
    model.config.vrt_deepstack = True
    stacked = model(**inputs).logits
    first_vrt = int((ids[0] >= v).nonzero()[0])
    # Up to the first VRT nothing changes; from it on the VRTs' DeepStack features reach the language model.
    torch.testing.assert_close(stacked[:, :first_vrt], plain[:, :first_vrt], rtol=0, atol=0)
    assert (stacked[:, first_vrt:] - plain[:, first_vrt:])[
        torch.isfinite(plain[:, first_vrt:])
    ].abs().max() > 1e-4
    assert model.config.to_diff_dict()["vrt_deepstack"] is True
    # A training config turns it on through the tiny model's spec (model.tiny.vrt_deepstack).
    assert tiny_model(backbone="qwen3_vl", hidden_size=64, vrt_deepstack=True).config.vrt_deepstack is True
    with pytest.raises(ValueError, match="vrt_deepstack is a Qwen3-VL option"):
        tiny_model(vrt_deepstack=True)


# ------------------------------------------------------------------------------------------------ save, load, predict, eval
def test_save_load_predict_and_cli(tmp_path, model, processor, capsys):
    folder = tmp_path / "qwen3-padt"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "qwen3_vl" and config["architectures"] == [
        "PaDTQwen3VLForConditionalGeneration"
    ]
    loaded = PaDTForConditionalGeneration.from_pretrained(folder)  # dispatches on model_type
    assert type(loaded).__name__ == "PaDTQwen3VLForConditionalGeneration"
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    pipe = PaDT.from_pretrained(folder, device="cpu")
    image = noise(96, 64, 6)
    [a] = pipe([image], ["the thing"], task="rec", max_new_tokens=10)
    [b] = predict(model, processor, [image], ["the thing"], task="rec", max_new_tokens=10)
    assert a.text == b.text and len(a.objects) == len(b.objects)
    for x, y in zip(a.objects, b.objects):
        assert x.box_xyxy == pytest.approx(y.box_xyxy, abs=1e-4)

    image.save(tmp_path / "image.png")
    code = main(
        [
            "predict",
            "--model",
            str(folder),
            "--image",
            str(tmp_path / "image.png"),
            "--task",
            "rec",
            "--prompt",
            "the thing",
            "--max-new-tokens",
            "10",
            "--json",
            str(tmp_path / "out.json"),
        ]
    )
    assert code == 0
    assert json.loads((tmp_path / "out.json").read_text())["text"] == a.text
    capsys.readouterr()
    code = main(
        [
            "eval",
            "--model",
            str(folder),
            "--data",
            "synthetic:n=3,seed=5,max_size=128,max_objects=2",
            "--task",
            "rec",
            "--out",
            str(tmp_path / "eval"),
            "--max-new-tokens",
            "8",
            "--batch-size",
            "2",
        ]
    )
    assert code == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["num_samples"] == 3 and 0.0 <= metrics["acc@0.5"] <= 1.0


@pytest.mark.slow
def test_a_short_training_run_lowers_the_losses(tmp_path):
    from padt.data.synthetic import generate_dataset
    from padt.training.config import load_config
    from padt.training.trainer import train

    records = generate_dataset("all", 6, 2, tmp_path / "scenes", min_size=96, max_size=128, progress=False)
    out = tmp_path / "run"
    config = load_config(
        None,
        [
            "model.tiny={backbone: qwen3_vl, hidden_size: 64, decoder_init: torch}",
            "processor.max_pixels=16384",
            f"data.train=[{{records: '{records.records_path}'}}]",
            "padt.warmup_steps=5",
            f"training.output_dir='{out}'",
            "training.per_device_train_batch_size=3",
            "training.learning_rate=2e-3",
            "training.max_steps=30",
            "training.save_strategy=no",
            "training.logging_steps=5",
            "training.report_to=[]",
            "training.disable_tqdm=true",
        ],
    )
    assert config.padt.patches == "auto"
    train(config)
    summary = json.loads((out / "train_summary.json").read_text())
    logs = [h for h in summary["log_history"] if "loss" in h]
    assert logs and logs[-1]["loss"] < 0.8 * logs[0]["loss"], logs
    assert logs[-1]["loss_token"] < logs[0]["loss_token"]
    loaded = PaDTForConditionalGeneration.from_pretrained(out)
    assert loaded.config.model_type == "qwen3_vl"


def test_the_ovd_grammar_holds_qwen3_vl_answers(model, processor):
    """The OVD grammar reads its pieces off the answer template with Qwen3-VL's tokenizer and chat template: a
    random model's OVD answer parses, names only listed classes and ends within the budget."""
    from padt.inference import PaDT

    pipe = PaDT(model, processor)
    options = dict(task="ovd", max_new_tokens=40, vrt_repeat_penalty=float("inf"))
    [loose] = pipe([noise(100, 70, 4)], ["dog, cat"], ovd_grammar=False, **options)
    [held] = pipe([noise(100, 70, 4)], ["dog, cat"], ovd_grammar=True, **options)
    assert loose.warnings or not loose.finished or not loose.objects
    assert held.finished and not held.warnings and held.objects, held.text
    assert {o.label for o in held.objects} <= {"dog", "cat"}
