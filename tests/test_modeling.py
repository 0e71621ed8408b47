"""PaDTForConditionalGeneration on tiny random models: loading, several images per sample, text-only samples,
the VRT embedding/head, the decoder API and bad input."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import Qwen2_5_VLForConditionalGeneration

from padt.errors import PaDTError
from padt.modeling import PaDTForConditionalGeneration
from padt.tiny import tiny_config, tiny_model
from padt.vrt import VRTLayout

TEXT_ID = 5  # any ordinary text token


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=0)


def make_batch(model, samples: list[list[tuple[int, int]]], text_len: int = 6, seed: int = 0):
    """Left-padded batch: each sample is a list of image patch grids (h, w); every image is wrapped in
    vision_start/end with N image tokens, followed by ``text_len`` text tokens."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    rows, grids = [], []
    for images in samples:
        row = []
        for h, w in images:
            row += (
                [cfg.vision_start_token_id] + [cfg.image_token_id] * (h * w // 4) + [cfg.vision_end_token_id]
            )
            grids.append([1, h, w])
        row += torch.randint(10, 200, (text_len,), generator=g).tolist()
        rows.append(row)
    length = max(len(r) for r in rows)
    pad = cfg.text_config.pad_token_id
    ids = torch.tensor([[pad] * (length - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (length - len(r)) + [1] * len(r) for r in rows])
    grid = torch.tensor(grids) if grids else None
    n = int(grid.prod(-1).sum()) if grids else 0
    pixels = torch.randn(n, 3 * 2 * 14 * 14, generator=g) if grids else None
    return ids, mask, pixels, grid


def pixels_of(pixels, grid, images):
    """Rows of ``pixels`` belonging to the given image indices."""
    sizes = grid.prod(-1).tolist()
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return torch.cat([pixels[starts[i] : starts[i] + sizes[i]] for i in images])


# ------------------------------------------------------------------------------------------------ batches
def test_several_images_text_only_and_mixed_batch_equal_single_runs(model):
    samples = [[(4, 4), (6, 4)], [], [(4, 8)]]
    ids, mask, pixels, grid = make_batch(model, samples)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, image_grid_thw=grid)
    layout = out.vrt_layout
    assert layout.image_sample.tolist() == [0, 0, 2]
    n_per_image = [4, 6, 8]
    assert out.logits.shape == (3, ids.shape[1], model.vocab_size + sum(n_per_image))
    image_of_sample = {0: [0, 1], 1: [], 2: [2]}
    for b, images in image_of_sample.items():
        real = mask[b].bool()
        single_ids = ids[b, real][None]
        single_mask = torch.ones_like(single_ids)
        single_grid = grid[images] if images else None
        with torch.no_grad():
            single = model(
                input_ids=single_ids,
                attention_mask=single_mask,
                pixel_values=pixels_of(pixels, grid, images) if images else None,
                image_grid_thw=single_grid,
            )
        torch.testing.assert_close(
            out.last_hidden_state[b, real], single.last_hidden_state[0], atol=1e-5, rtol=1e-4
        )
        # Text logits agree, the sample's own VRT columns agree, every other VRT column is -inf.
        v = model.vocab_size
        torch.testing.assert_close(out.logits[b, real, :v], single.logits[0, :, :v], atol=1e-4, rtol=1e-4)
        start = int(layout.sample_global_offset[b])
        own = slice(v + start, v + start + int(layout.sample_num_vrts[b]))
        torch.testing.assert_close(out.logits[b, real, own], single.logits[0, :, v:], atol=1e-4, rtol=1e-4)
        others = torch.ones(out.logits.shape[-1] - v, dtype=torch.bool)
        others[own.start - v : own.stop - v] = False
        assert torch.isinf(out.logits[b, :, v:][:, others]).all()


def test_vrt_logits_are_dot_products_with_prototypes(model):
    ids, mask, pixels, grid = make_batch(model, [[(4, 4)], [(4, 6)]])
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, image_grid_thw=grid)
        h = out.last_hidden_state
        expected = h[1] @ out.vision.prototypes[4:].T
    torch.testing.assert_close(out.logits[1, :, model.vocab_size + 4 :], expected)
    assert out.vision.prototypes.abs().sum() > 0


