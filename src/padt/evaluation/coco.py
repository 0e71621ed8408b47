"""COCO box mAP for open-vocabulary detection (docs/method.md §10.3).

:func:`coco_bbox_map` scores a COCO results list against COCO ground truth with faster-coco-eval, which
reproduces pycocotools' ``COCOeval`` numbers. Two ground truths are possible:

- the official annotation file (e.g. ``instances_val2017.json``): the standard number;
- :func:`rebuild_coco_gt` from PaDT's preprocessed val records, which is what the reference scores against:
  only the objects kept by preprocessing (each covering at least one merged patch, classes with at most 50
  instances, images up to 1288 px), boxes rounded to integer pixels, image and category lists from the
  official file. Numbers on this GT are comparable with the reference's, not with other COCO results.

Predictions that name a class instead of an id (the reference's ``{"image_id", "category", "bbox", "score"}``
lines) go through :func:`results_from_named`, which keeps only exact lower-case name matches, as the
reference does.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from padt.box_ops import scale_xyxy, xyxy_to_xywh
from padt.data.records import Record
from padt.errors import PaDTError

# Order of COCOeval.stats for iouType="bbox".
STAT_NAMES = (
    "map",
    "map50",
    "map75",
    "map_small",
    "map_medium",
    "map_large",
    "mar1",
    "mar10",
    "mar100",
    "mar_small",
    "mar_medium",
    "mar_large",
)


def coco_bbox_map(
    gt: Mapping[str, Any], results: Sequence[Mapping[str, Any]], *, copy_gt: bool = True
) -> dict[str, float]:
    """COCO bbox metrics (``map`` = mAP@[.5:.95], ``map50``, ``map75``, ``map_small`` ... ``mar100`` ...).

    ``gt`` is a COCO annotation dict (``images``, ``annotations``, ``categories``); ``results`` a list of
    ``{"image_id", "category_id", "bbox": [x, y, w, h] pixels, "score"}``, checked by :func:`checked_results`.
    No NMS or top-k is applied beyond COCO's 100 detections per image. An empty results list scores 0.
    ``copy_gt=False`` lets the engine index ``gt`` in place (for a dict the caller made and will not reuse).
    """
    from faster_coco_eval import COCO

    results = checked_results(gt, results)
    if not gt.get("annotations"):
        raise PaDTError(
            "the ground truth has no annotations, so mAP is undefined; check the annotation file, or evaluate "
            "data that holds objects (a synthetic set with absent_rate=1 holds none)"
        )
    coco_gt = COCO(dict(gt), use_deepcopy=copy_gt)
    if not results:
        return dict.fromkeys(STAT_NAMES, 0.0)
    coco_dt = coco_gt.loadRes(results)
    evaluator = _evaluator_class()(coco_gt, coco_dt, iouType="bbox", print_function=lambda *a, **k: None)
    # faster-coco-eval's summarize() prints the table through print_function, but be safe about stdout.
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.run()
    stats = np.asarray(evaluator.stats, dtype=np.float64)
    return {name: float(stats[i]) for i, name in enumerate(STAT_NAMES)}


_EVALUATOR: type | None = None


def _evaluator_class() -> type:
    """faster-coco-eval's ``COCOeval_faster`` with a leaner ``evaluate`` for boxes.

    The stock ``evaluate`` builds a dict and a nested list over every (image, category) pair (400k on COCO val)
    and computes each non-empty pair's IoUs through numpy calls that cost more than the IoU itself; together that
    is more time than the engine's C++ matching. This one hands the same C++ matcher the same IoU matrices
    (detections by descending score, stable, cut at the largest maxDets; ground truth in the engine's order)
    built only for pairs that hold both a box and a detection, and shares one empty row between images without
    any. Anything but single-pass box evaluation with categories falls back to the stock method, and so does a
    faster-coco-eval whose internals differ from the ones this relies on.
    """
    global _EVALUATOR
    if _EVALUATOR is not None:
        return _EVALUATOR
    import copy as _copy

    from faster_coco_eval import COCOeval_faster

    try:
        import faster_coco_eval.faster_eval_api_cpp as engine
        import faster_coco_eval.mask_api_new_cpp as mask_api

        fast = callable(engine.COCOevalEvaluateAccumulate) and callable(mask_api.iou)
    except (ImportError, AttributeError):
        fast = False

    class _Evaluator(COCOeval_faster):
        def evaluate(self) -> None:
            p = self.params
            if not (
                fast and p.iouType == "bbox" and p.useCats and not self.separate_eval and not self.lvis_style
            ):
                return super().evaluate()
            p.imgIds = list(np.unique(p.imgIds))
            p.catIds = list(np.unique(p.catIds))
            p.maxDets = sorted(p.maxDets)
            self._prepare()
            pairs = getattr(self, "_nonempty_iou_pairs", None)
            if pairs is None:
                return super().evaluate()
            column = {c: k for k, c in enumerate(p.catIds)}
            gt_instances, dt_instances = self.gt_dataset.get_instances, self.dt_dataset.get_instances
            max_dets = p.maxDets[-1]
            empty_row = [[]] * len(p.catIds)  # one shared empty list per category: read, never written
            rows: dict[Any, list[Any]] = {}
            self.ious = {}
            for image_id, category_id in pairs:
                gts = gt_instances([image_id], [category_id], True)[0][0]
                dts = dt_instances([image_id], [category_id], True)[0][0]
                dts = sorted(dts, key=lambda d: -d["score"])[:max_dets]  # stable, as the stock mergesort
                ious = mask_api.iou(
                    [d["bbox"] for d in dts],
                    [g["bbox"] for g in gts],
                    [int(g.get("iscrowd", 0)) for g in gts],
                )
                self.ious[image_id, category_id] = ious
                row = rows.get(image_id)
                if row is None:
                    row = rows[image_id] = list(empty_row)
                row[column[category_id]] = ious
            self._paramsEval = _copy.deepcopy(p)
            self.eval = engine.COCOevalEvaluateAccumulate(
                self._paramsEval,
                [rows.get(image_id, empty_row) for image_id in p.imgIds],
                self.gt_dataset,
                self.dt_dataset,
                p.imgIds,
                p.catIds,
                True,
            )
            return None

    _EVALUATOR = _Evaluator
    return _EVALUATOR


def checked_results(gt: Mapping[str, Any], results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Fresh ``{"image_id", "category_id", "bbox", "score"}`` dicts of ``results``, each checked: known image and
    category, a box of four finite numbers with non-negative width and height, a finite score. A bad result is a
    one-line :class:`PaDTError` naming it (its ``_where`` entry when it has one, else its position)."""
    image_ids = {img["id"] for img in gt.get("images", [])}
    category_ids = {c["id"] for c in gt.get("categories", [])}
    out: list[dict[str, Any]] = []
    isfinite = math.isfinite
    for i, r in enumerate(results):
        try:
            image_id, category_id, bbox, score = r["image_id"], r["category_id"], r["bbox"], r["score"]
            x, y, w, h = bbox
            x, y, w, h, score = float(x), float(y), float(w), float(h), float(score)
        except KeyError:
            missing = [k for k in ("image_id", "category_id", "bbox", "score") if k not in r]
            raise PaDTError(
                f"{_where(r, i)} lacks {', '.join(missing)}; results are "
                "{image_id, category_id, bbox: [x, y, w, h], score}"
            ) from None
        except (TypeError, ValueError):
            raise PaDTError(
                f"{_where(r, i)}: bbox must be four numbers [x, y, w, h] in pixels and score a number, got "
                f"{r['bbox']!r} and {r['score']!r}"
            ) from None
        if not isinstance(image_id, Hashable) or image_id not in image_ids:
            raise PaDTError(f"{_where(r, i)}: image_id {image_id!r} is not in the ground truth's images")
        if not isinstance(category_id, Hashable) or category_id not in category_ids:
            raise PaDTError(f"{_where(r, i)}: category_id {category_id!r} is not a ground-truth category")
        if not (w >= 0 and h >= 0 and isfinite(x + y + w + h)):
            raise PaDTError(
                f"{_where(r, i)}: bbox {bbox!r} is not a box (NaN, infinite, or negative width/height); "
                "write [x, y, w, h] in pixels"
            )
        if not isfinite(score):
            raise PaDTError(f"{_where(r, i)}: score {r['score']!r} is not a finite number")
        out.append({"image_id": image_id, "category_id": category_id, "bbox": [x, y, w, h], "score": score})
    return out


def _where(result: Mapping[str, Any], index: int) -> str:
    return str(result.get("_where", f"result {index}"))


def results_from_named(
    predictions: Iterable[Mapping[str, Any]], categories: Sequence[Mapping[str, Any]]
) -> tuple[list[dict[str, Any]], int]:
    """Map ``{"image_id", "category": name, "bbox", "score"}`` predictions to category ids.

    ``category.lower()`` must equal a category name exactly, otherwise the prediction is dropped
    (docs/method.md §10.3). Returns ``(results, number_dropped)``. Predictions with a ``category_id`` pass
    through unchanged (not copied: :func:`checked_results` makes the copies the engine gets).
    """
    by_name = {str(c["name"]): c["id"] for c in categories}
    out: list[dict[str, Any]] = []
    dropped = 0
    for p in predictions:
        if "category_id" in p:
            out.append(p)
            continue
        cid = by_name.get(str(p.get("category", "")).lower())
        if cid is None:
            dropped += 1
            continue
        out.append({**p, "category_id": cid})
    return out, dropped


def rebuild_coco_gt(records: Iterable[Record], official: Mapping[str, Any]) -> dict[str, Any]:
    """The reference's OVD ground truth built from preprocessed val records (docs/method.md §10.3).

    Each record object becomes an annotation: category id by name, bbox = the normalised xyxy box times the
    official image size, rounded to integer pixels, as xywh; ``iscrowd`` and ``area`` copied. The image and
    category lists are the official file's, so images without kept objects still count (their detections
    are false positives).
    """
    images = {img["id"]: img for img in official.get("images", [])}
    categories = list(official.get("categories", []))
    by_name = {c["name"]: c["id"] for c in categories}
    annotations = []
    for rec in records:
        img = images.get(rec.id)
        if img is None:
            raise PaDTError(
                f"record id {rec.id!r} is not an image of the official annotation file; "
                "pair the val records with the file they were made from"
            )
        w, h = int(img["width"]), int(img["height"])
        for obj in rec.objects:
            if obj.label not in by_name:
                raise PaDTError(
                    f"record id {rec.id!r}: label {obj.label!r} is not a category of the official "
                    "file; pair the val records with the file they were made from"
                )
            corners = [round(v) for v in scale_xyxy(obj.bbox, w, h)]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": rec.id,
                    "category_id": by_name[obj.label],
                    "bbox": [int(v) for v in xyxy_to_xywh(corners)],
                    "area": obj.area,
                    "iscrowd": obj.iscrowd,
                }
            )
    return {
        "info": copy.deepcopy(official.get("info", {})),
        "images": copy.deepcopy(list(images.values())),
        "annotations": annotations,
        "categories": copy.deepcopy(categories),
    }
