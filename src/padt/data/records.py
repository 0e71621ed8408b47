"""The PaDT record: one training or evaluation sample (docs/method.md §9.1–9.2).

A record is one JSON object, stored one per line (JSONL) or as a JSON list::

    {
      "id": 139,                                  # COCO image id (int); any int or str is accepted
      "image": "000000000139.jpg",                # file name; a list of names for a multi-image sample
      "conversations": [{"from": "human", "value": "Please carefully check the image and ..."}],
      "answer_template": 'The "man" refers to <|Obj_0|> in this image.',
      "objects": [
        {"bbox": [0.1, 0.2, 0.5, 0.9],           # x1, y1, x2, y2 normalised by the original image size
         "rle": {"size": [h, w], "counts": "..."},  # COCO RLE of the full-resolution mask, or null
         "patches": [12, 13, 40],                 # sorted foreground merged-patch indices (§9.3)
         "label": "man",                          # OVD: class name, REC: the sentence, RIC: ""
         "iscrowd": 0, "area": 1234.0}
      ],
      "task": "rec"                               # "rec", "res", "ovd" or "ric"
    }

The answer template holds one ``<|Obj_k|>`` placeholder per object, numbered ``0, 1, ...`` in order of
appearance; placeholder ``k`` is ``objects[k]``. A record without objects is a valid negative sample (e.g. an
OVD image where no listed class is present).

The reference data writes ``"task": "refering"`` for RefCOCO samples; it is read as ``"rec"``. Keys that the
schema does not know are kept in ``extra`` and written back unchanged.
"""

from __future__ import annotations

import itertools
import json
import math
import numbers
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from padt.errors import PaDTError
from padt.masks import check_rle
from padt.prompts import PLACEHOLDER_PATTERN, object_placeholder
from padt.tasks import TASK_NAMES

# Reference spellings of task names (docs/method.md §9.1) mapped to ours.
TASK_ALIASES = {"refering": "rec", "referring": "rec"}

# Normalised boxes may poke slightly outside [0, 1]: COCO boxes are sometimes a pixel larger than the image.
BBOX_TOLERANCE = 0.01

_OBJECT_KEYS = ("bbox", "rle", "patches", "label", "iscrowd", "area")
_RECORD_KEYS = ("id", "image", "conversations", "answer_template", "objects", "task")


class RecordError(PaDTError):
    """A malformed record; the message names the file, the record and the field."""


@dataclass
class ObjectRecord:
    """One grounded object of a record (docs/method.md §9.2)."""

    bbox: list[float]
    patches: list[int] = field(default_factory=list)
    label: str = ""
    rle: dict[str, Any] | None = None
    iscrowd: int = 0
    area: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.bbox = _check_bbox(self.bbox, "object.bbox")
        self.patches = _check_patches(self.patches, "object.patches")
        _check_str(self.label, "object.label")
        self.rle = _check_rle(self.rle, "object.rle")
        self.iscrowd = _check_iscrowd(self.iscrowd, "object.iscrowd")
        self.area = _check_area(self.area, "object.area")

    @classmethod
    def from_dict(cls, data: Any, where: str = "object") -> ObjectRecord:
        """Validate and build an object; ``where`` prefixes error messages (e.g. ``"f.jsonl: line 3: objects[1]"``)."""
        if not isinstance(data, Mapping):
            raise RecordError(f"{where}: expected a JSON object, got {type(data).__name__}")
        if "bbox" not in data:
            raise RecordError(f"{where}: missing field 'bbox' (normalised [x1, y1, x2, y2])")
        return cls(
            bbox=_check_bbox(data["bbox"], f"{where}.bbox"),
            patches=_check_patches(data.get("patches") or [], f"{where}.patches"),
            label=_check_str(data.get("label") or "", f"{where}.label"),
            rle=_check_rle(data.get("rle"), f"{where}.rle"),
            iscrowd=_check_iscrowd(data.get("iscrowd") or 0, f"{where}.iscrowd"),
            area=_check_area(data.get("area") or 0.0, f"{where}.area"),
            extra={k: v for k, v in data.items() if k not in _OBJECT_KEYS},
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "bbox": list(self.bbox),
            "rle": self.rle,
            "patches": list(self.patches),
            "label": self.label,
            "iscrowd": self.iscrowd,
            "area": self.area,
            **self.extra,
        }


