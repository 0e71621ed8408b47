"""PaDT's training losses (docs/method.md §8.3 and §8.5), independent of the model.

Each loss is a function returning a dict of named terms, as DETR's ``SetCriterion`` does:

- :func:`robust_token_loss` -> ``loss_token`` (per-token cross-entropy where an object's other foreground
  VRTs are not negatives);
- :func:`box_losses` -> ``loss_bbox_l1``, ``loss_bbox_giou``;
- :func:`score_loss` -> ``loss_score`` (the score learns the box's GIoU);
- :func:`mask_losses` -> ``loss_mask_dice``, ``loss_mask_focal``.

Keys starting with ``loss_`` are loss terms; the others (per-token losses, mean IoU/GIoU) are for logging.
A weight dict (:data:`DEFAULT_LOSS_WEIGHTS`) combines the terms (:func:`weighted_total`), and
:class:`PaDTCriterion` computes only the terms whose weight is non-zero, so any term can be switched off by
name. The reference weighs every term by 1.

Objects are matched to ground truth by order (the order of the ``<|Obj_k|>`` placeholders, §8.4), so every
per-object tensor here is ``(O, ...)`` with row ``o`` belonging to the ``o``-th object of the batch.
Everything is computed in float32 whatever the input dtype.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from padt.box_ops import box_cxcywh_to_xyxy, box_iou, box_xyxy_to_cxcywh, generalized_box_iou
from padt.errors import PaDTError
from padt.masks import resize_bilinear_cv2, segmentation_to_mask

LOSS_TERMS = (
    "loss_token",
    "loss_bbox_l1",
    "loss_bbox_giou",
    "loss_score",
    "loss_mask_dice",
    "loss_mask_focal",
)
# docs/method.md §8.5: L = mean_b(sft) + L_box + L_score + L_mask, all weights 1.
DEFAULT_LOSS_WEIGHTS: dict[str, float] = dict.fromkeys(LOSS_TERMS, 1.0)

# The reference's normalisers (§8.3, §8.5).
_TOKEN_EPS = 1e-4
_OBJECT_EPS = 1e-4
_MASK_EPS = 1e-5
# Boxes narrower than this (normalised units) are widened to it so that (G)IoU stays finite.
_MIN_BOX_SIDE = 1e-6


# ------------------------------------------------------------------------------------------- token loss


def build_foreground_sets(
    picked: Sequence[Sequence[int]], foreground_ids: Sequence[Sequence[int]]
) -> list[torch.Tensor]:
    """The foreground set of every VRT target, in the order :func:`robust_token_loss` expects.

    Args:
        picked: per object, the VRTs written in its run (``k_o`` of them; only their number is used).
        foreground_ids: per object, the GLOBAL ids of its foreground VRTs (§9.3):
            ``VRTLayout.global_ids(image, patches)``.

    Objects must be listed sample by sample, in completion order, so that the result lines up with the VRT
    targets in row-major order. Returns one ``(|F_o|,)`` int64 tensor per picked VRT (the ``k_o`` entries of an
    object share one tensor).
    """
    if len(picked) != len(foreground_ids):
        raise PaDTError(
            f"picked ({len(picked)}) and foreground_ids ({len(foreground_ids)}) must have one entry per object"
        )
    out: list[torch.Tensor] = []
    for run, ids in zip(picked, foreground_ids):
        out.extend([torch.as_tensor([int(i) for i in ids], dtype=torch.long)] * len(run))
    return out


def _exclusion_pairs(
    foreground_sets: torch.Tensor | Sequence[torch.Tensor | Sequence[int]],
    num_vrt: int,
    vocab_size: int,
    num_classes: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(row, class)`` pairs to leave out of the softmax: row ``r`` is the ``r``-th VRT target."""
    if isinstance(foreground_sets, torch.Tensor) and foreground_sets.dtype == torch.bool:
        # The reference's loss_masks layout: (R, C), True = leave out.
        if foreground_sets.ndim != 2 or foreground_sets.shape[1] != num_classes:
            raise PaDTError(
                f"a boolean foreground mask must be (num VRT targets, {num_classes}), got "
                f"{tuple(foreground_sets.shape)}"
            )
        count = foreground_sets.shape[0]
        row_of, cols = foreground_sets.nonzero().unbind(-1)
    else:
        count = len(foreground_sets)
        # Built on the CPU and moved once: the sets are small, and checking them there costs no device sync.
        flat = [torch.as_tensor(ids, dtype=torch.long).reshape(-1).cpu() for ids in foreground_sets]
        sizes = torch.tensor([f.numel() for f in flat], dtype=torch.long)
        row_of = torch.repeat_interleave(torch.arange(count), sizes)
        cols = torch.cat(flat) if flat else torch.zeros(0, dtype=torch.long)
        if cols.numel() and (int(cols.min()) < vocab_size or int(cols.max()) >= num_classes):
            raise PaDTError(
                f"foreground ids must be global VRT ids in [{vocab_size}, {num_classes}); convert local "
                "patch indices with V + P_i + j"
            )
    if count != num_vrt:
        raise PaDTError(
            f"foreground_sets has {count} entries but the targets hold {num_vrt} VRTs; pass one foreground "
            "set per VRT target, in row-major order"
        )
    return row_of, cols


