"""``padt score``: score predictions made elsewhere against ground truth, print the metrics as JSON.

The functions behind it (:func:`score_rec`, :func:`score_res`, :func:`score_ovd`, :func:`score_ric`) take
records and prediction dicts, so they serve other evaluation drivers as well. Metric definitions are in
:mod:`padt.evaluation.metrics`, :mod:`padt.evaluation.coco` and :mod:`padt.evaluation.caption`.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from padt.box_ops import checked_pixel_box, scale_xyxy, xyxy_to_xywh
from padt.commands import fraction, writable_file
from padt.data.records import Record, iter_json_items, read_records
from padt.errors import PaDTError
from padt.masks import check_rle
from padt.tasks import TASK_NAMES, get_task

PRED_FORMATS = """\
prediction files (--pred): JSONL (one object per line) or a JSON list.

per-query lines (rec, res, ric, ovd):
  {"index": 0, "objects": [{"bbox": [x1, y1, x2, y2], "mask": RLE, "score": 0.9, "label": "..."}],
   "caption": "...", "width": 640, "height": 480}
  - index: 0-based position of the query's record in --gt (default: the line's position);
    ric may use "id" (the image id) instead; ovd needs "image_id" with a COCO --gt.
  - objects: in the order the model produced them; bbox in pixels, xyxy; mask a COCO RLE at the
    original image size (res); label: the quoted text the model wrote (the echoed sentence for
    rec/res, the class name for ovd).
  - an object with "duplicate_of" (padt's OVD duplicate suppression) is not scored.
  - caption (ric): the generated text; grounding tokens (<|VRT_i|> runs, <|Obj_k|>) are removed.
  - width/height: original image size, needed to compare with normalised ground-truth boxes unless
    the ground truth has masks (their size is used) or --image-root lets the image be read.

per-object lines (the reference's result files; ovd, and rec/res with --protocol paper):
  {"image_id": 139, "category": "person", "bbox": [x, y, w, h], "score": 0.9, "mask": RLE}
  - bbox in pixels, COCO xywh; ovd also accepts "category_id" instead of "category".

ground truth (--gt): PaDT records (.json/.jsonl, padt.data.records) for every task; for ovd also a
COCO annotation file (the standard number). With ovd records, --coco gives the official file whose
image and category lists the reference's rebuilt ground truth uses.
"""


# ----------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``padt score``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = PRED_FORMATS
    parser.add_argument("--task", required=True, choices=TASK_NAMES, help="what to score")
    parser.add_argument(
        "--gt", required=True, type=Path, help="ground truth: PaDT records or (ovd) COCO json"
    )
    parser.add_argument("--pred", required=True, type=Path, help="predictions (formats below)")
    parser.add_argument(
        "--protocol",
        choices=("padt", "paper"),
        default="padt",
        help="rec/res: 'padt' scores the first object of each query by record index (acc@0.5, acc@0.75, "
        "acc@0.5_best; miou, ciou); 'paper' is the reference's: keyed by (image, echoed sentence), max over "
        "objects, missing keys count 0",
    )
    parser.add_argument(
        "--coco", type=Path, help="ovd with records as --gt: the official COCO annotation file"
    )
    parser.add_argument("--image-root", type=Path, help="folder of the images, to read sizes when needed")
    parser.add_argument(
        "--iou-threshold", type=fraction, default=0.5, help="ric: IoU for greedy matching (0.5)"
    )
    parser.add_argument("--no-meteor", action="store_true", help="ric: skip METEOR (slow Java process)")
    parser.add_argument("--output", type=Path, help="also write the metrics JSON to this file")


def run(args: argparse.Namespace) -> int:
    """Score and print the metrics JSON."""
    writable_file(args.output, "--output")
    with _no_cyclic_gc():
        preds = read_predictions(args.pred)
        task = get_task(args.task)
        ground_truth = args.gt if task.coco_ground_truth else read_records(args.gt)
        metrics = task.score(
            ground_truth,
            preds,
            protocol=args.protocol,
            image_root=args.image_root,
            coco=args.coco,
            iou_threshold=args.iou_threshold,
            meteor=not args.no_meteor,
        )
    text = json.dumps(metrics, indent=2)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n", encoding="utf-8")
    return 0


@contextlib.contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Pause Python's cyclic garbage collector: scoring builds hundreds of thousands of small dicts and lists
    (none in cycles), and the collector's repeated passes over them cost ~15% of a COCO-sized ``padt score``."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# ----------------------------------------------------------------------------------------------- reading


def read_predictions(path: str | Path) -> list[dict[str, Any]]:
    """Prediction dicts from a JSONL file or a JSON list."""
    path = Path(path)
    if not path.is_file():
        raise PaDTError(f"{path}: no such file; give the predictions as JSONL or a JSON list")
    items = []
    for where, _, item in iter_json_items(path, "one prediction object", "item"):
        if type(item) is not dict:
            raise PaDTError(f"{where}: expected a JSON object, got {type(item).__name__}")
        item.setdefault("_where", where)
        items.append(item)
    if not items:
        raise PaDTError(f"{path}: holds no predictions; nothing to score")
    return items


def _w(pred: Mapping[str, Any]) -> str:
    """Where a prediction came from, for error messages."""
    return str(pred.get("_where", "prediction"))


def _is_per_object(pred: Mapping[str, Any]) -> bool:
    return "objects" not in pred and "bbox" in pred and "image_id" in pred


def _by_index(
    records: Sequence[Record], preds: Sequence[Mapping[str, Any]]
) -> list[Mapping[str, Any] | None]:
    """Per-query predictions placed at their record's position (``None`` where a record has none)."""
    out: list[Mapping[str, Any] | None] = [None] * len(records)
    for pos, p in enumerate(preds):
        if _is_per_object(p):
            raise PaDTError(
                f"{_w(p)}: per-object predictions carry no query index; score them with "
                "--protocol paper, or write per-query lines with 'index' and 'objects'"
            )
        i = p.get("index", pos)
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < len(records):
            raise PaDTError(f"{_w(p)}: index {i!r} is not a record position (0..{len(records) - 1})")
        if out[i] is not None:
            raise PaDTError(f"{_w(p)}: a second prediction for record {i}; keep one per query")
        if not isinstance(p.get("objects", []), list):
            raise PaDTError(f"{_w(p)}: 'objects' must be a list")
        out[i] = p
    return out


def _image_size(rec: Record, pred: Mapping[str, Any] | None, image_root: Path | None) -> tuple[int, int]:
    """``(height, width)`` of a record's image: from the prediction, the GT masks, or the image file."""
    if pred is not None and ("width" in pred or "height" in pred):
        h, w = pred.get("height"), pred.get("width")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (h, w)):
            raise PaDTError(
                f"{_w(pred)}: 'width' and 'height' must both be positive integers (pixels), got {w!r} and {h!r}"
            )
        return int(h), int(w)  # type: ignore[arg-type]
    for obj in rec.objects:
        if obj.rle is not None:
            h, w = obj.rle["size"]
            return int(h), int(w)
    if image_root is not None:
        from padt.processing.images import image_size

        path = Path(image_root) / rec.images[0]
        try:
            w, h = image_size(path)
        except PaDTError as exc:
            raise PaDTError(f"{exc}; check --image-root") from None
        return int(h), int(w)
    raise PaDTError(
        f"record id {rec.id!r}: the image size is unknown; add 'width' and 'height' to its prediction or "
        "pass --image-root"
    )


def _pixel_box(bbox: Sequence[float], hw: tuple[int, int]) -> list[float]:
    h, w = hw
    return scale_xyxy(bbox, w, h)


def _checked_box(box: Any, where: str, *, xywh: bool = False) -> list[float]:
    """A predicted pixel box as ``[x1, y1, x2, y2]`` (a box the model cannot have meant is an error, not a silent
    miss)."""
    return checked_pixel_box(box, where, xywh=xywh)


def _pred_box(obj: Mapping[str, Any], where: str) -> list[float]:
    if not isinstance(obj, Mapping):
        raise PaDTError(f"{where}: each object must be a JSON object with 'bbox', got {obj!r}")
    if "bbox" not in obj:
        raise PaDTError(f"{where}: each object needs 'bbox' [x1, y1, x2, y2] in pixels")
    _checked_score(obj, where)
    return _checked_box(obj["bbox"], where)


def _checked_score(obj: Mapping[str, Any], where: str) -> None:
    """REC and RES do not rank by score, but a score that is there must be a finite number."""
    score = obj.get("score")
    if score is not None and (
        isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score)
    ):
        raise PaDTError(f"{where}: 'score' {score!r} is not a finite number")


