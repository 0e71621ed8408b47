"""Parity with the reference implementation.

Each fixture folder holds a tiny checkpoint saved by the reference code, fixed inputs, and the outputs the
reference computed on them (see the folder's README): the forward pass, the decoder, greedy generation and
the training loss items (token, box, score and mask losses, and their total). Folders come from
``tests/fixtures/parity`` plus the colon-separated paths in ``PADT_PARITY_FIXTURES``. Every setting a folder
recorded (the generate call, the trainer's loss arguments) is read from its ``meta.json`` and applied
(``parity.Settings``). A missing or malformed folder, or a setting that cannot be applied, fails; nothing is
skipped.

Tolerance: ids, strings, boolean masks and the ``-inf`` pattern of the logits exactly; floats within
``1e-4 * max(1, max |reference|)``. Every comparison prints its max abs difference.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers.vision_utils import get_vision_window_index

from padt.box_ops import box_cxcywh_to_xyxy, box_iou, generalized_box_iou
from padt.decoder import PaDTDecoderOutput
from padt.generation import VRTStateRecorder
from padt.losses import (
    PaDTCriterion,
    PaDTOutputs,
    PaDTTargets,
    box_losses,
    build_foreground_sets,
    gt_mask_for_loss,
    mask_losses,
    matched_box_iou,
    robust_token_loss,
    score_loss,
    stack_mask_targets,
)
from padt.modeling import PaDTForConditionalGeneration
from padt.vrt import VRTLayout
from parity import Settings, fixture_dirs, report

REQUIRED_FILES = (
    "config.json",
    "model.safetensors",
    "inputs.safetensors",
    "expected.safetensors",
    "meta.json",
)
FIXTURES = [str(p) for p in fixture_dirs()]


def test_fixtures_present():
    for folder in FIXTURES:
        assert Path(folder).is_dir(), f"parity fixture folder {folder} does not exist"


class Fixture:
    """A loaded fixture folder plus our outputs on its inputs, computed once."""

    def __init__(self, folder: str) -> None:
        path = Path(folder)
        if not path.is_dir():
            raise AssertionError(f"parity fixture folder {folder} does not exist")
        missing = [f for f in REQUIRED_FILES if not (path / f).is_file()]
        if missing:
            raise AssertionError(f"parity fixture {folder} is malformed: missing {', '.join(missing)}")
        self.path = path
        self.meta = json.loads((path / "meta.json").read_text())
        self.settings = Settings.from_meta(self.meta)
        self.inputs = load_file(path / "inputs.safetensors")
        self.expected = load_file(path / "expected.safetensors")
        self.model = PaDTForConditionalGeneration.from_pretrained(
            path, dtype=torch.float32, attn_implementation="sdpa"
        ).eval()
        pv = self.inputs["pixel_values_t0"]
        n = pv.shape[0]
        # Rebuild the processor's pixel_values: both temporal slices of a still image are the same.
        self.pixel_values = pv.view(n, 3, 1, -1).repeat(1, 1, 2, 1).reshape(n, -1)
        self.grid = self.inputs["image_grid_thw"]

    @property
    def vocab_size(self) -> int:
        return self.model.vocab_size

    @torch.no_grad()
    def teacher_forced(self):
        return self.model(
            input_ids=self.inputs["input_ids_global"],
            attention_mask=self.inputs["attention_mask"],
            pixel_values=self.pixel_values,
            image_grid_thw=self.grid,
        )

    @torch.inference_mode()
    def generate(self):
        prompt = self.inputs["prompt_input_ids"]
        recorder = VRTStateRecorder(self.vocab_size, prompt.shape[1])
        # The checkpoint's generation_config.json is the one the reference used; the call's keywords on top.
        loaded = self.model.generation_config
        for key, value in self.settings.generation_config.items():
            assert getattr(loaded, key, None) == value, (
                f"generation_config.{key}: the fixture recorded {value!r}, the loaded checkpoint has "
                f"{getattr(loaded, key, None)!r}"
            )
        out = self.model.generate(
            prompt,
            attention_mask=self.inputs["prompt_attention_mask"],
            pixel_values=self.pixel_values,
            image_grid_thw=self.grid,
            **self.settings.generate_kwargs,
            vrt_repeat_penalty=0.0,  # a padt option the reference does not have
            return_dict_in_generate=True,
            output_logits=True,
            vrt_recorder=recorder,
        )
        return out, recorder


@cache
def load(folder: str) -> Fixture:
    return Fixture(folder)


@cache
def forward(folder: str):
    return load(folder).teacher_forced()


@cache
def generation(folder: str):
    return load(folder).generate()


def assert_close(name: str, ours: torch.Tensor, ref: torch.Tensor) -> None:
    ours, ref = ours.detach().float().cpu(), ref.float()
    assert ours.shape == ref.shape, f"{name}: shape {tuple(ours.shape)} != reference {tuple(ref.shape)}"
    finite = torch.isfinite(ref)
    assert torch.equal(finite, torch.isfinite(ours)), (
        f"{name}: the -inf/NaN pattern differs from the reference"
    )
    diff = (ours[finite] - ref[finite]).abs().max().item() if finite.any() else 0.0
    scale = max(1.0, ref[finite].abs().max().item() if finite.any() else 0.0)
    tol = 1e-4 * scale
    report(f"{name:42s} max abs diff {diff:.3e}  (tolerance {tol:.1e})")
    assert diff <= tol, f"{name}: max abs diff {diff:.3e} > {tol:.1e}"


def assert_equal(name: str, ours: torch.Tensor, ref: torch.Tensor) -> None:
    ours = ours.detach().cpu()
    assert ours.shape == ref.shape, f"{name}: shape {tuple(ours.shape)} != reference {tuple(ref.shape)}"
    mismatches = int((ours.to(ref.dtype) != ref).sum())
    report(f"{name:42s} exact: {mismatches} mismatching entries")
    assert mismatches == 0, f"{name}: {mismatches} entries differ from the reference"


def split_objects(feats: torch.Tensor, counts: torch.Tensor, samples: torch.Tensor, num_samples: int):
    per_sample: list[list[torch.Tensor]] = [[] for _ in range(num_samples)]
    for f, s in zip(torch.split(feats, counts.tolist()), samples.tolist()):
        per_sample[s].append(f)
    return per_sample


# ------------------------------------------------------------------------------------------------ loading
@pytest.mark.parametrize("folder", FIXTURES)
def test_checkpoint_loads_without_missing_or_unexpected_keys(folder, tmp_path):
    fx = load(folder)
    reference = load_file(fx.path / "model.safetensors")
    ours = fx.model.state_dict()
    tied = fx.model.config.tie_word_embeddings
    # Every reference tensor arrived unchanged (4.50 layout -> transformers 5 layout).
    mapped = {}
    for key, value in reference.items():
        if key.startswith("visual."):
            key = "model." + key
        elif key.startswith("model."):
            key = "model.language_model." + key[len("model.") :]
        mapped[key] = value
    assert set(mapped) == set(ours) - ({"lm_head.weight"} if tied else set())
    for key, value in mapped.items():
        assert torch.equal(ours[key], value), key
    # Our own save_pretrained output loads back identically (and keeps the reference's key layout).
    fx.model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    assert set(saved) == set(reference)
    again = PaDTForConditionalGeneration.from_pretrained(tmp_path)
    for key, value in again.state_dict().items():
        assert torch.equal(value, ours[key]), key
    saved_config = json.loads((tmp_path / "config.json").read_text())
    reference_config = json.loads((fx.path / "config.json").read_text())
    assert saved_config["vl_decoder"] == reference_config["vl_decoder"]
    assert (
        saved_config["use_visual_prototype_projection"] == reference_config["use_visual_prototype_projection"]
    )


# ------------------------------------------------------------------------------------------------ forward
@pytest.mark.parametrize("folder", FIXTURES)
def test_vision_outputs(folder):
    fx, out = load(folder), forward(folder)
    ref = fx.expected
    assert_close("image_embeds", out.vision.image_embeds, ref["image_embeds"])
    assert_close(
        "high_res_image_embeds (window order)", out.vision.high_res_image_embeds, ref["high_res_image_embeds"]
    )
    assert_close("visual_pe_cos", out.vision.visual_pe[0], ref["visual_pe_cos"])
    assert_close("visual_pe_sin", out.vision.visual_pe[1], ref["visual_pe_sin"])
    assert_close("image_prototypes", out.vision.prototypes, ref["image_prototypes"])
    visual = fx.model.model.visual
    window_index, cu_window = get_vision_window_index(fx.grid, 2, visual.window_size, visual.patch_size)
    assert_equal("window_index", window_index, ref["window_index"])
    assert_equal(
        "cu_window_seqlens", cu_window, torch.unique_consecutive(ref["cu_window_seqlens"]).to(cu_window.dtype)
    )


@pytest.mark.parametrize("folder", FIXTURES)
def test_logits_hidden_states_and_positions(folder):
    fx, out = load(folder), forward(folder)
    ref = fx.expected
    real = fx.inputs["attention_mask"].bool()
    assert_equal("logit_mask", out.vrt_allowed, ref["logit_mask"])
    # Padded positions depend on how each backbone treats fully masked rows: compare real tokens only.
    assert_close("logits (real positions)", out.logits[real], ref["logits"][real])
    assert_close(
        "last_hidden_state (real positions)", out.last_hidden_state[real], ref["last_hidden_state"][real]
    )
    ids = fx.inputs["input_ids_global"]
    mm = (ids == fx.model.config.image_token_id).int()
    positions, deltas = fx.model.model.get_rope_index(
        ids, mm, fx.grid, attention_mask=fx.inputs["attention_mask"]
    )
    assert_equal("position_ids (real positions)", positions[:, real], ref["position_ids"][:, real])
    # transformers 4.50 counts left padding into rope_deltas, 5.x does not; decode positions agree either way.
    padding = (~real).sum(-1, keepdim=True)
    assert_equal("rope_deltas (4.50 convention)", deltas - padding, ref["rope_deltas"])


# ------------------------------------------------------------------------------------------------ decoder
def _decoder_hooks(model, store):
    def pack(name):
        def hook(module, args, output):
            queries = output[0]
            store[name] = queries

        return hook

    dec = model.vl_decoder
    handles = [
        dec.low_res_transformer.register_forward_pre_hook(lambda m, a: store.__setitem__("Q0", a[0])),
        dec.low_res_transformer.register_forward_hook(pack("query_after_low_res_transformer")),
        dec.high_res_transformer1.register_forward_hook(pack("query_after_high_res_transformer1")),
        dec.high_res_transformer2.register_forward_hook(pack("query_after_high_res_transformer2")),
    ]
    return handles


@pytest.mark.parametrize("folder", FIXTURES)
@pytest.mark.parametrize("prefix", ["tf", "gen"])
def test_decoder_outputs(folder, prefix):
    """Decoder on the reference's own VRT features (teacher-forced and generated), including internals."""
    fx, out = load(folder), forward(folder)
    ref = fx.expected
    feats = split_objects(
        ref[f"{prefix}_vrt_feats"],
        ref[f"{prefix}_vrt_feats_counts"],
        ref[f"{prefix}_vrt_feats_sample"],
        fx.grid.shape[0],
    )
    store: dict[str, torch.Tensor] = {}
    handles = _decoder_hooks(fx.model, store)
    try:
        with torch.no_grad():
            dec = fx.model.decode_objects(feats, out.vision, out.vrt_layout)
    finally:
        for h in handles:
            h.remove()
    assert_close(f"{prefix}_pred_boxes", dec.pred_boxes, ref[f"{prefix}_pred_boxes"])
    assert_close(f"{prefix}_pred_score", dec.pred_score, ref[f"{prefix}_pred_score"])
    assert_close(f"{prefix}_pred_mask", dec.pred_mask, ref[f"{prefix}_pred_mask"])
    assert_equal(f"{prefix}_pred_mask_valid_hw", dec.pred_mask_valid_hw, ref[f"{prefix}_pred_mask_valid_hw"])
    if f"{prefix}_sample_idx" in ref:
        assert_equal(f"{prefix}_sample_idx", dec.sample_idx, ref[f"{prefix}_sample_idx"])
    # Internals: our queries are padded per object; the reference packs the valid rows.
    counts = ref[f"{prefix}_vrt_feats_counts"] + 3
    valid = torch.arange(int(counts.max()))[None] < counts[:, None]
    for name, value in store.items():
        key = f"{prefix}_dec_{name}"
        if key in ref:
            assert_close(key, value[valid], ref[key])
    if f"{prefix}_dec_query_cu_seqlens" in ref:
        cu = torch.nn.functional.pad(counts.cumsum(0), (1, 0))
        assert_equal(f"{prefix}_dec_query_cu_seqlens", cu, ref[f"{prefix}_dec_query_cu_seqlens"].long())


