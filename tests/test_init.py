"""``padt init``: a plain base checkpoint becomes a PaDT checkpoint that computes the base's own text logits."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from padt.backbones import get_backbone
from padt.cli import main
from padt.commands.init import init_from_base
from padt.errors import PaDTError
from padt.modeling import PaDTForConditionalGeneration
from padt.processing import PaDTProcessor
from padt.tiny import TINY_VOCAB_SIZE, tiny_processor, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")
BASES = ("qwen2_5_vl", "qwen3_vl")


def plain_checkpoint(backbone: str, folder, seed: int = 0, tied: bool = True):
    """A random plain (non-PaDT) base model with the tiny tokenizer and processor, saved to ``folder``."""
    base = get_backbone(backbone)
    tokenizer = tiny_tokenizer(backbone)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in base.special_tokens}
    config = base.tiny_config(
        ids,
        vocab_size=TINY_VOCAB_SIZE,
        hidden_size=64,
        num_hidden_layers=2,
        vision_hidden_size=32,
        vision_depth=2,
        vision_num_heads=2,
        tie_word_embeddings=tied,
    )
    torch.manual_seed(seed)
    model = base.model_class(config).eval()
    model.save_pretrained(folder)
    tiny_processor(max_pixels=128 * 128, backbone=backbone).save_pretrained(folder)
    return model


@pytest.mark.parametrize("backbone", BASES)
@pytest.mark.parametrize("tied", [True, False])
def test_init_keeps_the_base_models_text_logits(tmp_path, backbone, tied):
    plain = plain_checkpoint(backbone, tmp_path / "base", tied=tied)
    model, processor = init_from_base(tmp_path / "base")
    assert type(model).__name__.startswith("PaDT") and model.config.model_type == backbone
    image = Image.effect_noise((96, 64), 40).convert("RGB")
    batch = processor(["What is in the picture?", "Describe it."], [image, None])
    inputs = dict(batch.inputs)
    with torch.no_grad():
        ours = model(**inputs).logits
        inputs.pop("vrt_layout")
        theirs = plain(**inputs).logits
    vocab = model.vocab_size
    real = batch.inputs["attention_mask"].bool()
    # Text columns: the base's own logits (fp32, relative 1e-5); VRT columns exist only for the image sample.
    diff = (ours[..., :vocab][real] - theirs[real]).abs().max() / theirs[real].abs().max()
    assert diff <= 1e-5, diff
    assert ours.shape[-1] == vocab + batch.layout.num_vrts
    assert torch.isinf(ours[1, :, vocab:]).all() and torch.isfinite(ours[0, -1, vocab:]).all()
    # PaDT's modules start as the reference starts them: vis_norm zero, so every prototype is 0.
    assert model.vis_norm.weight.abs().sum() == 0 and model.vis_norm.bias.abs().sum() == 0


@pytest.mark.parametrize("backbone", BASES)
def test_cli_init_writes_a_loadable_padt_checkpoint(tmp_path, capsys, backbone):
    plain_checkpoint(backbone, tmp_path / "base")
    out = tmp_path / "padt"
    assert main(["init", "--base", str(tmp_path / "base"), "--out", str(out), "--decoder-size", "48"]) == 0
    assert "new parameters" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == backbone and config["vl_decoder"]["intermediate_size"] == 48
    assert (
        config["vl_decoder"].get("ordering", "reference") == get_backbone(backbone).default_decoder_ordering
    )
    keys = load_file(out / "model.safetensors")
    assert any(k.startswith("vl_decoder.") for k in keys) and any(k.startswith("vis_proj.") for k in keys)
    loaded = PaDTForConditionalGeneration.from_pretrained(out)  # the class follows the checkpoint's base
    assert loaded.config.model_type == backbone
    processor = PaDTProcessor.from_pretrained(out)
    assert processor.geometry == get_backbone(backbone).geometry
    capsys.readouterr()
    # Bad input: one line, exit 2.
    for argv, message in [
        (["init", "--base", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")], "has no config.json"),
        (["init", "--base", str(out), "--out", str(tmp_path / "y")], "already a PaDT checkpoint"),
        (["init", "--base", str(tmp_path / "base"), "--out", str(out)], "is not empty"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_init_prototype_position_code_starts_the_prototypes_at_the_position_term(tmp_path):
    from padt.decoder import normalised_position_code
    from padt.modeling import IMAGE_POSITION_CODE_DIM

    plain_checkpoint("qwen2_5_vl", tmp_path / "base")
    out = tmp_path / "padt"
    argv = ["init", "--base", str(tmp_path / "base"), "--out", str(out), "--prototype-position-code"]
    assert main(argv) == 0
    assert json.loads((out / "config.json").read_text())["prototype_position_code"] is True
    model = PaDTForConditionalGeneration.from_pretrained(out)
    weight = model.prototype_position.weight
    assert weight.abs().max() > 0  # random, not zero: a zero term is never used
    pixels = torch.rand(16, 3 * 2 * 14 * 14, generator=torch.Generator().manual_seed(0))
    grid = torch.tensor([[1, 4, 4]])  # 2 x 2 merge units
    with torch.no_grad():
        vision = model.encode_images(pixels, grid)
    # vis_norm is zero, so the prototypes are the position term alone: one distinct vector per merge unit.
    assert torch.cdist(vision.prototypes, vision.prototypes).fill_diagonal_(1).min() > 0
    code = normalised_position_code(torch.arange(4), torch.tensor([[2, 2]]), IMAGE_POSITION_CODE_DIM)[0]
    torch.testing.assert_close(vision.prototypes, code @ weight.T, rtol=0, atol=1e-6)


def test_init_prototype_position_init_std(tmp_path, capsys):
    plain_checkpoint("qwen2_5_vl", tmp_path / "base")
    base, out = str(tmp_path / "base"), tmp_path / "padt"
    flags = ["--prototype-position-code", "--prototype-position-init-std", "0.5"]
    assert main(["init", "--base", base, "--out", str(out), *flags]) == 0
    assert json.loads((out / "config.json").read_text())["prototype_position_init_std"] == 0.5
    weight = PaDTForConditionalGeneration.from_pretrained(out).prototype_position.weight
    assert 0.4 < weight.std().item() < 0.6  # 0.015 by default
    capsys.readouterr()
    for argv, message in [
        (flags[1:], "--prototype-position-init-std needs --prototype-position-code"),
        ([flags[0], flags[1], "-1"], "prototype_position_init_std must be a number >= 0, got -1.0"),
    ]:
        assert main(["init", "--base", base, "--out", str(tmp_path / "x"), *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_init_vrt_deepstack_is_a_qwen3_option(tmp_path):
    plain_checkpoint("qwen3_vl", tmp_path / "q3")
    plain_checkpoint("qwen2_5_vl", tmp_path / "q25")
    assert (
        main(["init", "--base", str(tmp_path / "q3"), "--out", str(tmp_path / "o3"), "--vrt-deepstack"]) == 0
    )
    assert json.loads((tmp_path / "o3" / "config.json").read_text())["vrt_deepstack"] is True
    assert PaDTForConditionalGeneration.from_pretrained(tmp_path / "o3").config.vrt_deepstack is True
    with pytest.raises(PaDTError, match="--vrt-deepstack is for Qwen3-VL bases"):
        init_from_base(tmp_path / "q25", vrt_deepstack=True)
