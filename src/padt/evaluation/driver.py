"""Batched, resumable evaluation of a PaDT model on a dataset: predictions, then metrics (``padt eval``).

:func:`evaluate` runs the whole thing: it loads the data (:func:`load_data`), predicts every query in batches
(:func:`predict_shard`), merges the prediction files (:func:`merge_predictions`) and scores them with the
functions of :mod:`padt.evaluation.score` (:func:`score_predictions`). The output folder holds:

- ``eval.json``: what is evaluated (model, data, task, ``max_new_tokens``, ``vrt_repeat_penalty`` when given).
  A folder evaluated with other settings is refused, so that a resumed run never mixes two evaluations.
- ``predictions.jsonl``: one line per query in the per-query format of ``padt score`` (``index``, ``objects``
  with pixel xyxy ``bbox``, ``score``, ``label``, ``mask`` RLE, ``width``, ``height``, ``caption`` for RIC) plus
  the generated ``text``. Lines are flushed after every batch; a rerun skips the indices already present and
  redoes a torn last line. Under ``accelerate launch``/``torchrun`` each process writes
  ``predictions.rank{r}.jsonl`` for every ``world_size``-th query and the main process merges them.
- ``metrics.json``: the metrics, as ``padt score`` prints them.
- ``data/`` (synthetic data only): the generated scenes and ``records.jsonl``.

A query is a record, except for RIC, where it is the first record of each image (the other records of the
image are further reference captions). ``index`` is the record's position in the data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from padt.data.records import Record, read_records
from padt.data.synthetic import DEFAULT_SCENES
from padt.errors import PaDTError
from padt.prompts import OVD_PROMPT, TASKS

if TYPE_CHECKING:
    from padt.inference import PaDT, Prediction

SETTINGS_FILE = "eval.json"
PREDICTIONS_FILE = "predictions.jsonl"
METRICS_FILE = "metrics.json"
SYNTHETIC_FOLDER = "data"
SYNTHETIC_PREFIX = "synthetic:"
# Keys of a ``synthetic:`` data spec and their defaults (None: taken from the task / required).
SYNTHETIC_KEYS: dict[str, int | str | None] = {
    "task": None,
    "n": None,
    "seed": 0,
    **dataclasses.asdict(DEFAULT_SCENES),
    "refs_per_scene": 1,
}
_RANK_FILE = re.compile(r"predictions\.rank(\d+)\.jsonl")


def _family(task: str) -> str:
    """RES is scored on REC's records (docs/method.md §5.2)."""
    return "rec" if task in ("rec", "res") else task


# ----------------------------------------------------------------------------------------------- data


@dataclass
class EvalData:
    """Records to evaluate, where their images are, and how the data was named (for ``eval.json``)."""

    records: list[Record]
    image_root: Path | None
    name: str


def parse_synthetic_spec(spec: str, task: str) -> dict[str, int | str]:
    """``synthetic:task=rec,n=500,seed=123[,min_size=..,max_size=..,max_objects=..,refs_per_scene=..]`` as
    :func:`padt.data.synthetic.generate_dataset` arguments; ``task`` defaults to the evaluated task."""
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
        try:
            values[key] = int(value)
        except ValueError:
            raise PaDTError(
                f"synthetic data spec {spec!r}: {key} must be an integer, got {value!r}"
            ) from None
    if values["n"] is None:
        raise PaDTError(f"synthetic data spec {spec!r} needs n=NUMBER_OF_SCENES (e.g. synthetic:n=500)")
    values["task"] = values["task"] or task
    if values["task"] not in TASKS or _family(str(values["task"])) != _family(task):
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
        return SYNTHETIC_PREFIX + ",".join(f"{k}={values[k]}" for k in SYNTHETIC_KEYS)
    return str(Path(text).resolve())


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
    path = Path(text)
    if not path.is_file():
        raise PaDTError(
            f"data file {text!r} does not exist; pass a PaDT records file (.json/.jsonl) or "
            "synthetic:task=...,n=...,seed=... to --data"
        )
    records = read_records(path)
    root = Path(image_root) if image_root is not None else path.parent
    return EvalData(records, root, canonical_data_name(path, task))


