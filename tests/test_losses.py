"""PaDT's losses (docs/method.md §8.3, §8.5): hand-computed values on tiny cases, edge cases and the weight dict.
Parity with the loss pieces the reference trainer computed lives in test_parity.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from padt.decoder import PaDTDecoderOutput
from padt.errors import PaDTError
from padt.losses import (
    DEFAULT_LOSS_WEIGHTS,
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
    weighted_total,
)


def _lse(values) -> float:
    return math.log(sum(math.exp(v) for v in values))


# ------------------------------------------------------------------------------------------- token loss

V = 3  # text ids 0..2, then VRT ids 3..6


def test_robust_token_loss_by_hand():
    row_vrt = [1.0, 2.0, 0.0, 0.5, 3.0, -1.0, 2.0]
    row_text = [0.3, 2.0, -0.7, 1.0, 0.0, 0.2, -2.0]
    logits = torch.tensor([[row_vrt, row_text]])
    targets = torch.tensor([[V + 1, 1]])
    mask = torch.ones(1, 2)
    # The object's foreground VRTs are 3, 4 (the target) and 6: 3 and 6 leave the softmax of position 0.
    out = robust_token_loss(logits, targets, mask, [[3, 4, 6]], V)
    l0 = -3.0 + _lse([1.0, 2.0, 0.0, 3.0, -1.0])
    l1 = -2.0 + _lse(row_text)
    assert out["token_loss_per_token"][0].tolist() == pytest.approx([l0, l1], abs=1e-6)
    assert out["token_loss_per_sample"].item() == pytest.approx((l0 + l1) / (2 + 1e-4), abs=1e-6)
    assert out["loss_token"].item() == pytest.approx((l0 + l1) / (2 + 1e-4), abs=1e-6)
    # The same exclusion as the reference's boolean row (True = leave out).
    row = torch.tensor([[False, False, False, True, False, False, True]])
    torch.testing.assert_close(
        robust_token_loss(logits, targets, mask, row, V)["loss_token"], out["loss_token"]
    )
    # Without a foreground set beyond the target itself it is the plain cross-entropy.
    plain = robust_token_loss(logits, targets, mask, [[4]], V)["token_loss_per_token"][0, 0].item()
    assert plain == pytest.approx(-3.0 + _lse(row_vrt), abs=1e-6)


def test_token_weights_scale_each_tokens_term_and_keep_the_denominator():
    logits = torch.tensor([[[1.0, 2.0, 0.0, 0.5, 3.0, -1.0, 2.0], [0.3, 2.0, -0.7, 1.0, 0.0, 0.2, -2.0]]])
    targets = torch.tensor([[V + 1, 1]])
    mask = torch.ones(1, 2)
    base = robust_token_loss(logits, targets, mask, [[4]], V)
    l0, l1 = base["token_loss_per_token"][0].tolist()
    weighted = robust_token_loss(logits, targets, mask, [[4]], V, torch.tensor([[1.0, 4.0]]))
    assert weighted["loss_token"].item() == pytest.approx((l0 + 4 * l1) / (2 + 1e-4), abs=1e-6)
    torch.testing.assert_close(weighted["token_loss_per_token"], base["token_loss_per_token"])
    with pytest.raises(PaDTError, match="token_weights must have the targets' shape"):
        robust_token_loss(logits, targets, mask, [[4]], V, torch.ones(1, 3))


def test_robust_token_loss_several_objects_images_and_padding():
    # Sample 0 owns image 0 (VRT rows 0..3), sample 1 owns images 1 and 2 (rows 4..5 and 6..9): V + 10 classes.
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, V + 10, generator=gen)
    targets = torch.tensor([[V + 0, V + 2, 1, 0], [V + 5, 2, V + 7, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    picked = [[0], [2], [1], [1]]  # per object, its patch index within its image
    patches = [[0, 1], [2, 3], [0, 1], [1, 2, 3]]
    offsets = [0, 0, 4, 6]  # global offset of each object's image
    sets = build_foreground_sets(picked, [[V + o + j for j in p] for p, o in zip(patches, offsets)])
    assert [s.tolist() for s in sets] == [[3, 4], [5, 6], [7, 8], [10, 11, 12]]
    out = robust_token_loss(logits, targets, mask, sets, V)

    excluded = {(0, 0): [V + 1], (0, 1): [V + 3], (1, 0): [V + 4], (1, 2): [V + 8, V + 9]}
    expected = torch.zeros(2, 4)
    for b in range(2):
        for t in range(4):
            row = logits[b, t].tolist()
            keep = [z for c, z in enumerate(row) if c not in excluded.get((b, t), [])]
            expected[b, t] = -row[targets[b, t]] + _lse(keep)
    torch.testing.assert_close(out["token_loss_per_token"], expected, atol=1e-5, rtol=0)
    per_sample = torch.stack([(expected[b] * mask[b]).sum() / (mask[b].sum() + 1e-4) for b in range(2)])
    torch.testing.assert_close(out["token_loss_per_sample"], per_sample, atol=1e-5, rtol=0)
    assert out["loss_token"].item() == pytest.approx(per_sample.mean().item(), abs=1e-5)


def test_robust_token_loss_gradient_ignores_other_foreground_vrts():
    logits = torch.tensor([[[0.5, -1.0, 0.0, 2.0, 1.0, 0.0, 3.0]]], requires_grad=True)
    out = robust_token_loss(logits, torch.tensor([[V + 1]]), torch.ones(1, 1), [[3, 4, 6]], V)
    out["loss_token"].backward()
    grad = logits.grad[0, 0] * (1 + 1e-4)  # undo the per-sample normaliser
    kept = [0, 1, 2, 4, 5]
    z = [logits[0, 0, c].item() for c in kept]
    softmax = {c: math.exp(v - _lse(z)) for c, v in zip(kept, z)}
    for c in range(7):
        want = 0.0 if c in (3, 6) else softmax[c] - (c == 4)
        assert grad[c].item() == pytest.approx(want, abs=1e-6)


def test_robust_token_loss_runs_in_float32_and_keeps_its_input():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 3, V + 4, generator=gen).to(torch.bfloat16)
    before = logits.clone()
    targets = torch.tensor([[V + 2, 0, V + 3]])
    sets = [[V + 2, V + 3], [V + 2, V + 3]]
    out = robust_token_loss(logits, targets, torch.ones(1, 3), sets, V)
    ref = robust_token_loss(logits.float(), targets, torch.ones(1, 3), sets, V)
    assert out["token_loss_per_token"].dtype == torch.float32
    torch.testing.assert_close(out["token_loss_per_token"], ref["token_loss_per_token"], atol=0, rtol=0)
    assert torch.equal(logits, before)


def test_robust_token_loss_ignores_negative_targets_and_checks_its_inputs():
    logits = torch.zeros(1, 2, V + 2)
    out = robust_token_loss(logits, torch.tensor([[1, -100]]), torch.ones(1, 2), [], V)
    assert out["token_loss_per_token"][0].tolist() == pytest.approx([math.log(5), 0.0])
    assert out["loss_token"].item() == pytest.approx(math.log(5) / (1 + 1e-4))
    with pytest.raises(PaDTError, match="one foreground set per VRT"):
        robust_token_loss(logits, torch.tensor([[V, 1]]), torch.ones(1, 2), [], V)
    with pytest.raises(PaDTError, match="global VRT ids"):
        robust_token_loss(logits, torch.tensor([[V, 1]]), torch.ones(1, 2), [[0, V]], V)
    with pytest.raises(PaDTError):
        robust_token_loss(logits, torch.tensor([1, 1]), torch.ones(1, 2), [], V)
    with pytest.raises(PaDTError, match="boolean"):
        robust_token_loss(
            logits, torch.tensor([[V, 1]]), torch.ones(1, 2), torch.zeros(1, V, dtype=torch.bool), V
        )
    with pytest.raises(PaDTError):
        build_foreground_sets([[1]], [[V + 1], [V + 2]])


# ------------------------------------------------------------------------------------------- boxes


def test_box_losses_by_hand():
    # Prediction: the centred square [0.25, 0.75]^2; GT: [0.5, 1.0]^2.
    # IoU = 0.0625 / 0.4375 = 1/7, enclosing box 0.75^2 = 0.5625, GIoU = 1/7 - 0.125 / 0.5625.
    pred = torch.tensor([[0.5, 0.5, 0.5, 0.5]])
    gt = torch.tensor([[0.5, 0.5, 1.0, 1.0]])
    giou = 1 / 7 - 0.125 / 0.5625
    iou, g = matched_box_iou(pred, gt)
    assert iou.item() == pytest.approx(1 / 7, abs=1e-6)
    assert g.item() == pytest.approx(giou, abs=1e-6)
    out = box_losses(pred, gt)
    # L1 against the GT's cxcywh (0.75, 0.75, 0.5, 0.5): 0.25 + 0.25 + 0 + 0.
    assert out["loss_bbox_l1"].item() == pytest.approx(0.5 / (1 + 1e-4), abs=1e-6)
    assert out["loss_bbox_giou"].item() == pytest.approx(1 - giou / (1 + 1e-4), abs=1e-6)
    assert out["iou"].item() == pytest.approx(1 / 7, abs=1e-6)
    # Two objects: the second one predicted perfectly (GIoU 1, L1 0).
    pred2 = torch.cat([pred, torch.tensor([[0.3, 0.4, 0.2, 0.4]])])
    gt2 = torch.cat([gt, torch.tensor([[0.2, 0.2, 0.4, 0.6]])])
    out2 = box_losses(pred2, gt2)
    assert out2["loss_bbox_l1"].item() == pytest.approx(0.5 / (2 + 1e-4), abs=1e-6)
    assert out2["loss_bbox_giou"].item() == pytest.approx(1 - (giou + 1) / (2 + 1e-4), abs=1e-6)
    assert out2["giou"].item() == pytest.approx((giou + 1) / 2, abs=1e-6)


def test_score_loss_by_hand():
    # 2σ(0) - 1 = 0 and 2σ(ln 3) - 1 = 0.5.
    scores = torch.tensor([[0.0], [math.log(3)]], requires_grad=True)
    giou = torch.tensor([0.2, -0.1], requires_grad=True)
    out = score_loss(scores, giou)
    assert out["loss_score"].item() == pytest.approx((0.2**2 + 0.6**2) / (2 + 1e-4), abs=1e-6)
    out["loss_score"].backward()
    assert giou.grad is None  # the GIoU is a fixed target
    with pytest.raises(PaDTError):
        score_loss(torch.zeros(3), torch.zeros(2))


def test_degenerate_gt_boxes_give_finite_losses():
    pred = torch.tensor([[0.5, 0.4, 0.2, 0.4], [0.5, 0.5, 0.6, 0.6]], requires_grad=True)
    gt = torch.tensor([[0.5, 0.2, 0.5, 0.6], [0.8, 0.8, 0.2, 0.2]])  # zero width; corners swapped
    out = box_losses(pred, gt)
    total = out["loss_bbox_l1"] + out["loss_bbox_giou"]
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(pred.grad).all()
    # Swapped corners mean the same box.
    same = box_losses(pred[1:].detach(), torch.tensor([[0.2, 0.2, 0.8, 0.8]]))
    swapped = box_losses(pred[1:].detach(), gt[1:])
    assert swapped["loss_bbox_giou"].item() == pytest.approx(same["loss_bbox_giou"].item(), abs=1e-7)
    # A collapsed prediction does not break the IoU either.
    iou, giou = matched_box_iou(torch.tensor([[0.5, 0.5, 0.0, 0.0]]), gt[:1])
    assert torch.isfinite(iou).all() and torch.isfinite(giou).all()
    with pytest.raises(PaDTError):
        box_losses(pred, gt[:1])


def test_no_objects_give_zero_losses_that_carry_grad():
    pred_boxes = torch.zeros(0, 4, requires_grad=True)
    pred_scores = torch.zeros(0, 1, requires_grad=True)
    pred_masks = torch.zeros(0, 8, 8, requires_grad=True)
    # Without objects the decoder decodes one placeholder; every decoder term is 0 but keeps it in the graph.
    placeholder = PaDTDecoderOutput(
        pred_boxes=pred_boxes + 0.5,
        pred_score=pred_scores + 1,
        pred_mask=pred_masks + 1,
        pred_mask_valid_hw=torch.tensor([[2, 2]]),
    )
    crit = PaDTCriterion({k: w for k, w in DEFAULT_LOSS_WEIGHTS.items() if k != "loss_token"})
    targets = PaDTTargets(
        torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, 0), [], V, boxes=torch.zeros(0, 4)
    )
    out = crit(PaDTOutputs(logits=torch.zeros(1, 0, V), decoded=placeholder), targets)
    for name in ("loss_bbox_l1", "loss_bbox_giou", "loss_score", "loss_mask_dice", "loss_mask_focal", "loss"):
        assert out[name].item() == 0.0, name
    assert out["loss"].requires_grad
    out["loss"].backward()
    assert pred_boxes.grad is not None and pred_masks.grad is not None and pred_scores.grad is not None


# ------------------------------------------------------------------------------------------- masks


def _focal(p: float, g: int) -> float:
    p_t = p if g else 1 - p
    alpha_t = 0.25 if g else 0.75
    return alpha_t * (1 - p_t) ** 2 * -math.log(p_t)


def test_mask_losses_by_hand():
    # One object whose valid region is the left 2x2 of a 2x3 layout (the third column is padding).
    logits = torch.tensor([[[0.0, math.log(3), 5.0], [-math.log(3), 0.0, 5.0]]])  # σ: .5 .75 | .25 .5
    gt = torch.tensor([[[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]])
    valid = torch.tensor([[[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]]])
    out = mask_losses(logits, gt, valid)
    # Σσgv = 1.25, Σσv = 2, Σgv = 2: dice = 1 - 3.5 / 5.
    num = 1 + 1e-5
    assert out["loss_mask_dice"].item() == pytest.approx(0.3 / num, abs=1e-6)
    focal = (_focal(0.5, 1) + _focal(0.75, 1) + _focal(0.25, 0) + _focal(0.5, 0)) / (4 + 1e-5)
    assert out["loss_mask_focal"].item() == pytest.approx(focal / num, abs=1e-6)

    # A second object without a GT mask is left out entirely.
    logits2 = torch.cat([logits, torch.full((1, 2, 3), 2.0)])
    gt2 = torch.cat([gt, torch.zeros(1, 2, 3)])
    valid2 = torch.cat([valid, torch.ones(1, 2, 3)])
    out2 = mask_losses(logits2, gt2, valid2, torch.tensor([True, False]))
    assert out2["loss_mask_dice"].item() == pytest.approx(out["loss_mask_dice"].item(), abs=1e-7)
    assert out2["loss_mask_focal"].item() == pytest.approx(out["loss_mask_focal"].item(), abs=1e-7)
    with pytest.raises(PaDTError):
        mask_losses(logits, gt[:, :1], valid)


def test_gt_mask_for_loss_and_stacking():
    # The left half of a 28x28 image, on a 2x2 patch grid -> an 8x8 target: bilinear samples at
    # x = 3.5 * i + 1.25 fall inside the left half (x < 14) for i <= 3.
    image = np.zeros((28, 28), dtype=np.uint8)
    image[:, :14] = 1
    rle = mask_utils.encode(np.asfortranarray(image))
    target = gt_mask_for_loss(rle, (2, 2))
    assert target.dtype == torch.bool and target.shape == (8, 8)
    assert target[:, :4].all() and not target[:, 4:].any()
    np.testing.assert_array_equal(gt_mask_for_loss(image, (2, 2)).numpy(), target.numpy())

    gt, valid, has_mask = stack_mask_targets([target, None], [[2, 2], [2, 3]])
    assert gt.shape == valid.shape == (2, 8, 12)
    assert torch.equal(gt[0, :, :8].bool(), target) and gt[0, :, 8:].sum() == 0 and gt[1].sum() == 0
    assert valid[0].sum() == 64 and valid[0, :, 8:].sum() == 0 and valid[1].sum() == 96
    assert has_mask.tolist() == [True, False]
    with pytest.raises(PaDTError):
        stack_mask_targets([target], [[3, 3]])


# ------------------------------------------------------------------------------------------- weights


def test_weight_dict_combines_and_switches_terms_off():
    terms = {"loss_token": torch.tensor(2.0), "loss_bbox_l1": torch.tensor(3.0), "iou": torch.tensor(0.5)}
    assert weighted_total(terms, {"loss_token": 1.0, "loss_bbox_l1": 0.5}).item() == 3.5
    assert weighted_total(terms, {"loss_token": 1.0, "loss_bbox_l1": 0.0, "loss_mask_dice": 0}).item() == 2.0
    with pytest.raises(PaDTError, match="loss_score"):
        weighted_total(terms, {"loss_score": 1.0})
    with pytest.raises(PaDTError):
        PaDTCriterion({"loss_bogus": 1.0})

    pred = torch.tensor([[0.5, 0.5, 0.5, 0.5]])
    gt = torch.tensor([[0.5, 0.5, 1.0, 1.0]])
    decoded = PaDTDecoderOutput(pred_boxes=pred, pred_score=torch.tensor([[0.3]]), pred_mask=None)
    logits = torch.tensor([[[0.0, 1.0, 2.0]]])
    targets = PaDTTargets(torch.tensor([[1]]), torch.ones(1, 1), [], V, boxes=gt)
    # Only the GIoU term, weighted: nothing else is computed.
    out = PaDTCriterion({"loss_bbox_giou": 2.0})(PaDTOutputs(logits, decoded), targets)
    assert set(out) == {"loss_bbox_l1", "loss_bbox_giou", "iou", "giou", "matched_giou", "loss"}
    assert out["loss"].item() == pytest.approx(2 * out["loss_bbox_giou"].item())
    # The token term alone ignores the decoder; with all terms the total is their sum.
    token = PaDTCriterion({"loss_token": 1.0})(PaDTOutputs(logits, decoded), targets)
    assert token["loss"].item() == pytest.approx((-1.0 + _lse([0.0, 1.0, 2.0])) / (1 + 1e-4), abs=1e-6)
    full = PaDTCriterion()(PaDTOutputs(logits, decoded), targets)
    parts = ("loss_token", "loss_bbox_l1", "loss_bbox_giou", "loss_score")
    assert full["loss"].item() == pytest.approx(sum(full[k].item() for k in parts), abs=1e-6)
    assert "loss_mask_dice" not in full  # the decoder predicted no masks (use_mask_loss off)
