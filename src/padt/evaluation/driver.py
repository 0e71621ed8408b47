"""Batched, resumable evaluation of a PaDT model on a dataset: predictions, then metrics (``padt eval``).

:func:`evaluate` runs the whole thing: it loads the data (:func:`~padt.evaluation.data.load_data`), predicts
every query in batches (:func:`~padt.evaluation.predictions.predict_shard`), merges the prediction files
(:func:`~padt.evaluation.predictions.merge_predictions`) and scores them with the task's scorer
(:func:`~padt.evaluation.protocols.score_predictions`). The output folder holds:

- ``eval.json``: what is evaluated (model, data, task, ``max_new_tokens``, and the decoding settings
  ``vrt_repeat_penalty``, ``vrt_reuse_penalty``, ``ovd_end_penalty``, ``ovd_duplicate_iou``, ``ovd_grammar``
  and ``mask_box_weight`` that are not off: given, or else the checkpoint's ``generation_config``).
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
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from padt.commands import writable_folder
from padt.data.records import Record, read_records
from padt.errors import PaDTError
from padt.evaluation.data import (
    SYNTHETIC_FOLDER,
    SYNTHETIC_KEYS,
    SYNTHETIC_PREFIX,
    EvalData,
    canonical_data_name,
    check_tasks,
    load_data,
    parse_synthetic_spec,
    query_indices,
)
from padt.evaluation.predictions import (
    PREDICTIONS_FILE,
    image_path,
    merge_predictions,
    predict_shard,
    prediction_line,
    read_prediction_lines,
    shard_file,
)
from padt.evaluation.protocols import ovd_official_from_records, read_vlmr1_index, score_predictions
from padt.generation import OVD_END_PENALTY, OVD_GRAMMAR
from padt.postprocess import MASK_BOX_WEIGHT, OVD_DUPLICATE_IOU
from padt.tasks import get_task

if TYPE_CHECKING:
    from padt.inference import PaDT

SETTINGS_FILE = "eval.json"
METRICS_FILE = "metrics.json"


# ----------------------------------------------------------------------------------------------- settings


#: weight files up to this size are digested whole; of larger ones, the size, both ends and evenly spaced samples
WHOLE_FILE_DIGEST_LIMIT = 256 << 20
_EDGE_BYTES, _SAMPLES, _SAMPLE_BYTES = 1 << 20, 64, 1 << 16


def weights_fingerprint(folder: str | os.PathLike) -> str | None:
    """A short digest of a checkpoint folder's weight files, so that a resumed evaluation notices weights retrained
    or re-exported into the same folder: every byte of files up to 256 MiB; of larger ones the size, the first and
    last MiB and 64 KiB at 64 evenly spaced places (a second or so for any model size). None when ``folder`` is
    not a folder holding ``*.safetensors`` or ``*.bin`` files."""
    path = Path(folder)
    if not path.is_dir():
        return None
    files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())
    if not files:
        return None
    digest = hashlib.sha256()
    for f in files:
        size = f.stat().st_size
        digest.update(f"{f.name}:{size}:".encode())
        with f.open("rb") as handle:
            if size <= WHOLE_FILE_DIGEST_LIMIT:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
                continue
            reads = [(0, _EDGE_BYTES), (max(size - _EDGE_BYTES, 0), _EDGE_BYTES)]
            reads += [(size * k // (_SAMPLES + 1), _SAMPLE_BYTES) for k in range(1, _SAMPLES + 1)]
            for offset, length in reads:
                handle.seek(offset)
                digest.update(handle.read(length))
    return digest.hexdigest()[:16]


def decoding_settings(pipe: Any, given: Mapping[str, float | bool | None]) -> dict[str, float | bool]:
    """The decoding settings an evaluation runs with, for ``eval.json``: each of ``given`` (name -> value, None:
    not given) or else the checkpoint's ``generation_config`` entry (``pipe`` a pipeline or a checkpoint
    folder), left out when off (0 or unset), so that a folder evaluated before a setting existed still
    matches. A setting changed in the checkpoint's ``generation_config.json`` changes the answers as much as a
    given one does, so it is recorded too."""
    if isinstance(pipe, str | os.PathLike):
        file = Path(pipe) / "generation_config.json"
        try:
            saved = json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}
        except (OSError, json.JSONDecodeError):
            saved = {}  # the model load reports an unreadable checkpoint
    else:
        saved = getattr(getattr(pipe, "model", None), "generation_config", None)
        saved = saved.to_dict() if saved is not None else {}
    out = {}
    for name, value in given.items():
        value = saved.get(name) if value is None else value
        if value:
            out[name] = value
    return out


def check_settings(out_dir: str | os.PathLike, settings: Mapping[str, Any], *, write: bool = True) -> None:
    """Refuse a folder evaluated with other settings; with ``write``, record them in a new folder's
    ``eval.json`` (done only once the data and images have been checked, so a refused run leaves nothing)."""
    out = Path(out_dir)
    path = out / SETTINGS_FILE
    if out.exists() and not out.is_dir():
        raise PaDTError(f"--out {out} is a file; give a folder for the evaluation's outputs")
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
    if not write:
        return
    writable_folder(out, "--out")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(dict(settings), indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def evaluated_records(out_dir: str | os.PathLike) -> list[Record]:
    """The records an evaluation folder was made from (its ``data/`` for synthetic data, else the records
    file ``eval.json`` names), in the order of the predictions' ``index``."""
    out = Path(out_dir)
    try:
        data = str(json.loads((out / SETTINGS_FILE).read_text(encoding="utf-8"))["data"])
    except (OSError, ValueError, KeyError, TypeError):
        raise PaDTError(
            f"{out} has no readable {SETTINGS_FILE}; give a folder written by padt eval"
        ) from None
    from padt.data.synthetic import RECORDS_FILE

    if data.startswith(SYNTHETIC_PREFIX):
        return read_records(out / SYNTHETIC_FOLDER / RECORDS_FILE)
    return read_records(data)


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
    vrt_reuse_penalty: float | None = None,
    mask_box_weight: float | None = None,
    ovd_end_penalty: float | None = None,
    ovd_duplicate_iou: float | None = None,
    ovd_grammar: bool | None = None,
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
        vrt_reuse_penalty: penalty on the VRTs of the answer's earlier objects, likewise.
        mask_box_weight: weight of each mask's tight box in its box (0: the box head's), likewise.
        ovd_end_penalty: penalty on ending an OVD answer after an object group (0: off), likewise.
        ovd_duplicate_iou: IoU above which an OVD object is marked a duplicate and not scored (0: off), likewise.
        ovd_grammar: hold OVD answers to their format (False: off), likewise.
    Returns:
        The metrics (also in ``metrics.json``), or None in a non-main process of a distributed run.
    """
    get_task(task)  # a clear error for an unknown task
    if limit is not None and limit < 1:
        raise PaDTError(f"--limit must be >= 1, got {limit}")
    out = Path(out_dir)
    state = _distributed_state(device)
    rank, world_size = (state.process_index, state.num_processes) if state is not None else (0, 1)

    if isinstance(pipe, str | os.PathLike):
        model = model_name or str(Path(pipe).resolve())
        weights = weights_fingerprint(pipe)
    else:
        source = getattr(pipe.model, "name_or_path", "") or ""
        model = model_name or source or "in-memory model"
        weights = weights_fingerprint(source) if source else None
    if isinstance(data, str | os.PathLike):
        name = data_name or canonical_data_name(data, task)
    else:
        name = data_name or "in-memory records"
    if isinstance(pipe, str | os.PathLike):
        from padt.inference import resolve_device_and_dtype

        if state is not None and device is None:
            device = str(state.device)
        device, dtype = resolve_device_and_dtype(device, dtype)
        dtype_name = dtype
    else:
        dtype_name = str(pipe.model.dtype).removeprefix("torch.")
    masks = get_task(task).masks if masks is None else bool(masks)
    # Everything that changes the answers: a resumed run must not mix two of them in one file.
    settings = {
        "model": model,
        "data": name,
        "task": task,
        "max_new_tokens": max_new_tokens,
        "dtype": dtype_name,
        "masks": masks,
    }
    if weights is not None:  # retrained or re-exported weights in the same folder are another model
        settings["weights"] = weights
    given = {
        "vrt_repeat_penalty": vrt_repeat_penalty,
        "vrt_reuse_penalty": vrt_reuse_penalty,
        MASK_BOX_WEIGHT: mask_box_weight,
        OVD_END_PENALTY: ovd_end_penalty,
        OVD_DUPLICATE_IOU: ovd_duplicate_iou,
        OVD_GRAMMAR: ovd_grammar,
    }
    settings |= decoding_settings(pipe, given)

    with state.main_process_first() if state is not None else contextlib.nullcontext():
        check_settings(out, settings, write=False)
        writable_folder(out, "--out")
        if isinstance(data, str | os.PathLike):
            loaded = load_data(
                data, task, out_dir=out, image_root=image_root, progress=progress and rank == 0
            )
        else:
            loaded = EvalData(list(data), Path(image_root) if image_root is not None else None, name)
    records = loaded.records[:limit] if limit is not None else loaded.records
    if not records:
        raise PaDTError(f"{name}: no records to evaluate")
    check_tasks(records, task, name)

    root = loaded.image_root
    for i in query_indices(records, task):  # before the model loads: a wrong --image-root fails at once
        for image in records[i].images:
            path = image_path(root, image)
            if not path.is_file():
                raise PaDTError(
                    f"image file not found: {path} (record {i}, id {records[i].id!r}); check --image-root"
                )
    if rank == 0:
        check_settings(out, settings)

    if isinstance(pipe, str | os.PathLike):
        from padt.inference import PaDT

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
        vrt_reuse_penalty=vrt_reuse_penalty,
        mask_box_weight=mask_box_weight,
        ovd_end_penalty=ovd_end_penalty,
        ovd_duplicate_iou=ovd_duplicate_iou,
        ovd_grammar=ovd_grammar,
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


__all__ = [
    "METRICS_FILE",
    "PREDICTIONS_FILE",
    "SETTINGS_FILE",
    "SYNTHETIC_FOLDER",
    "SYNTHETIC_KEYS",
    "SYNTHETIC_PREFIX",
    "EvalData",
    "canonical_data_name",
    "check_settings",
    "evaluate",
    "evaluated_records",
    "load_data",
    "merge_predictions",
    "ovd_official_from_records",
    "parse_synthetic_spec",
    "predict_shard",
    "prediction_line",
    "query_indices",
    "read_prediction_lines",
    "read_vlmr1_index",
    "score_predictions",
    "shard_file",
]