@dataclass
class Record:
    """One sample: image(s), prompt, answer template and the objects its placeholders stand for."""

    id: int | str
    image: str | list[str]
    conversations: list[dict[str, str]]
    answer_template: str
    objects: list[ObjectRecord] = field(default_factory=list)
    task: str = "rec"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def prompt(self) -> str:
        """The user prompt: the first human turn, without ``<image>`` markers."""
        return self.conversations[0]["value"].replace("<image>", "").strip()

    @property
    def images(self) -> list[str]:
        """The image file name(s) as a list."""
        return [self.image] if isinstance(self.image, str) else list(self.image)

    @classmethod
    def from_dict(cls, data: Any, where: str = "record") -> Record:
        """Validate and build a record; ``where`` prefixes error messages."""
        if not isinstance(data, Mapping):
            raise RecordError(f"{where}: expected a JSON object, got {type(data).__name__}")
        rid = data.get("id")
        if rid is not None:
            where = f"{where} (id={rid!r})"
        for key in ("id", "image", "conversations", "answer_template", "task"):
            if key not in data:
                raise RecordError(f"{where}: missing field {key!r}")
        objects = data.get("objects")
        if objects is None:
            objects = []
        if not isinstance(objects, list):
            raise RecordError(f"{where}: field 'objects' must be a list, got {type(objects).__name__}")
        # Built without __init__ so that validation errors name the file and line, not a bare "record".
        rec = cls.__new__(cls)
        rec.id = data["id"]
        rec.image = data["image"]
        rec.conversations = data["conversations"]
        rec.answer_template = data["answer_template"]
        rec.objects = [ObjectRecord.from_dict(o, f"{where}: objects[{i}]") for i, o in enumerate(objects)]
        rec.task = data["task"]
        rec.extra = {k: v for k, v in data.items() if k not in _RECORD_KEYS}
        rec.validate(where)
        return rec

    def validate(self, where: str = "record") -> None:
        """Check every field; raise :class:`RecordError` naming the first bad one. Normalises the task name."""
        if isinstance(self.id, bool) or not isinstance(self.id, int | str):
            raise RecordError(f"{where}: field 'id' must be an int or a string, got {type(self.id).__name__}")
        if isinstance(self.image, str):
            if not self.image:
                raise RecordError(f"{where}: field 'image' is empty; give the image file name")
        elif not (
            isinstance(self.image, list) and self.image and all(isinstance(i, str) and i for i in self.image)
        ):
            raise RecordError(f"{where}: field 'image' must be a file name or a non-empty list of file names")
        _check_conversations(self.conversations, f"{where}: conversations")
        _check_str(self.answer_template, f"{where}: answer_template")
        task = self.task.lower() if isinstance(self.task, str) else self.task
        task = TASK_ALIASES.get(task, task)
        if task not in TASK_NAMES:
            raise RecordError(f"{where}: field 'task' is {self.task!r}; use one of {', '.join(TASK_NAMES)}")
        self.task = task
        found = [int(k) for k in PLACEHOLDER_PATTERN.findall(self.answer_template)]
        expected = list(range(len(self.objects)))
        if found != expected:
            shown = ", ".join(object_placeholder(k) for k in found) or "none"
            raise RecordError(
                f"{where}: answer_template has placeholders [{shown}] but the record has {len(self.objects)} "
                f"object(s); it needs {object_placeholder(0)}..{object_placeholder(len(self.objects) - 1)} "
                "once each, in order"
                if self.objects
                else f"{where}: answer_template has placeholders [{shown}] but the record has no objects"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "image": self.image if isinstance(self.image, str) else list(self.image),
            "conversations": [dict(turn) for turn in self.conversations],
            "answer_template": self.answer_template,
            "objects": [o.to_dict() for o in self.objects],
            "task": self.task,
            **self.extra,
        }


# ----------------------------------------------------------------------------------------------- reading


def iter_json_items(
    path: str | Path, what: str = "one record", list_item: str = "record"
) -> Iterator[tuple[str, int, Any]]:
    """``(where, number, item)`` for every item of a JSON list file or a one-object-per-line (JSONL) file.

    ``where`` names the file and the item (``"f.jsonl: line 3"``, ``"f.json: record 2"``) for error messages;
    ``number`` is the line number (JSONL) or the position in the list. ``what`` says what a line must hold and
    ``list_item`` what an item of a JSON list is called. The file must exist. Invalid JSON raises :class:`RecordError` with its line.
    """
    path = Path(path)
    with path.open("r", encoding="utf-8") as f:
        first = _first_char(f)
        f.seek(0)
        if first == "[":
            try:
                data = json.load(f)
            except json.JSONDecodeError as exc:
                raise RecordError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from exc
            for i, item in enumerate(data):
                yield f"{path}: {list_item} {i}", i, item
            return
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RecordError(
                    f"{path}: line {lineno}: invalid JSON ({exc.msg}); each line must be {what}"
                ) from exc
            yield f"{path}: line {lineno}", lineno, item


