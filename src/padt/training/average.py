"""Weight averaging: one model whose every weight is the (weighted) mean of the same weight in several models.

Models fine-tuned from one starting point with different data orders or seeds, or a model and its own
fine-tuned continuation, usually lie in one basin of the loss, and their average is often better than each of
them ("model soups", Wortsman et al., 2022). In a recipe it is a stage of its own::

    average:
      kind: average
      average: {models: [fresh, more_a, more_b], weights: [1, 1, 1]}

The averaged folder is a plain ``from_pretrained`` checkpoint: the weights are averaged in float32 and saved in
the first model's dtype; everything else (config, generation settings, tokenizer, processor) is the first
model's. The models must share one architecture: the same ``config.json`` up to how it was saved (dtype,
``use_cache``), the same weight names and shapes.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from padt.errors import PaDTError
from padt.modeling import weight_files, weights_problem
from padt.training.stages import RUN_FILES, SUMMARY

if TYPE_CHECKING:
    from padt.training.config import AverageStageConfig

#: config.json keys that say how a model was saved or run, not what it is.
_NOT_ARCHITECTURE = ("torch_dtype", "dtype", "use_cache", "transformers_version", "_name_or_path")


def _architecture(folder: Path) -> dict:
    """A model's ``config.json`` without what says how it was saved or run (its dtype, ``use_cache``, ...):
    what must agree for weights to be averaged."""
    file = folder / "config.json"
    try:
        config = json.loads(file.read_text())
    except (OSError, ValueError):
        raise PaDTError(f"{file} is missing or not valid JSON; average checkpoint folders") from None

    def strip(value: object) -> object:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in _NOT_ARCHITECTURE}
        return value

    return strip(config)  # type: ignore[return-value]


def average_checkpoints(
    models: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    weights: Sequence[float] | None = None,
) -> Path:
    """Write to ``out`` the checkpoint whose weights are the ``weights``-weighted mean (normalised; unset: the
    plain mean) of ``models``' weights; returns ``out``. Files other than the weights are the first model's."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    folders = [Path(m) for m in models]
    if len(folders) < 2:
        raise PaDTError(f"averaging needs two or more models, got {len(folders)}")
    weights = [1.0] * len(folders) if weights is None else [float(w) for w in weights]
    if len(weights) != len(folders) or any(w <= 0 for w in weights):
        raise PaDTError(f"give one positive weight per model ({len(folders)}), got {list(weights)}")
    total = sum(weights)
    shares = [w / total for w in weights]
    out = Path(out)
    if any(out.resolve() == f.resolve() for f in folders):
        raise PaDTError(f"{out} is one of the models being averaged; write the average to another folder")
    for folder in folders:
        if not folder.is_dir():
            raise PaDTError(f"model folder not found: {folder}; train that stage first or fix the path")
        if problem := weights_problem(folder):
            raise PaDTError(f"{folder}: {problem}; retrain or restore that model")
    first = _architecture(folders[0])
    for folder in folders[1:]:
        if _architecture(folder) != first:
            raise PaDTError(
                f"{folder} and {folders[0]} are different architectures (config.json differs); only models "
                "of one architecture can be averaged"
            )

    sums: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    for number, (folder, share) in enumerate(zip(folders, shares)):
        seen: set[str] = set()
        for file in weight_files(folder):
            with safe_open(file, framework="pt") as f:
                names = list(f.keys())  # a safetensors file is not iterable
                for key in names:
                    value = f.get_tensor(key)
                    seen.add(key)
                    if number == 0:
                        sums[key] = value.float() * share
                        dtypes[key] = value.dtype
                    elif key not in sums or sums[key].shape != value.shape:
                        raise PaDTError(
                            f"{folder}: weight {key!r} is not in {folders[0]} with the same shape; only models "
                            "of one architecture can be averaged"
                        )
                    else:
                        sums[key] += value.float() * share
        if missing := sorted(set(sums) - seen):
            raise PaDTError(f"{folder} lacks weights of {folders[0]} ({', '.join(missing[:3])}, ...)")

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weight_names = {f.name for f in weight_files(folders[0])} | {"model.safetensors.index.json"}
    for item in folders[0].iterdir():
        if item.is_file() and item.name not in weight_names and item.name not in RUN_FILES:
            shutil.copy2(item, tmp / item.name)
    # Saved in the first model's layout: one file, or its shards under its index.
    for file in weight_files(folders[0]):
        with safe_open(file, framework="pt") as f:
            keys = list(f.keys())
            metadata = f.metadata()
        tensors = {key: sums[key].to(dtypes[key]).contiguous() for key in keys}
        save_file(tensors, tmp / file.name, metadata=metadata or {"format": "pt"})
    index = folders[0] / "model.safetensors.index.json"
    if index.is_file():
        shutil.copy2(index, tmp / index.name)
    # Moved in only once complete; other files already in ``out`` (a recipe's stage file) stay.
    out.mkdir(parents=True, exist_ok=True)
    for name in weight_names:
        (out / name).unlink(missing_ok=True)
    for item in tmp.iterdir():
        os.replace(item, out / item.name)
    tmp.rmdir()
    return out


def run_average_stage(config: AverageStageConfig) -> Path:
    """Run a recipe's averaging stage: average its models into ``training.output_dir`` and write
    ``train_summary.json`` (which models, with which weights)."""
    started = time.time()
    out = Path(config.training.output_dir)
    models = config.average.models
    weights = config.average.weights or [1.0] * len(models)
    print(f"padt train: averaging {len(models)} models ({', '.join(models)}) -> {out}", flush=True)
    average_checkpoints(models, out, weights)
    total = sum(weights)
    summary = {
        "kind": "average",
        "models": list(models),
        "weights": [round(w / total, 6) for w in weights],
        "seconds": round(time.time() - started, 1),
    }
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    return out
