"""Predictions as supervision Detections and COCO results; overlays drawn with supervision; padt predict
--coco-json."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from padt.cli import main
from padt.inference import PaDT
from padt.masks import decode_rle, encode_rle
from padt.postprocess import DetectedObject, Prediction
from padt.processing import PaDTProcessor
from padt.tiny import tiny_model, tiny_processor
from padt.visualize import PALETTE, draw_prediction


def rect_mask(w: int, h: int, box: tuple[int, int, int, int]) -> np.ndarray:
    mask = np.zeros((h, w), dtype=bool)
    mask[box[1] : box[3], box[0] : box[2]] = True
    return mask


def obj(
    label: str, box: tuple[int, int, int, int], score: float, size=(120, 90), vrt=(1, 2)
) -> DetectedObject:
    mask = rect_mask(*size, box)
    return DetectedObject(
        label=label,
        vrt_ids=list(vrt),
        box_xyxy=tuple(float(v) for v in box),
        score=score,
        mask=mask,
        mask_rle=encode_rle(mask),
    )


@pytest.fixture
def two_image_prediction() -> Prediction:
    objects = [
        obj("cat", (10, 10, 50, 40), 0.9),
        obj("dog", (60, 20, 110, 80), 0.8, vrt=(5,)),
        obj("cat", (5, 50, 30, 85), 0.7, vrt=(3, 3)),
    ]
    return Prediction(text="...", objects=objects, object_images=[0, 1, 0])


def test_to_supervision_keeps_every_field_of_the_images_objects(two_image_prediction):
    pred = two_image_prediction
    det = pred.to_supervision(0)
    assert len(det) == 2
    np.testing.assert_array_equal(det.xyxy, [[10, 10, 50, 40], [5, 50, 30, 85]])
    np.testing.assert_allclose(det.confidence, [0.9, 0.7], rtol=1e-6)
    assert det.mask.shape == (2, 90, 120) and (det.mask[1] == pred.objects[2].mask).all()
    assert list(det.data["class_name"]) == ["cat", "cat"]
    assert list(det.class_id) == [0, 0]  # index among the sample's distinct labels: cat 0, dog 1
    assert [list(v) for v in det.data["vrt_ids"]] == [[1, 2], [3, 3]]
    assert list(det.data["object_index"]) == [0, 2]
    other = pred.to_supervision(1)
    assert list(other.class_id) == [1] and list(other.data["object_index"]) == [1]
    empty = Prediction(text="nothing").to_supervision()
    assert len(empty) == 0 and empty.mask is None


def test_to_coco_gives_xywh_boxes_and_rle(two_image_prediction):
    results = two_image_prediction.to_coco([139, 285])
    assert [r["image_id"] for r in results] == [139, 285, 139]
    assert results[0]["bbox"] == [10.0, 10.0, 40.0, 30.0] and results[0]["category"] == "cat"
    assert results[1]["score"] == pytest.approx(0.8)
    assert (decode_rle(results[2]["segmentation"]) == two_image_prediction.objects[2].mask).all()


def test_overlay_colours_boxes_and_tints_masks(two_image_prediction):
    base = Image.new("RGB", (120, 90), (100, 100, 100))
    drawn = np.asarray(draw_prediction(base, two_image_prediction, image_index=0, alpha=0.5)).astype(int)
    assert tuple(drawn[25, 10]) == PALETTE[0]  # left edge of object 0's box
    assert (
        tuple(drawn[70, 5]) == PALETTE[2]
    )  # left edge of object 2's box: the colour follows the object index
    inside = drawn[30, 30]
    expected = 0.5 * np.array(PALETTE[0]) + 0.5 * 100
    assert np.abs(inside - expected).max() <= 2  # half-transparent mask
    assert tuple(drawn[5, 100]) == (100, 100, 100)  # far from every object
    assert tuple(drawn[50, 85]) == (100, 100, 100)  # object 1 lies in the other image


# ---------------------------------------------------------------------------------------- padt predict
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, one_torch_thread):
    folder = tmp_path_factory.mktemp("ckpt")
    model = tiny_model(seed=0)
    model.save_pretrained(folder)
    PaDTProcessor(tiny_processor(max_pixels=224 * 224), model.vocab_size).save_pretrained(folder)
    image = folder / "000000000139.png"
    Image.fromarray(np.random.default_rng(6).integers(0, 255, (112, 140, 3), dtype=np.uint8)).save(image)
    return folder, image


def test_predict_writes_coco_results(checkpoint, tmp_path):
    folder, image = checkpoint
    out = tmp_path / "results.json"
    args = [
        "predict",
        "--model",
        str(folder),
        "--image",
        str(image),
        "--prompt",
        "find it",
        "--max-new-tokens",
        "8",
    ]
    assert main([*args, "--coco-json", str(out)]) == 0
    results = json.loads(out.read_text())
    [pred] = PaDT.from_pretrained(folder)([[str(image)]], ["find it"], max_new_tokens=8)
    assert results == pred.to_coco([139])
    assert len(results) == len(pred.objects) >= 1
    assert all(r["image_id"] == 139 and len(r["bbox"]) == 4 for r in results)


def test_coco_gt_maps_image_and_category_ids_and_pycocotools_reads_them(
    checkpoint, tmp_path, capsys, two_image_prediction
):
    from pycocotools.coco import COCO

    from padt.adapters import write_coco_results

    gt = {
        "images": [
            {"id": 7, "file_name": "a.jpg", "width": 120, "height": 90},
            {"id": 9, "file_name": "b.jpg", "width": 120, "height": 90},
        ],
        "categories": [{"id": 17, "name": "cat"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 17, "bbox": [10, 10, 40, 30], "area": 1200, "iscrowd": 0}
        ],
    }
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(gt))
    out = tmp_path / "results.json"
    written = write_coco_results(out, two_image_prediction, ["x/a.jpg", "y/b.jpg"], gt_path)
    assert [(r["image_id"], r["category_id"]) for r in written] == [(7, 17), (7, 17)]
    err = capsys.readouterr().err
    assert "1 object(s) left out" in err and "['dog']" in err
    coco = COCO(str(gt_path))
    loaded = coco.loadRes(str(out))
    assert len(loaded.anns) == 2 and loaded.anns[1]["bbox"] == [10.0, 10.0, 40.0, 30.0]
    folder, image = checkpoint
    code = main(
        [
            "predict",
            "--model",
            str(folder),
            "--image",
            str(image),
            "--prompt",
            "x",
            "--coco-json",
            str(out),
            "--coco-gt",
            str(gt_path),
            "--max-new-tokens",
            "2",
        ]
    )
    assert code == 2 and "not among the images of the COCO file" in capsys.readouterr().err
    assert main(["predict", "--image", str(image), "--prompt", "x", "--coco-gt", str(gt_path)]) == 2