def _pred_mask(mask: Any, where: str) -> dict[str, Any] | None:
    return None if mask is None else check_rle(mask, f"{where}: mask")


def _single_object_records(records: Sequence[Record], task: str) -> None:
    for rec in records:
        if len(rec.objects) != 1:
            raise PaDTError(
                f"record id {rec.id!r} has {len(rec.objects)} objects; {task} ground truth has one per record"
            )


# ----------------------------------------------------------------------------------------------- REC / RES


def score_rec(
    records: Sequence[Record],
    preds: Sequence[Mapping[str, Any]],
    *,
    protocol: str = "padt",
    image_root: Path | None = None,
) -> dict[str, Any]:
    """REC metrics of per-query predictions (``protocol="padt"``) or the reference's (``"paper"``)."""
    from padt.evaluation.metrics import rec_metrics

    _single_object_records(records, "rec")
    if protocol == "paper":
        return {"task": "rec", "protocol": "paper", **_paper(records, preds, image_root, masks=False)}
    placed = _by_index(records, preds)
    gt_boxes, pred_boxes = [], []
    for rec, p in zip(records, placed, strict=True):
        hw = _image_size(rec, p, image_root)
        gt_boxes.append(_pixel_box(rec.objects[0].bbox, hw))
        objs = p.get("objects", []) if p is not None else []
        pred_boxes.append([_pred_box(o, _w(p)) for o in objs])
    out = rec_metrics(pred_boxes, gt_boxes)
    return {"task": "rec", "protocol": "padt", **out, "num_missing": sum(p is None for p in placed)}


