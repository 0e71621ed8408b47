"""Model-independent metrics for referring expressions (REC, RES) and grounded captions (RIC).

All boxes are ``[x1, y1, x2, y2]`` in pixels of the original image; masks are COCO RLE dicts or ``(H, W)``
binary arrays at the original resolution. Predictions come per query as a list of objects in the order the
model produced them; an empty list is a miss. Metrics are fractions in ``[0, 1]``.

**REC** (one ground-truth box per query; :func:`rec_metrics`)

- ``acc@0.5``, ``acc@0.75``: the fraction of queries whose *first* predicted box has IoU ≥ 0.5 / 0.75 with
  the ground truth. A REC answer names one object, so the first one is the answer.
- ``acc@0.5_best``: the fraction whose *best* predicted box (max IoU over all objects) reaches 0.5, as the
  reference scores it (docs/method.md §10.1). It is never below ``acc@0.5``.

**RES** (one ground-truth mask per query; :func:`res_metrics`), with the first predicted mask:

- ``miou``: mean over queries of ``|P∩G| / |P∪G|``. This is what the reference prints as "cIoU"
  (docs/method.md §10.2); other papers call it gIoU or mIoU.
- ``ciou``: cumulative IoU ``Σ|P∩G| / Σ|P∪G|`` over the dataset, the standard cIoU.

**RIC grounding** (several objects per caption; :func:`ric_grounding_metrics`). The paper does not define
its GreedyPrecision/GreedyRecall, so here they are:

- per image, predicted boxes are matched one-to-one to ground-truth boxes greedily: all pairs with
  IoU ≥ 0.5 are taken in descending IoU order, each pair kept if neither side is matched yet
  (:func:`greedy_match`);
- ``greedy_precision`` = Σ matched / Σ predicted objects, ``greedy_recall`` = Σ matched / Σ ground-truth
  objects, summed over the dataset (micro average); a zero denominator gives 0.

**Paper protocol** (:func:`paper_rec_res_metrics`, docs/method.md §10.5): queries are keyed by
``"{image_id}_{sentence}"`` and a prediction counts for a key when the model echoed the sentence exactly
(after stripping spaces); duplicate sentences of an image collapse to one key; over several predicted objects
the max IoU is taken (for boxes and masks separately); boxes are rounded to integer pixels; ground-truth keys
without a prediction count 0. ``acc@0.5``/``acc@0.75`` are means over keys of ``[max box IoU ≥ t]`` and ``miou``
is the mean of the max mask IoU (the reference's "cIoU").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from padt.box_ops import box_iou
from padt.errors import PaDTError
from padt.masks import intersection_union, rle_area

Box = Sequence[float]
Mask = Mapping[str, Any] | np.ndarray


# ----------------------------------------------------------------------------------------------- boxes


def box_iou_matrix(pred: Sequence[Box], gt: Sequence[Box]) -> np.ndarray:
    """``(P, G)`` IoU of pixel xyxy boxes; degenerate pairs (zero union) get 0."""
    if len(pred) == 0 or len(gt) == 0:
        return np.zeros((len(pred), len(gt)), dtype=np.float64)
    a = torch.as_tensor(np.asarray(pred, dtype=np.float64).reshape(-1, 4))
    b = torch.as_tensor(np.asarray(gt, dtype=np.float64).reshape(-1, 4))
    iou, _ = box_iou(a, b)
    return torch.nan_to_num(iou, nan=0.0).numpy()


def rec_metrics(pred_boxes: Sequence[Sequence[Box]], gt_boxes: Sequence[Box]) -> dict[str, float]:
    """REC accuracies (see the module docstring): ``acc@0.5``, ``acc@0.75``, ``acc@0.5_best``, ``num_samples``.

    ``pred_boxes[i]`` is the list of predicted boxes of query ``i`` (possibly empty); ``gt_boxes[i]`` its
    ground-truth box.
    """
    if len(pred_boxes) != len(gt_boxes):
        raise PaDTError(f"{len(pred_boxes)} predictions for {len(gt_boxes)} queries; give one list per query")
    first = np.zeros(len(gt_boxes))
    best = np.zeros(len(gt_boxes))
    for i, (preds, gt) in enumerate(zip(pred_boxes, gt_boxes, strict=True)):
        ious = box_iou_matrix(list(preds), [gt])[:, 0]
        if ious.size:
            first[i], best[i] = ious[0], ious.max()
    return {
        "acc@0.5": _mean(first >= 0.5),
        "acc@0.75": _mean(first >= 0.75),
        "acc@0.5_best": _mean(best >= 0.5),
        "num_samples": len(gt_boxes),
    }


# ----------------------------------------------------------------------------------------------- masks


def res_metrics(pred_masks: Sequence[Sequence[Mask]], gt_masks: Sequence[Mask]) -> dict[str, float]:
    """RES ``miou`` and ``ciou`` (see the module docstring) over the first predicted mask of each query."""
    if len(pred_masks) != len(gt_masks):
        raise PaDTError(f"{len(pred_masks)} predictions for {len(gt_masks)} queries; give one list per query")
    ious = np.zeros(len(gt_masks))
    total_inter = total_union = 0.0
    for i, (preds, gt) in enumerate(zip(pred_masks, gt_masks, strict=True)):
        if len(preds):
            inter, union = intersection_union(preds[0], gt)
        else:
            inter, union = 0.0, float(rle_area(gt) if not isinstance(gt, np.ndarray) else gt.sum())
        ious[i] = inter / union if union > 0 else 0.0
        total_inter += inter
        total_union += union
    return {
        "miou": _mean(ious),
        "ciou": total_inter / total_union if total_union > 0 else 0.0,
        "num_samples": len(gt_masks),
    }


# ----------------------------------------------------------------------------------------------- RIC


def greedy_match(
    pred_boxes: Sequence[Box], gt_boxes: Sequence[Box], iou_threshold: float = 0.5
) -> list[tuple[int, int]]:
    """One-to-one matches ``(pred_index, gt_index)``: pairs with IoU ≥ ``iou_threshold`` in descending IoU
    order, each kept if neither box is matched yet. Ties go to the earlier prediction, then the earlier GT."""
    iou = box_iou_matrix(pred_boxes, gt_boxes)
    pi, gi = np.nonzero(iou >= iou_threshold)
    # lexsort: last key is primary -> IoU descending, then prediction index, then GT index.
    order = np.lexsort((gi, pi, -iou[pi, gi]))
    used_p: set[int] = set()
    used_g: set[int] = set()
    matches = []
    for k in order:
        p, g = int(pi[k]), int(gi[k])
        if p not in used_p and g not in used_g:
            used_p.add(p)
            used_g.add(g)
            matches.append((p, g))
    return matches


def ric_grounding_metrics(
    pred_boxes: Sequence[Sequence[Box]], gt_boxes: Sequence[Sequence[Box]], iou_threshold: float = 0.5
) -> dict[str, float]:
    """``greedy_precision`` and ``greedy_recall`` (see the module docstring); one box list per image."""
    if len(pred_boxes) != len(gt_boxes):
        raise PaDTError(f"{len(pred_boxes)} predictions for {len(gt_boxes)} images; give one list per image")
    matched = num_pred = num_gt = 0
    for preds, gts in zip(pred_boxes, gt_boxes, strict=True):
        matched += len(greedy_match(preds, gts, iou_threshold))
        num_pred += len(preds)
        num_gt += len(gts)
    return {
        "greedy_precision": matched / num_pred if num_pred else 0.0,
        "greedy_recall": matched / num_gt if num_gt else 0.0,
        "num_pred": num_pred,
        "num_gt": num_gt,
        "num_matched": matched,
    }


# ----------------------------------------------------------------------------------------------- paper protocol


@dataclass
class GroundedObject:
    """A box (pixel xyxy) and optionally a mask, as the paper protocol compares them."""

    box: Box
    mask: Mask | None = None


def paper_key(image_id: int | str, sentence: str) -> str:
    """The reference's query key ``"{image_id}_{sentence}"`` (docs/method.md §10.5); the sentence is stripped."""
    return f"{image_id}_{sentence.strip()}"


