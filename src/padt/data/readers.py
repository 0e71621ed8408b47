"""Readers that turn datasets into PaDT records (:mod:`padt.data.records`).

Four sources are understood:

1. **PaDT's published preprocessed files** (the ``PaDT-MLLM`` RefCOCO, COCO and ReferringImageCaptioning
   files): they already are records; :func:`read_padt`.
2. **Raw RefCOCO / RefCOCO+ / RefCOCOg**: the COCO-style ``instances.json`` plus the ``refs(unc).p`` or
   ``refs(umd).p`` pickle; one record per referring sentence; :func:`read_refcoco`. The pickle is read with
   an unpickler that only admits plain containers, numbers and strings, so a tampered file cannot run code.
3. **COCO ``instances_*.json`` for open-vocabulary detection**, with the reference's prompt construction
   (docs/method.md §9.4) made explicit and seeded; any COCO-format detection dataset, whatever its
   categories, works the same way; :func:`read_coco_ovd`.
4. **A simple user format**: :func:`read_user_jsonl`. One JSON object per line::

       {"image": "photos/dog.jpg", "task": "rec",
        "objects": [{"phrase": "the dog on the left", "box": [12, 30, 200, 180]}]}
       {"image": "photos/street.jpg", "task": "ovd", "classes": ["car", "person", "bicycle"],
        "objects": [{"label": "car", "box": [5, 5, 90, 60], "mask": [[5, 5, 90, 5, 90, 60, 5, 60]]},
                    {"label": "person", "box": [100, 20, 130, 90]}]}

   - ``image``: path of the image, relative to the JSONL file's folder unless ``image_root`` is given.
   - ``task``: ``"rec"`` (or ``"res"``): every object becomes one record prompted with its ``phrase``;
     ``"ovd"``: one record per line whose prompt lists ``classes`` (default: the objects' labels in order of
     first appearance). An ``"ovd"`` line without objects is a negative sample.
   - ``objects[].phrase`` / ``objects[].label``: the referring sentence or class name (either key).
   - ``objects[].box``: ``[x1, y1, x2, y2]`` in pixels of the image as stored.
   - ``objects[].mask`` (optional): a COCO RLE ``{"size": [h, w], "counts": ...}`` or COCO polygons
     (a list of ``[x1, y1, x2, y2, ...]`` lists; several parts are OR-ed). Without it the object has no mask
     (``rle`` is null, no mask loss) and its patches come from the box.
   - ``objects[].iscrowd`` (optional, default 0).
   - Optional per line: ``id`` (default: the line number), ``width`` and ``height`` (default: read from the
     image header).

Masks follow the reference (docs/method.md §9.2): polygons go through ``frPyObjects`` and parts are OR-ed,
RLE is kept as is, and everything is stored as compressed RLE. Crowd annotations are kept as ordinary
objects. Objects whose mask covers no merged patch are dropped, and with them any REC sample they formed
(§9.3 rule 4); readers log how many.
"""

from __future__ import annotations

import builtins
import dataclasses
import io
import json
import logging
import pickle
import zlib
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from padt.box_ops import checked_pixel_box, normalise_xyxy
from padt.data.records import ObjectRecord, Record, iter_json_items, read_records
from padt.errors import PaDTError
from padt.masks import rle_area, segmentation_to_rle
from padt.prompts import ovd_answer_template, ovd_prompt, rec_answer_template, rec_prompt

logger = logging.getLogger(__name__)

# Reference preprocessing constants (docs/method.md §9.4).
OVD_DROP_RATE = 0.5
OVD_DROPPABLE_CLASSES = 40
OVD_MAX_INSTANCES_PER_CLASS = 50
OVD_MAX_CLASSES_IN_PROMPT = 100
MAX_IMAGE_SIDE = 1288


# ----------------------------------------------------------------------------------------------- 1. PaDT


def read_padt(path: str | Path) -> list[Record]:
    """Read one of PaDT's published preprocessed files (``.json`` with one record per line, or ``.jsonl``)."""
    return read_records(path)


# ----------------------------------------------------------------------------------------------- masks