def score_res(
    records: Sequence[Record],
    preds: Sequence[Mapping[str, Any]],
    *,
    protocol: str = "padt",
    image_root: Path | None = None,
) -> dict[str, Any]:
    """RES metrics (``miou``, ``ciou``) of per-query predictions, or the reference's (``"paper"``)."""
    from padt.evaluation.metrics import res_metrics

    _single_object_records(records, "res")
    for rec in records:
        if rec.objects[0].rle is None:
            raise PaDTError(f"record id {rec.id!r} has no mask ('rle'); RES needs ground-truth masks")
    if protocol == "paper":
        return {"task": "res", "protocol": "paper", **_paper(records, preds, image_root, masks=True)}
    placed = _by_index(records, preds)
    gt_masks, pred_masks = [], []
    for rec, p in zip(records, placed, strict=True):
        gt_masks.append(rec.objects[0].rle)
        masks = []
        for o in p.get("objects", []) if p is not None else []:
            if isinstance(o, Mapping) and "bbox" in o:
                _pred_box(o, _w(p))  # not scored, but a broken box says the file is broken
            elif isinstance(o, Mapping):
                _checked_score(o, _w(p))
            if not isinstance(o, Mapping) or o.get("mask") is None:
                raise PaDTError(f"{_w(p)}: an object without 'mask'; RES needs predicted masks")
            masks.append(_pred_mask(o["mask"], _w(p)))
        pred_masks.append(masks)
    out = res_metrics(pred_masks, gt_masks)
    return {"task": "res", "protocol": "padt", **out, "num_missing": sum(p is None for p in placed)}


def _paper(
    records: Sequence[Record], preds: Sequence[Mapping[str, Any]], image_root: Path | None, *, masks: bool
) -> dict[str, Any]:
    from padt.evaluation.metrics import GroundedObject, paper_key, paper_rec_res_metrics

    # Later records with the same (image, sentence) overwrite earlier ones, as in the reference
    # (docs/method.md §10.5).
    gt: dict[str, GroundedObject] = {}
    for rec in records:
        obj = rec.objects[0]
        hw = _image_size(rec, None, image_root)
        gt[paper_key(rec.id, obj.label)] = GroundedObject(
            _pixel_box(obj.bbox, hw), obj.rle if masks else None
        )
    by_key: dict[str, list[GroundedObject]] = defaultdict(list)
    for pos, p in enumerate(preds):
        if _is_per_object(p):
            key = paper_key(p["image_id"], str(p.get("category", "")))
            box = _checked_box(p["bbox"], _w(p), xywh=True)
            by_key[key].append(GroundedObject(box, _pred_mask(p.get("mask"), _w(p))))
            continue
        if "index" in p or "id" not in p:
            i = p.get("index", pos)
            if not isinstance(i, int) or not 0 <= i < len(records):
                raise PaDTError(f"{_w(p)}: index {i!r} is not a record position (0..{len(records) - 1})")
            image_id = records[i].id
        else:
            image_id = p["id"]
        for o in p.get("objects", []):
            key = paper_key(image_id, str(o.get("label", "")))
            by_key[key].append(GroundedObject(_pred_box(o, _w(p)), _pred_mask(o.get("mask"), _w(p))))
    out = paper_rec_res_metrics(gt, by_key)
    if not masks:
        out.pop("miou", None)
    return out


# ----------------------------------------------------------------------------------------------- OVD


