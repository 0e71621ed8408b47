"""A training recipe in stages, run by one command: ``padt train --config RECIPE.yaml``.

A stage-list config has a root ``output_dir``, sections shared by every stage (usually ``model``,
``processor``, ``seed``), and ``stages``: a mapping from stage name to that stage's sections, run in the order
written::

    output_dir: runs/bundled
    model: {tiny: {...}}
    stages:
      vision:                       # vision pretraining (padt.training.vision_pretrain)
        kind: vision
        data: {synthetic: {n: 4000, seed: 11}}
        training: {max_steps: 1500, ...}
      padt:                         # PaDT training (padt.training.trainer), from the vision stage's tower
        kind: padt
        model: {vision_from: vision}
        data: {...}
        training: {...}

Each stage's sections are merged over the shared ones; its ``training.output_dir`` defaults to
``OUTPUT_DIR/NAME``. ``model.vision_from`` (start from that stage's vision tower) and ``model.path`` (continue
from that stage's model; the shared ``model.tiny`` then does not apply) may name an earlier stage (its output
folder) or a folder, and so may ``data.synthetic.out`` (that stage's generated dataset, ``NAME/data``, read
again rather than generated twice; give the same spec). The resolved config of each stage is written to
``NAME/stage_config.yaml`` before it runs (for a PaDT stage, a plain ``padt train`` config).

Rerunning the command resumes where it stopped: a finished stage (``train_summary.json`` written, same
resolved config) is skipped with a message, an unfinished one resumes from its last checkpoint, and a stage
whose folder was trained with another config is refused (``--no-resume`` starts every stage afresh; an option
a later padt added, at its default, is not a difference). The wall
time of each stage, summed over reruns, goes to ``OUTPUT_DIR/stages.json``.

Overrides: ``stages.NAME.section.key=value`` sets one stage's key; ``section.key=value`` sets it in every
stage (``training.max_steps=10`` shortens them all); ``output_dir=...`` (or ``--output-dir``) moves the
recipe.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from padt.errors import PaDTError
from padt.training.config import (
    AverageStageConfig,
    GrowStageConfig,
    TrainConfig,
    VisionStageConfig,
    _merge,
    parse_override,
    set_override,
    validate_config,
)

KINDS = {
    "vision": "vision pretraining",
    "padt": "PaDT training",
    "average": "weight averaging",
    "grow": "growing the model",
}
SCHEMAS = {
    "vision": VisionStageConfig,
    "padt": TrainConfig,
    "average": AverageStageConfig,
    "grow": GrowStageConfig,
}
#: stages that train nothing: they take none of the recipe's shared sections.
_NOT_TRAINING = ("average", "grow")
STAGE_CONFIG = "stage_config.yaml"
SUMMARY = "train_summary.json"
#: what a training run writes about itself beside its model: not copied into a model made from it.
RUN_FILES = (SUMMARY, STAGE_CONFIG, "training_args.bin")
TIMES = "stages.json"


def is_stage_list(path: str | os.PathLike) -> bool:
    """Whether the YAML file at ``path`` is a stage-list config (it has a ``stages`` mapping)."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return False  # load_config reports the problem
    return isinstance(raw, dict) and "stages" in raw