def object_patches(
    rle: Mapping[str, Any] | None, box_xyxy: Sequence[float], height: int, width: int, strict: bool = False
) -> list[int]:
    """Foreground merged-patch indices of an object (docs/method.md §9.3): from its mask, or from its pixel
    ``[x1, y1, x2, y2]`` box rasterised when it has none (§9.3 rule 5). ``strict`` is RefCOCO's ``>`` test."""
    # Imported here: only readers that build patch lists need the patch rule.
    from padt.data.patches import box_foreground_patches, foreground_patches

    if rle is not None:
        return [int(p) for p in foreground_patches(dict(rle), strict=strict)]
    return [int(p) for p in box_foreground_patches(box_xyxy, (height, width), strict=strict)]


def _clipped_box(
    box: Sequence[float], width: int, height: int, where: str, clipped: list[str]
) -> list[float]:
    """The normalised box, clipped to the image (a box outside it means nothing, and COCO has a few boxes a pixel
    too large); ``where`` is added to ``clipped`` when clipping changed it, so the reader can report it."""
    raw = normalise_xyxy(box, width, height, clip=False)
    out = normalise_xyxy(box, width, height)
    if out != raw:
        clipped.append(where)
    return out


def _report_clipped(source: str | Path, clipped: list[str]) -> None:
    if clipped:
        logger.warning(
            "%s: clipped %d box(es) that extended past their image to its border (e.g. %s)",
            source,
            len(clipped),
            ", ".join(clipped[:3]),
        )


def _coco_image_size(img: Mapping[str, Any]) -> tuple[int, int]:
    h, w = img.get("height"), img.get("width")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (h, w)):
        raise PaDTError(
            f"image {img.get('id')}: 'width' and 'height' must be positive integers, got {w!r} and {h!r}"
        )
    return int(h), int(w)  # type: ignore[arg-type]


def _coco_object(
    ann: Mapping[str, Any],
    img: Mapping[str, Any],
    label: str,
    *,
    with_patches: bool,
    strict: bool,
    clipped: list[str],
) -> ObjectRecord | None:
    """A COCO annotation as a record object; ``None`` when it covers no merged patch."""
    height, width = _coco_image_size(img)
    where = f"annotation {ann.get('id')}"
    seg = ann.get("segmentation")
    rle = segmentation_to_rle(seg, height, width, where) if seg else None
    box = checked_pixel_box(ann.get("bbox"), where, xywh=True)
    patches: list[int] = []
    if with_patches:
        patches = object_patches(rle, box, height, width, strict)
        if not patches:
            return None
    return ObjectRecord(
        bbox=_clipped_box(box, width, height, where, clipped),
        patches=patches,
        label=label,
        rle=rle,
        iscrowd=int(ann.get("iscrowd", 0)),
        area=float(ann.get("area", 0.0)),
    )


def load_coco(path: str | Path) -> dict[str, Any]:
    """Load a COCO-format annotation file, checking the parts readers use."""
    path = Path(path)
    if not path.is_file():
        raise PaDTError(f"{path}: no such file; give a COCO-format annotation file (instances_*.json)")
    try:
        with path.open("r", encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise PaDTError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from exc
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), list) for k in ("images", "annotations")
    ):
        raise PaDTError(f"{path}: not a COCO annotation file; it needs 'images' and 'annotations' lists")
    for i, img in enumerate(data["images"]):
        if not all(k in img for k in ("id", "file_name", "width", "height")):
            raise PaDTError(f"{path}: images[{i}] needs 'id', 'file_name', 'width' and 'height'")
    for i, ann in enumerate(data["annotations"]):
        if not all(k in ann for k in ("image_id", "bbox", "category_id")):
            raise PaDTError(f"{path}: annotations[{i}] needs 'image_id', 'bbox' and 'category_id'")
    return data


