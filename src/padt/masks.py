"""Masks: COCO RLE and polygons, the one place padt reads, checks, encodes and decodes them.

Every RLE that enters padt (records, datasets, predictions, ground truth) goes through :func:`check_rle`
where it enters, because pycocotools trusts its input: a compressed ``counts`` string that is not a valid
encoding can make its decoder or ``merge`` loop for ever. :func:`check_rle` decodes the run lengths in
Python first (the format: 6-bit characters from ``'0'``, five value bits, a continuation bit and a sign bit,
every run after the second stored as the difference to the run two before) and requires non-negative runs
that add up to ``height * width``.

Formats: an RLE is ``{"size": [height, width], "counts": str | bytes | list[int]}`` (compressed string, or
uncompressed run lengths starting with background); padt writes compressed counts as ``str`` so that they
serialise to JSON. Polygons are COCO's: a list of ``[x1, y1, x2, y2, ...]`` parts, OR-ed together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from padt.errors import PaDTError

#: Largest mask side and area padt accepts in an RLE or builds from polygons (beyond any image it opens, so
#: a corrupt size cannot make it allocate gigabytes).
MAX_MASK_SIDE = 1 << 16
MAX_MASK_PIXELS = 1 << 27


def _check_hw(height: Any, width: Any, what: str) -> tuple[int, int]:
    if not (
        all(isinstance(s, int | np.integer) and not isinstance(s, bool) for s in (height, width))
        and all(0 < int(s) <= MAX_MASK_SIDE for s in (height, width))
        and int(height) * int(width) <= MAX_MASK_PIXELS
    ):
        raise PaDTError(f"{what} must be [height, width], two positive integers, got {[height, width]!r}")
    return int(height), int(width)


# ------------------------------------------------------------------------------------------------ checking
def _counts_from_string(counts: str, where: str) -> np.ndarray:
    """Run lengths of a compressed COCO counts string (vectorised); a :class:`PaDTError` for anything
    malformed."""
    try:
        c = np.frombuffer(counts.encode("ascii"), dtype=np.uint8).astype(np.int64) - 48
    except UnicodeEncodeError:
        raise PaDTError(f"{where}: RLE counts hold non-ASCII characters; is it an RLE?") from None
    if c.size == 0:
        return np.zeros(0, dtype=np.int64)
    bad = np.flatnonzero((c < 0) | (c > 63))
    if bad.size:
        raise PaDTError(
            f"{where}: RLE counts hold {counts[bad[0]]!r}, which is not a character of the COCO compressed format "
            "('0' to 'o'); is it an RLE?"
        )
    ends = (c & 0x20) == 0  # a character without the continuation bit ends a number
    if not ends[-1]:
        raise PaDTError(f"{where}: RLE counts end in the middle of a number (truncated?)")
    number = np.concatenate([[0], np.cumsum(ends)[:-1]])  # which number each character belongs to
    starts = np.flatnonzero(np.concatenate([[True], ends[:-1]]))
    shift = 5 * (np.arange(c.size) - starts[number])
    if shift.max() > 55:
        raise PaDTError(f"{where}: RLE counts hold a number too large for any mask; the mask is corrupt")
    values = np.zeros(starts.size, dtype=np.int64)
    np.add.at(values, number, (c & 0x1F) << shift)
    last = np.flatnonzero(ends)
    negative = (c[last] & 0x10) != 0
    values[negative] -= np.int64(1) << (shift[last][negative] + 5)
    # Every run after the second is stored as the difference to the run two before it.
    runs = values.copy()
    runs[3::2] = np.cumsum(values[1::2])[1:] if values.size > 3 else runs[3::2]
    runs[2::2] = np.cumsum(values[2::2])
    return runs


def check_rle(rle: Any, where: str = "mask", *, image_hw: tuple[int, int] | None = None) -> dict[str, Any]:
    """A checked copy of an RLE, ``{"size": [h, w], "counts": str | list[int]}``, safe for pycocotools.

    Raises a one-line :class:`PaDTError` naming ``where`` when the RLE is not a mapping with ``size`` and
    ``counts``, the size is not two positive integers (equal to ``image_hw`` when given), the counts are not
    a valid compressed string or list of run lengths, a run is negative, or the runs do not cover exactly
    ``h * w`` pixels.
    """
    if not isinstance(rle, Mapping) or "size" not in rle or "counts" not in rle:
        raise PaDTError(f"{where}: expected a COCO RLE {{'size': [height, width], 'counts': ...}}")
    size = rle["size"]
    if not (isinstance(size, Sequence) and not isinstance(size, str) and len(size) == 2):
        raise PaDTError(f"{where}: RLE size must be [height, width], two positive integers, got {size!r}")
    h, w = _check_hw(size[0], size[1], f"{where}: RLE size")
    if image_hw is not None and (h, w) != tuple(int(v) for v in image_hw):
        raise PaDTError(
            f"{where}: RLE size {[h, w]} does not match the image's [height, width] = {list(image_hw)}; "
            "encode the mask at the image's resolution"
        )
    counts = rle["counts"]
    if isinstance(counts, bytes):
        try:
            counts = counts.decode("ascii")
        except UnicodeDecodeError:
            raise PaDTError(f"{where}: RLE counts are bytes that are not ASCII; is it an RLE?") from None
    if isinstance(counts, str):
        runs = _counts_from_string(counts, where)
    elif isinstance(counts, Sequence) and all(
        isinstance(c, int | np.integer) and not isinstance(c, bool) for c in counts
    ):
        counts = [int(c) for c in counts]
        runs = np.asarray(counts, dtype=np.int64)
    else:
        raise PaDTError(f"{where}: RLE counts must be a compressed string or a list of run lengths")
    if (runs < 0).any():
        raise PaDTError(f"{where}: RLE counts decode to a negative run length; the mask is corrupt")
    total = int(runs.sum())
    if total != h * w:
        raise PaDTError(
            f"{where}: RLE runs cover {total} pixels but its size {[h, w]} has {h * w}; the mask is corrupt or "
            "its size is wrong"
        )
    return {"size": [h, w], "counts": counts}


def _for_api(rle: Mapping[str, Any]) -> dict[str, Any]:
    """A checked RLE in pycocotools' own form (compressed ``bytes`` counts)."""
    h, w = rle["size"]
    counts = rle["counts"]
    if isinstance(counts, list):
        return mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    return {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


# ------------------------------------------------------------------------------------------------ conversions
def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """Compressed COCO RLE of one ``(h, w)`` bool mask, ``counts`` as ``str`` (JSON-ready)."""
    if mask.ndim != 2:
        raise PaDTError(f"a mask must be 2-D (height, width), got shape {mask.shape}")
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: Mapping[str, Any], where: str = "mask") -> np.ndarray:
    """``(h, w)`` bool mask of an RLE (checked first)."""
    return mask_utils.decode(_for_api(check_rle(rle, where))).astype(bool)