def test_vrt_ids_embed_as_prototypes(model):
    _, _, pixels, grid = make_batch(model, [[(4, 4)], [(4, 6)]])
    with torch.no_grad():
        vision = model.encode_images(pixels, grid)
        vrt_ids = torch.tensor([[model.vocab_size + 3, 11], [model.vocab_size + 9, model.vocab_size + 4]])
        emb = model.embed_tokens_with_vrts(vrt_ids, vision.prototypes)
    torch.testing.assert_close(emb[0, 0], vision.prototypes[3])
    torch.testing.assert_close(emb[1, 0], vision.prototypes[9])
    torch.testing.assert_close(emb[1, 1], vision.prototypes[4])
    torch.testing.assert_close(emb[0, 1], model.get_input_embeddings().weight[11])


def test_image_tokens_get_raw_merger_features(model):
    """Changing vis_norm changes VRT embeddings but not what the prompt's image tokens see."""
    ids, mask, pixels, grid = make_batch(model, [[(4, 4)]])
    with torch.no_grad():
        a = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, image_grid_thw=grid)
        saved = model.vis_norm.weight.clone()
        model.vis_norm.weight.mul_(3.0)
        try:
            b = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, image_grid_thw=grid)
        finally:
            model.vis_norm.weight.copy_(saved)
    torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state)
    assert not torch.allclose(a.vision.prototypes, b.vision.prototypes)


# ------------------------------------------------------------------------------------------------ decoder
def test_decoder_batched_equals_one_object_at_a_time(model):
    samples = [[(4, 4), (6, 8)], [(8, 4)]]
    ids, mask, pixels, grid = make_batch(model, samples)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, image_grid_thw=grid)
    g = torch.Generator().manual_seed(1)
    d = model.config.text_config.hidden_size
    feats = [
        [torch.randn(5, d, generator=g), torch.randn(2, d, generator=g)],
        [torch.randn(7, d, generator=g)],
    ]
    images = [[1, 0], [2]]
    with torch.no_grad():
        batched = model.decode_objects(feats, out.vision, out.vrt_layout, object_images=images)
    assert batched.sample_idx.tolist() == [0, 0, 1]
    assert batched.pred_mask_valid_hw.tolist() == [[6, 8], [4, 4], [8, 4]]
    assert batched.pred_mask.shape == (3, 32, 32)
    k = 0
    for b, objects in enumerate(feats):
        for o, f in enumerate(objects):
            with torch.no_grad():
                single = model.vl_decoder(
                    [f],
                    torch.tensor([images[b][o]]),
                    out.vision.prototypes,
                    out.vision.high_res_image_embeds,
                    out.vision.visual_pe,
                    grid,
                )
            torch.testing.assert_close(batched.pred_boxes[k], single.pred_boxes[0], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(batched.pred_score[k], single.pred_score[0], atol=1e-5, rtol=1e-4)
            h, w = single.pred_mask_valid_hw[0].tolist()
            torch.testing.assert_close(
                batched.pred_mask[k, : 4 * h, : 4 * w], single.pred_mask[0], atol=1e-5, rtol=1e-4
            )
            assert (batched.pred_mask[k, 4 * h :] == 0).all() and (
                batched.pred_mask[k, :, 4 * w :] == 0
            ).all()
            k += 1
    assert ((batched.pred_boxes >= 0) & (batched.pred_boxes <= 1)).all()


def test_decoder_without_objects_and_image_choice_errors(model):
    ids, mask, pixels, grid = make_batch(model, [[(4, 4), (4, 4)], []])
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, image_grid_thw=grid)
        empty = model.decode_objects([[], []], out.vision, out.vrt_layout)
    assert empty.pred_boxes.shape == (0, 4) and empty.pred_score.shape == (0, 1)
    d = model.config.text_config.hidden_size
    with pytest.raises(PaDTError, match="sample 0 has 2 images; pass object_images"):
        model.decode_objects([[torch.zeros(2, d)], []], out.vision, out.vrt_layout)
    with pytest.raises(PaDTError, match=r"object_images\[0\] must give one of the sample's images"):
        model.decode_objects([[torch.zeros(2, d)], []], out.vision, out.vrt_layout, object_images=[[5], []])


