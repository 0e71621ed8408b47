"""Decoder outputs -> boxes, masks and scores on the original image (docs/method.md §6.5).

The decoder predicts, per object, a box ``(cx, cy, w, h)`` normalised to the (resized) image, a score logit
and mask logits at 4x4 per ViT patch (``(4H, 4W)`` valid region of a zero-padded ``(4H_max, 4W_max)`` map,
``(H, W)`` = the image's patch grid). Normalised coordinates are resolution-free, so they are mapped straight
to the ORIGINAL image, whatever resizing the processor did.

- :func:`boxes_to_pixel_xyxy`: pixel corners clipped to the image (the user-facing format).
- :func:`boxes_to_coco_xywh`: the reference evaluation's integer COCO boxes, rounding quirks included.
- :func:`masks_to_original`: mask logits -> bool masks at the original size (:func:`padt.masks.encode_rle`
  makes the COCO RLE).
- :func:`mask_boxes_xyxy`: the tight box of each mask; :func:`detected_objects` blends it into the box head's box
  by ``mask_box_weight`` (a decoding setting, :func:`mask_box_weight_of`; 0, the reference's, keeps the box head's).
- :func:`detected_objects`: all of it for one image's objects, as :class:`DetectedObject` records.
- :func:`mark_duplicates`: in an OVD answer, the objects whose box overlaps a higher-scored one's
  (``ovd_duplicate_iou``, :func:`ovd_duplicate_iou_of`) are marked, not removed, so that the objects still pair
  with the answer's VRT runs; detections (COCO results, supervision, overlays, OVD scores) leave them out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from padt.box_ops import box_cxcywh_to_xyxy, box_iou
from padt.generation import decoding_setting
from padt.masks import decode_rle, encode_rle

#: Mask logits per ViT patch side (the decoder's 4x4 upsampling, docs/method.md §7.6).
MASK_PER_PATCH = 4
#: The ``generation_config`` field (and option of every command) that blends each mask's tight box into its box.
MASK_BOX_WEIGHT = "mask_box_weight"
#: The ``generation_config`` field (and option of every command) above which an OVD box is another's duplicate.
OVD_DUPLICATE_IOU = "ovd_duplicate_iou"


@dataclass
class DetectedObject:
    """One decoded object on the original image.

    Attributes:
        label: the quoted phrase of the completion the object belongs to (``""`` if none).
        vrt_ids: local VRT indices (``id - V``) of the object's run.
        box_xyxy: ``(x0, y0, x1, y1)`` in pixels of the original image, clipped to it.
        score: confidence ``sigmoid(score_logit)`` (trained as a GIoU proxy, docs/method.md §8.5).
        mask: ``(height, width)`` bool mask at the original size, or None when masks were not decoded.
        mask_rle: the same mask as COCO RLE ``{"size": [h, w], "counts": str}``, or None.
        duplicate_of: the index (in the prediction's objects) of the higher-scored object whose box this one's
            overlaps (:func:`mark_duplicates`), or None. A duplicate is not a detection.
    """

    label: str
    vrt_ids: list[int]
    box_xyxy: tuple[float, float, float, float]
    score: float
    mask: np.ndarray | None = None
    mask_rle: dict[str, Any] | None = None
    duplicate_of: int | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict: ``label, vrt_ids, box_xyxy, score, mask_rle``, and ``duplicate_of`` when set (the bool
        mask is left out)."""
        out = {
            "label": self.label,
            "vrt_ids": [int(v) for v in self.vrt_ids],
            "box_xyxy": [float(v) for v in self.box_xyxy],
            "score": float(self.score),
            "mask_rle": self.mask_rle,
        }
        if self.duplicate_of is not None:
            out["duplicate_of"] = int(self.duplicate_of)
        return out


def _scale(image_size: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
    width, height = image_size
    return torch.tensor([width, height, width, height], dtype=like.dtype, device=like.device)


def boxes_to_pixel_xyxy(boxes_cxcywh: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Normalised ``(..., 4)`` cxcywh -> pixel xyxy on an image of ``image_size = (width, height)``, clipped
    to the image."""
    boxes = boxes_cxcywh.float()
    size = _scale(image_size, boxes)
    return torch.minimum((box_cxcywh_to_xyxy(boxes) * size).clamp(min=0), size)


def boxes_to_coco_xywh(boxes_cxcywh: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """The reference evaluation's integer COCO ``(x, y, w, h)`` boxes, for the paper protocol (§6.5).

    ``x = max(cx - w/2, 0)``, ``y = max(cy - h/2, 0)``, ``w = min(w, 1)``, ``h = min(h, 1)``, times the image
    size, rounded. Kept as the reference writes it (docs/method.md §6.5): the right/bottom edges are not
    clipped, so ``x + w`` may pass the image border. Returns int64.
    """
    boxes = boxes_cxcywh.float()
    x0y0 = box_cxcywh_to_xyxy(boxes)[..., :2].clamp(min=0)
    wh = boxes[..., 2:].clamp(max=1)
    return torch.round(torch.cat([x0y0, wh], dim=-1) * _scale(image_size, boxes)).long()


def masks_to_original(
    mask_logits: torch.Tensor,
    valid_hw: torch.Tensor | Sequence[Sequence[int]],
    image_size: tuple[int, int],
    threshold: float = 0.5,
) -> np.ndarray:
    """Mask logits -> bool masks on the original image.

    Args:
        mask_logits: ``(O, 4*H_max, 4*W_max)`` decoder mask logits (zero-padded beyond each object's grid).
        valid_hw: ``(O, 2)`` patch grid ``(H, W)`` of each object's image (``image_grid_thw[1:]``); only
            ``[:4H, :4W]`` is valid.
        image_size: original ``(width, height)``.
        threshold: on ``sigmoid(logit)``; the reference uses 0.5.

    Returns:
        ``(O, height, width)`` bool array: each valid region bilinearly resized to the image, then
        thresholded.
    """
    width, height = image_size
    hw = torch.as_tensor(valid_hw).reshape(-1, 2).tolist()
    if len(hw) != mask_logits.shape[0]:
        raise ValueError(f"{mask_logits.shape[0]} masks but {len(hw)} valid sizes")
    out = np.zeros((len(hw), height, width), dtype=bool)
    for o, (h, w) in enumerate(hw):
        valid = mask_logits[o, : MASK_PER_PATCH * h, : MASK_PER_PATCH * w].float()
        resized = F.interpolate(valid[None, None], size=(height, width), mode="bilinear", align_corners=False)
        out[o] = (resized[0, 0].sigmoid() > threshold).cpu().numpy()
    return out


def mask_boxes_xyxy(masks: np.ndarray) -> np.ndarray:
    """``(O, H, W)`` bool masks -> ``(O, 4)`` float pixel boxes ``(x0, y0, x1, y1)`` that just hold each mask's
    pixels (pixel ``x`` spans ``[x, x + 1)``, as the box head's pixel boxes do); NaN for an empty mask."""
    out = np.full((masks.shape[0], 4), np.nan)
    for o, mask in enumerate(masks):
        cols, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
        if cols.size:
            out[o] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return out


def mask_box_weight_of(generation_config: Any, override: float | None = None) -> float:
    """The mask-box weight to decode with, from 0 (the box head's boxes) to 1 (the masks' tight boxes)
    (:func:`padt.generation.decoding_setting`)."""
    return decoding_setting(
        generation_config, MASK_BOX_WEIGHT, override, maximum=1, zero="the box head's box"
    )


def ovd_duplicate_iou_of(generation_config: Any, override: float | None = None) -> float:
    """The IoU above which an OVD object is marked a duplicate, from 0 (off) to 1
    (:func:`padt.generation.decoding_setting`)."""
    return decoding_setting(generation_config, OVD_DUPLICATE_IOU, override, maximum=1)


@dataclass
class Prediction:
    """What the model said about one sample.

    Attributes:
        text: the completion, VRTs written ``<|VRT_j|>``.
        objects: one :class:`DetectedObject` per object the answer refers to, boxes/masks on the original image.
        object_images: index (within the sample) of the image each object lies in.
        warnings: anything the parser skipped or found malformed.
        finished: False when generation stopped before the end-of-answer token (``max_new_tokens``).
    """

    text: str
    objects: list[DetectedObject] = field(default_factory=list)
    object_images: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    finished: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "objects": [o.to_json() | {"image": i} for o, i in zip(self.objects, self.object_images)],
            "finished": self.finished,
            "warnings": self.warnings,
        }

    def to_supervision(self, image_index: int = 0) -> Any:
        """The objects in image ``image_index`` as ``supervision.Detections`` (:func:`padt.adapters.to_supervision`)."""
        from padt.adapters import to_supervision

        return to_supervision(self, image_index)

    def to_coco(self, image_ids: Sequence[int] = (0,)) -> list[dict[str, Any]]:
        """COCO results, one per object (:func:`padt.adapters.to_coco_results`); ``image_ids[i]`` is the id of the
        sample's image ``i``."""
        from padt.adapters import to_coco_results

        return to_coco_results(self, image_ids)


def mark_duplicates(prediction: Prediction, iou: float) -> int:
    """Mark each object of ``prediction`` whose box overlaps, by IoU above ``iou``, the box of a higher-scored
    unmarked object of the same image (greedily by score, whatever the labels: class-agnostic NMS); sets its
    ``duplicate_of`` and returns how many were marked. ``iou`` 0 marks nothing."""
    if not iou or len(prediction.objects) < 2:
        return 0
    boxes = torch.tensor([o.box_xyxy for o in prediction.objects], dtype=torch.float64)
    overlap, _ = box_iou(boxes, boxes)
    images = prediction.object_images or [0] * len(boxes)
    kept: list[int] = []
    marked = 0
    for k in sorted(range(len(boxes)), key=lambda i: -prediction.objects[i].score):
        over = [j for j in kept if images[j] == images[k] and overlap[k, j] > iou]
        if over:
            prediction.objects[k].duplicate_of = max(over, key=lambda j: float(overlap[k, j]))
            marked += 1
        else:
            kept.append(k)
    return marked


#: Deprecated names (the mask codecs live in :mod:`padt.masks`).
mask_to_rle = encode_rle
rle_to_mask = decode_rle


def detected_objects(
    pred_boxes: torch.Tensor,
    pred_score: torch.Tensor,
    image_size: tuple[int, int],
    *,
    labels: Sequence[str],
    vrt_ids: Sequence[Sequence[int]],
    pred_mask: torch.Tensor | None = None,
    pred_mask_valid_hw: torch.Tensor | Sequence[Sequence[int]] | None = None,
    mask_box_weight: float = 0.0,
    keep_masks: bool = True,
) -> list[DetectedObject]:
    """Decoder outputs of the objects of ONE image -> :class:`DetectedObject` records.

    Args:
        pred_boxes: ``(O, 4)`` normalised cxcywh.
        pred_score: ``(O, 1)`` or ``(O,)`` score logits.
        image_size: original ``(width, height)`` of the image.
        labels, vrt_ids: per object, from the parsed completion.
        pred_mask, pred_mask_valid_hw: mask logits and their valid patch grids; masks are skipped when None.
        mask_box_weight: each box is ``(1 - w) * box head's + w * the mask's tight box`` (corner by corner; an
            empty mask leaves the box head's). Needs ``pred_mask``.
        keep_masks: False leaves the masks out of the records (decoded for the boxes only).
    """
    count = pred_boxes.shape[0]
    if len(labels) != count or len(vrt_ids) != count:
        raise ValueError(f"{count} boxes but {len(labels)} labels and {len(vrt_ids)} VRT runs")
    boxes = boxes_to_pixel_xyxy(pred_boxes, image_size).tolist()
    scores = pred_score.float().reshape(count).sigmoid().tolist()
    masks: np.ndarray | None = None
    if pred_mask is not None:
        if pred_mask_valid_hw is None:
            raise ValueError("pred_mask needs pred_mask_valid_hw (the valid patch grid of each mask)")
        masks = masks_to_original(pred_mask, pred_mask_valid_hw, image_size)
    if mask_box_weight:
        if masks is None:
            raise ValueError("mask_box_weight needs pred_mask (the boxes are blended with the masks' boxes)")
        tight = mask_boxes_xyxy(masks)
        found = ~np.isnan(tight).any(axis=1)
        blended = np.asarray(boxes, dtype=np.float64)
        blended[found] = (1 - mask_box_weight) * blended[found] + mask_box_weight * tight[found]
        boxes = blended.tolist()
    out = []
    for o in range(count):
        mask = masks[o] if masks is not None and keep_masks else None
        out.append(
            DetectedObject(
                label=labels[o],
                vrt_ids=[int(v) for v in vrt_ids[o]],
                box_xyxy=tuple(float(v) for v in boxes[o]),
                score=float(scores[o]),
                mask=mask,
                mask_rle=encode_rle(mask) if mask is not None else None,
            )
        )
    return out


__all__ = [
    "MASK_BOX_WEIGHT",
    "OVD_DUPLICATE_IOU",
    "DetectedObject",
    "Prediction",
    "boxes_to_coco_xywh",
    "boxes_to_pixel_xyxy",
    "detected_objects",
    "mark_duplicates",
    "mask_box_weight_of",
    "mask_boxes_xyxy",
    "mask_to_rle",
    "masks_to_original",
    "ovd_duplicate_iou_of",
    "rle_to_mask",
]