def compress_rle(rle: Mapping[str, Any], where: str = "mask") -> dict[str, Any]:
    """The RLE with compressed ``str`` counts (uncompressed run lengths are compressed), checked."""
    checked = check_rle(rle, where)
    if isinstance(checked["counts"], str):
        return checked
    counts = _for_api(checked)["counts"]
    return {"size": checked["size"], "counts": counts.decode("ascii")}


def pycocotools_rle(mask: np.ndarray | Mapping[str, Any], where: str = "mask") -> dict[str, Any]:
    """A bool ``(h, w)`` array or an RLE as pycocotools' RLE (checked), for its area and merge functions."""
    if isinstance(mask, np.ndarray):
        if mask.ndim != 2:
            raise PaDTError(f"{where}: a mask must be a 2-D (height, width) array, got shape {mask.shape}")
        return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return _for_api(check_rle(mask, where))


def polygons_to_rle(polygons: Any, height: int, width: int, where: str = "segmentation") -> dict[str, Any]:
    """COCO polygons (a list of ``[x1, y1, x2, y2, ...]`` parts, or one flat part) -> compressed RLE of the
    OR of the parts. Parts with fewer than three points enclose nothing and are skipped (pycocotools would read
    a four-number part as a box)."""
    height, width = _check_hw(height, width, f"{where}: the image size")
    if not isinstance(polygons, Sequence) or isinstance(polygons, str):
        raise PaDTError(f"{where}: polygons must be lists of numbers [x1, y1, x2, y2, ...]")
    parts = polygons if polygons and isinstance(polygons[0], Sequence) else [polygons]
    try:
        parts = [[float(v) for v in part] for part in parts]
    except (TypeError, ValueError):
        raise PaDTError(f"{where}: polygons must be lists of numbers [x1, y1, x2, y2, ...]") from None
    if any(not np.isfinite(v) for part in parts for v in part):
        raise PaDTError(f"{where}: polygon coordinates must be finite numbers")
    # pycocotools rasterises the whole outline in 1/5-pixel steps: a point far away makes it allocate
    # gigabytes or overflow (a crash, not an exception). Points within ten image sides are plenty.
    far = next(
        (
            v
            for part in parts
            for k, v in enumerate(part)
            if not -10 * (w := (width, height)[k % 2]) <= v <= 11 * w
        ),
        None,
    )
    if far is not None:
        raise PaDTError(
            f"{where}: polygon coordinate {far:g} lies far outside the {width}x{height} image; polygons are in "
            "pixels of the image they outline"
        )
    parts = [p for p in parts if len(p) >= 6 and len(p) % 2 == 0]
    if not parts:
        return encode_rle(np.zeros((height, width), dtype=bool))
    rle = mask_utils.merge(mask_utils.frPyObjects(parts, height, width))
    return {"size": [int(height), int(width)], "counts": rle["counts"].decode("ascii")}