# ----------------------------------------------------------------------------------------------- 2. RefCOCO


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles lists, dicts, tuples, sets, strings, bytes and numbers, and refuses everything else.

    Plain data never needs a global except the set types, so any other global (``os.system``, a class) is a
    sign of a file that would run code when loaded.
    """

    _ALLOWED = frozenset(
        (module, name) for module in ("builtins", "__builtin__") for name in ("set", "frozenset")
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return getattr(builtins, name)
        if (module, name) == ("_codecs", "encode"):
            return _bytes_from_latin1
        raise pickle.UnpicklingError(f"it references {module}.{name}, which plain data never does")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("it uses persistent ids, which plain data never does")


def _bytes_from_latin1(text: Any, encoding: str = "utf-8") -> bytes:
    """How Python 3 pickles ``bytes`` at protocol 2: ``_codecs.encode(str, "latin1")``; nothing else passes."""
    if not isinstance(text, str) or encoding.replace("-", "").replace("_", "").lower() != "latin1":
        raise pickle.UnpicklingError("it calls _codecs.encode in a way plain bytes never do")
    return text.encode("latin-1")


def load_plain_pickle(path: str | Path) -> Any:
    """Load a pickle that may only hold plain data (containers, numbers, strings); refuse anything else.

    The RefCOCO refs files were written by Python 2: their byte strings are decoded as UTF-8 (latin-1 if
    that fails).
    """
    path = Path(path)
    if not path.is_file():
        raise PaDTError(f"{path}: no such file; give the refs(unc).p / refs(umd).p file of the dataset")
    raw = path.read_bytes()
    for encoding in ("utf-8", "latin-1"):
        try:
            return _PlainUnpickler(io.BytesIO(raw), encoding=encoding).load()
        except UnicodeDecodeError:
            continue
        except Exception as exc:
            raise PaDTError(
                f"{path}: refused to load this pickle ({exc}); a refs file holds only lists, dicts, strings "
                "and numbers: use the file from the official dataset release"
            ) from exc
    raise PaDTError(f"{path}: its strings are neither UTF-8 nor latin-1; use the official refs file")


def read_refcoco(
    instances_path: str | Path,
    refs_path: str | Path,
    split: str,
    *,
    with_patches: bool = True,
) -> list[Record]:
    """Records of one split of RefCOCO / RefCOCO+ (``refs(unc).p``) or RefCOCOg (``refs(umd).p``).

    One record per referring sentence (``sent``, lowercased in the source), prompt and answer worded as in
    :mod:`padt.prompts`, one object with ``label`` = the sentence; ``id`` is the COCO image id and
    ``image`` the train2014 file name. ``ref_id``, ``ann_id`` and ``sent_id`` are kept as extra fields.
    Splits: ``train``, ``val``, ``testA``, ``testB`` (unc) or ``train``, ``val``, ``test`` (umd).
    RefCOCO uses the strict ``>`` coverage test for patches (docs/method.md §9.3).
    """
    refs = load_plain_pickle(refs_path)
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        raise PaDTError(f"{refs_path}: expected a list of ref dicts; is this a RefCOCO refs file?")
    for i, ref in enumerate(refs):
        missing = [k for k in ("image_id", "ann_id", "split", "sentences") if k not in ref]
        if missing:
            raise PaDTError(f"{refs_path}: ref {i} lacks {', '.join(missing)}; is this a RefCOCO refs file?")
    splits = sorted({str(r["split"]) for r in refs})
    if split not in splits:
        raise PaDTError(f"{refs_path}: no split {split!r}; this file has {', '.join(splits)}")
    coco = load_coco(instances_path)
    images = {img["id"]: img for img in coco["images"]}
    anns = {ann["id"]: ann for ann in coco["annotations"] if "id" in ann}

    records: list[Record] = []
    dropped = 0
    clipped: list[str] = []
    for ref in refs:
        if ref["split"] != split:
            continue
        ann = anns.get(ref["ann_id"])
        img = images.get(ref["image_id"])
        if ann is None or img is None:
            raise PaDTError(
                f"{refs_path}: ref {ref.get('ref_id')} points to annotation {ref['ann_id']} / image "
                f"{ref['image_id']} missing from {instances_path}; pair the refs file with its instances.json"
            )
        base = _coco_object(ann, img, "", with_patches=with_patches, strict=True, clipped=clipped)
        if base is None:
            dropped += len(ref["sentences"])
            continue
        for sentence in ref["sentences"]:
            sent = sentence["sent"]
            obj = dataclasses.replace(base, label=sent)
            records.append(
                Record(
                    id=img["id"],
                    image=img["file_name"],
                    conversations=[{"from": "human", "value": rec_prompt(sent)}],
                    answer_template=rec_answer_template(sent),
                    objects=[obj],
                    task="rec",
                    extra={
                        "ref_id": ref.get("ref_id"),
                        "ann_id": ref["ann_id"],
                        "sent_id": sentence.get("sent_id"),
                    },
                )
            )
    if dropped:
        logger.warning(
            "%s [%s]: dropped %d sentence(s) whose object covers no merged patch", refs_path, split, dropped
        )
    _report_clipped(instances_path, sorted(set(clipped)))
    return records


# ----------------------------------------------------------------------------------------------- 3. COCO OVD


def ovd_class_order(
    class_ids: Sequence[int],
    counts: Mapping[int, int],
    *,
    train: bool,
    rng: np.random.Generator | None = None,
    drop_rate: float = OVD_DROP_RATE,
    droppable: int = OVD_DROPPABLE_CLASSES,
    max_instances_per_class: int = OVD_MAX_INSTANCES_PER_CLASS,
    max_classes: int = OVD_MAX_CLASSES_IN_PROMPT,
) -> list[int]:
    """The classes an OVD prompt lists, in prompt order (docs/method.md §9.4).

    Train: the classes are shuffled; with probability ``drop_rate`` the absent classes among the first
    ``droppable`` are removed. Val: all classes in the given (id) order. Both: classes with more than
    ``max_instances_per_class`` instances are removed, then the list is cut to ``max_classes``.
    ``counts`` maps a class id to its number of instances in the image.
    """
    order = list(class_ids)
    if train:
        if rng is None:
            raise ValueError("train=True needs a random generator")
        order = [order[i] for i in rng.permutation(len(order))]
        if rng.random() < drop_rate:
            order = [c for i, c in enumerate(order) if i >= droppable or counts.get(c, 0) > 0]
    order = [c for c in order if counts.get(c, 0) <= max_instances_per_class]
    return order[:max_classes]


def _image_rng(seed: int, image_id: Any) -> np.random.Generator:
    # One stream per (seed, image): the prompt of an image does not depend on which other images are read.
    key = image_id if isinstance(image_id, int) and image_id >= 0 else zlib.crc32(str(image_id).encode())
    return np.random.default_rng([seed, key])


def read_coco_ovd(
    instances_path: str | Path,
    *,
    train: bool,
    seed: int = 0,
    drop_rate: float = OVD_DROP_RATE,
    droppable: int = OVD_DROPPABLE_CLASSES,
    max_instances_per_class: int = OVD_MAX_INSTANCES_PER_CLASS,
    max_classes: int = OVD_MAX_CLASSES_IN_PROMPT,
    max_image_side: int = MAX_IMAGE_SIDE,
    with_patches: bool = True,
) -> list[Record]:
    """OVD records from a COCO-format detection file (COCO ``instances_*.json`` or any category set).

    One record per image (images with a longer side above ``max_image_side`` are skipped). The prompt lists
    :func:`ovd_class_order` of the categories; the answer gives every listed class present in the image with
    its instances, in prompt order, instances in file order; crowd annotations are kept. The reference drew
    its shuffles unseeded; here image ``i`` uses ``numpy.random.default_rng([seed, i])``.

    Presence and instance counts are taken over all annotations of the image, before objects covering no
    merged patch are dropped; a class whose every instance is dropped stays in the prompt, absent from the
    answer.
    """
    coco = load_coco(instances_path)
    categories = sorted(coco.get("categories") or [], key=lambda c: c["id"])
    if not categories:
        raise PaDTError(f"{instances_path}: no 'categories'; OVD prompts need the class names")
    names = {c["id"]: c["name"] for c in categories}
    class_ids = [c["id"] for c in categories]
    by_image: dict[Any, list[dict]] = defaultdict(list)
    for ann in coco["annotations"]:
        if ann["category_id"] not in names:
            raise PaDTError(
                f"{instances_path}: annotation {ann.get('id')} has unknown category {ann['category_id']}"
            )
        by_image[ann["image_id"]].append(ann)

    image_ids = {img["id"] for img in coco["images"]}
    orphans = sum(len(anns) for image_id, anns in by_image.items() if image_id not in image_ids)
    records: list[Record] = []
    skipped = dropped = 0
    clipped: list[str] = []
    for img in coco["images"]:
        if max(_coco_image_size(img)) > max_image_side:
            skipped += 1
            continue
        anns = by_image.get(img["id"], [])
        counts = Counter(a["category_id"] for a in anns)
        rng = _image_rng(seed, img["id"]) if train else None
        order = ovd_class_order(
            class_ids,
            counts,
            train=train,
            rng=rng,
            drop_rate=drop_rate,
            droppable=droppable,
            max_instances_per_class=max_instances_per_class,
            max_classes=max_classes,
        )
        objects: list[ObjectRecord] = []
        kept = []
        for cid in order:
            n = 0
            for ann in anns:
                if ann["category_id"] != cid:
                    continue
                obj = _coco_object(
                    ann, img, names[cid], with_patches=with_patches, strict=False, clipped=clipped
                )
                if obj is None:
                    dropped += 1
                    continue
                objects.append(obj)
                n += 1
            kept.append(n)
        class_names = [names[c] for c in order]
        records.append(
            Record(
                id=img["id"],
                image=img["file_name"],
                conversations=[{"from": "human", "value": ovd_prompt(class_names)}],
                answer_template=ovd_answer_template(class_names, kept),
                objects=objects,
                task="ovd",
            )
        )
    if skipped or dropped:
        logger.warning(
            "%s: skipped %d image(s) larger than %d px; dropped %d object(s) covering no merged patch",
            instances_path,
            skipped,
            max_image_side,
            dropped,
        )
    if orphans:
        logger.warning(
            "%s: skipped %d annotation(s) whose image_id is not among the file's images",
            instances_path,
            orphans,
        )
    _report_clipped(instances_path, clipped)
    return records


# ----------------------------------------------------------------------------------------------- 4. user JSONL


def read_user_jsonl(
    path: str | Path, *, image_root: str | Path | None = None, with_patches: bool = True
) -> list[Record]:
    """Records from the simple user format described in this module's docstring."""
    path = Path(path)
    if not path.is_file():
        raise PaDTError(f"{path}: no such file; give a JSONL file with one image per line")
    root = Path(image_root) if image_root is not None else path.parent
    records: list[Record] = []
    dropped = 0
    clipped: list[str] = []
    for where, lineno, item in iter_json_items(path, "one JSON object", "line"):
        new, n_dropped = _user_line(item, where, lineno, root, with_patches, clipped)
        records.extend(new)
        dropped += n_dropped
    if dropped:
        logger.warning("%s: dropped %d object(s) covering no merged patch", path, dropped)
    _report_clipped(path, [w.split(": ", 1)[-1] for w in clipped])
    return records