def resolve_stages(
    path: str | os.PathLike, overrides: Sequence[str] = ()
) -> tuple[Path, list[tuple[str, str, Any]]]:
    """``(output_dir, [(name, kind, config), ...])``: the recipe's folder and every stage's resolved, checked
    config (a :class:`~padt.training.config.VisionStageConfig` or :class:`~padt.training.config.TrainConfig`),
    in order. Every stage is checked before any runs."""
    path = Path(path)
    if not path.is_file():
        raise PaDTError(f"config file not found: {path}; pass --config FILE.yaml (see configs/)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise PaDTError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    stages = raw.get("stages")
    if not isinstance(stages, dict) or not stages:
        raise PaDTError(f"{path}: stages must be a non-empty mapping of stage name to its sections")
    shared = {k: v for k, v in raw.items() if k not in ("stages", "output_dir")}
    root = raw.get("output_dir")
    per_stage: dict[str, list[tuple[list[str], Any, str]]] = {name: [] for name in stages}
    everywhere: list[tuple[list[str], Any, str]] = []
    for item in overrides:
        keys, value = parse_override(item)
        if keys == ["output_dir"] or keys == ["training", "output_dir"]:
            root = value
        elif keys[0] == "stages":
            if len(keys) < 3 or keys[1] not in stages:
                raise PaDTError(
                    f"override {item!r}: write stages.NAME.section.key=value with NAME one of "
                    f"{', '.join(stages)}"
                )
            per_stage[keys[1]].append((keys[2:], value, item))
        else:
            everywhere.append((keys, value, item))
    if not root:
        raise PaDTError(f"{path}: set output_dir (each stage writes to OUTPUT_DIR/NAME)")
    resolved = []
    outputs: dict[str, str] = {}
    for name, stage in stages.items():
        if not isinstance(stage, dict):
            raise PaDTError(f"{path}: stages.{name} must be a mapping of sections")
        stage = copy.deepcopy(stage)
        kind = stage.pop("kind", "padt")
        if kind not in KINDS:
            raise PaDTError(f"{path}: stages.{name}.kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if kind in _NOT_TRAINING:
            # It trains nothing: the shared sections and the overrides of every stage are not its own, except
            # the resume setting.
            config = stage
            for keys, value, item in [o for o in everywhere if o[0] == ["resume"]] + per_stage[name]:
                set_override(config, keys, value, item)
        else:
            config = _merge(shared, stage)
            for keys, value, item in everywhere + per_stage[name]:
                set_override(config, keys, value, item)
        config.setdefault("training", {})
        if not config["training"].get("output_dir"):
            config["training"]["output_dir"] = os.fspath(Path(root) / name)
        at = f"{path}: stages.{name}."  # an earlier stage's name stands for its output folder
        model = config.get("model") or {}
        for key in ("vision_from", "path"):
            if key in model:
                model[key] = _stage_output(model[key], stages, outputs, f"{at}model.{key}")
        average = config.get("average")
        if kind == "average" and isinstance(average, dict) and isinstance(average.get("models"), list):
            average["models"] = [
                _stage_output(source, stages, outputs, f"{at}average.models") for source in average["models"]
            ]
        grow = config.get("grow")
        if kind == "grow" and isinstance(grow, dict) and "model" in grow:
            grow["model"] = _stage_output(grow["model"], stages, outputs, f"{at}grow.model")
        synthetic = (config.get("data") or {}).get("synthetic")
        for spec in synthetic if isinstance(synthetic, list) else [synthetic]:
            if isinstance(spec, dict) and "out" in spec:  # the dataset that stage generated
                spec["out"] = _stage_output(spec["out"], stages, outputs, f"{at}data.synthetic.out", "data")
        if (
            (config.get("model") or {}).get("path")
            and "tiny" in config["model"]
            and "tiny" not in stage.get("model", {})
        ):
            del config["model"]["tiny"]  # a stage that continues a checkpoint does not build a fresh model
        outputs[name] = config["training"]["output_dir"]
        resolved.append((name, kind, validate_config(config, f"{path}: stages.{name}", SCHEMAS[kind])))
    return Path(root), resolved


def _stage_output(
    source: Any, stages: dict[str, Any], outputs: dict[str, str], where: str, below: str = ""
) -> Any:
    """``source`` with an earlier stage's name replaced by that stage's output folder (or ``below`` it); the name
    of a stage that runs later is refused, anything else is returned as it is."""
    if not isinstance(source, str) or source not in stages:
        return source
    if source not in outputs:
        raise PaDTError(f"{where} names stage {source!r}, which runs later")
    return os.fspath(Path(outputs[source]) / below) if below else outputs[source]


def _run_stage(kind: str, config: Any) -> None:
    if kind == "average":
        from padt.training.average import run_average_stage

        run_average_stage(config)
        return
    if kind == "grow":
        from padt.training.grow import run_grow_stage

        run_grow_stage(config)
        return
    if kind == "vision":
        from padt.training.vision_pretrain import pretrain_vision

        pretrain_vision(config)
        return
    from padt.training.trainer import train

    train(config)


def run_stages(
    path: str | os.PathLike, overrides: Sequence[str] = (), *, print_config: bool = False
) -> list[Path]:
    """Run (or resume) every stage of the stage-list config at ``path``; returns their output folders."""
    root, stages = resolve_stages(path, overrides)
    if print_config:
        print(
            yaml.safe_dump(
                {name: {"kind": kind, **_plain(config)} for name, kind, config in stages}, sort_keys=False
            )
        )
        return []
    from accelerate import PartialState

    main = PartialState().is_main_process
    folders = []
    for number, (name, kind, config) in enumerate(stages, 1):
        out = Path(config.training.output_dir)
        folders.append(out)
        stage_file = out / STAGE_CONFIG
        # A PaDT stage's file is a plain padt train config; another kind's says what it is. The resume
        # setting is not part of what was trained.
        settings = {k: v for k, v in _plain(config).items() if k != "resume"}
        text = yaml.safe_dump({"kind": kind, **settings} if kind != "padt" else settings, sort_keys=False)
        fresh = config.resume is False
        previous = stage_file.read_text() if stage_file.is_file() else None
        label = f"padt train: stage {number}/{len(stages)} {name!r} ({KINDS[kind]})"
        if previous is not None and not fresh and not _same_settings(previous, text, kind, stage_file):
            if not _same_settings(previous, text, kind, stage_file, ignore=("generation",)):
                raise PaDTError(
                    f"stage {name!r}: {out} was trained with another config ({stage_file}); use another "
                    "output_dir, or --no-resume to retrain every stage"
                )
            # Only the decoding settings changed: they are not training, so the stage keeps its weights and
            # its model takes the new settings.
            if main:
                if (out / SUMMARY).is_file():
                    _set_generation(out, _generation_of(previous), config.generation)
                stage_file.write_text(text)
                print(f"{label}: generation settings changed; written into {out}/generation_config.json")
        if (out / SUMMARY).is_file() and not fresh:
            if main:
                print(f"{label}: finished earlier in {out}; skipped")
            continue
        if main:
            print(f"{label} -> {out}")
            out.mkdir(parents=True, exist_ok=True)
            (out / SUMMARY).unlink(missing_ok=True)
            stage_file.write_text(text)
        PartialState().wait_for_everyone()
        started = time.time()
        _run_stage(kind, config)
        if main:
            _add_time(root, name, time.time() - started, config)
    return folders


def _plain(config: Any) -> dict[str, Any]:
    return config.model_dump(mode="json", exclude_none=True)


def _same_settings(previous: str, current: str, kind: str, where: Path, ignore: Sequence[str] = ()) -> bool:
    """Whether a stage file written earlier describes the same training as ``current``: the same text, or the
    same settings once each is read back and the values at their defaults are dropped, so that an option added
    by a later padt (at its default) does not make a finished stage look different. Sections in ``ignore``
    are left out of the comparison."""
    if previous == current:
        return True

    def settings(text: str) -> dict[str, Any] | None:
        data = yaml.safe_load(text)
        if not isinstance(data, dict):
            return None
        data.pop("kind", None)
        try:
            config = validate_config(data, os.fspath(where), SCHEMAS[kind])
        except PaDTError:  # e.g. an option a later padt removed
            return None
        return config.model_dump(mode="json", exclude_none=True, exclude_defaults=True, exclude=set(ignore))

    before = settings(previous)
    return before is not None and before == settings(current)


def _generation_of(text: str) -> dict[str, Any]:
    data = yaml.safe_load(text)
    return dict(data.get("generation") or {}) if isinstance(data, dict) else {}


def _set_generation(out: Path, before: dict[str, Any], after: dict[str, Any]) -> None:
    """Rewrite the ``generation`` settings of the finished model in ``out``: those no longer set are removed,
    the others take their new values."""
    from transformers import GenerationConfig

    from padt.training.trainer import set_generation

    generation = GenerationConfig.from_pretrained(out)
    set_generation(generation, after, removed=set(before) - set(after))
    generation.save_pretrained(out)


def _add_time(root: Path, name: str, seconds: float, config: Any) -> None:
    """Add this run's wall time of stage ``name`` to ``ROOT/stages.json``."""
    root.mkdir(parents=True, exist_ok=True)
    file = root / TIMES
    times = json.loads(file.read_text()) if file.is_file() else {}
    entry = times.get(name, {"seconds": 0.0, "runs": 0})
    entry = {
        "seconds": round(entry["seconds"] + seconds, 1),
        "runs": entry["runs"] + 1,
        "output_dir": os.fspath(config.training.output_dir),
    }
    times[name] = entry
    file.write_text(json.dumps(times, indent=2) + "\n")