@pytest.mark.parametrize("folder", FIXTURES)
def test_decoder_warmup_features(folder):
    """During warm-up the decoder is fed the prototypes of the ground-truth VRTs."""
    fx, out = load(folder), forward(folder)
    ref = fx.expected
    if "tf_warmup_vrt_feats" not in ref:
        pytest.fail(f"{folder} has no tf_warmup_vrt_feats")
    feats = split_objects(
        ref["tf_warmup_vrt_feats"],
        ref["tf_warmup_vrt_feats_counts"],
        ref["tf_warmup_vrt_feats_sample"],
        fx.grid.shape[0],
    )
    # The warm-up features are prototype rows: find them in our prototypes to check the id arithmetic too.
    for objects, sample in zip(feats, range(len(feats))):
        for f in objects:
            rows = torch.cdist(f, out.vision.prototypes).argmin(-1)
            assert_close(f"warm-up prototype rows (sample {sample})", out.vision.prototypes[rows], f)
    with torch.no_grad():
        dec = fx.model.decode_objects(feats, out.vision, out.vrt_layout)
    assert_close("loss_warmup_pred_boxes", dec.pred_boxes, ref["loss_warmup_pred_boxes"])
    assert_close("loss_warmup_pred_score", dec.pred_score, ref["loss_warmup_pred_score"])


