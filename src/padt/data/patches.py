"""Foreground patches: which VRTs (merged patches, VRT cells) belong to an object (docs/method.md §9.3).

This rule is the only definition of an object's valid VRTs: training samples its VRTs from them (§8.1) and
the robust token loss treats them as interchangeable (§8.3). The reference preprocessing (Qwen2.5-VL, 28-px
cells):

1. resizes the binary mask, scaled to 0/255, bilinearly (``cv2.resize``, ``INTER_LINEAR``) to the VRT grid in
   pixels, ``(rows * cell, cols * cell)``;
2. averages every cell;
3. keeps a cell iff its mean is ``>= 255 * COVERAGE`` (the object covers at least 1/28 of it, COCO and RIC) or
   ``> 255 * COVERAGE`` (RefCOCO, ``strict=True``).

COCO/RIC resize a ``uint8`` mask and RefCOCO a ``float32`` one; the two round differently (cv2 resizes
``uint8`` in fixed point), which moves cells that sit right at the threshold, so both are reproduced
bit-exactly by :func:`padt.masks.resize_bilinear_cv2`.

The cell size and the grid come from the base model's patch geometry (:mod:`padt.backbones`, Qwen2.5-VL's by
default). The reference sizes the grid as ``round(h/28) x round(w/28)``, which is what the processor does only
while ``min_pixels <= h*w <= max_pixels``; :func:`merged_grid_for_image` follows the processor's own
``smart_resize`` so that the indices always name the VRTs the model sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from padt.backbones import PatchGeometry, get_backbone
from padt.errors import PaDTError
from padt.masks import box_to_mask, resize_bilinear_cv2, segmentation_to_mask

#: A cell is foreground when the mask covers at least this fraction of it (the reference: mean >= 255/28).
COVERAGE = Fraction(1, 28)


def _geometry_and_limits(
    geometry: PatchGeometry | None, min_pixels: int | None, max_pixels: int | None
) -> tuple[PatchGeometry, int, int]:
    base = get_backbone()
    return (
        geometry or base.geometry,
        min_pixels if min_pixels is not None else base.min_pixels,
        max_pixels if max_pixels is not None else base.max_pixels,
    )


def merged_grid_for_image(
    height: int,
    width: int,
    *,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    geometry: PatchGeometry | None = None,
) -> tuple[int, int]:
    """``(rows, cols)`` of the VRT grid the processor gives an image of this size (``smart_resize`` with the
    base's geometry and pixel limits; Qwen2.5-VL's and PaDT's by default)."""
    geometry, lo, hi = _geometry_and_limits(geometry, min_pixels, max_pixels)
    return geometry.vrt_grid(height, width, lo, hi)


# ----------------------------------------------------------------------------------------------- patches


def _check_grid(grid_hw: tuple[int, int]) -> tuple[int, int]:
    rows, cols = (int(v) for v in grid_hw)
    if rows <= 0 or cols <= 0:
        raise PaDTError(f"the patch grid must have at least one row and column, got {grid_hw}")
    return rows, cols


def foreground_patches(
    mask: Any,
    grid_hw: tuple[int, int] | None = None,
    *,
    strict: bool = False,
    image_hw: tuple[int, int] | None = None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    geometry: PatchGeometry | None = None,
) -> list[int]:
    """Sorted raster indices of the VRT cells an object covers (docs/method.md §9.3).

    Args:
        mask: the object at the image's original resolution: a ``(h, w)`` array (nonzero = object) or any
            segmentation :func:`segmentation_to_mask` reads.
        grid_hw: ``(rows, cols)`` of the merged grid. Default: the grid the processor gives this image
            (:func:`merged_grid_for_image` on the mask's size and ``min_pixels``/``max_pixels``).
        strict: the RefCOCO preprocessing rule (float32 resize, coverage ``> 1/28``); otherwise the COCO and
            RIC rule (uint8 resize, coverage ``>= 1/28``).
        image_hw: ``(h, w)``, needed only to decode polygons.
        geometry, min_pixels, max_pixels: the base model's cells and the processor's limits (default:
            Qwen2.5-VL's and PaDT's).
    """
    binary = segmentation_to_mask(mask, image_hw)
    geometry, min_pixels, max_pixels = _geometry_and_limits(geometry, min_pixels, max_pixels)
    if grid_hw is None:
        grid_hw = geometry.vrt_grid(*binary.shape, min_pixels, max_pixels)
    rows, cols = _check_grid(grid_hw)
    cell = geometry.cell_px
    out_hw = (rows * cell, cols * cell)
    if strict:
        scaled = resize_bilinear_cv2(binary.astype(np.float32) * np.float32(255), out_hw)
    else:
        scaled = resize_bilinear_cv2(binary.astype(np.uint8) * np.uint8(255), out_hw)
    cell_sums = scaled.reshape(rows, cell, cols, cell).sum(axis=(1, 3), dtype=np.float64)
    # mean >= 255 * coverage  <=>  sum * den >= 255 * num * cell_area, compared exactly (the boundary case is
    # common: a 28-px cell crossed by exactly 28 full pixels).
    lhs = cell_sums * COVERAGE.denominator
    rhs = 255.0 * COVERAGE.numerator * cell * cell
    keep = lhs > rhs if strict else lhs >= rhs
    return [int(i) for i in np.flatnonzero(keep.reshape(-1))]


def box_foreground_patches(
    box_xyxy: Sequence[float],
    image_hw: tuple[int, int],
    grid_hw: tuple[int, int] | None = None,
    *,
    strict: bool = False,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    geometry: PatchGeometry | None = None,
) -> list[int]:
    """Foreground patches of a box-only object: the pixel ``[x1, y1, x2, y2]`` box rasterised as a mask.

    The box is rasterised the way pycocotools rasterises a COCO box, then :func:`foreground_patches` applies.
    """
    x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    h, w = (int(v) for v in image_hw)
    if x2 < x1 or y2 < y1:
        raise PaDTError(f"box {list(box_xyxy)} has x2 < x1 or y2 < y1; pass pixel corners [x1, y1, x2, y2]")
    mask = box_to_mask([x1, y1, x2, y2], h, w)
    return foreground_patches(
        mask, grid_hw, strict=strict, min_pixels=min_pixels, max_pixels=max_pixels, geometry=geometry
    )