# ------------------------------------------------------------------------------------------------ bad input
def test_bad_inputs_give_clear_errors(model):
    ids, mask, pixels, grid = make_batch(model, [[(4, 4)], [(4, 4)]])
    with pytest.raises(PaDTError, match="without image_grid_thw"):
        model(input_ids=ids, attention_mask=mask, pixel_values=pixels)
    bad = ids.clone()
    bad[0, -1] = model.vocab_size + 4  # image 1's first VRT: belongs to the other sample
    with pytest.raises(PaDTError, match="only patches of the sample's own images"):
        model(input_ids=bad, attention_mask=mask, pixel_values=pixels, image_grid_thw=grid)
    bad[0, -1] = model.vocab_size + 8  # beyond every image of the batch
    with pytest.raises(PaDTError, match="only patches of the sample's own images"):
        model(input_ids=bad, attention_mask=mask, pixel_values=pixels, image_grid_thw=grid)
    text_ids, text_mask, _, _ = make_batch(model, [[]])
    text_ids[0, -1] = model.vocab_size
    with pytest.raises(PaDTError, match="only patches of the sample's own images"):
        model(input_ids=text_ids, attention_mask=text_mask)
    with pytest.raises(PaDTError, match="patches but image_grid_thw describes"):
        model(input_ids=ids, attention_mask=mask, pixel_values=pixels[:-4], image_grid_thw=grid)


# ------------------------------------------------------------------------------------------------ loading
@pytest.mark.parametrize("tied", [True, False])
def test_save_and_load_round_trip(tmp_path, tied):
    model = tiny_model(seed=1, tie_word_embeddings=tied)
    model.save_pretrained(tmp_path)
    keys = set(load_file(tmp_path / "model.safetensors"))
    # Saved in the reference's layout: loadable by the reference implementation too.
    assert any(k.startswith("visual.") for k in keys) and any(k.startswith("model.layers.") for k in keys)
    assert ("lm_head.weight" in keys) is (not tied)
    config = json.loads((tmp_path / "config.json").read_text())
    assert (
        config["vl_decoder"]["llm_hidden_state"] == 64 and config["use_visual_prototype_projection"] is True
    )
    loaded = PaDTForConditionalGeneration.from_pretrained(tmp_path)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    if not tied:
        assert not torch.equal(loaded.lm_head.weight, loaded.get_input_embeddings().weight)


