"""Foreground patch assignment (docs/method.md §9.3): the 1/28 rule, cv2-exact resizing, the processor's grid,
and the patch lists the reference preprocessing wrote for the parity fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from padt.data.patches import (
    box_foreground_patches,
    foreground_patches,
    merged_grid_for_image,
    resize_bilinear_cv2,
    segmentation_to_mask,
)
from padt.errors import PaDTError
from parity import fixture_dirs

# ------------------------------------------------------------------------------------- the 1/28 rule


def _cell_mask(pixels_per_cell: list[int]) -> np.ndarray:
    """A 56x56 mask (a 2x2 grid of 28-px cells, so no resizing) with the given pixel count in each cell."""
    mask = np.zeros((56, 56), dtype=bool)
    for cell, count in enumerate(pixels_per_cell):
        r, c = divmod(cell, 2)
        block = np.zeros(28 * 28, dtype=bool)
        block[:count] = True
        mask[r * 28 : (r + 1) * 28, c * 28 : (c + 1) * 28] = block.reshape(28, 28)
    return mask


def test_exact_boundary_coverage_of_one_28th():
    # 28 of 784 pixels is coverage exactly 1/28: kept by the COCO/RIC rule (>=), dropped by RefCOCO's (>).
    mask = _cell_mask([28, 27, 29, 0])
    assert foreground_patches(mask, (2, 2)) == [0, 2]
    assert foreground_patches(mask, (2, 2), strict=True) == [2]
    # The default grid of a 56x56 image is the same 2x2 grid.
    assert foreground_patches(mask) == [0, 2]


def test_full_and_empty_masks():
    full = np.ones((196, 308), dtype=bool)
    assert foreground_patches(full) == list(range(7 * 11))
    assert foreground_patches(np.zeros((196, 308), dtype=bool)) == []


def test_grid_is_given_explicitly_or_from_the_processor():
    mask = np.zeros((56, 84), dtype=bool)
    mask[:, 56:] = True  # the right-most third
    assert foreground_patches(mask, (2, 3)) == [2, 5]
    # Squeezed onto one row, the right third of the mask is still the right-most cell.
    assert foreground_patches(mask, (1, 3)) == [2]
    with pytest.raises(PaDTError):
        foreground_patches(mask, (0, 3))


def test_processor_grid_follows_smart_resize():
    assert merged_grid_for_image(196, 308) == (7, 11)
    assert merged_grid_for_image(1000, 2000) == (36, 71)
    # Past max_pixels the processor shrinks the image: 4000 / sqrt(16e6 / 12845056) = 3584 px = 128 cells,
    # where round(4000 / 28) would say 143.
    assert merged_grid_for_image(4000, 4000) == (128, 128)
    # Below min_pixels it grows it: 20x30 -> 56x84, where round(./28) would give a single cell.
    assert merged_grid_for_image(20, 30) == (2, 3)
    with pytest.raises(PaDTError):
        merged_grid_for_image(0, 30)


def test_box_patches():
    # A 1-px-wide box 28 px tall covers exactly 1/28 of cell 0.
    assert box_foreground_patches([0, 0, 1, 28], (56, 56), (2, 2)) == [0]
    assert box_foreground_patches([0, 0, 1, 28], (56, 56), (2, 2), strict=True) == []
    assert box_foreground_patches([20, 0, 56, 28], (56, 56)) == [0, 1]
    with pytest.raises(PaDTError):
        box_foreground_patches([30, 0, 20, 28], (56, 56))


# ------------------------------------------------------------------------------------- resizing

_SMALL = np.zeros((7, 9), dtype=np.uint8)
_SMALL[1:5, 2:7] = 1
_SMALL[5, 0] = 1
_SMALL[6, 8] = 1

# cv2.resize(_SMALL * 255, (6, 10)) and (13, 5), INTER_LINEAR, computed with OpenCV 5.0.
_CV2_U8_10x6 = [
    [0, 0, 0, 0, 0, 0],
    [0, 105, 140, 140, 105, 0],
    [0, 191, 255, 255, 191, 0],
    [0, 191, 255, 255, 191, 0],
    [0, 191, 255, 255, 191, 0],
    [0, 191, 255, 255, 191, 0],
    [10, 182, 242, 242, 182, 0],
    [143, 48, 64, 64, 48, 0],
    [105, 0, 0, 0, 0, 86],
    [0, 0, 0, 0, 0, 191],
]
_CV2_U8_5x13 = [
    [0, 0, 12, 47, 51, 51, 51, 51, 51, 47, 12, 0, 0],
    [0, 0, 59, 235, 255, 255, 255, 255, 255, 235, 59, 0, 0],
    [0, 0, 59, 235, 255, 255, 255, 255, 255, 235, 59, 0, 0],
    [102, 47, 35, 141, 153, 153, 153, 153, 153, 141, 35, 0, 0],
    [51, 24, 0, 0, 0, 0, 0, 0, 0, 0, 0, 94, 204],
]
# cv2.resize(_SMALL.astype(float32), (6, 10)), the float32 values written as decimals.
_CV2_F32_10x6 = [
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    [0.0, 0.4125000238418579, 0.550000011920929, 0.550000011920929, 0.4125000238418579, 0.0],
    [0.0, 0.75, 1.0, 1.0, 0.75, 0.0],
    [0.0, 0.75, 1.0, 1.0, 0.75, 0.0],
    [0.0, 0.75, 1.0, 1.0, 0.75, 0.0],
    [0.0, 0.75, 1.0, 1.0, 0.75, 0.0],
    [0.03750000149011612, 0.7124999761581421, 0.949999988079071, 0.949999988079071, 0.7124999761581421, 0.0],
    [0.5625, 0.1875, 0.25, 0.25, 0.1875, 0.0],
    [0.4125000238418579, 0.0, 0.0, 0.0, 0.0, 0.3374999761581421],
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.75],
]


def test_resize_matches_cv2_uint8_fixed_point():
    # 8-bit cv2 rounds in fixed point: 0.0375 * 255 = 9.56 becomes 10 and 0.7125 * 255 = 181.7 becomes 182.
    np.testing.assert_array_equal(
        resize_bilinear_cv2(_SMALL * 255, (10, 6)), np.array(_CV2_U8_10x6, np.uint8)
    )
    np.testing.assert_array_equal(
        resize_bilinear_cv2(_SMALL * 255, (5, 13)), np.array(_CV2_U8_5x13, np.uint8)
    )


def test_resize_matches_cv2_float32_bits():
    out = resize_bilinear_cv2(_SMALL.astype(np.float32), (10, 6))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.array(_CV2_F32_10x6, dtype=np.float32))


def test_resize_same_size_is_a_copy_and_bad_input_is_refused():
    image = (_SMALL * 255).astype(np.uint8)
    out = resize_bilinear_cv2(image, image.shape)
    np.testing.assert_array_equal(out, image)
    assert out is not image
    with pytest.raises(PaDTError):
        resize_bilinear_cv2(image.astype(np.float64), (3, 3))
    with pytest.raises(PaDTError):
        resize_bilinear_cv2(image, (0, 3))


# ------------------------------------------------------------------------------------- segmentations


def test_segmentation_formats_decode_to_the_same_mask():
    h, w = 30, 40
    square = [[5.0, 5.0, 15.0, 5.0, 15.0, 15.0, 5.0, 15.0]]
    from_polygon = segmentation_to_mask(square, (h, w))
    rle = mask_utils.encode(np.asfortranarray(from_polygon.astype(np.uint8)))
    compressed = {"size": [h, w], "counts": rle["counts"].decode("ascii")}
    np.testing.assert_array_equal(segmentation_to_mask(compressed), from_polygon)
    # Uncompressed counts: alternating runs of 0s and 1s in column-major order.
    column_major = from_polygon.T.reshape(-1)
    changes = np.flatnonzero(np.diff(column_major.astype(np.int8))) + 1
    runs = np.diff(np.concatenate([[0], changes, [column_major.size]])).tolist()
    np.testing.assert_array_equal(segmentation_to_mask({"size": [h, w], "counts": runs}), from_polygon)
    # Several parts are OR-ed.
    other = np.zeros((h, w), dtype=np.uint8)
    other[20:25, 30:35] = 1
    rle2 = mask_utils.encode(np.asfortranarray(other))
    both = segmentation_to_mask([compressed, rle2])
    assert both.sum() == from_polygon.sum() + 25


def test_segmentation_errors():
    with pytest.raises(PaDTError, match="image_hw"):
        segmentation_to_mask([[0, 0, 5, 0, 5, 5]])
    with pytest.raises(PaDTError):
        segmentation_to_mask(np.zeros((2, 3, 4)))
    with pytest.raises(PaDTError):
        segmentation_to_mask({"counts": "abc"})
    with pytest.raises(PaDTError):
        segmentation_to_mask("not a mask")


# ------------------------------------------------------------------------------------- parity

_RULES = (("patches_refcoco_rule", True), ("patches_coco_rule", False), ("patches_ric_rule", False))


@pytest.mark.parametrize("fixture", fixture_dirs(), ids=lambda p: p.name)
def test_reference_patch_lists(fixture: Path):
    meta = json.loads((fixture / "meta.json").read_text())
    entries = meta["foreground_patch_assignment"]
    assert entries
    checked = 0
    for entry in entries:
        w, h = entry["image_size_wh"]
        mask = segmentation_to_mask(entry["segmentation"], (h, w))
        assert int(mask.sum()) == entry["mask_area_px"]
        for key, strict in _RULES:
            expected = entry.get(key)
            if expected is None:
                continue
            assert foreground_patches(mask, strict=strict) == expected, (entry["name"], key)
            checked += 1
    assert checked >= len(entries)