def robust_token_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    completion_mask: torch.Tensor,
    foreground_sets: torch.Tensor | Sequence[torch.Tensor | Sequence[int]],
    vocab_size: int,
    token_weights: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Per-token cross-entropy over text + VRT classes in which an object's VRTs do not compete (§8.3).

    At a position whose target is the VRT ``p*`` of object ``o``, the other foreground VRTs of ``o`` are left
    out of the softmax::

        l = -z[p*] + log( sum_{c not in F_o \\ {p*}} exp z[c] )

    so the model is never pushed away from a valid patch of the object it names. Background patches and other
    objects' patches remain negatives. Every other position gets the plain cross-entropy.

    Args:
        logits: ``(B, L, C)``, ``C = V + ΣN``, where ``logits[:, t]`` predicts ``targets[:, t]`` (for a causal
            LM: ``out.logits[:, P-1:-1]`` with ``P`` the padded prompt length). VRTs of other images may
            already be ``-inf``. Any float dtype; the loss is computed in float32.
        targets: ``(B, L)`` completion ids with VRTs as *global* ids (``>= V``). Negative ids are ignored.
        completion_mask: ``(B, L)``, 1 on the completion tokens to supervise (``<|im_end|>`` included).
        foreground_sets: one entry per VRT target (position with ``targets >= V``) in row-major order: the
            global ids of that object's foreground VRTs (the target itself may be included; it is always
            kept). Several objects and several images per sample need nothing special: each entry lists
            global ids. :func:`build_foreground_sets` builds them. The reference's layout, an ``(R, C)``
            bool tensor that is True at the ids to leave out, is accepted too.
        vocab_size: ``V``.
        token_weights: optional ``(B, L)`` factors ``w_t`` on each token's loss (1 = the reference; e.g.
            :func:`padt.training.batch.count_token_weights`). The denominator stays the number of supervised
            tokens, so a weight above 1 adds to a token's pull without taking from the others'.

    Returns:
        ``loss_token``: scalar, the batch mean of the per-sample means
        ``sum_t w_t * l_t * m_t / (sum_t m_t + 1e-4)``;
        ``token_loss_per_token``: ``(B, L)`` float32 ``l_t`` before masking (0 at ignored targets);
        ``token_loss_per_sample``: ``(B,)``.

    Memory: besides one float32 copy of ``logits`` when they are in lower precision, only the rows of the VRT
    targets are copied (``(R, C)``, ``R <= B*L``); nothing of size ``B x L x C`` is added to that.
    """
    if logits.ndim != 3 or targets.shape != logits.shape[:2] or completion_mask.shape != targets.shape:
        raise PaDTError(
            f"expected logits (B, L, C) with targets and completion_mask (B, L); got logits "
            f"{tuple(logits.shape)}, targets {tuple(targets.shape)}, mask {tuple(completion_mask.shape)}"
        )
    num_classes = logits.shape[-1]
    logits32 = logits.float()
    valid = targets >= 0
    safe_targets = targets.clamp_min(0)
    # log-sum-exp + gather instead of log_softmax: autograd keeps the input alone, not a second B x L x C.
    lse = torch.logsumexp(logits32, dim=-1)
    target_logit = logits32.gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1)

    vrt_positions = (targets >= vocab_size).nonzero()  # (R, 2), row-major
    num_vrt = vrt_positions.shape[0]
    row_of, cols = _exclusion_pairs(foreground_sets, num_vrt, vocab_size, num_classes)
    if num_vrt:
        rows_b, rows_t = vrt_positions.unbind(-1)
        row_of, cols = row_of.to(logits.device), cols.to(logits.device)
        own = targets[rows_b, rows_t]
        excluded = cols != own[row_of]  # the target itself always stays in the softmax
        vrt_logits = logits32[rows_b, rows_t]  # (R, C): a copy, so filling it leaves `logits` untouched
        vrt_logits.index_put_((row_of[excluded], cols[excluded]), vrt_logits.new_tensor(float("-inf")))
        lse = lse.index_put((rows_b, rows_t), torch.logsumexp(vrt_logits, dim=-1))

    per_token = torch.where(valid, lse - target_logit, torch.zeros_like(lse))
    mask = completion_mask.to(per_token.dtype) * valid
    weighted = per_token * mask
    if token_weights is not None:
        if token_weights.shape != targets.shape:
            raise PaDTError(
                f"token_weights must have the targets' shape {tuple(targets.shape)}, got {tuple(token_weights.shape)}"
            )
        weighted = weighted * token_weights.to(weighted)
    per_sample = weighted.sum(-1) / (mask.sum(-1) + _TOKEN_EPS)
    return {
        "loss_token": per_sample.mean(),
        "token_loss_per_token": per_token,
        "token_loss_per_sample": per_sample,
    }


# ------------------------------------------------------------------------------------------- boxes


def _sanitise_gt_boxes(gt_boxes: torch.Tensor) -> torch.Tensor:
    # The reference asserts x2 >= x1 and y2 >= y1 (DETR's generalized_box_iou); a bad annotation should not
    # stop training, so corners are put in order and zero-area boxes get a minimal extent.
    lo = torch.minimum(gt_boxes[..., :2], gt_boxes[..., 2:])
    hi = torch.maximum(gt_boxes[..., :2], gt_boxes[..., 2:])
    return torch.cat([lo, torch.maximum(hi, lo + _MIN_BOX_SIDE)], dim=-1)


def _pred_xyxy(pred_boxes: torch.Tensor) -> torch.Tensor:
    # A sigmoid that underflows gives a zero-size box; a minimal extent keeps the IoU finite.
    centre, size = pred_boxes[..., :2], pred_boxes[..., 2:].clamp_min(_MIN_BOX_SIDE)
    return box_cxcywh_to_xyxy(torch.cat([centre, size], dim=-1))


def _gt_boxes(
    gt_boxes: torch.Tensor, reference_gt_dtype: torch.dtype | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """GT boxes as ``(xyxy, cxcywh)`` float32, optionally through the reference's low-precision cast."""
    if reference_gt_dtype is None:
        xyxy = _sanitise_gt_boxes(gt_boxes.float())
        return xyxy, box_xyxy_to_cxcywh(xyxy)
    # The reference casts GT boxes to bfloat16 (§8.5) and converts them to cxcywh in that dtype; its GIoU
    # then runs in float32 on the rounded corners. Reproduced only for parity checks.
    low = gt_boxes.to(reference_gt_dtype)
    return _sanitise_gt_boxes(low.float()), box_xyxy_to_cxcywh(low).float()


