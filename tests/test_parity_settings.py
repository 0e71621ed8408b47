"""The parity tests apply the settings each fixture recorded, and refuse the ones they cannot apply."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from padt.generation import VRTStateRecorder
from padt.modeling import PaDTForConditionalGeneration
from parity import SHIPPED_ROOT, Settings, UnsupportedSetting, load_processor

TIED = SHIPPED_ROOT / "tied"


@pytest.fixture(scope="module")
def meta() -> dict:
    return json.loads((TIED / "meta.json").read_text())


def with_call(meta: dict, call: str) -> dict:
    out = copy.deepcopy(meta)
    out["generation"]["call"] = call
    return out


def test_recorded_settings_of_the_shipped_fixture(meta):
    settings = Settings.from_meta(meta)
    assert settings.generate_kwargs == {"max_new_tokens": 24, "do_sample": False, "repetition_penalty": 1.0}
    assert settings.generation_config == {"bos_token_id": 398, "eos_token_id": 400, "pad_token_id": 398}
    assert settings.processor_kwargs == {"min_pixels": 3136, "max_pixels": 12845056}
    assert settings.loss_weights == dict.fromkeys(
        ["loss_token", "loss_bbox_l1", "loss_bbox_giou", "loss_score", "loss_mask_dice", "loss_mask_focal"],
        1.0,
    )
    assert (
        settings.robust_loss and settings.warm_up and settings.random_select and settings.vrts_per_object == 5
    )


def test_other_recorded_values_are_read_not_assumed(meta):
    changed = with_call(
        meta,
        "model.generate(**x, max_new_tokens=7, do_sample=False, repetition_penalty=1.3, "
        "no_repeat_ngram_size=2, output_scores=True)",
    )
    changed["trainer_args_used"].update(use_mask_loss=False, use_sft_vp_mask=False, random_select_patch_num=3)
    settings = Settings.from_meta(changed)
    assert settings.generate_kwargs == {
        "max_new_tokens": 7,
        "do_sample": False,
        "repetition_penalty": 1.3,
        "no_repeat_ngram_size": 2,
    }
    assert settings.loss_weights["loss_mask_dice"] == settings.loss_weights["loss_mask_focal"] == 0.0
    assert settings.loss_weights["loss_bbox_l1"] == 1.0
    assert not settings.robust_loss and settings.vrts_per_object == 3


@pytest.mark.parametrize(
    ("call", "named"),
    [
        ("model.generate(**x, max_new_tokens=24, guidance_scale=2.0)", "guidance_scale"),
        ("model.generate(**x, max_new_tokens=24, do_sample=True, top_k=5)", "do_sample=True"),
        ("model.generate(**x, max_new_tokens=24, use_cache=False)", "use_cache=False"),
        ("model.generate(**x, max_new_tokens=n)", "max_new_tokens=n"),
    ],
)
def test_settings_that_cannot_be_applied_are_named(meta, call, named):
    with pytest.raises(UnsupportedSetting, match=named.replace("(", r"\(")):
        Settings.from_meta(with_call(meta, call))


def test_unknown_trainer_and_processor_settings_are_named(meta):
    changed = copy.deepcopy(meta)
    changed["trainer_args_used"]["use_focal_loss"] = True
    with pytest.raises(UnsupportedSetting, match="use_focal_loss"):
        Settings.from_meta(changed)
    changed = copy.deepcopy(meta)
    changed["tokenizer"]["image_processor"]["resample"] = 3
    with pytest.raises(UnsupportedSetting, match="resample"):
        Settings.from_meta(changed)


def test_recorded_pixel_limits_are_applied_and_geometry_checked(meta):
    processor = load_processor(TIED)
    assert processor.image_processor.size == {"shortest_edge": 3136, "longest_edge": 12845056}
    changed = Settings.from_meta(meta)
    changed.image_processor = {**changed.image_processor, "patch_size": 16}
    with pytest.raises(UnsupportedSetting, match="patch_size=16"):
        changed.check_image_processor(processor.image_processor)


@torch.inference_mode()
def test_a_recorded_repetition_penalty_changes_what_is_compared(meta, one_torch_thread):
    """A fixture recorded with another penalty is generated with that penalty (so it would pass or fail on its
    own terms), not with the shipped fixture's 1.0."""
    from safetensors.torch import load_file

    model = PaDTForConditionalGeneration.from_pretrained(
        TIED, dtype=torch.float32, attn_implementation="sdpa"
    )
    inputs = load_file(TIED / "inputs.safetensors")
    pv = inputs["pixel_values_t0"]
    pixel_values = pv.view(pv.shape[0], 3, 1, -1).repeat(1, 1, 2, 1).reshape(pv.shape[0], -1)
    expected = load_file(TIED / "expected.safetensors")["gen_sequences_global"]

    def run(settings: Settings) -> torch.Tensor:
        recorder = VRTStateRecorder(model.vocab_size, inputs["prompt_input_ids"].shape[1])
        return model.generate(
            inputs["prompt_input_ids"],
            attention_mask=inputs["prompt_attention_mask"],
            pixel_values=pixel_values,
            image_grid_thw=inputs["image_grid_thw"],
            vrt_recorder=recorder,
            vrt_repeat_penalty=0.0,
            **settings.generate_kwargs,
        )

    assert torch.equal(run(Settings.from_meta(meta)), expected)
    penalised = run(
        Settings.from_meta(
            with_call(
                meta, meta["generation"]["call"].replace("repetition_penalty=1.0", "repetition_penalty=3.0")
            )
        )
    )
    assert penalised.shape == expected.shape and not torch.equal(penalised, expected)