def iter_records(path: str | Path) -> Iterator[Record]:
    """Yield the records of a ``.jsonl`` file (one per line) or a ``.json`` file.

    A ``.json`` file may hold a JSON list of records or, like the published PaDT files, one record per line.
    """
    path = Path(path)
    if not path.is_file():
        raise PaDTError(f"{path}: no such file; give the path of a .json or .jsonl record file")
    for where, _, item in iter_json_items(path, "one record"):
        yield Record.from_dict(item, where)


def read_records(path: str | Path) -> list[Record]:
    """All records of a ``.json`` / ``.jsonl`` file (see :func:`iter_records`)."""
    return list(iter_records(path))


def write_jsonl(records: Iterable[Record | Mapping[str, Any]], path: str | Path) -> int:
    """Write records one per line (UTF-8, compact); returns how many were written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for rec in records:
            data = rec.to_dict() if isinstance(rec, Record) else dict(rec)
            f.write(json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n")
            n += 1
    return n


def _first_char(f: Any) -> str:
    while True:
        chunk = f.read(4096)
        if not chunk:
            return ""
        stripped = chunk.lstrip()
        if stripped:
            return stripped[0]


# ----------------------------------------------------------------------------------------------- checks


def _check_str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise RecordError(f"{where}: expected a string, got {type(value).__name__}")
    return value


# numbers.Real / Integral also admit numpy scalars, which readers and mask code produce.
def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _check_bbox(value: Any, where: str) -> list[float]:
    if not (isinstance(value, list | tuple) and len(value) == 4 and all(_is_number(v) for v in value)):
        raise RecordError(f"{where}: expected 4 finite numbers [x1, y1, x2, y2], got {value!r}")
    x1, y1, x2, y2 = (float(v) for v in value)
    lo, hi = -BBOX_TOLERANCE, 1 + BBOX_TOLERANCE
    if not all(lo <= v <= hi for v in (x1, y1, x2, y2)):
        raise RecordError(
            f"{where}: {value!r} is not normalised to [0, 1]; divide pixel corners by the image width/height"
        )
    if x2 < x1 or y2 < y1:
        raise RecordError(f"{where}: {value!r} has x2 < x1 or y2 < y1; boxes are [x1, y1, x2, y2]")
    return [x1, y1, x2, y2]


def _check_patches(value: Any, where: str) -> list[int]:
    if not isinstance(value, list | tuple) or not all(_is_int(p) for p in value):
        raise RecordError(f"{where}: expected a list of merged-patch indices (ints), got {value!r:.80}")
    value = [int(p) for p in value]
    if any(p < 0 for p in value):
        raise RecordError(f"{where}: patch indices must be >= 0")
    if any(a >= b for a, b in itertools.pairwise(value)):
        raise RecordError(f"{where}: patch indices must be sorted and unique")
    return value


def _check_rle(value: Any, where: str) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        return check_rle(value, where)
    except PaDTError as error:
        raise RecordError(str(error)) from None


def _check_iscrowd(value: Any, where: str) -> int:
    if value not in (0, 1):
        raise RecordError(f"{where}: expected 0 or 1, got {value!r}")
    return int(value)


def _check_area(value: Any, where: str) -> float:
    if not _is_number(value) or value < 0:
        raise RecordError(f"{where}: expected a non-negative number, got {value!r}")
    return float(value)


def _check_conversations(value: Any, where: str) -> None:
    if not isinstance(value, list) or not value:
        raise RecordError(
            f"{where}: expected a non-empty list of turns [{{'from': 'human', 'value': PROMPT}}]"
        )
    for i, turn in enumerate(value):
        if not (
            isinstance(turn, Mapping)
            and isinstance(turn.get("from"), str)
            and isinstance(turn.get("value"), str)
        ):
            raise RecordError(
                f"{where}[{i}]: expected {{'from': 'human' or 'gpt', 'value': str}}, got {turn!r:.80}"
            )
    if value[0]["from"] != "human":
        raise RecordError(f"{where}[0]: the first turn must be from 'human' (the prompt)")
