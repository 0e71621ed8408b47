"""Foreground patches: which VRTs (merged 28x28-px patches) belong to an object (docs/method.md §9.3).

This rule is the only definition of an object's valid VRTs: training samples its VRTs from them (§8.1) and
the robust token loss treats them as interchangeable (§8.3). The reference preprocessing:

1. resizes the binary mask, scaled to 0/255, bilinearly (``cv2.resize``, ``INTER_LINEAR``) to the merged
   grid in pixels, ``(rows * 28, cols * 28)``;
2. averages every 28x28 cell;
3. keeps a cell iff its mean is ``>= 255/28`` (coverage of at least 1/28, COCO and RIC) or ``> 255/28``
   (RefCOCO, ``strict=True``).

COCO/RIC resize a ``uint8`` mask and RefCOCO a ``float32`` one; the two round differently (cv2 resizes
``uint8`` in fixed point), which moves cells that sit right at the threshold, so both are reproduced
bit-exactly by :func:`resize_bilinear_cv2`.

The reference sizes the grid as ``round(h/28) x round(w/28)``, which is what the Qwen2.5-VL processor does
only while ``min_pixels <= h*w <= max_pixels``; :func:`merged_grid_for_image` follows the processor's own
``smart_resize`` so that the indices always name the VRTs the model sees.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from padt.errors import PaDTError

# The Qwen2.5-VL merged patch: 2x2 ViT patches of 14 px.
PATCH_SIZE = 28
# PaDT's processor limits (docs/method.md §2.2), written into its processor config.
MIN_PIXELS = 3136
MAX_PIXELS = 12845056

# cv2's fixed-point resize for 8-bit images: weights are scaled by 2**11.
_CV2_COEF_BITS = 11
_CV2_COEF_SCALE = 1 << _CV2_COEF_BITS


def _smart_resize():
    # The torchvision-backed image processor module cannot be imported without torchvision; the PIL one holds
    # the same function and needs nothing extra.
    try:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
    except ImportError:  # pragma: no cover - older layouts keep it in the main module only
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize
    return smart_resize


def merged_grid_for_image(
    height: int, width: int, *, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS
) -> tuple[int, int]:
    """``(rows, cols)`` of the merged-patch (VRT) grid the Qwen2.5-VL processor gives an image of this size.

    Uses transformers' ``smart_resize`` (the processor's own resize rule) with PaDT's pixel limits.
    """
    if height <= 0 or width <= 0:
        raise PaDTError(f"image size must be positive, got height={height}, width={width}")
    try:
        h, w = _smart_resize()(height, width, factor=PATCH_SIZE, min_pixels=min_pixels, max_pixels=max_pixels)
    except ValueError as exc:
        raise PaDTError(f"cannot size the patch grid of a {height}x{width} image: {exc}") from exc
    return h // PATCH_SIZE, w // PATCH_SIZE


# ----------------------------------------------------------------------------------------------- masks


def segmentation_to_mask(segmentation: Any, image_hw: tuple[int, int] | None = None) -> np.ndarray:
    """A full-resolution ``(h, w)`` bool mask from any COCO segmentation or an array.

    Accepts an RLE dict (``counts`` compressed string/bytes or uncompressed list), a list of RLE dicts,
    COCO polygons (a list of ``[x1, y1, x2, y2, ...]`` parts; needs ``image_hw``) or a 2-D array. Several
    parts are OR-ed, as the reference preprocessing does (docs/method.md §9.2).
    """
    if hasattr(segmentation, "detach"):  # a torch tensor
        segmentation = segmentation.detach().cpu().numpy()
    if isinstance(segmentation, np.ndarray):
        mask = segmentation
        if mask.ndim != 2:
            raise PaDTError(f"a mask must be 2-D (height, width), got shape {mask.shape}")
        return mask.astype(bool)
    if isinstance(segmentation, Mapping):
        return _decode_rles([segmentation], image_hw)
    if isinstance(segmentation, Sequence) and not isinstance(segmentation, str) and segmentation:
        if all(isinstance(part, Mapping) for part in segmentation):
            return _decode_rles(list(segmentation), image_hw)
        parts = segmentation if isinstance(segmentation[0], Sequence) else [segmentation]
        if image_hw is None:
            raise PaDTError("decoding polygons needs the image size: pass image_hw=(height, width)")
        h, w = image_hw
        # Fewer than three points enclose nothing, and pycocotools would read a 4-number part as a box.
        parts = [[float(v) for v in p] for p in parts if len(p) >= 6 and len(p) % 2 == 0]
        if not parts:
            return np.zeros((h, w), dtype=bool)
        return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(parts, h, w))).astype(bool)
    raise PaDTError(
        f"cannot read a mask from {type(segmentation).__name__}: pass an RLE dict, a list of RLE dicts, "
        "COCO polygons or a 2-D array"
    )


def _decode_rles(rles: list[Mapping[str, Any]], image_hw: tuple[int, int] | None) -> np.ndarray:
    decoded = []
    for rle in rles:
        if "size" not in rle or "counts" not in rle:
            raise PaDTError("an RLE mask needs 'size' [height, width] and 'counts'")
        h, w = (int(v) for v in rle["size"])
        if image_hw is not None and (h, w) != tuple(image_hw):
            raise PaDTError(f"RLE size {[h, w]} does not match the image size {list(image_hw)}")
        counts = rle["counts"]
        if isinstance(counts, list):
            api_rle = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
        else:
            api_rle = {
                "size": [h, w],
                "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
            }
        decoded.append(mask_utils.decode(api_rle).astype(bool))
    if len({m.shape for m in decoded}) != 1:
        raise PaDTError("the RLE parts of one mask have different sizes")
    return np.logical_or.reduce(decoded)


# ----------------------------------------------------------------------------------------------- resize


def _source_positions(src: int, dst: int, *, float_path: bool) -> tuple[np.ndarray, np.ndarray]:
    """cv2's source position of every output pixel along one axis: ``(floor index, fraction)``.

    The two cv2 code paths differ in detail (measured bit-for-bit against cv2): the 8-bit path computes the
    position in float32 from the scale ``1 / (dst/src)``, the float path in float64 from ``src/dst``.
    """
    scale = src / dst if float_path else 1.0 / (dst / src)
    pos = (np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5
    if not float_path:
        pos = pos.astype(np.float32)
    index = np.floor(pos).astype(np.int64)
    return index, (pos - index).astype(np.float32)


def resize_bilinear_cv2(image: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """``cv2.resize(image, (out_w, out_h), interpolation=cv2.INTER_LINEAR)`` for a 2-D ``uint8``/``float32`` array.

    A bit-exact re-implementation (checked against OpenCV on random masks and sizes, for images of at least
    2 px a side), so that masks and patch lists come out exactly as the reference preprocessing wrote them
    without depending on OpenCV. ``torch.nn.functional.interpolate`` differs from cv2 in the last float bits
    and in the 8-bit rounding, enough to flip pixels that sit on a threshold.
    """
    image = np.asarray(image)
    if image.ndim != 2 or image.dtype not in (np.uint8, np.float32):
        raise PaDTError(
            f"resize_bilinear_cv2 takes a 2-D uint8 or float32 array, got {image.dtype} {image.shape}"
        )
    out_h, out_w = (int(v) for v in out_hw)
    if out_h <= 0 or out_w <= 0:
        raise PaDTError(f"output size must be positive, got {out_hw}")
    src_h, src_w = image.shape
    if (src_h, src_w) == (out_h, out_w):
        return image.copy()
    is_float = image.dtype == np.float32
    x_floor, fx = _source_positions(src_w, out_w, float_path=is_float)
    # Along x, cv2 holds the edge pixel outside the image by zeroing the weight of the second tap; along y it
    # keeps the weights and only clamps the row index. For floats both give the same value, for the 8-bit
    # path they round differently.
    fx = np.where((x_floor < 0) | (x_floor >= src_w - 1), np.float32(0), fx)
    x0 = np.clip(x_floor, 0, src_w - 1)
    x1 = np.minimum(x0 + 1, src_w - 1)
    y_floor, fy = _source_positions(src_h, out_h, float_path=is_float)
    y0 = np.clip(y_floor, 0, src_h - 1)
    y1 = np.clip(y_floor + 1, 0, src_h - 1)
    if is_float:
        # cv2 interpolates as a + (b - a) * t with a fused multiply-add: float64 then one rounding.
        rows = (image[:, x0] + (image[:, x1] - image[:, x0]).astype(np.float64) * fx).astype(np.float32)
        top, bottom = rows[y0], rows[y1]
        return (top + (bottom - top).astype(np.float64) * fy[:, None]).astype(np.float32)
    # 8-bit: weights rounded to 11-bit fixed point, then cv2's exact integer shifts and rounding.
    # int32 holds every intermediate: 255 * 2**11 per row sample, 2**11 * (255 * 2**7) per product.
    ax1 = np.rint(fx * _CV2_COEF_SCALE).astype(np.int32)
    ax0 = np.rint((1.0 - fx).astype(np.float32) * _CV2_COEF_SCALE).astype(np.int32)
    by1 = np.rint(fy * _CV2_COEF_SCALE).astype(np.int32)
    by0 = np.rint((1.0 - fy).astype(np.float32) * _CV2_COEF_SCALE).astype(np.int32)
    src = image.astype(np.int32)
    rows = src[:, x0] * ax0 + src[:, x1] * ax1
    top, bottom = rows[y0] >> 4, rows[y1] >> 4
    out = (((by0[:, None] * top) >> 16) + ((by1[:, None] * bottom) >> 16) + 2) >> 2
    return out.astype(np.uint8)


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
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MAX_PIXELS,
) -> list[int]:
    """Sorted raster indices of the merged patches an object covers (docs/method.md §9.3).

    Args:
        mask: the object at the image's original resolution: a ``(h, w)`` array (nonzero = object) or any
            segmentation :func:`segmentation_to_mask` reads.
        grid_hw: ``(rows, cols)`` of the merged grid. Default: the grid the processor gives this image
            (:func:`merged_grid_for_image` on the mask's size and ``min_pixels``/``max_pixels``).
        strict: the RefCOCO preprocessing rule (float32 resize, coverage ``> 1/28``); otherwise the COCO and
            RIC rule (uint8 resize, coverage ``>= 1/28``).
        image_hw: ``(h, w)``, needed only to decode polygons.
    """
    binary = segmentation_to_mask(mask, image_hw)
    if grid_hw is None:
        grid_hw = merged_grid_for_image(*binary.shape, min_pixels=min_pixels, max_pixels=max_pixels)
    rows, cols = _check_grid(grid_hw)
    out_hw = (rows * PATCH_SIZE, cols * PATCH_SIZE)
    if strict:
        scaled = resize_bilinear_cv2(binary.astype(np.float32) * np.float32(255), out_hw)
    else:
        scaled = resize_bilinear_cv2(binary.astype(np.uint8) * np.uint8(255), out_hw)
    cell_sums = scaled.reshape(rows, PATCH_SIZE, cols, PATCH_SIZE).sum(axis=(1, 3), dtype=np.float64)
    # mean >= 255/28  <=>  sum * 28 >= 255 * cell_area, compared exactly (the boundary case is common: a cell
    # crossed by exactly 28 full pixels).
    lhs = cell_sums * 28
    rhs = 255.0 * PATCH_SIZE * PATCH_SIZE
    keep = lhs > rhs if strict else lhs >= rhs
    return [int(i) for i in np.flatnonzero(keep.reshape(-1))]


def box_foreground_patches(
    box_xyxy: Sequence[float],
    image_hw: tuple[int, int],
    grid_hw: tuple[int, int] | None = None,
    *,
    strict: bool = False,
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MAX_PIXELS,
) -> list[int]:
    """Foreground patches of a box-only object: the pixel ``[x1, y1, x2, y2]`` box rasterised as a mask.

    The box is rasterised the way pycocotools rasterises a COCO box, then :func:`foreground_patches` applies.
    """
    x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    h, w = (int(v) for v in image_hw)
    if x2 < x1 or y2 < y1:
        raise PaDTError(f"box {list(box_xyxy)} has x2 < x1 or y2 < y1; pass pixel corners [x1, y1, x2, y2]")
    rle = mask_utils.frPyObjects(np.asarray([[x1, y1, x2 - x1, y2 - y1]], dtype=np.float64), h, w)
    mask = mask_utils.decode(rle)[..., 0]
    return foreground_patches(mask, grid_hw, strict=strict, min_pixels=min_pixels, max_pixels=max_pixels)