# ------------------------------------------------------------------------------------------------ generation
@pytest.mark.parametrize("folder", FIXTURES)
def test_greedy_generation(folder):
    fx = load(folder)
    out, recorder = generation(folder)
    ref = fx.expected
    assert_equal("gen_sequences_global", out.sequences, ref["gen_sequences_global"])
    layout = forward(folder).vrt_layout
    assert_equal("gen_sequences_local", layout.to_local(out.sequences), ref["gen_sequences_local"])
    assert_close("gen_step_logits", torch.stack(out.logits, 1), ref["gen_step_logits"])
    # One recorded state per generated VRT, and it is the last-layer state of the step that emitted it.
    prompt_length = fx.inputs["prompt_input_ids"].shape[1]
    new = out.sequences[:, prompt_length:]
    for row in range(new.shape[0]):
        vrt_steps = (new[row] >= fx.vocab_size).nonzero().flatten().tolist()
        assert sorted(recorder.states.get(row, {})) == vrt_steps
        if vrt_steps:
            assert_close(
                f"gen VRT states (sample {row})",
                recorder.features(row, vrt_steps),
                ref["gen_step_last_hidden"][row, vrt_steps],
            )


# ------------------------------------------------------------------------------------------------ losses
# The loss pieces the reference trainer computed on the fixture's teacher-forced batch (docs/method.md §8.3,
# §8.5), recomputed by padt.losses from the stored logits, decoder outputs and objects.