def box_to_mask(box_xyxy: Sequence[float], height: int, width: int) -> np.ndarray:
    """A pixel ``[x1, y1, x2, y2]`` box rasterised the way pycocotools rasterises a COCO box."""
    from padt.box_ops import xyxy_to_xywh

    height, width = _check_hw(height, width, "the image size")
    values = [float(v) for v in box_xyxy]
    if len(values) != 4 or not all(np.isfinite(values)):
        raise PaDTError(f"box {list(box_xyxy)} must be four finite numbers [x1, y1, x2, y2] in pixels")
    # Clipping an axis-aligned box to just outside the image leaves its raster unchanged, and keeps
    # pycocotools (which walks the outline) from allocating for, or overflowing on, a box far away.
    x1, y1, x2, y2 = (
        min(max(v, -1.0), side + 1.0) for v, side in zip(values, (width, height, width, height))
    )
    rle = mask_utils.frPyObjects(
        np.asarray([xyxy_to_xywh([x1, y1, x2, y2])], dtype=np.float64), height, width
    )
    return mask_utils.decode(rle)[..., 0].astype(bool)


def segmentation_to_rle(segmentation: Any, height: int, width: int, where: str = "segmentation") -> dict:
    """COCO polygons or an RLE of an image of ``height x width`` -> checked compressed RLE."""
    if isinstance(segmentation, Mapping):
        return compress_rle(check_rle(segmentation, where, image_hw=(height, width)), where)
    if isinstance(segmentation, list):
        return polygons_to_rle(segmentation, height, width, where)
    raise PaDTError(
        f"{where}: expected COCO polygons (list) or RLE (dict), got {type(segmentation).__name__}"
    )


def segmentation_to_mask(
    segmentation: Any, image_hw: tuple[int, int] | None = None, where: str = "segmentation"
) -> np.ndarray:
    """A full-resolution ``(h, w)`` bool mask from any COCO segmentation or an array.

    Accepts an RLE dict, a list of RLE dicts, COCO polygons (need ``image_hw``) or a 2-D array (numpy or
    torch). Several parts are OR-ed, as the reference preprocessing does (docs/method.md §9.2).
    """
    if hasattr(segmentation, "detach"):  # a torch tensor
        segmentation = segmentation.detach().cpu().numpy()
    if isinstance(segmentation, np.ndarray):
        if segmentation.ndim != 2:
            raise PaDTError(f"{where}: a mask must be 2-D (height, width), got shape {segmentation.shape}")
        return segmentation.astype(bool)
    if isinstance(segmentation, Mapping):
        segmentation = [segmentation]
    if isinstance(segmentation, Sequence) and not isinstance(segmentation, str) and segmentation:
        if all(isinstance(part, Mapping) for part in segmentation):
            masks = [decode_rle(check_rle(r, where, image_hw=image_hw), where) for r in segmentation]
            if len({m.shape for m in masks}) != 1:
                raise PaDTError(f"{where}: the RLE parts of one mask have different sizes")
            return np.logical_or.reduce(masks)
        if image_hw is None:
            raise PaDTError(f"{where}: decoding polygons needs the image size: pass image_hw=(height, width)")
        return decode_rle(polygons_to_rle(segmentation, *image_hw, where=where), where)
    raise PaDTError(
        f"{where}: cannot read a mask from {type(segmentation).__name__}: pass an RLE dict, a list of RLE dicts, "
        "COCO polygons or a 2-D array"
    )


# ------------------------------------------------------------------------------------------------ resizing
# cv2's fixed-point resize for 8-bit images: weights are scaled by 2**11.
_CV2_COEF_BITS = 11
_CV2_COEF_SCALE = 1 << _CV2_COEF_BITS


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


def rle_area(rle: Mapping[str, Any], where: str = "mask") -> int:
    """Foreground pixels of an RLE."""
    return int(mask_utils.area(pycocotools_rle(rle, where)))


def intersection_union(
    pred: np.ndarray | Mapping[str, Any], gt: np.ndarray | Mapping[str, Any], where: str = "mask"
) -> tuple[float, float]:
    """Pixel counts ``(|P ∩ G|, |P ∪ G|)`` of two masks of the same size."""
    p, g = pycocotools_rle(pred, where), pycocotools_rle(gt, where)
    if list(p["size"]) != list(g["size"]):
        raise PaDTError(
            f"{where}: predicted mask is {list(p['size'])} but the ground truth is {list(g['size'])}; predict "
            "masks at the original image size"
        )
    inter = float(mask_utils.area(mask_utils.merge([p, g], intersect=True)))
    union = float(mask_utils.area(p)) + float(mask_utils.area(g)) - inter
    return inter, union


__all__ = [
    "MAX_MASK_SIDE",
    "box_to_mask",
    "check_rle",
    "compress_rle",
    "decode_rle",
    "encode_rle",
    "intersection_union",
    "polygons_to_rle",
    "pycocotools_rle",
    "resize_bilinear_cv2",
    "rle_area",
    "segmentation_to_mask",
    "segmentation_to_rle",
]