def _user_line(
    item: Any, where: str, lineno: int, root: Path, with_patches: bool, clipped: list[str]
) -> tuple[list[Record], int]:
    if not isinstance(item, dict):
        raise PaDTError(f"{where}: expected a JSON object with 'image', 'task' and 'objects'")
    image = item.get("image")
    if not isinstance(image, str) or not image:
        raise PaDTError(f"{where}: field 'image' must be the image path")
    task = str(item.get("task", "")).lower()
    if task not in ("rec", "res", "ovd"):
        raise PaDTError(f"{where}: field 'task' is {item.get('task')!r}; use 'rec' (or 'res') or 'ovd'")
    raw_objects = item.get("objects", [])
    if not isinstance(raw_objects, list):
        raise PaDTError(f"{where}: field 'objects' must be a list")
    height, width = _image_size(item, root / image, where)
    rid = item.get("id", lineno)

    objects: list[ObjectRecord] = []
    dropped = 0
    for i, raw in enumerate(raw_objects):
        obj = _user_object(raw, f"{where}: objects[{i}]", height, width, with_patches, clipped)
        if obj is None:
            dropped += 1
        else:
            objects.append(obj)

    if task in ("rec", "res"):
        return [
            Record(
                id=rid,
                image=image,
                conversations=[{"from": "human", "value": rec_prompt(obj.label)}],
                answer_template=rec_answer_template(obj.label),
                objects=[obj],
                task=task,
            )
            for obj in objects
        ], dropped

    classes = item.get("classes")
    if classes is None:
        classes = list(dict.fromkeys(o.label for o in objects))
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) and c for c in classes)):
        raise PaDTError(f"{where}: an 'ovd' line needs objects or a non-empty 'classes' list of names")
    unknown = sorted({o.label for o in objects} - set(classes))
    if unknown:
        raise PaDTError(f"{where}: labels {unknown} are not in 'classes'; add them to the list")
    ordered = [o for c in classes for o in objects if o.label == c]
    counts = [sum(o.label == c for o in objects) for c in classes]
    return [
        Record(
            id=rid,
            image=image,
            conversations=[{"from": "human", "value": ovd_prompt(classes)}],
            answer_template=ovd_answer_template(classes, counts),
            objects=ordered,
            task="ovd",
        )
    ], dropped


