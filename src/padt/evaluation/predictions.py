"""Prediction files of ``padt eval``: one line per query, appended per batch, resumable, sharded per process."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from padt.data.records import Record
from padt.errors import PaDTError
from padt.tasks import get_task

if TYPE_CHECKING:
    from padt.inference import PaDT, Prediction

PREDICTIONS_FILE = "predictions.jsonl"
_RANK_FILE = re.compile(r"predictions\.rank(\d+)\.jsonl")


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
        if obj.duplicate_of is not None:  # kept for the answer's runs; not a detection (padt score skips it)
            item["duplicate_of"] = int(obj.duplicate_of)
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
    if get_task(task).one_query_per_image:  # captions: the text without its grounding tokens
        line["caption"] = plain_caption(prediction.text)
    if prediction.warnings:
        line["warnings"] = list(prediction.warnings)
    return line


# ----------------------------------------------------------------------------------------------- prediction


def _batches(items: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def image_path(image_root: Path | None, name: str) -> Path:
    return image_root / name if image_root is not None else Path(name)


def _load_images(record: Record, index: int, image_root: Path | None) -> tuple[list[Any], tuple[int, int]]:
    """A record's images, loaded for the processor, and the original ``(width, height)`` of the first."""
    from padt.processing import load_image

    images, sizes = [], []
    for name in record.images:
        path = image_path(image_root, name)
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
    vrt_reuse_penalty: float | None = None,
    mask_box_weight: float | None = None,
    ovd_end_penalty: float | None = None,
    ovd_duplicate_iou: float | None = None,
    ovd_grammar: bool | None = None,
) -> int:
    """Predict this process's share of the queries (every ``world_size``-th, from ``rank``) and append their
    lines to :func:`shard_file`, flushed after every batch. Indices already in any prediction file of
    ``out_dir`` are skipped. ``masks`` (default: RES only) stores each object's RLE mask. Returns the number
    of new predictions. ``vrt_repeat_penalty``, ``vrt_reuse_penalty``, ``mask_box_weight``, ``ovd_end_penalty``,
    ``ovd_duplicate_iou`` and ``ovd_grammar`` override the checkpoint's decoding settings (:func:`~padt.inference.predict`)."""
    from tqdm import tqdm

    if not 0 <= rank < world_size:
        raise PaDTError(f"rank {rank} is not in 0..{world_size - 1}")
    if batch_size < 1:
        raise PaDTError(f"--batch-size must be >= 1, got {batch_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(image_root) if image_root is not None else None
    masks = get_task(task).masks if masks is None else masks
    own = shard_file(out, rank, world_size)
    done = {item["index"] for item in read_prediction_lines(own, repair=True)}
    for path in _prediction_files(out):
        if path != own:
            done.update(item["index"] for item in read_prediction_lines(path))
    mine = get_task(task).query_indices(records)[rank::world_size]
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
                vrt_reuse_penalty=vrt_reuse_penalty,
                mask_box_weight=mask_box_weight,
                ovd_end_penalty=ovd_end_penalty,
                ovd_duplicate_iou=ovd_duplicate_iou,
                ovd_grammar=ovd_grammar,
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
