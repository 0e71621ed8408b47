"""Box conversions and (generalised) IoU.

One place for every box format used in padt:

- ``cxcywh``: the decoder's output, normalised to [0, 1] of the (resized) image.
- ``xyxy``: corners; normalised in the record schema, pixels for users.
- ``xywh``: COCO's top-left + size, pixels.

The tensor functions take ``(..., 4)`` tensors and work in the input dtype; the plain functions below them
take and return one box as a list of floats (records, predictions, COCO files).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where a tensor function runs: reading and scoring files need none of it
    import torch


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    import torch

    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    import torch

    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def box_xyxy_to_xywh(boxes: torch.Tensor) -> torch.Tensor:
    import torch

    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([x0, y0, x1 - x0, y1 - y0], dim=-1)


def box_xywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    import torch

    x, y, w, h = boxes.unbind(-1)
    return torch.stack([x, y, x + w, y + h], dim=-1)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Area of ``(N, 4)`` xyxy boxes."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairwise IoU of xyxy boxes ``(N, 4)`` x ``(M, 4)``; returns ``(iou, union)``, each ``(N, M)``."""
    import torch

    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    return inter / union, union


def generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise GIoU (DETR's formula) of xyxy boxes ``(N, 4)`` x ``(M, 4)`` -> ``(N, M)``."""
    import torch

    iou, union = box_iou(boxes1, boxes2)
    lt = torch.min(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    area = wh[..., 0] * wh[..., 1]
    return iou - (area - union) / area


# ------------------------------------------------------------------------------------------- one box, as a list


def xyxy_to_xywh(box: Sequence[float]) -> list[float]:
    """``[x1, y1, x2, y2]`` -> COCO ``[x, y, w, h]``."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def xywh_to_xyxy(box: Sequence[float]) -> list[float]:
    """COCO ``[x, y, w, h]`` -> ``[x1, y1, x2, y2]``."""
    x, y, w, h = (float(v) for v in box)
    return [x, y, x + w, y + h]


def scale_xyxy(box: Sequence[float], width: float, height: float) -> list[float]:
    """A normalised ``[x1, y1, x2, y2]`` box in pixels of a ``width x height`` image."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1 * width, y1 * height, x2 * width, y2 * height]


def normalise_xyxy(box: Sequence[float], width: float, height: float, *, clip: bool = True) -> list[float]:
    """A pixel ``[x1, y1, x2, y2]`` box as fractions of a ``width x height`` image, clipped to ``[0, 1]``."""
    x1, y1, x2, y2 = (float(v) for v in box)
    out = [x1 / width, y1 / height, x2 / width, y2 / height]
    return [min(max(v, 0.0), 1.0) for v in out] if clip else out


def checked_pixel_box(box: object, where: str, *, xywh: bool = False) -> list[float]:
    """A box from outside (a file, a request) as pixel ``[x1, y1, x2, y2]``: four finite numbers, corners in
    order (``xywh``: COCO's ``[x, y, w, h]`` with a non-negative size). Anything else is a one-line
    :class:`~padt.errors.PaDTError` naming ``where``."""
    import math

    from padt.errors import PaDTError

    form = "[x, y, width, height]" if xywh else "[x1, y1, x2, y2]"
    try:
        if isinstance(box, str | bytes) or len(box) != 4:  # type: ignore[arg-type]
            raise TypeError
        values = [float(v) for v in box]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise PaDTError(f"{where}: 'bbox' must be {form} in pixels, got {box!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise PaDTError(f"{where}: 'bbox' {box!r} holds NaN or infinite values")
    values = xywh_to_xyxy(values) if xywh else values
    if values[2] < values[0] or values[3] < values[1]:
        what = "has a negative width or height" if xywh else "is inverted"
        raise PaDTError(f"{where}: 'bbox' {box!r} {what}; write {form} in pixels")
    return values
