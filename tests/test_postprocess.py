"""Post-processing: pixel boxes, masks at the original size, COCO RLE, JSON records (docs/method.md §6.5)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from padt.errors import PaDTError
from padt.postprocess import (
    DetectedObject,
    Prediction,
    boxes_to_coco_xywh,
    boxes_to_pixel_xyxy,
    detected_objects,
    mark_duplicates,
    mask_box_weight_of,
    mask_boxes_xyxy,
    mask_to_rle,
    masks_to_original,
    ovd_duplicate_iou_of,
    rle_to_mask,
)
from parity import fixture_dirs

FIXTURE = fixture_dirs()[0]


def test_pixel_boxes_are_clipped_to_the_original_image():
    boxes = torch.tensor([[0.5, 0.5, 0.5, 0.25], [0.1, 0.9, 0.4, 0.4]])
    out = boxes_to_pixel_xyxy(boxes, (200, 100))
    # (cx±w/2)*W, (cy±h/2)*H; the second box leaves the image at the left and the bottom.
    torch.testing.assert_close(out, torch.tensor([[50.0, 37.5, 150.0, 62.5], [0.0, 70.0, 60.0, 100.0]]))


def test_coco_boxes_follow_the_reference_rounding():
    boxes = torch.tensor([[0.1, 0.9, 0.4, 0.4], [0.5, 0.5, 1.2, 0.3], [0.3, 0.4, 0.123, 0.2]])
    out = boxes_to_coco_xywh(boxes, (200, 100))
    assert out.dtype == torch.long
    # x = max(cx - w/2, 0), w = min(w, 1); bottom/right not clipped (70 + 40 > 100).
    # Third box: x = (0.3 - 0.0615) * 200 = 47.7 -> 48, w = 0.123 * 200 = 24.6 -> 25.
    assert out.tolist() == [[0, 70, 80, 40], [0, 35, 200, 30], [48, 30, 25, 20]]


def test_masks_use_only_the_valid_region_and_resize_bilinearly():
    logits = torch.full((1, 8, 12), 5.0)  # padding outside the valid 4x8 region is positive on purpose
    logits[0, :4, :8] = -1.0
    logits[0, :4, :4] = 1.0  # left half of the valid region
    masks = masks_to_original(logits, torch.tensor([[1, 2]]), (16, 8))  # patch grid 1x2 -> 4x8 logits
    assert masks.shape == (1, 8, 16) and masks.dtype == bool
    # x2 bilinear upsampling (half-pixel centres): column 7 = 0.75*(+1) + 0.25*(-1) > 0, column 8 < 0.
    expected = np.zeros((8, 16), dtype=bool)
    expected[:, :8] = True
    assert np.array_equal(masks[0], expected)


def test_masks_at_native_size_threshold_sigmoid_half():
    logits = torch.tensor([[[0.3, -0.2, 0.0, 2.0], [-1.0, 0.1, 4.0, -3.0], [0, 0, 0, 0], [0, 0, 0, 0]]])
    masks = masks_to_original(logits, [[1, 1]], (4, 4))
    assert np.array_equal(masks[0], (logits[0] > 0).numpy())  # sigmoid(x) > 0.5 <=> x > 0


def test_rle_matches_hand_encoding_and_round_trips():
    mask = np.array([[0, 1, 1], [0, 1, 0]], dtype=bool)
    # Column-major runs: 2 zeros, 3 ones, 1 zero.
    assert mask_to_rle(mask) == {"size": [2, 3], "counts": "231"}
    column = np.array([0, 1, 1, 0, 0, 0, 1], dtype=bool)[:, None]
    # Runs 1, 2, 3, 1; from the 4th run on COCO stores the difference to the run two back: 1 - 2 = -1 -> 'O'.
    assert mask_to_rle(column)["counts"] == "123O"
    for m in (mask, column, np.zeros((3, 5), bool), np.ones((4, 2), bool)):
        assert np.array_equal(rle_to_mask(mask_to_rle(m)), m)
    assert json.loads(json.dumps(mask_to_rle(mask))) == mask_to_rle(mask)


def test_detected_objects_and_json():
    boxes = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.25, 0.25, 0.5, 0.5]])
    scores = torch.tensor([[0.0], [2.0]])
    logits = torch.full((2, 4, 4), -1.0)
    logits[1, :2, :2] = 1.0
    objects = detected_objects(
        boxes,
        scores,
        (8, 8),
        labels=["cat", "dog"],
        vrt_ids=[[1, 2], [0]],
        pred_mask=logits,
        pred_mask_valid_hw=[[1, 1], [1, 1]],
    )
    cat, dog = objects
    assert cat.box_xyxy == (2.0, 2.0, 6.0, 6.0) and cat.score == 0.5
    assert dog.score == pytest.approx(1 / (1 + np.exp(-2.0)))
    assert not cat.mask.any() and dog.mask[:4, :4].all() and not dog.mask[4:, :].any()
    assert np.array_equal(rle_to_mask(dog.mask_rle), dog.mask)
    record = dog.to_json()
    assert set(record) == {"label", "vrt_ids", "box_xyxy", "score", "mask_rle"}
    assert record["vrt_ids"] == [0] and record["box_xyxy"] == [0.0, 0.0, 4.0, 4.0]
    json.dumps(record)
    plain = detected_objects(boxes[:1], scores[:1, 0], (8, 8), labels=[""], vrt_ids=[[3]])
    assert plain[0].mask is None and plain[0].to_json()["mask_rle"] is None
    assert isinstance(plain[0], DetectedObject)


def test_mask_boxes_hold_each_masks_pixels():
    masks = np.zeros((3, 6, 10), dtype=bool)
    masks[0, 1:4, 2:7] = True  # rows 1-3, columns 2-6
    masks[1, 5, 9] = True  # one pixel in the corner
    out = mask_boxes_xyxy(masks)
    assert out[:2].tolist() == [[2.0, 1.0, 7.0, 4.0], [9.0, 5.0, 10.0, 6.0]]
    assert np.isnan(out[2]).all()  # an empty mask has no box


def test_mask_box_weight_blends_the_box_heads_box_with_the_masks():
    boxes = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5]])  # both (2, 2, 6, 6) on an 8x8 image
    logits = torch.full((2, 4, 4), -1.0)
    logits[0, :2, :2] = 1.0  # mask of object 0: the top-left quarter, box (0, 0, 4, 4); object 1: empty
    common = dict(
        labels=["a", "b"], vrt_ids=[[0], [1]], pred_mask=logits, pred_mask_valid_hw=[[1, 1], [1, 1]]
    )
    head = detected_objects(boxes, torch.zeros(2, 1), (8, 8), **common)
    assert [o.box_xyxy for o in head] == [(2.0, 2.0, 6.0, 6.0)] * 2
    quarter = detected_objects(boxes, torch.zeros(2, 1), (8, 8), mask_box_weight=0.25, **common)
    assert quarter[0].box_xyxy == (1.5, 1.5, 5.5, 5.5)  # 0.75 * (2, 2, 6, 6) + 0.25 * (0, 0, 4, 4)
    assert quarter[1].box_xyxy == (2.0, 2.0, 6.0, 6.0)  # an empty mask leaves the box head's box
    whole = detected_objects(boxes, torch.zeros(2, 1), (8, 8), mask_box_weight=1.0, **common)
    assert whole[0].box_xyxy == (0.0, 0.0, 4.0, 4.0) and np.array_equal(whole[0].mask, head[0].mask)
    unkept = detected_objects(
        boxes, torch.zeros(2, 1), (8, 8), mask_box_weight=1.0, keep_masks=False, **common
    )
    assert (
        unkept[0].box_xyxy == (0.0, 0.0, 4.0, 4.0) and unkept[0].mask is None and unkept[0].mask_rle is None
    )
    with pytest.raises(ValueError, match="needs pred_mask"):
        detected_objects(
            boxes, torch.zeros(2, 1), (8, 8), labels=["a", "b"], vrt_ids=[[0], [1]], mask_box_weight=0.5
        )


def test_mask_box_weight_comes_from_the_generation_config_and_is_checked():
    class Config:
        mask_box_weight = 0.4

    assert mask_box_weight_of(Config()) == 0.4
    assert mask_box_weight_of(Config(), 0.0) == 0.0  # given beats the checkpoint's
    assert mask_box_weight_of(object()) == 0.0  # unset: the box head's boxes, as the reference
    for bad in (-0.1, 1.5, float("nan"), "0.4", True):
        with pytest.raises(PaDTError, match="mask_box_weight must be a number from 0"):
            mask_box_weight_of(None, bad)


def test_duplicates_are_marked_greedily_by_score_within_each_image():
    def obj(box, score, label="star"):
        return DetectedObject(label=label, vrt_ids=[0], box_xyxy=box, score=score)

    objects = [
        obj((0, 0, 10, 10), 0.6),  # IoU 81/100 with the next, which scores higher
        obj((1, 1, 10, 10), 0.9, "cross"),  # kept: the best of the pair, whatever the labels
        obj((20, 20, 30, 30), 0.8),  # alone
        obj((0, 0, 10, 10), 0.7),  # same box as the first, but in the second image
        obj((22, 20, 32, 30), 0.5),  # IoU 80/120 = 0.67 with the third
    ]
    prediction = Prediction(text="", objects=objects, object_images=[0, 0, 0, 1, 0])
    assert mark_duplicates(prediction, 0.5) == 2
    assert [o.duplicate_of for o in objects] == [1, None, None, None, 2]
    assert objects[0].to_json()["duplicate_of"] == 1 and "duplicate_of" not in objects[1].to_json()
    for o in objects:
        o.duplicate_of = None
    assert mark_duplicates(prediction, 0.7) == 1 and [o.duplicate_of for o in objects] == [1] + [None] * 4
    objects[0].duplicate_of = None
    assert mark_duplicates(prediction, 0.9) == 0 and mark_duplicates(prediction, 0.0) == 0
    assert all(o.duplicate_of is None for o in objects)
    assert ovd_duplicate_iou_of(None, 0.5) == 0.5 and ovd_duplicate_iou_of(object()) == 0.0
    with pytest.raises(PaDTError, match="ovd_duplicate_iou must be a number from 0"):
        ovd_duplicate_iou_of(None, 1.5)


def test_reference_decoder_outputs_map_to_the_original_image():
    from safetensors.torch import load_file

    expected = load_file(FIXTURE / "expected.safetensors")
    meta = json.loads((FIXTURE / "meta.json").read_text())
    width, height = meta["samples"][1]["image_size_wh"]
    count = expected["gen_pred_boxes"].shape[0]
    objects = detected_objects(
        expected["gen_pred_boxes"],
        expected["gen_pred_score"],
        (width, height),
        labels=[""] * count,
        vrt_ids=[[0]] * count,
        pred_mask=expected["gen_pred_mask"],
        pred_mask_valid_hw=expected["gen_pred_mask_valid_hw"],
    )
    for obj, box in zip(objects, expected["gen_pred_boxes"]):
        cx, cy, w, h = box.tolist()
        assert obj.box_xyxy == pytest.approx(
            ((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height),
            abs=1e-3,
        )
        assert obj.mask.shape == (height, width)
        assert obj.mask_rle["size"] == [height, width]