def _rounded(box: Box) -> list[float]:
    return [float(round(float(v))) for v in box]


def paper_rec_res_metrics(
    gt: Mapping[str, GroundedObject], pred: Mapping[str, Sequence[GroundedObject]]
) -> dict[str, float]:
    """The reference's REC/RES scoring (see the module docstring). ``gt`` and ``pred`` are keyed by
    :func:`paper_key`; prediction keys absent from ``gt`` are ignored. ``miou`` is reported when every
    ground truth has a mask."""
    keys = list(gt)
    box_best = np.zeros(len(keys))
    with_masks = all(gt[k].mask is not None for k in keys) and bool(keys)
    mask_best = np.zeros(len(keys))
    missing = 0
    for i, key in enumerate(keys):
        preds = pred.get(key) or []
        if not preds:
            missing += 1
            continue
        ious = box_iou_matrix([_rounded(p.box) for p in preds], [_rounded(gt[key].box)])[:, 0]
        box_best[i] = ious.max()
        if with_masks:
            for p in preds:
                if p.mask is not None:
                    inter, union = intersection_union(p.mask, gt[key].mask)
                    mask_best[i] = max(mask_best[i], inter / union if union > 0 else 0.0)
    out: dict[str, float] = {
        "acc@0.5": _mean(box_best >= 0.5),
        "acc@0.75": _mean(box_best >= 0.75),
    }
    if with_masks:
        out["miou"] = _mean(mask_best)
    out["num_keys"] = len(keys)
    out["num_missing"] = missing
    return out


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x)) if x.size else 0.0