def test_loading_refuses_incomplete_or_foreign_checkpoints(tmp_path):
    with pytest.raises(PaDTError, match=r"no config\.json in"):
        PaDTForConditionalGeneration.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(tiny_config().to_json_string())
    with pytest.raises(PaDTError, match="no model weights"):
        PaDTForConditionalGeneration.from_pretrained(tmp_path)
    # A plain Qwen2.5-VL checkpoint lacks the PaDT modules.
    torch.manual_seed(0)
    base = Qwen2_5_VLForConditionalGeneration(tiny_config())
    base.save_pretrained(tmp_path / "base")
    with pytest.raises(PaDTError, match=r"missing keys \[.*vis_norm.bias.*vl_decoder") as err:
        PaDTForConditionalGeneration.from_pretrained(tmp_path / "base")
    assert "init_padt_modules=True" in str(err.value)
    started = PaDTForConditionalGeneration.from_pretrained(tmp_path / "base", init_padt_modules=True)
    assert (started.vis_norm.weight == 0).all() and (started.vis_norm.bias == 0).all()
    # An unexpected tensor is refused and named.
    model = tiny_model(seed=2)
    model.save_pretrained(tmp_path / "extra")
    tensors = load_file(tmp_path / "extra" / "model.safetensors")
    tensors["vl_decoder.not_a_parameter"] = torch.zeros(3)
    save_file(tensors, tmp_path / "extra" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(PaDTError, match=r"unexpected keys \['vl_decoder.not_a_parameter'\]"):
        PaDTForConditionalGeneration.from_pretrained(tmp_path / "extra")
    # A decoder of another size does not fit.
    model.save_pretrained(tmp_path / "other")
    cfg = json.loads((tmp_path / "other" / "config.json").read_text())
    cfg["vl_decoder"]["intermediate_size"] = 48
    (tmp_path / "other" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PaDTError, match=r"mismatched keys \[.*vl_decoder.*mlp"):
        PaDTForConditionalGeneration.from_pretrained(tmp_path / "other")


def test_layout_from_model_matches_vrt_module(model):
    ids, mask, pixels, grid = make_batch(model, [[(4, 4)], [], [(4, 6), (4, 4)]])
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, image_grid_thw=grid)
    expected = VRTLayout.from_input_ids(
        ids, grid, vocab_size=model.vocab_size, image_token_id=model.config.image_token_id, merge_size=2
    )
    assert torch.equal(out.vrt_layout.image_sample, expected.image_sample)
    assert torch.equal(out.vrt_allowed, expected.allowed_mask())


# ------------------------------------------------------------------------------------ decoder orderings
def _grid_positions(grid: torch.Tensor) -> torch.Tensor:
    rows = []
    for _, h, w in grid.tolist():
        hh, ww = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        rows.append(torch.stack([hh.flatten(), ww.flatten()], -1))
    return torch.cat(rows)


def test_window_to_raster_puts_every_patch_at_its_own_cell():
    from transformers.vision_utils import get_vision_position_ids, get_vision_window_index

    from padt.backbones.qwen2_5_vl import window_to_raster

    grid = torch.tensor([[1, 8, 20], [1, 12, 10], [1, 4, 4]])  # several windows, odd unit counts
    window_index, _ = get_vision_window_index(grid, spatial_merge_size=2, window_size=112, patch_size=14)
    positions = get_vision_position_ids(grid, 2)  # unit order, 2x2 sub-patches consecutive
    seq = torch.cat([positions.view(-1, 4, 2)[window_index]]).reshape(-1, 2)  # window order
    perm = window_to_raster(window_index, grid, 2)
    assert torch.equal(seq[perm], _grid_positions(grid))
    assert sorted(perm.tolist()) == list(range(len(perm)))