def _check_boxes(pred_boxes: torch.Tensor, gt_boxes: torch.Tensor) -> None:
    if pred_boxes.ndim != 2 or pred_boxes.shape[-1] != 4 or gt_boxes.shape != pred_boxes.shape:
        raise PaDTError(
            f"expected predicted and GT boxes of shape (O, 4) for the same objects, got "
            f"{tuple(pred_boxes.shape)} and {tuple(gt_boxes.shape)}"
        )


def matched_box_iou(
    pred_boxes: torch.Tensor, gt_boxes: torch.Tensor, *, reference_gt_dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU and GIoU of each predicted box with its own GT box: ``(O,)`` float32 each.

    ``pred_boxes`` are ``(O, 4)`` normalised cxcywh (the decoder's output), ``gt_boxes`` ``(O, 4)`` normalised
    xyxy (the record schema). ``reference_gt_dtype=torch.bfloat16`` rounds the GT as the reference does.
    """
    _check_boxes(pred_boxes, gt_boxes)
    pred = _pred_xyxy(pred_boxes.float())
    gt, _ = _gt_boxes(gt_boxes, reference_gt_dtype)
    # The reference takes the diagonal of the pairwise matrices; O is small enough for that to be cheap.
    iou = box_iou(pred, gt)[0].diagonal()
    giou = generalized_box_iou(pred, gt).diagonal()
    return iou, giou


def box_losses(
    pred_boxes: torch.Tensor, gt_boxes: torch.Tensor, *, reference_gt_dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """L1 and GIoU box losses (§8.5), each normalised by ``O + 1e-4``.

    Args:
        pred_boxes: ``(O, 4)`` predicted normalised cxcywh.
        gt_boxes: ``(O, 4)`` GT normalised xyxy, matched by order.
        reference_gt_dtype: ``torch.bfloat16`` reproduces the reference's cast of the GT boxes; the default
            (``None``) keeps them in float32.

    Returns:
        ``loss_bbox_l1``: ``sum_o |b̂_o - cxcywh(b_o)|_1 / (O + 1e-4)`` (summed over the 4 coordinates);
        ``loss_bbox_giou``: ``1 - sum_o GIoU_o / (O + 1e-4)`` (0 without objects);
        ``iou``, ``giou``: mean matched IoU/GIoU, detached, for logging;
        ``matched_giou``: ``(O,)`` detached GIoU per object, the target of :func:`score_loss`.
    """
    num = pred_boxes.shape[0]
    iou, giou = matched_box_iou(pred_boxes, gt_boxes, reference_gt_dtype=reference_gt_dtype)
    pred = pred_boxes.float()
    _, gt_cxcywh = _gt_boxes(gt_boxes, reference_gt_dtype)
    l1 = (pred - gt_cxcywh).abs().sum() / (num + _OBJECT_EPS)
    # Written as the reference writes it, 1 - mean rather than mean(1 - GIoU) (they differ by 1e-4 / O);
    # without objects the (zero) GIoU sum keeps the term in the graph.
    giou_loss = 1 - giou.sum() / (num + _OBJECT_EPS) if num else giou.sum()
    denom = max(num, 1)
    return {
        "loss_bbox_l1": l1,
        "loss_bbox_giou": giou_loss,
        "iou": iou.detach().sum() / denom,
        "giou": giou.detach().sum() / denom,
        "matched_giou": giou.detach(),
    }


def score_loss(pred_scores: torch.Tensor, giou: torch.Tensor) -> dict[str, torch.Tensor]:
    """The score head learns the box quality: ``sum_o (2σ(s_o) - 1 - GIoU_o)^2 / (O + 1e-4)`` (§8.5).

    Args:
        pred_scores: ``(O,)`` or ``(O, 1)`` raw score logits.
        giou: ``(O,)`` matched GIoU of each predicted box (:func:`matched_box_iou`); used as a fixed target.
    """
    scores = pred_scores.float().reshape(-1)
    if scores.shape != giou.shape:
        raise PaDTError(
            f"expected one score per object: {tuple(pred_scores.shape)} vs GIoU {tuple(giou.shape)}"
        )
    err = 2 * torch.sigmoid(scores) - 1 - giou.detach().float()
    return {"loss_score": (err * err).sum() / (scores.shape[0] + _OBJECT_EPS)}


# ------------------------------------------------------------------------------------------- masks


def gt_mask_for_loss(
    segmentation: Any, patch_grid_hw: tuple[int, int], *, image_hw: tuple[int, int] | None = None
) -> torch.Tensor:
    """The mask target of one object: ``(4H, 4W)`` bool (§8.5).

    The full-resolution mask (an RLE dict, list of RLEs, COCO polygons with ``image_hw``, or a 2-D array) is
    resized bilinearly to ``(4H, 4W)``, ``(H, W)`` being the image's ViT patch grid (``image_grid_thw[1:]``),
    and thresholded ``> 0.5`` — exactly as the reference's ``cv2.resize`` on a float32 mask.
    """
    h, w = (int(v) for v in patch_grid_hw)
    mask = segmentation_to_mask(segmentation, image_hw).astype(np.float32)
    resized = resize_bilinear_cv2(mask, (4 * h, 4 * w))
    return torch.from_numpy(resized > 0.5)


def stack_mask_targets(
    gt_masks: Sequence[torch.Tensor | None],
    patch_grid_hw: torch.Tensor | Sequence[Sequence[int]],
    out_hw: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad per-object mask targets to the decoder's layout.

    Args:
        gt_masks: per object, its ``(4H_o, 4W_o)`` target (:func:`gt_mask_for_loss`) or ``None`` if it has no
            mask.
        patch_grid_hw: ``(O, 2)`` patch grid ``(H_o, W_o)`` of each object's image (the decoder's
            ``pred_mask_valid_hw``).
        out_hw: size of the padded layout; default ``(4 max H, 4 max W)``.

    Returns:
        ``gt`` ``(O, Ho, Wo)`` float32 0/1, ``valid`` ``(O, Ho, Wo)`` float32 (1 on ``[:4H_o, :4W_o]``) and
        ``has_mask`` ``(O,)`` bool, all on the CPU.
    """
    grid = torch.as_tensor(patch_grid_hw, dtype=torch.long).reshape(-1, 2)
    if grid.shape[0] != len(gt_masks):
        raise PaDTError(f"patch_grid_hw has {grid.shape[0]} rows for {len(gt_masks)} objects")
    if out_hw is None:
        out_hw = (4 * int(grid[:, 0].max()), 4 * int(grid[:, 1].max())) if len(gt_masks) else (0, 0)
    gt = torch.zeros(len(gt_masks), *out_hw)
    valid = torch.zeros(len(gt_masks), *out_hw)
    has_mask = torch.zeros(len(gt_masks), dtype=torch.bool)
    for o, (mask, (h, w)) in enumerate(zip(gt_masks, grid.tolist())):
        valid[o, : 4 * h, : 4 * w] = 1
        if mask is None:
            continue
        if tuple(mask.shape) != (4 * h, 4 * w):
            raise PaDTError(
                f"object {o}: mask target is {tuple(mask.shape)} but its image's grid needs {(4 * h, 4 * w)}; "
                "build it with gt_mask_for_loss(..., patch_grid_hw)"
            )
        gt[o, : 4 * h, : 4 * w] = mask.float()
        has_mask[o] = True
    return gt, valid, has_mask


def mask_losses(
    pred_masks: torch.Tensor,
    gt_masks: torch.Tensor,
    valid_masks: torch.Tensor,
    has_mask: torch.Tensor | None = None,
    *,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
) -> dict[str, torch.Tensor]:
    """Dice and sigmoid focal losses on each object's valid region (§8.5).

    Args:
        pred_masks: ``(O, Hm, Wm)`` mask logits (the decoder's ``pred_mask``).
        gt_masks: ``(O, Hm, Wm)`` 0/1 targets.
        valid_masks: ``(O, Hm, Wm)`` 1 on the object's valid region ``[:4H_o, :4W_o]``.
        has_mask: ``(O,)`` bool; objects without a GT mask are left out (default: all have one).

    Returns ``loss_mask_dice`` and ``loss_mask_focal``, each a sum over the objects divided by
    ``n = sum_o (1[o has valid pixels] + 1e-5)`` over the objects with a mask. Per object,
    ``dice = 1 - (2 Σ σ g v + 1) / (Σ σ v + Σ g v + 1)`` and
    ``focal = Σ FL(σ, g) v / (Σ v + 1e-5)`` with ``FL = α_t (1 - p_t)^γ BCE``.
    """
    if pred_masks.ndim != 3 or gt_masks.shape != pred_masks.shape or valid_masks.shape != pred_masks.shape:
        raise PaDTError(
            f"expected pred, GT and valid masks of one shape (O, H, W), got {tuple(pred_masks.shape)}, "
            f"{tuple(gt_masks.shape)} and {tuple(valid_masks.shape)}"
        )
    logits = pred_masks.float().flatten(1)
    target = gt_masks.float().flatten(1)
    valid = valid_masks.float().flatten(1)
    counted = torch.ones(valid.shape[0], device=valid.device)
    if has_mask is not None:
        # An object without a mask gets no valid pixel: its dice is 1 - 1/1 = 0 and its focal term 0.
        counted = has_mask.to(valid.device, valid.dtype)
        valid = valid * counted[:, None]
    prob = logits.sigmoid()

    dice = 1 - (2 * (prob * target * valid).sum(-1) + 1) / (
        (prob * valid).sum(-1) + (target * valid).sum(-1) + 1
    )
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    alpha_t = focal_alpha * target + (1 - focal_alpha) * (1 - target)
    focal = (alpha_t * (1 - p_t) ** focal_gamma * bce * valid).sum(-1) / (valid.sum(-1) + _MASK_EPS)
    # The reference adds its 1e-5 once per object (measured: the fixture's normaliser is 3 + 3e-5 for three
    # objects); the clamp only matters without any object, where the sums are 0.
    num = ((valid.sum(-1) > 0).float() + _MASK_EPS) * counted
    num = num.sum().clamp_min(_MASK_EPS)
    return {"loss_mask_dice": dice.sum() / num, "loss_mask_focal": focal.sum() / num}


# ------------------------------------------------------------------------------------------- combination


def weighted_total(terms: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """``sum_k weights[k] * terms[k]`` over the weighted terms; a zero or missing weight leaves a term out."""
    active = [(name, w) for name, w in weights.items() if w]
    missing = [name for name, _ in active if name not in terms]
    if missing:
        raise PaDTError(f"no value for weighted loss terms {missing}; compute them or set their weight to 0")
    if not active:
        raise PaDTError("every loss weight is zero; give at least one term a weight")
    return sum(
        (terms[name] * w for name, w in active), start=torch.zeros((), device=terms[active[0][0]].device)
    )


@dataclass
class PaDTOutputs:
    """What one training step produced.

    Attributes:
        logits: ``(B, L, C)`` logits aligned with the completion targets (``logits[:, t]`` predicts token ``t``).
        decoded: the decoder's outputs for every object, in (sample, object) order (``None`` when no decoder
            term is computed). Without any object the decoder runs on one placeholder object so that its
            parameters stay in the graph; :attr:`PaDTTargets.num_objects` is then 0.
    """

    logits: torch.Tensor
    decoded: Any = None


@dataclass
class PaDTTargets:
    """What one training step should have produced.

    Attributes:
        tokens: ``(B, L)`` completion ids, VRTs as global ids; negative ids are ignored.
        completion_mask: ``(B, L)``, 1 on the tokens to supervise.
        foreground_sets: per VRT target, the ids left out of its softmax (:func:`build_foreground_sets`; a set
            holding only the target itself gives the plain cross-entropy).
        vocab_size: ``V``.
        boxes: ``(O, 4)`` normalised xyxy ground-truth boxes, matched to the decoded objects by order.
        masks: per object its ``(4H, 4W)`` mask target (:func:`gt_mask_for_loss`) or ``None``.
        token_weights: optional ``(B, L)`` factors on each token's loss (:func:`robust_token_loss`).
    """

    tokens: torch.Tensor
    completion_mask: torch.Tensor
    foreground_sets: Sequence[torch.Tensor] | torch.Tensor
    vocab_size: int
    boxes: torch.Tensor | None = None
    masks: Sequence[torch.Tensor | None] = ()
    token_weights: torch.Tensor | None = None

    @property
    def num_objects(self) -> int:
        return 0 if self.boxes is None else int(self.boxes.shape[0])


class PaDTCriterion:
    """The weighted PaDT losses (DETR's ``SetCriterion`` shape): ``criterion(outputs, targets)`` returns every
    active term by name plus ``loss``, their weighted sum; a term whose weight is zero or missing is skipped.

    Args:
        weight_dict: term name -> weight (default :data:`DEFAULT_LOSS_WEIGHTS`, all 1 as in the reference).
        reference_gt_dtype: passed to the box and score losses (``torch.bfloat16`` for reference parity).
        focal_alpha, focal_gamma: focal loss parameters (0.25, 2).
    """

    def __init__(
        self,
        weight_dict: Mapping[str, float] | None = None,
        *,
        reference_gt_dtype: torch.dtype | None = None,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        weights = dict(DEFAULT_LOSS_WEIGHTS if weight_dict is None else weight_dict)
        unknown = sorted(set(weights) - set(LOSS_TERMS))
        if unknown:
            raise PaDTError(f"unknown loss terms {unknown}; known terms: {list(LOSS_TERMS)}")
        self.weight_dict = weights
        self.reference_gt_dtype = reference_gt_dtype
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    def wants(self, *names: str) -> bool:
        """Whether any of the named terms has a non-zero weight."""
        return any(self.weight_dict.get(name, 0) for name in names)

    @property
    def wants_decoder(self) -> bool:
        """Whether a decoder term (box, score or mask) is active."""
        return self.wants(*DECODER_TERMS)

    def __call__(self, outputs: PaDTOutputs, targets: PaDTTargets) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if self.wants("loss_token"):
            out.update(
                robust_token_loss(
                    outputs.logits,
                    targets.tokens,
                    targets.completion_mask,
                    targets.foreground_sets,
                    targets.vocab_size,
                    targets.token_weights,
                )
            )
        decoded = outputs.decoded
        if self.wants_decoder and decoded is not None:
            if targets.num_objects == 0:
                out.update(self._no_objects(decoded))
            else:
                out.update(self._decoder_terms(decoded, targets))
        out["loss"] = weighted_total(out, {k: w for k, w in self.weight_dict.items() if k in out})
        return out

    def _decoder_terms(self, decoded: Any, targets: PaDTTargets) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        boxes = targets.boxes.to(decoded.pred_boxes.device)
        if self.wants("loss_bbox_l1", "loss_bbox_giou", "loss_score"):
            out.update(box_losses(decoded.pred_boxes, boxes, reference_gt_dtype=self.reference_gt_dtype))
            if self.wants("loss_score"):
                out.update(score_loss(decoded.pred_score, out["matched_giou"]))
        if self.wants("loss_mask_dice", "loss_mask_focal") and decoded.pred_mask is not None:
            gt, valid, has = stack_mask_targets(
                list(targets.masks), decoded.pred_mask_valid_hw.cpu(), tuple(decoded.pred_mask.shape[-2:])
            )
            device = decoded.pred_mask.device
            out.update(
                mask_losses(
                    decoded.pred_mask,
                    gt.to(device),
                    valid.to(device),
                    has.to(device),
                    focal_alpha=self.focal_alpha,
                    focal_gamma=self.focal_gamma,
                )
            )
        return out

    def _no_objects(self, decoded: Any) -> dict[str, torch.Tensor]:
        """No object in the batch: every decoder term is 0, but stays connected to the decoder's outputs (the
        placeholder object's) so that every parameter takes part in the backward pass, as distributed data
        parallel requires."""
        parts = [decoded.pred_boxes, decoded.pred_score] + (
            [decoded.pred_mask] if decoded.pred_mask is not None else []
        )
        zero = sum(p.float().sum() for p in parts) * 0.0
        return {name: zero for name in DECODER_TERMS if self.wants(name)}


#: The loss terms computed from the decoder's outputs.
DECODER_TERMS = ("loss_bbox_l1", "loss_bbox_giou", "loss_score", "loss_mask_dice", "loss_mask_focal")
