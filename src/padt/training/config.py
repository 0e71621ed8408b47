"""``padt train`` configuration: one YAML file, every key overridable from the command line.

A config has six sections (all optional except ``data`` and ``training.output_dir``)::

    model:       {path: PATH, init_padt_modules: false, dtype: fp32|bf16|fp16}    # a checkpoint, or
                 {tiny: {hidden_size: 128, ...}}                                  # a fresh tiny model
    processor:   {min_pixels: 3136, max_pixels: 12845056}
    data:        {train: [{records: FILE, image_root: DIR}, ...]}                 # record files, and/or
                 {synthetic: {task: all, n: 4000, seed: 1, max_size: 224}}         # generated on first use
    padt:        {vrts_per_object: 5, random_select: true, robust_loss: true, answer_format: vrt,
                  warmup_steps: 300, patches: record, loss_weights: {loss_token: 1, ...}}
    components:  {vision: train, llm: train, decoder: train}                      # train | freeze | lora
    lora:        {r: 16, alpha: 32, dropout: 0.05}
    training:    {output_dir: runs/x, ...}     # any transformers TrainingArguments field
    generation:  {vrt_repeat_penalty: 2.0, ...}    # written into the final model's generation_config
    seed: 42
    resume: auto                               # auto | true | false

Overrides are ``dotted.key=value`` pairs with YAML values: ``training.max_steps=100 padt.robust_loss=false``.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from padt.errors import PaDTError

SECTIONS = (
    "model",
    "processor",
    "data",
    "padt",
    "components",
    "lora",
    "training",
    "generation",
    "seed",
    "resume",
)
COMPONENTS = ("vision", "llm", "decoder")
COMPONENT_MODES = ("train", "freeze", "lora")

DEFAULTS: dict[str, Any] = {
    "model": {"dtype": "fp32", "init_padt_modules": False},
    "processor": {},
    "data": {},
    "padt": {
        "vrts_per_object": 5,
        "random_select": True,
        "robust_loss": True,
        "answer_format": "vrt",
        "warmup_steps": 300,
        "patches": "record",
        "strict_patches": False,
        "loss_weights": {},
    },
    "components": dict.fromkeys(COMPONENTS, "train"),
    "lora": {"r": 16, "alpha": 32, "dropout": 0.05},
    "training": {},
    "generation": {},
    "seed": 42,
    "resume": "auto",
}


_SCIENTIFIC = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def _numbers(value: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; read such strings as floats."""
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    if isinstance(value, str) and _SCIENTIFIC.match(value.strip()):
        return float(value)
    return value


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=3"`` -> ``(["a", "b"], 3)``; the value is parsed as YAML."""
    key, sep, value = text.partition("=")
    key = key.strip().lstrip("-")
    if not sep or not key:
        raise PaDTError(
            f"cannot read override {text!r}; write it as section.key=value, e.g. training.max_steps=100"
        )
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return key.split("."), parsed


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The config at ``path`` (or the defaults), with defaults filled in and ``overrides`` applied."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise PaDTError(f"config file not found: {path}; pass --config FILE.yaml (see configs/)")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise PaDTError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
        if not isinstance(raw, dict):
            raise PaDTError(f"{path}: the config must be a YAML mapping of sections {', '.join(SECTIONS)}")
    config = _merge(DEFAULTS, raw)
    for item in overrides:
        keys, value = parse_override(item)
        node = config
        for k in keys[:-1]:
            if not isinstance(node.setdefault(k, {}), dict):
                raise PaDTError(f"override {item!r}: {k!r} is not a section")
            node = node[k]
        node[keys[-1]] = value
    config = _numbers(config)
    validate_config(config, where=str(path) if path else "config")
    return config


def validate_config(config: Mapping[str, Any], where: str = "config") -> None:
    """Raise a one-line :class:`PaDTError` for the first problem found."""
    unknown = sorted(set(config) - set(SECTIONS))
    if unknown:
        raise PaDTError(f"{where}: unknown section(s) {unknown}; known: {', '.join(SECTIONS)}")
    model = config["model"]
    if bool(model.get("path")) == bool(model.get("tiny") is not None):
        raise PaDTError(
            f"{where}: model needs exactly one of model.path (a checkpoint) or model.tiny (a fresh tiny model)"
        )
    if model.get("dtype") not in ("fp32", "bf16", "fp16"):
        raise PaDTError(f"{where}: model.dtype must be fp32, bf16 or fp16, got {model.get('dtype')!r}")
    data = config["data"]
    if not data.get("train") and not data.get("synthetic"):
        raise PaDTError(f"{where}: no training data; set data.train (record files) or data.synthetic")
    for i, item in enumerate(data.get("train") or []):
        if not isinstance(item, Mapping) or "records" not in item:
            raise PaDTError(f"{where}: data.train[{i}] must be a mapping with 'records' (and 'image_root')")
    padt = config["padt"]
    if padt["answer_format"] not in ("vrt", "text"):
        raise PaDTError(f"{where}: padt.answer_format must be vrt or text, got {padt['answer_format']!r}")
    if padt["patches"] not in ("record", "recompute"):
        raise PaDTError(f"{where}: padt.patches must be record or recompute, got {padt['patches']!r}")
    for name, mode in config["components"].items():
        if name not in COMPONENTS:
            raise PaDTError(f"{where}: unknown component {name!r}; known: {', '.join(COMPONENTS)}")
        if mode not in COMPONENT_MODES:
            raise PaDTError(f"{where}: components.{name} must be train, freeze or lora, got {mode!r}")
    if all(mode == "freeze" for mode in config["components"].values()):
        raise PaDTError(
            f"{where}: every component is frozen; set at least one of components.* to train or lora"
        )
    if not isinstance(config["generation"], Mapping):
        raise PaDTError(
            f"{where}: generation must be a mapping of generation_config fields, e.g. vrt_repeat_penalty: 2.0"
        )
    if not config["training"].get("output_dir"):
        raise PaDTError(f"{where}: set training.output_dir (where checkpoints and the final model go)")
    if config["resume"] not in ("auto", True, False):
        raise PaDTError(f"{where}: resume must be auto, true or false, got {config['resume']!r}")