def _decode_both(grid_thw: list[int], absolute: bool = False):
    torch.manual_seed(0)
    ref = tiny_model(seed=3)
    for module in ref.vl_decoder.modules():  # default init: outputs that depend visibly on every input
        if isinstance(module, torch.nn.Linear):
            module.reset_parameters()
    raster = tiny_model(seed=3, decoder_ordering="raster", decoder_absolute_position=absolute)
    raster.vl_decoder.load_state_dict(ref.vl_decoder.state_dict())
    grid = torch.tensor([grid_thw])
    n = grid_thw[1] * grid_thw[2]
    d = ref.config.vision_config.hidden_size
    feats = [torch.randn(3, ref.config.text_config.hidden_size)]
    args = (
        torch.tensor([0]),
        torch.randn(n // 4, ref.config.text_config.hidden_size),
        torch.randn(n, d),
        (torch.randn(n, d // 2).cos(), torch.randn(n, d // 2).sin()),
        grid,
    )
    with torch.no_grad():
        return ref.vl_decoder(feats, *args), raster.vl_decoder(feats, *args)


def test_raster_decoder_equals_reference_where_the_orders_coincide():
    # One unit wide and at most one window tall: window order, unit order and patch raster order are the same
    # sequence, so both orderings compute the same function.
    a, b = _decode_both([1, 8, 2])
    for key in ("pred_boxes", "pred_score", "pred_mask"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    # Wider images: the reference ordering mixes positions (docs/method.md §7.7), the raster one does not.
    a, b = _decode_both([1, 4, 12])
    assert (a.pred_mask - b.pred_mask).abs().max() > 1e-4


def test_absolute_position_code_needs_raster_and_changes_the_output():
    from padt.decoder import PaDTDecoderConfig

    with pytest.raises(ValueError, match="raster"):
        PaDTDecoderConfig(hidden_size=32, num_heads=2, absolute_position=True)
    plain, coded = _decode_both([1, 8, 2])[1], _decode_both([1, 8, 2], absolute=True)[1]
    assert (plain.pred_boxes - coded.pred_boxes).abs().max() > 1e-6


def test_normalised_position_code_values():
    from padt.decoder import normalised_position_code

    # A 2 x 3 grid: cell centres x in (1/6, 1/2, 5/6), y in (1/4, 3/4); dims [sin x f, sin y f, cos x f, cos y f]
    # for f = pi, 2 pi, then zero padding.
    code = normalised_position_code(torch.arange(6), torch.tensor([[2, 3]]), 10)[0]
    x = torch.tensor([1 / 6, 1 / 2, 5 / 6] * 2)
    y = torch.tensor([0.25] * 3 + [0.75] * 3)
    f = torch.tensor([torch.pi, 2 * torch.pi])
    angles = torch.cat([x[:, None] * f, y[:, None] * f], dim=-1)
    expected = torch.cat([angles.sin(), angles.cos(), torch.zeros(6, 2)], dim=-1)
    torch.testing.assert_close(code, expected, rtol=0, atol=1e-6)
    # sin(pi/6), sin(pi/2), sin(3 pi/4), cos(2 pi * 5/6)
    assert code[0, 0].item() == pytest.approx(0.5) and code[1, 0].item() == pytest.approx(1.0)
    assert code[3, 2].item() == pytest.approx(0.70710678) and code[2, 5].item() == pytest.approx(0.5)


def test_image_position_code_tells_identical_patches_apart():
    """Qwen2.5-VL's ViT has only relative positions: on a uniform image every merged patch gets the same
    feature, so no prototype can say where it is. The image position code adds a learned embedding of each
    unit's normalised centre to the merger output, for the image tokens and the prototypes alike."""
    grid = torch.tensor([[1, 4, 6]])  # 2 x 3 merge units
    pixels = torch.ones(24, 3 * 2 * 14 * 14) * 0.3
    plain = tiny_model(seed=0)
    coded = tiny_model(seed=0, image_position_code=True)
    with torch.no_grad():
        a, b = plain.encode_images(pixels, grid), coded.encode_images(pixels, grid)
    assert (a.prototypes - a.prototypes[:1]).abs().max() < 1e-5
    assert (b.prototypes - b.prototypes[:1]).abs().amax(-1)[1:].min() > 1e-3  # every unit differs from unit 0
    # The added term is the learned projection of the (x, y) code of units (row, col) in raster order.
    from padt.decoder import normalised_position_code
    from padt.modeling import IMAGE_POSITION_CODE_DIM

    code = normalised_position_code(torch.arange(6), torch.tensor([[2, 3]]), IMAGE_POSITION_CODE_DIM)[0]
    torch.testing.assert_close(
        b.image_embeds - a.image_embeds, code @ coded.image_position.weight.T, rtol=0, atol=1e-5
    )
    # Configs of the published layout are written as the reference writes them (the option only when on).
    assert "image_position_code" not in plain.config.to_diff_dict()
    assert coded.config.to_diff_dict()["image_position_code"] is True


def test_prototype_position_code_is_a_random_position_term_in_the_prototypes_only(tmp_path):
    """The prototype position term: the projection of each unit's (x, y) code, added to the prototypes and
    nothing else, initialised at random (at zero it would never be used), part of the decoder component, and
    turning it on leaves every other initial weight as it was."""
    from padt.config import PROTOTYPE_POSITION_INIT_STD
    from padt.decoder import normalised_position_code
    from padt.modeling import IMAGE_POSITION_CODE_DIM

    grid = torch.tensor([[1, 4, 6]])  # 2 x 3 merge units
    pixels = torch.rand(24, 3 * 2 * 14 * 14, generator=torch.Generator().manual_seed(0))
    plain = tiny_model(seed=0, random_prototypes=False, image_position_code=True)
    posed = tiny_model(
        seed=0, random_prototypes=False, image_position_code=True, prototype_position_code=True
    )
    ours, theirs = posed.state_dict(), plain.state_dict()
    assert set(ours) - set(theirs) == {"prototype_position.weight"}
    assert all(torch.equal(ours[k], v) for k, v in theirs.items())
    weight = posed.prototype_position.weight
    assert weight.shape == (posed.config.text_config.hidden_size, IMAGE_POSITION_CODE_DIM)
    assert 0.7 * PROTOTYPE_POSITION_INIT_STD < weight.std().item() < 1.3 * PROTOTYPE_POSITION_INIT_STD
    assert posed.component_of("prototype_position.weight") == "decoder"
    assert "prototype_position" in posed.component_modules["decoder"]
    with torch.no_grad():
        a, b = plain.encode_images(pixels, grid), posed.encode_images(pixels, grid)
    code = normalised_position_code(torch.arange(6), torch.tensor([[2, 3]]), IMAGE_POSITION_CODE_DIM)[0]
    torch.testing.assert_close(b.image_embeds, a.image_embeds, rtol=0, atol=0)  # the image tokens: unchanged
    torch.testing.assert_close(b.prototypes - a.prototypes, code @ weight.T, rtol=0, atol=1e-6)
    assert a.prototypes.abs().max() == 0  # vis_norm starts at zero: only the position term tells units apart
    # Saved only when on; a saved model loads with the same term.
    assert "prototype_position_code" not in plain.config.to_diff_dict()
    posed.save_pretrained(tmp_path / "m")
    loaded = PaDTForConditionalGeneration.from_pretrained(tmp_path / "m")
    assert loaded.config.prototype_position_code is True
    torch.testing.assert_close(loaded.prototype_position.weight, weight, rtol=0, atol=0)


def test_prototype_position_init_std_scales_the_same_draws(tmp_path):
    """``prototype_position_init_std`` sets the term's init std (the same random draws, scaled: every other weight
    is unchanged); 0 gives the zero-initialised control; it is saved when not the default; a bad value is a
    one-line error."""
    from padt.config import PROTOTYPE_POSITION_INIT_STD

    def build(**fields):
        return tiny_model(seed=0, image_position_code=True, prototype_position_code=True, **fields)

    default, small, zero = (
        build(),
        build(prototype_position_init_std=0.005),
        build(prototype_position_init_std=0.0),
    )
    torch.testing.assert_close(
        small.prototype_position.weight,
        default.prototype_position.weight * (0.005 / PROTOTYPE_POSITION_INIT_STD),
        rtol=1e-5,
        atol=1e-9,
    )
    assert zero.prototype_position.weight.abs().max() == 0
    theirs = default.state_dict()
    assert all(
        torch.equal(v, theirs[k])
        for k, v in small.state_dict().items()
        if not k.startswith("prototype_position")
    )
    assert "prototype_position_init_std" not in default.config.to_diff_dict()
    small.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["prototype_position_init_std"] == 0.005
    with pytest.raises(PaDTError, match="prototype_position_init_std must be a number >= 0, got -1"):
        build(prototype_position_init_std=-1.0)