def query_indices(records: Sequence[Record], task: str) -> list[int]:
    """Positions of the records that are queries: all of them, or for RIC the first record of each image."""
    if task != "ric":
        return list(range(len(records)))
    seen: set[Any] = set()
    out = []
    for i, rec in enumerate(records):
        if rec.id not in seen:
            seen.add(rec.id)
            out.append(i)
    return out


def _check_tasks(records: Sequence[Record], task: str, name: str) -> None:
    wrong = [r for r in records if _family(r.task) != _family(task)]
    if wrong:
        raise PaDTError(
            f"{name}: {len(wrong)} record(s) are {wrong[0].task} samples (e.g. id {wrong[0].id!r}), not {task}; "
            "evaluate them with their own --task"
        )


# ----------------------------------------------------------------------------------------------- settings


def check_settings(out_dir: str | os.PathLike, settings: Mapping[str, Any]) -> None:
    """Write ``eval.json`` in a new folder; refuse a folder evaluated with other settings."""
    out = Path(out_dir)
    path = out / SETTINGS_FILE
    if path.is_file():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            previous = None
        if previous != dict(settings):
            changed = [
                k
                for k in sorted(set(settings) | set(previous or {}))
                if (previous or {}).get(k) != settings.get(k)
            ]
            shown = "; ".join(f"{k}: {(previous or {}).get(k)!r} -> {settings.get(k)!r}" for k in changed[:3])
            raise PaDTError(
                f"{out} holds an evaluation with other settings ({shown}); use another --out or delete {out}"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(dict(settings), indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------- prediction files


def shard_file(out_dir: str | os.PathLike, rank: int, world_size: int) -> Path:
    """The file process ``rank`` appends to: ``predictions.jsonl`` alone, ``predictions.rank{r}.jsonl`` sharded."""
    out = Path(out_dir)
    return out / PREDICTIONS_FILE if world_size == 1 else out / f"predictions.rank{rank}.jsonl"


def _prediction_files(out_dir: Path) -> list[Path]:
    ranks = sorted(
        (int(m.group(1)), p)
        for p in out_dir.glob("predictions.rank*.jsonl")
        if (m := _RANK_FILE.fullmatch(p.name))
    )
    main = out_dir / PREDICTIONS_FILE
    return ([main] if main.is_file() else []) + [p for _, p in ranks]


def read_prediction_lines(path: Path, *, repair: bool = False) -> list[dict[str, Any]]:
    """The complete prediction lines of a file. A torn last line (an interrupted write: no newline, or not
    JSON) is left out, and with ``repair`` cut from the file; a bad line elsewhere is an error."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    complete, tail = lines[:-1], lines[-1]
    out: list[dict[str, Any]] = []
    keep = 0
    for number, line in enumerate(complete, 1):
        if not line.strip():
            keep += len(line) + 1
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            item = None
        if not (isinstance(item, dict) and isinstance(item.get("index"), int)):
            if number == len(complete) and not tail:
                tail = line  # a torn line that happens to end the file after a newline
                break
            raise PaDTError(f"{path}: line {number} is not a prediction line; delete the file to start over")
        out.append(item)
        keep += len(line) + 1
    if tail and repair:
        with path.open("r+b") as f:
            f.truncate(keep)
    return out


def merge_predictions(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Merge ``predictions.jsonl`` and every ``predictions.rank{r}.jsonl`` into ``predictions.jsonl``, one line
    per index, sorted by index; the rank files are removed. Returns the merged lines."""
    out = Path(out_dir)
    by_index: dict[int, dict[str, Any]] = {}
    files = _prediction_files(out)
    for path in files:
        for item in read_prediction_lines(path):
            by_index.setdefault(item["index"], item)
    merged = [by_index[i] for i in sorted(by_index)]
    tmp = out / (PREDICTIONS_FILE + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.writelines(_json_line(item) for item in merged)
    os.replace(tmp, out / PREDICTIONS_FILE)
    for path in files:
        if path.name != PREDICTIONS_FILE:
            path.unlink()
    return merged


def _json_line(item: Mapping[str, Any]) -> str:
    return json.dumps(item, ensure_ascii=False, separators=(",", ":")) + "\n"


def prediction_line(
    index: int, record: Record, task: str, prediction: Prediction, size: tuple[int, int], *, masks: bool
) -> dict[str, Any]:
    """The per-query line of ``padt score`` for one prediction; ``size`` is the first image's (width, height)."""
    from padt.evaluation.caption import plain_caption

    objects = []
    for obj, image in zip(prediction.objects, prediction.object_images):
        item: dict[str, Any] = {
            "label": obj.label,
            "bbox": [round(float(v), 2) for v in obj.box_xyxy],
            "score": round(float(obj.score), 5),
            "vrt_ids": [int(v) for v in obj.vrt_ids],
            "image": int(image),
        }
        if masks and obj.mask_rle is not None:
            item["mask"] = obj.mask_rle
        objects.append(item)
    line: dict[str, Any] = {
        "index": index,
        "id": record.id,
        "image": record.image,
        "width": int(size[0]),
        "height": int(size[1]),
        "text": prediction.text,
        "objects": objects,
        "finished": prediction.finished,
    }
    if task == "ric":
        line["caption"] = plain_caption(prediction.text)
    if prediction.warnings:
        line["warnings"] = list(prediction.warnings)
    return line


# ----------------------------------------------------------------------------------------------- prediction


def _batches(items: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _image_path(image_root: Path | None, name: str) -> Path:
    return image_root / name if image_root is not None else Path(name)


def _load_images(record: Record, index: int, image_root: Path | None) -> tuple[list[Any], tuple[int, int]]:
    """A record's images, loaded for the processor, and the original ``(width, height)`` of the first."""
    from padt.processing import load_image

    images, sizes = [], []
    for name in record.images:
        path = _image_path(image_root, name)
        if not path.is_file():
            raise PaDTError(
                f"image file not found: {path} (record {index}, id {record.id!r}); check --image-root"
            )
        image, size = load_image(path)
        images.append(image)
        sizes.append(size)
    return images, sizes[0]


def predict_shard(
    pipe: PaDT | Callable[..., list[Prediction]],
    records: Sequence[Record],
    task: str,
    out_dir: str | os.PathLike,
    *,
    image_root: str | os.PathLike | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 512,
    masks: bool | None = None,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    vrt_repeat_penalty: float | None = None,
) -> int:
    """Predict this process's share of the queries (every ``world_size``-th, from ``rank``) and append their
    lines to :func:`shard_file`, flushed after every batch. Indices already in any prediction file of
    ``out_dir`` are skipped. ``masks`` (default: RES only) stores each object's RLE mask. Returns the number
    of new predictions. ``vrt_repeat_penalty`` overrides the checkpoint's setting
    (:meth:`~padt.modeling.PaDTForConditionalGeneration.generate`)."""
    from tqdm import tqdm

    if not 0 <= rank < world_size:
        raise PaDTError(f"rank {rank} is not in 0..{world_size - 1}")
    if batch_size < 1:
        raise PaDTError(f"--batch-size must be >= 1, got {batch_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(image_root) if image_root is not None else None
    masks = task == "res" if masks is None else masks
    own = shard_file(out, rank, world_size)
    done = {item["index"] for item in read_prediction_lines(own, repair=True)}
    for path in _prediction_files(out):
        if path != own:
            done.update(item["index"] for item in read_prediction_lines(path))
    mine = query_indices(records, task)[rank::world_size]
    todo = [i for i in mine if i not in done]
    desc = f"eval {task}" + (f" [rank {rank}/{world_size}]" if world_size > 1 else "")
    with (
        own.open("a", encoding="utf-8") as f,
        tqdm(
            total=len(mine),
            initial=len(mine) - len(todo),
            desc=desc,
            unit="query",
            disable=not progress,
            position=rank if world_size > 1 else None,
        ) as bar,
    ):
        for batch in _batches(todo, batch_size):
            images, sizes = zip(*(_load_images(records[i], i, root) for i in batch), strict=True)
            prompts = [records[i].prompt for i in batch]
            predictions = pipe(
                list(images),
                prompts,
                max_new_tokens=max_new_tokens,
                decode_masks=masks,
                vrt_repeat_penalty=vrt_repeat_penalty,
            )
            lines = [
                prediction_line(i, records[i], task, p, size, masks=masks)
                for i, p, size in zip(batch, predictions, sizes, strict=True)
            ]
            # One write per batch, flushed to disk: a crash loses at most this batch (and tears one line).
            f.write("".join(_json_line(line) for line in lines))
            f.flush()
            os.fsync(f.fileno())
            bar.update(len(batch))
    return len(todo)


# ----------------------------------------------------------------------------------------------- scoring


def read_vlmr1_index(path: str | os.PathLike) -> list[str]:
    """Paper keys of a VLM-R1 ``rec_jsons_processed/{split}.json`` index file (docs/method.md §10.5).

    The file is a JSON list (or JSONL) of entries with ``image`` (a COCO file name or path such as
    ``COCO_train2014_000000123456.jpg``) and ``normal_caption``; the key is the image id parsed from the file
    name (its last run of digits) and the caption, as :func:`padt.evaluation.metrics.paper_key`. Other fields
    (``problem``, ``solution``) are not used. Duplicate keys count once, in order of first appearance.
    """
    from padt.evaluation.metrics import paper_key

    path = Path(path)
    if not path.is_file():
        raise PaDTError(
            f"{path}: no such file; give VLM-R1's rec_jsons_processed/<split>.json to --index-file"
        )
    text = path.read_text(encoding="utf-8")
    try:
        entries = (
            json.loads(text)
            if text.lstrip().startswith("[")
            else [json.loads(line) for line in text.splitlines() if line.strip()]
        )
    except json.JSONDecodeError as exc:
        raise PaDTError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from exc
    keys: dict[str, None] = {}
    for i, entry in enumerate(entries):
        image = entry.get("image") if isinstance(entry, dict) else None
        caption = entry.get("normal_caption") if isinstance(entry, dict) else None
        if not isinstance(image, str) or not isinstance(caption, str):
            raise PaDTError(
                f"{path}: entry {i} needs 'image' (a COCO file name) and 'normal_caption' strings"
            )
        match = re.search(r"(\d+)\D*$", Path(image).name)
        if match is None:
            raise PaDTError(f"{path}: entry {i}: no image id in the file name {image!r}")
        keys[paper_key(int(match.group(1)), caption)] = None
    return list(keys)


def _score_with_index(
    records: Sequence[Record],
    preds: Sequence[Mapping[str, Any]],
    task: str,
    index_keys: Sequence[str],
    image_root: Path | None,
) -> dict[str, Any]:
    """The paper protocol over the keys of an index file: records outside it are left out, keys without a
    record (no ground truth) or without a prediction count 0."""
    from padt.evaluation.metrics import paper_key
    from padt.evaluation.score import score_rec, score_res

    wanted = set(index_keys)
    subset: dict[str, Record] = {}
    for rec in records:
        if len(rec.objects) == 1:
            key = paper_key(rec.id, rec.objects[0].label)
            if key in wanted:
                subset[key] = rec  # later duplicates win, as in the reference
    # Re-keyed by image id, since record positions change in the subset.
    rekeyed = []
    for p in preds:
        q = {k: v for k, v in p.items() if k != "index"}
        q["id"] = records[p["index"]].id
        rekeyed.append(q)
    scorer = score_rec if task == "rec" else score_res
    out = (
        scorer(list(subset.values()), rekeyed, protocol="paper", image_root=image_root)
        if subset
        else {
            "task": task,
            "protocol": "paper",
            "acc@0.5": 0.0,
            "acc@0.75": 0.0,
            "num_keys": 0,
            "num_missing": 0,
            **({"miou": 0.0} if task == "res" else {}),
        }
    )
    scale = len(subset) / len(index_keys) if index_keys else 0.0
    for name in ("acc@0.5", "acc@0.75", "miou"):
        if name in out:
            out[name] = out[name] * scale
    out["num_keys"] = len(index_keys)
    out["num_missing"] = out.get("num_missing", 0) + len(index_keys) - len(subset)
    out["num_keys_without_ground_truth"] = len(index_keys) - len(subset)
    return out


def ovd_official_from_records(
    records: Sequence[Record], preds: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """Image and category lists for OVD records scored without the official file: the images of the
    records (sizes from the predictions), and every class named in the records' prompts or objects."""
    sizes = {p["index"]: (int(p["width"]), int(p["height"])) for p in preds}
    names: set[str] = set()
    images: dict[Any, dict[str, Any]] = {}
    prefix = OVD_PROMPT.split("{}")[0]
    for i, rec in enumerate(records):
        if isinstance(rec.id, bool) or not isinstance(rec.id, int):
            raise PaDTError(
                f"record id {rec.id!r}: OVD is scored with COCO tools, which need integer image ids"
            )
        names.update(o.label for o in rec.objects)
        if rec.prompt.startswith(prefix):
            try:
                listed = json.loads(rec.prompt[len(prefix) :].rstrip("."))
                names.update(str(n) for n in listed if isinstance(n, str))
            except json.JSONDecodeError:
                pass
        if i in sizes and rec.id not in images:
            w, h = sizes[i]
            images[rec.id] = {"id": rec.id, "file_name": rec.images[0], "width": w, "height": h}
    categories = [{"id": k + 1, "name": n} for k, n in enumerate(sorted(names))]
    return {"images": list(images.values()), "annotations": [], "categories": categories}


def score_predictions(
    records: Sequence[Record],
    preds: Sequence[Mapping[str, Any]],
    task: str,
    *,
    protocol: str = "padt",
    index_file: str | os.PathLike | None = None,
    coco: str | os.PathLike | Mapping[str, Any] | None = None,
    image_root: str | os.PathLike | None = None,
    meteor: bool = True,
    rebuilt_gt: bool = False,
) -> dict[str, Any]:
    """Metrics of per-query prediction lines with :mod:`padt.evaluation.score`'s functions.

    Lines whose index is not a query of ``records`` are ignored. ``protocol`` ``"paper"`` (REC/RES) is the
    reference's keyed scoring; ``index_file`` (VLM-R1's, :func:`read_vlmr1_index`) restricts it to the keys
    the paper's numbers use. OVD: with ``coco``, the official annotation file, predictions are scored against
    its annotations (the standard number), or with ``rebuilt_gt`` against the reference's ground truth rebuilt
    from the records (§10.3) with its image and category lists; without ``coco`` only the rebuilt ground truth
    exists, its lists taken from the records (:func:`ovd_official_from_records`).
    """
    from padt.evaluation.score import score_ovd, score_rec, score_res, score_ric

    root = Path(image_root) if image_root is not None else None
    queries = set(query_indices(records, task))
    preds = [p for p in preds if p.get("index") in queries]
    if protocol not in ("padt", "paper"):
        raise PaDTError(f"unknown protocol {protocol!r}; choose padt or paper")
    if (protocol == "paper" or index_file is not None) and task not in ("rec", "res"):
        raise PaDTError(f"--protocol paper and --index-file apply to rec and res, not {task}")
    if index_file is not None:
        return _score_with_index(records, preds, task, read_vlmr1_index(index_file), root)
    if task == "rec":
        return score_rec(records, preds, protocol=protocol, image_root=root)
    if task == "res":
        return score_res(records, preds, protocol=protocol, image_root=root)
    if task == "ovd":
        if coco is not None and not rebuilt_gt:
            return score_ovd(coco, preds)
        official = coco if coco is not None else ovd_official_from_records(records, preds)
        return score_ovd(list(records), preds, coco=official)
    return score_ric(records, preds, meteor=meteor, image_root=root)


# ----------------------------------------------------------------------------------------------- driver


def _distributed_state(device: str | None) -> Any:
    """accelerate's ``PartialState`` under ``accelerate launch``/``torchrun`` (``WORLD_SIZE`` > 1), else None;
    a single process never initialises torch.distributed. CPU processes (``device="cpu"`` or no CUDA) use
    gloo."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return None
    import torch
    from accelerate import PartialState

    cpu = (device or "").startswith("cpu") or not torch.cuda.is_available()
    state = PartialState(cpu=cpu)
    if state.num_processes != world_size:
        raise PaDTError(
            f"WORLD_SIZE is {world_size} but accelerate found {state.num_processes} process(es); "
            "start padt eval with accelerate launch or torchrun"
        )
    return state


def evaluate(
    pipe: PaDT | str | os.PathLike,
    data: str | os.PathLike | Sequence[Record],
    task: str,
    out_dir: str | os.PathLike,
    *,
    image_root: str | os.PathLike | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 512,
    limit: int | None = None,
    protocol: str = "padt",
    index_file: str | os.PathLike | None = None,
    coco: str | os.PathLike | None = None,
    rebuilt_gt: bool = False,
    masks: bool | None = None,
    meteor: bool = True,
    device: str | None = None,
    dtype: str = "auto",
    model_name: str | None = None,
    data_name: str | None = None,
    progress: bool = True,
    vrt_repeat_penalty: float | None = None,
) -> dict[str, Any] | None:
    """Predict every query of ``data`` with ``pipe``, resumably, and score the predictions.

    Args:
        pipe: a :class:`~padt.inference.PaDT` pipeline, or a checkpoint folder loaded with ``device``/``dtype``
            (after the settings and the data are checked).
        data: records, a records file or a ``synthetic:...`` spec (:func:`load_data`).
        task: ``rec``, ``res``, ``ovd`` or ``ric``.
        out_dir: folder of ``eval.json``, ``predictions.jsonl`` and ``metrics.json`` (module docstring).
        image_root: folder the records' image names are relative to (default: the records file's folder).
        limit: evaluate the first ``limit`` records only.
        protocol, index_file, coco, rebuilt_gt, meteor: passed to :func:`score_predictions`.
        masks: store predicted masks in the lines (default: RES only).
        model_name, data_name: how ``eval.json`` names the model and the data when they are objects.
        vrt_repeat_penalty: penalty on the VRTs already in an object's run (0: off, inf: no repeats); None:
            the checkpoint's ``generation_config`` decides.
    Returns:
        The metrics (also in ``metrics.json``), or None in a non-main process of a distributed run.
    """
    if task not in TASKS:
        raise PaDTError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if limit is not None and limit < 1:
        raise PaDTError(f"--limit must be >= 1, got {limit}")
    out = Path(out_dir)
    state = _distributed_state(device)
    rank, world_size = (state.process_index, state.num_processes) if state is not None else (0, 1)

    if isinstance(pipe, str | os.PathLike):
        model = model_name or str(Path(pipe).resolve())
    else:
        model = model_name or getattr(pipe.model, "name_or_path", "") or "in-memory model"
    if isinstance(data, str | os.PathLike):
        name = data_name or canonical_data_name(data, task)
    else:
        name = data_name or "in-memory records"
    settings = {"model": model, "data": name, "task": task, "max_new_tokens": max_new_tokens}
    if vrt_repeat_penalty is not None:
        settings["vrt_repeat_penalty"] = vrt_repeat_penalty

    with state.main_process_first() if state is not None else contextlib.nullcontext():
        check_settings(out, settings)
        if isinstance(data, str | os.PathLike):
            loaded = load_data(
                data, task, out_dir=out, image_root=image_root, progress=progress and rank == 0
            )
        else:
            loaded = EvalData(list(data), Path(image_root) if image_root is not None else None, name)
    records = loaded.records[:limit] if limit is not None else loaded.records
    if not records:
        raise PaDTError(f"{name}: no records to evaluate")
    _check_tasks(records, task, name)

    root = loaded.image_root
    for i in query_indices(records, task):  # before the model loads: a wrong --image-root fails at once
        for image in records[i].images:
            path = _image_path(root, image)
            if not path.is_file():
                raise PaDTError(
                    f"image file not found: {path} (record {i}, id {records[i].id!r}); check --image-root"
                )

    if isinstance(pipe, str | os.PathLike):
        from padt.inference import PaDT

        if state is not None and device is None:
            device = str(state.device)
        pipe = PaDT.from_pretrained(pipe, device=device, dtype=dtype)
    predict_shard(
        pipe,
        records,
        task,
        out,
        image_root=loaded.image_root,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        masks=masks,
        rank=rank,
        world_size=world_size,
        progress=progress,
        vrt_repeat_penalty=vrt_repeat_penalty,
    )
    if state is not None:
        state.wait_for_everyone()
        if not state.is_main_process:
            return None

    merged = merge_predictions(out)
    have = {p["index"] for p in merged}
    missing = [i for i in query_indices(records, task) if i not in have]
    if missing:
        raise PaDTError(
            f"{len(missing)} queries have no prediction (e.g. index {missing[0]}); rerun to resume"
        )
    metrics = score_predictions(
        records,
        merged,
        task,
        protocol=protocol,
        index_file=index_file,
        coco=coco,
        rebuilt_gt=rebuilt_gt,
        image_root=loaded.image_root,
        meteor=meteor,
    )
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return metrics