def score_ovd(
    gt: str | Path | Mapping[str, Any] | Sequence[Record],
    preds: Sequence[Mapping[str, Any]],
    *,
    coco: str | Path | Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """COCO bbox mAP. ``gt``: a COCO annotation file/dict, or PaDT val records with ``coco`` the official
    file (the reference's rebuilt ground truth)."""
    from padt.data.readers import load_coco
    from padt.evaluation.coco import coco_bbox_map, rebuild_coco_gt, results_from_named

    ground_truth = "official"
    records: Sequence[Record] = []
    owned = isinstance(gt, str | Path)
    if isinstance(gt, str | Path):
        path = Path(gt)
        gt = _load_json_or_none(path)
        if gt is None or not (isinstance(gt, dict) and "annotations" in gt):
            gt = read_records(path)
    if not isinstance(gt, Mapping):
        if coco is None:
            raise PaDTError("ovd ground truth given as records needs --coco, the official annotation file")
        official = load_coco(coco) if isinstance(coco, str | Path) else coco
        records = list(gt)
        gt = rebuild_coco_gt(records, official)
        ground_truth = "rebuilt"
        owned = True
    named = []
    for p in preds:
        if _is_per_object(p) or "category_id" in p:
            named.append(p)
            continue
        image_id = p.get("image_id", p.get("id"))
        if (
            image_id is None
            and records
            and isinstance(p.get("index"), int)
            and 0 <= p["index"] < len(records)
        ):
            image_id = records[p["index"]].id
        if image_id is None:
            raise PaDTError(
                f"{_w(p)}: an ovd prediction line needs 'image_id' (or 'index' with records as --gt)"
            )
        for o in p.get("objects", []):
            if o.get("duplicate_of") is not None:  # marked by padt's duplicate suppression: not a detection
                continue
            box = xyxy_to_xywh(_pred_box(o, _w(p)))
            named.append(
                {
                    "image_id": image_id,
                    "category": str(o.get("label", "")),
                    "bbox": box,
                    "score": o.get("score", 1.0),
                    "_where": _w(p),
                }
            )
    results, dropped = results_from_named(named, gt.get("categories", []))
    # The ground truth dict is ours (read or rebuilt here): the engine may index it in place.
    metrics = coco_bbox_map(gt, results, copy_gt=not owned)
    return {
        "task": "ovd",
        "ground_truth": ground_truth,
        **metrics,
        "num_detections": len(results),
        "num_dropped_unknown_class": dropped,
    }


def _load_json_or_none(path: Path) -> Any:
    if not path.is_file():
        raise PaDTError(f"{path}: no such file; give the ground truth")
    try:
        with path.open("r", encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError:
        return None  # JSONL records


# ----------------------------------------------------------------------------------------------- RIC


def score_ric(
    records: Sequence[Record],
    preds: Sequence[Mapping[str, Any]],
    *,
    iou_threshold: float = 0.5,
    meteor: bool = True,
    image_root: Path | None = None,
) -> dict[str, Any]:
    """RIC caption metrics and greedy grounding precision/recall, one prediction per image.

    References of an image are the plain captions of all its records; its ground-truth objects are the
    distinct objects (by box) of those records.
    """
    from padt.evaluation.caption import caption_metrics, plain_caption
    from padt.evaluation.metrics import ric_grounding_metrics

    refs: dict[Any, list[str]] = defaultdict(list)
    gt_objects: dict[Any, dict[tuple[float, ...], list[float]]] = defaultdict(dict)
    first_record: dict[Any, Record] = {}
    for rec in records:
        refs[rec.id].append(plain_caption(rec.answer_template))
        first_record.setdefault(rec.id, rec)
        for obj in rec.objects:
            gt_objects[rec.id].setdefault(tuple(round(v, 6) for v in obj.bbox), obj.bbox)

    hyps: dict[Any, str] = {}
    pred_boxes: dict[Any, list[list[float]]] = {}
    sizes: dict[Any, tuple[int, int]] = {}
    for pos, p in enumerate(preds):
        if "id" in p and "index" not in p:
            image_id = p["id"]
        else:
            i = p.get("index", pos)
            if not isinstance(i, int) or not 0 <= i < len(records):
                raise PaDTError(f"{_w(p)}: index {i!r} is not a record position (0..{len(records) - 1})")
            image_id = records[i].id
        if image_id not in refs:
            raise PaDTError(f"{_w(p)}: image id {image_id!r} is not in the ground truth")
        if image_id in hyps:
            raise PaDTError(f"{_w(p)}: a second prediction for image {image_id!r}; keep one per image")
        if not isinstance(p.get("caption"), str):
            raise PaDTError(f"{_w(p)}: a ric prediction needs 'caption' (the generated text)")
        hyps[image_id] = plain_caption(p["caption"])
        pred_boxes[image_id] = [_pred_box(o, _w(p)) for o in p.get("objects", [])]
        sizes[image_id] = _image_size(first_record[image_id], p, image_root)
    missing = [k for k in refs if k not in hyps]
    if missing:
        raise PaDTError(
            f"{len(missing)} image(s) have no prediction (e.g. id {missing[0]!r}); predict every image"
        )

    keys = list(refs)
    grounding = ric_grounding_metrics(
        [pred_boxes[k] for k in keys],
        [[_pixel_box(b, sizes[k]) for b in gt_objects[k].values()] for k in keys],
        iou_threshold=iou_threshold,
    )
    captions = caption_metrics(refs, hyps, meteor=meteor)
    return {"task": "ric", **captions, **grounding}