def _image_size(item: Mapping[str, Any], image_path: Path, where: str) -> tuple[int, int]:
    w, h = item.get("width"), item.get("height")
    if w is not None or h is not None:
        if not (isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0):
            raise PaDTError(f"{where}: 'width' and 'height' must both be positive ints")
        return h, w
    from padt.processing.images import image_size

    try:
        w, h = image_size(image_path)  # the displayed size: boxes are given on the image as it is shown
    except PaDTError as exc:
        reason = str(exc).split(";")[0]  # the problem, without the generic fix
        raise PaDTError(
            f"{where}: cannot read the size of {image_path} ({reason}); fix the path, pass image_root, or give "
            "'width' and 'height' on the line"
        ) from None
    return int(h), int(w)


def _user_object(
    raw: Any, where: str, height: int, width: int, with_patches: bool, clipped: list[str]
) -> ObjectRecord | None:
    if not isinstance(raw, dict):
        raise PaDTError(f"{where}: expected an object with 'phrase' or 'label' and 'box'")
    label = raw.get("phrase", raw.get("label"))
    if not isinstance(label, str) or not label.strip():
        raise PaDTError(f"{where}: needs a non-empty 'phrase' (rec) or 'label' (ovd)")
    box = raw.get("box")
    if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, int | float) for v in box)):
        raise PaDTError(f"{where}: 'box' must be [x1, y1, x2, y2] in pixels, got {box!r}")
    x1, y1, x2, y2 = (float(v) for v in box)
    if not (x2 > x1 and y2 > y1):
        raise PaDTError(
            f"{where}: 'box' {box} has x2 <= x1 or y2 <= y1; boxes are [x1, y1, x2, y2] in pixels"
        )
    if x1 >= width or y1 >= height or x2 <= 0 or y2 <= 0:
        raise PaDTError(f"{where}: 'box' {box} lies outside the {width}x{height} image; boxes are in pixels")
    rle = segmentation_to_rle(raw["mask"], height, width, f"{where}.mask") if raw.get("mask") else None
    patches: list[int] = []
    if with_patches:
        patches = object_patches(rle, [x1, y1, x2, y2], height, width)
        if not patches:
            return None
    area = float(rle_area(rle, f"{where}.mask")) if rle is not None else (x2 - x1) * (y2 - y1)
    return ObjectRecord(
        bbox=_clipped_box([x1, y1, x2, y2], width, height, where, clipped),
        patches=patches,
        label=label.strip(),
        rle=rle,
        iscrowd=int(raw.get("iscrowd", 0)),
        area=area,
    )
