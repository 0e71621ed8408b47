"""What ``padt eval`` evaluates: a records file or a ``synthetic:`` spec, and which records are queries."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from padt.data.records import Record, read_records
from padt.data.synthetic import DEFAULT_SCENES, check_absent_rate
from padt.errors import PaDTError
from padt.tasks import TASK_NAMES, get_task

SYNTHETIC_FOLDER = "data"
SYNTHETIC_PREFIX = "synthetic:"
# Keys of a ``synthetic:`` data spec and their defaults (None: taken from the task / required).
SYNTHETIC_KEYS: dict[str, int | str | None] = {
    "task": None,
    "n": None,
    "seed": 0,
    **dataclasses.asdict(DEFAULT_SCENES),
    "refs_per_scene": 1,
    "absent_rate": 0,
}
#: Keys left out of the recorded data name at their default (added after eval folders were first written).
_LATER_KEYS = {"absent_rate": 0}


@dataclass
class EvalData:
    """Records to evaluate, where their images are, and how the data was named (for ``eval.json``)."""

    records: list[Record]
    image_root: Path | None
    name: str


def parse_synthetic_spec(spec: str, task: str) -> dict[str, int | str]:
    """``synthetic:task=rec,n=500,seed=123[,min_size=..,max_size=..,max_objects=..,refs_per_scene=..,
    absent_rate=..]`` as :func:`padt.data.synthetic.generate_dataset` arguments; ``task`` defaults to the
    evaluated task. ``absent_rate`` (a share from 0 to 1) is the only key that is not an integer."""
    body = spec[len(SYNTHETIC_PREFIX) :]
    values: dict[str, int | str | None] = dict(SYNTHETIC_KEYS)
    for item in filter(None, (part.strip() for part in body.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in SYNTHETIC_KEYS:
            raise PaDTError(
                f"synthetic data spec {spec!r}: unknown item {item!r}; use key=value with keys "
                f"{', '.join(SYNTHETIC_KEYS)} (e.g. synthetic:task=rec,n=500,seed=123)"
            )
        if key == "task":
            values[key] = value.strip().lower()
            continue
        if key == "absent_rate":
            try:
                values[key] = check_absent_rate(float(value))
            except (ValueError, PaDTError):
                raise PaDTError(
                    f"synthetic data spec {spec!r}: absent_rate must be a share from 0 to 1, got {value!r}"
                ) from None
            continue
        try:
            values[key] = int(value)
        except ValueError:
            raise PaDTError(
                f"synthetic data spec {spec!r}: {key} must be an integer, got {value!r}"
            ) from None
    if values["n"] is None:
        raise PaDTError(f"synthetic data spec {spec!r} needs n=NUMBER_OF_SCENES (e.g. synthetic:n=500)")
    for key in ("n", "max_objects", "refs_per_scene"):
        if values[key] is not None and int(values[key]) < 1:  # type: ignore[arg-type]
            raise PaDTError(f"synthetic data spec {spec!r}: {key} must be at least 1, got {values[key]}")
    if int(values["seed"] or 0) < 0:  # type: ignore[arg-type]
        raise PaDTError(f"synthetic data spec {spec!r}: seed must be at least 0, got {values['seed']}")
    values["task"] = values["task"] or task
    if values["task"] not in TASK_NAMES or not get_task(task).accepts(str(values["task"])):
        raise PaDTError(
            f"synthetic data spec {spec!r}: task={values['task']} cannot be evaluated as {task}; "
            f"use task={task} or leave it out"
        )
    return {k: v for k, v in values.items() if v is not None}


def canonical_data_name(spec: str | os.PathLike, task: str) -> str:
    """The data spec as recorded in ``eval.json``: a resolved path, or the synthetic spec with every key."""
    text = os.fspath(spec)
    if text.startswith(SYNTHETIC_PREFIX):
        values = parse_synthetic_spec(text, task)
        keys = [k for k in SYNTHETIC_KEYS if not (k in _LATER_KEYS and values[k] == _LATER_KEYS[k])]
        return SYNTHETIC_PREFIX + ",".join(f"{k}={values[k]}" for k in keys)
    return str(_records_file(text).resolve())


def _records_file(text: str) -> Path:
    """A records file given as itself or as the folder ``padt data synthetic`` wrote it in."""
    from padt.data.synthetic import RECORDS_FILE

    path = Path(text)
    return path / RECORDS_FILE if path.is_dir() and (path / RECORDS_FILE).is_file() else path


def load_data(
    spec: str | os.PathLike,
    task: str,
    *,
    out_dir: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    progress: bool = True,
) -> EvalData:
    """Records of a data spec: a PaDT records file (images under ``image_root``, default the file's folder)
    or ``synthetic:...`` (:func:`parse_synthetic_spec`), generated deterministically into
    ``out_dir/data``."""
    text = os.fspath(spec)
    if text.startswith(SYNTHETIC_PREFIX):
        from padt.data.synthetic import RECORDS_FILE, generate_dataset

        values = parse_synthetic_spec(text, task)
        folder = Path(out_dir) / SYNTHETIC_FOLDER
        kwargs = {k: v for k, v in values.items() if k not in ("task", "n", "seed")}
        generate_dataset(
            str(values["task"]), int(values["n"]), int(values["seed"]), folder, progress=progress, **kwargs
        )  # type: ignore[arg-type]
        records = read_records(folder / RECORDS_FILE)
        return EvalData(records, folder, canonical_data_name(text, task))
    path = _records_file(text)
    if not path.is_file():
        problem = "is a folder without records.jsonl" if path.is_dir() else "does not exist"
        raise PaDTError(
            f"data file {text!r} {problem}; pass a PaDT records file (.json/.jsonl), a folder holding "
            "records.jsonl or synthetic:task=...,n=...,seed=... to --data"
        )
    records = read_records(path)
    root = Path(image_root) if image_root is not None else path.parent
    return EvalData(records, root, canonical_data_name(path, task))


def query_indices(records: Sequence[Record], task: str) -> list[int]:
    """Positions of the records that are queries of ``task`` (:meth:`padt.tasks.Task.query_indices`)."""
    return get_task(task).query_indices(records)


def check_tasks(records: Sequence[Record], task: str, name: str) -> None:
    wrong = [r for r in records if not get_task(task).accepts(r.task)]
    if wrong:
        raise PaDTError(
            f"{name}: {len(wrong)} record(s) are {wrong[0].task} samples (e.g. id {wrong[0].id!r}), not {task}; "
            "evaluate them with their own --task"
        )
