"""Predictions in other libraries' formats: ``supervision.Detections`` and COCO result lists.

- :func:`to_supervision`: the objects of one image as ``supervision.Detections`` (boxes, masks, scores, labels),
  for supervision's annotators, trackers, zone counters and dataset tools.
- :func:`to_coco_results`: ``[{image_id, category_id | category, bbox: [x, y, w, h], score, segmentation}]``,
  the COCO results format that pycocotools, faster-coco-eval, FiftyOne and ``padt score`` read.

Both are also methods of :class:`~padt.inference.Prediction`.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from padt.errors import PaDTError

if TYPE_CHECKING:
    import supervision

    from padt.postprocess import Prediction


def import_supervision():
    """``supervision``, or a one-line error saying how to install it."""
    try:
        with warnings.catch_warnings():
            # Without OpenCV, supervision draws with its NumPy backend and says so on import; padt only needs
            # that backend (boxes, masks, PIL text).
            warnings.filterwarnings("ignore", message=".*OpenCV.*not installed.*")
            import supervision
    except ModuleNotFoundError:
        raise PaDTError("this needs the supervision package: pip install supervision") from None
    return supervision


def to_supervision(prediction: Prediction, image_index: int = 0) -> supervision.Detections:
    """The objects of ``prediction`` that lie in image ``image_index`` of its sample, as ``sv.Detections``.

    Fields: ``xyxy`` (pixels of the original image), ``confidence`` (the decoder's score), ``mask`` (``(N, H, W)``
    bool, when every object has a decoded mask, else None), ``class_id`` (the index of each label among the
    sample's distinct labels, in order of first appearance) and ``data``: ``class_name`` (the labels, which
    supervision's label annotators show), ``vrt_ids`` (each object's VRT indices within its image) and
    ``object_index`` (the object's position in ``prediction.objects``, which keeps colours consistent).
    Duplicates (:func:`padt.postprocess.mark_duplicates`) are not detections and are left out.
    """
    sv = import_supervision()
    picked = [
        k
        for k, image in enumerate(prediction.object_images)
        if image == image_index and prediction.objects[k].duplicate_of is None
    ]
    objects = [prediction.objects[k] for k in picked]
    names = list(dict.fromkeys(o.label for o in prediction.objects))
    masks = [o.mask for o in objects]
    shapes = {m.shape for m in masks if m is not None}
    has_masks = bool(objects) and all(m is not None for m in masks) and len(shapes) == 1
    vrt_ids = np.empty(len(objects), dtype=object)
    vrt_ids[:] = [list(o.vrt_ids) for o in objects]
    return sv.Detections(
        xyxy=np.array([o.box_xyxy for o in objects], dtype=np.float32).reshape(-1, 4),
        mask=np.stack(masks).astype(bool) if has_masks else None,
        confidence=np.array([o.score for o in objects], dtype=np.float32),
        class_id=np.array([names.index(o.label) for o in objects], dtype=int),
        data={
            "class_name": np.array([o.label for o in objects], dtype=str),
            "vrt_ids": vrt_ids,
            "object_index": np.array(picked, dtype=int),
        },
    )


def to_coco_results(prediction: Prediction, image_ids: Sequence[int]) -> list[dict[str, Any]]:
    """COCO results of one prediction, one dict per object: ``image_id`` (``image_ids[object's image]``),
    ``category`` (the label, as ``padt score`` and the reference's result files name it), ``bbox`` ``[x, y, w, h]``
    in pixels of the original image, ``score`` and ``segmentation`` (COCO RLE; left out when masks were not
    decoded). :func:`padt.evaluation.coco.results_from_named` maps ``category`` to a dataset's ``category_id``.
    Duplicates (:func:`padt.postprocess.mark_duplicates`) are left out."""
    results = []
    for obj, image in zip(prediction.objects, prediction.object_images):
        if obj.duplicate_of is not None:
            continue
        x0, y0, x1, y1 = (float(v) for v in obj.box_xyxy)
        result = {
            "image_id": int(image_ids[image]),
            "category": obj.label,
            "bbox": [x0, y0, x1 - x0, y1 - y0],
            "score": float(obj.score),
        }
        if obj.mask_rle is not None:
            result["segmentation"] = obj.mask_rle
        results.append(result)
    return results


def coco_image_ids(paths: Sequence[str | os.PathLike], coco: Mapping[str, Any] | None = None) -> list[int]:
    """COCO image ids of image files: by file name from ``coco["images"]`` when given, else the number a file is
    named by (COCO's ``000000139.jpg`` -> 139), else the file's position in ``paths``."""
    by_name = {Path(str(im["file_name"])).name: int(im["id"]) for im in (coco or {}).get("images", [])}
    ids = []
    for k, path in enumerate(paths):
        name = Path(path).name
        if coco is not None:
            if name not in by_name:
                raise PaDTError(f"{name} is not among the images of the COCO file; pass one that lists it")
            ids.append(by_name[name])
        else:
            ids.append(int(Path(path).stem) if Path(path).stem.isdigit() else k)
    return ids


def read_coco_annotations(path: str | os.PathLike) -> dict[str, Any]:
    """A COCO annotation file (its ``images`` and ``categories`` are what :func:`write_coco_results` needs)."""
    try:
        coco = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PaDTError(
            f"cannot read the COCO file {os.fspath(path)!r} ({error}); pass a COCO annotation JSON"
        ) from None
    if not isinstance(coco, dict) or "categories" not in coco or "images" not in coco:
        raise PaDTError(f"{os.fspath(path)!r} has no 'images' and 'categories'; pass a COCO annotation file")
    return coco


def write_coco_results(
    out: str | os.PathLike,
    prediction: Prediction,
    image_paths: Sequence[str | os.PathLike],
    coco_gt: str | os.PathLike | Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """``padt predict --coco-json``: write the COCO results of ``prediction`` to ``out``.

    With ``coco_gt`` (a COCO annotation file, or its content), image ids come from its ``images`` and each label becomes its
    ``category_id`` by the reference's rule (lowercased name, exact match); objects whose label is no category
    are left out with a warning. Returns what was written.
    """
    from padt.evaluation.coco import results_from_named

    coco = coco_gt if coco_gt is None or isinstance(coco_gt, Mapping) else read_coco_annotations(coco_gt)
    results = to_coco_results(prediction, coco_image_ids(image_paths, coco))
    if coco is not None:
        names = {str(c["name"]) for c in coco["categories"]}
        unknown = sorted({r["category"] for r in results if r["category"].lower() not in names})
        results, dropped = results_from_named(results, coco["categories"])
        if dropped:
            print(
                f"padt: warning: {dropped} object(s) left out of {os.fspath(out)}: their labels "
                f"{unknown} are not categories of the COCO file",
                file=sys.stderr,
            )
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(results))
    return results