def _close(name: str, actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert_close(name, actual.detach().float().reshape(expected.shape), expected)


def _load(folder: str):
    fixture = Path(folder)
    meta = json.loads((fixture / "meta.json").read_text())
    return meta, load_file(fixture / "expected.safetensors"), load_file(fixture / "inputs.safetensors")


def _objects(meta) -> list[tuple[dict, int]]:
    return [(obj, sample["P_offset"]) for sample in meta["samples"] for obj in sample["objects"]]


def _layout(meta, inputs) -> VRTLayout:
    """The fixture batch's VRT layout (one image per sample, as the reference requires)."""
    grid = inputs["image_grid_thw"]
    return VRTLayout(
        meta["vrt_id_convention"]["V"], grid, torch.arange(grid.shape[0]), grid.shape[0], merge_size=2
    )


def _foreground_sets(meta, settings: Settings, targets: torch.Tensor, inputs):
    """What the trainer's loss leaves out per VRT target: the object's other foreground VRTs with the robust loss
    (``use_sft_vp_mask``), nothing without it."""
    vocab = meta["vrt_id_convention"]["V"]
    if not settings.robust_loss:
        return [t.reshape(1) for t in targets[targets >= vocab]]
    layout = _layout(meta, inputs)
    objects = [(obj, b) for b, sample in enumerate(meta["samples"]) for obj in sample["objects"]]
    for obj, b in objects:  # the layout's global ids are the reference's V + P_i + j
        offset = vocab + meta["samples"][b]["P_offset"]
        assert layout.global_ids(b, obj["patches"]) == [offset + j for j in obj["patches"]]
    return build_foreground_sets(
        [o["picked"] for o, _ in objects], [layout.global_ids(b, o["patches"]) for o, b in objects]
    )


@pytest.mark.parametrize("folder", FIXTURES)
def test_parity_token_loss(folder: str):
    meta, exp, inp = _load(folder)
    settings = Settings.from_meta(meta)
    vocab = meta["vrt_id_convention"]["V"]
    prompt_len = meta["prompt_length_padded"]
    targets = inp["input_ids_global"][:, prompt_len:]
    sets = _foreground_sets(meta, settings, targets, inp)
    # Our foreground sets are the reference's loss_masks rows once the target itself is put back.
    rows = torch.zeros(len(sets), exp["loss_vrt_masks"].shape[1], dtype=torch.bool)
    vrt_targets = targets[targets >= vocab]
    for r, ids in enumerate(sets):
        rows[r, ids] = True
        rows[r, vrt_targets[r]] = False
    assert torch.equal(rows, exp["loss_vrt_masks"])

    out = robust_token_loss(
        exp["logits"][:, prompt_len - 1 : -1], targets, inp["completion_attention_mask"], sets, vocab
    )
    for key in ("loss_per_token", "loss_warmup_per_token"):
        _close(key, out["token_loss_per_token"], exp[key])
    for key in ("loss_sft_per_sample", "loss_warmup_sft_per_sample"):
        _close(key, out["token_loss_per_sample"], exp[key])
    # The reference's own boolean layout gives the same losses.
    out_mask = robust_token_loss(
        exp["logits"][:, prompt_len - 1 : -1],
        targets,
        inp["completion_attention_mask"],
        exp["loss_vrt_masks"],
        vocab,
    )
    torch.testing.assert_close(out_mask["token_loss_per_token"], out["token_loss_per_token"], atol=0, rtol=0)
    _close(
        "sft_loss (logged)",
        out["loss_token"],
        torch.tensor(meta["loss"]["main"]["metrics_logged_by_trainer"]["sft_loss"][0]),
    )


def _mask_target_list(meta, exp):
    grids = exp["tf_pred_mask_valid_hw"]
    return [
        gt_mask_for_loss(obj["rle"], hw) if obj.get("rle") else None
        for (obj, _), hw in zip(_objects(meta), grids.tolist())
    ]


def _mask_targets(meta, exp):
    grids = exp["tf_pred_mask_valid_hw"]
    return stack_mask_targets(
        _mask_target_list(meta, exp), grids, out_hw=tuple(exp["tf_pred_mask"].shape[1:])
    )


@pytest.mark.parametrize("folder", FIXTURES)
def test_parity_mask_targets(folder: str):
    meta, exp, _ = _load(folder)
    gt, valid, _ = _mask_targets(meta, exp)
    assert torch.equal(gt.bool(), exp["loss_gt_mask"])
    assert torch.equal(valid.bool(), exp["loss_valid_mask"])


@pytest.mark.parametrize("run", ["main", "warmup"])
@pytest.mark.parametrize("folder", FIXTURES)
def test_parity_box_score_and_mask_losses(folder: str, run: str):
    meta, exp, inp = _load(folder)
    settings = Settings.from_meta(meta)
    if run == "warmup":
        # The warm-up run feeds the decoder the ground-truth prototypes only when the trainer had warm-up on.
        assert meta["loss"]["warmup"]["warm_up_active"] == settings.warm_up, (
            "trainer_args_used.use_warm_up disagrees with loss.warmup.warm_up_active"
        )
    pre = "loss_" if run == "main" else "loss_warmup_"
    pred_boxes = exp["tf_pred_boxes"] if run == "main" else exp["loss_warmup_pred_boxes"]
    pred_scores = exp["tf_pred_score"] if run == "main" else exp["loss_warmup_pred_score"]
    # The fixture stores the GT boxes after the reference's bfloat16 cast; the reference also converts them
    # to cxcywh in bfloat16, which reference_gt_dtype reproduces.
    gt_boxes = exp["loss_gt_bboxes_bf16_as_f32"]

    pred_xyxy = box_cxcywh_to_xyxy(pred_boxes)
    _close(pre + "iou_matrix", box_iou(pred_xyxy, gt_boxes)[0], exp[pre + "iou_matrix"])
    _close(pre + "giou_matrix", generalized_box_iou(pred_xyxy, gt_boxes), exp[pre + "giou_matrix"])
    _, giou = matched_box_iou(pred_boxes, gt_boxes, reference_gt_dtype=torch.bfloat16)
    _close(pre + "giou_diag", giou, exp[pre + "giou_diag"])

    out = box_losses(pred_boxes, gt_boxes, reference_gt_dtype=torch.bfloat16)
    _close(pre + "bbox_l1_term", out["loss_bbox_l1"], exp[pre + "bbox_l1_term"])
    _close(pre + "bbox_giou_term", out["loss_bbox_giou"], exp[pre + "bbox_giou_term"])
    _close(pre + "bbox_total", out["loss_bbox_l1"] + out["loss_bbox_giou"], exp[pre + "bbox_total"])
    logged = meta["loss"][run]["metrics_logged_by_trainer"]
    _close(f"{run} iou (logged)", out["iou"], torch.tensor(logged["iou"][0]))
    _close(f"{run} giou (logged)", out["giou"], torch.tensor(logged["giou"][0]))
    _close(pre + "score", score_loss(pred_scores, out["matched_giou"])["loss_score"], exp[pre + "score"])

    weights = settings.loss_weights
    sft = exp[pre + "sft_per_sample"].mean()
    if run == "warmup":
        # The warm-up decoder's mask logits are not stored: check the total with the stored mask term.
        total = weights["loss_token"] * sft + weights["loss_bbox_l1"] * out["loss_bbox_l1"]
        total = total + weights["loss_bbox_giou"] * out["loss_bbox_giou"]
        total = total + weights["loss_score"] * score_loss(pred_scores, out["matched_giou"])["loss_score"]
        total = total + weights["loss_mask_dice"] * exp[pre + "mask_total"]
        _close(pre + "total", total, exp[pre + "total"])
        return

    gt, valid, has_mask = _mask_targets(meta, exp)
    masks = mask_losses(exp["tf_pred_mask"], gt, valid, has_mask)
    _close("loss_dice", masks["loss_mask_dice"], exp["loss_dice"])
    _close("loss_focal", masks["loss_mask_focal"], exp["loss_focal"])
    _close("loss_mask_total", masks["loss_mask_dice"] + masks["loss_mask_focal"], exp["loss_mask_total"])

    # The whole criterion, with the loss terms the trainer had switched on, against its return value.
    vocab = meta["vrt_id_convention"]["V"]
    prompt_len = meta["prompt_length_padded"]
    tokens = inp["input_ids_global"][:, prompt_len:]
    decoded = PaDTDecoderOutput(
        pred_boxes=pred_boxes,
        pred_score=pred_scores,
        pred_mask=exp["tf_pred_mask"],
        pred_mask_valid_hw=exp["tf_pred_mask_valid_hw"],
    )
    targets = PaDTTargets(
        tokens=tokens,
        completion_mask=inp["completion_attention_mask"],
        foreground_sets=_foreground_sets(meta, settings, tokens, inp),
        vocab_size=vocab,
        boxes=gt_boxes,
        masks=_mask_target_list(meta, exp),
    )
    full = PaDTCriterion(weights, reference_gt_dtype=torch.bfloat16)(
        PaDTOutputs(logits=exp["logits"][:, prompt_len - 1 : -1], decoded=decoded), targets
    )
    _close("loss_total", full["loss"], exp["loss_total"])
