"""Growing a trained model's language model (and its vision tower's MLPs) without changing what it computes.

A model trained at one size can go on training at a larger one from where it is, instead of from scratch
(Net2Net, Chen et al., 2016): its language model is given wider MLPs and more layers such that the grown model
computes exactly what the trained one did, and training then uses the new room. In a recipe it is a stage of
its own::

    grow:
      kind: grow
      grow: {model: final, intermediate_size: 768, insert_after: [1, 3]}

- ``intermediate_size``: every layer's MLP gets the extra hidden units; their input weights are drawn from
  N(0, std²) (``init_std``, unset: the model's ``initializer_range``) and their output weights are zero, so
  they add nothing until training moves them.
- ``insert_after``: after each of these layers (indices of the trained model's layers) a new layer is
  inserted whose attention output and MLP output projections are zero: on the residual stream it is the
  identity, and it learns from the first step (the gradients of those projections are not zero).
- ``vision_intermediate_size``: every vision-tower block's MLP gets extra hidden units, as above.

The grown folder is a plain ``from_pretrained`` checkpoint in the model's dtype, with the trained model's
generation settings, tokenizer and processor.
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
from torch import nn

from padt.errors import PaDTError
from padt.modeling import weight_files, weights_problem
from padt.training.stages import RUN_FILES, SUMMARY

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

    from padt.training.config import GrowStageConfig

#: bases whose decoder layers this module knows (attention and SwiGLU MLP, pre-norm, no per-layer state
#: beyond ``layer_idx``).
_BASES = ("qwen2_5_vl",)


def _widen(linear: nn.Linear, extra: int, dim: int, std: float, generator: torch.Generator) -> nn.Linear:
    """``linear`` with ``extra`` more outputs (``dim=0``, new rows ~ N(0, std²)) or inputs (``dim=1``, new
    columns zero)."""
    weight = linear.weight.data
    if dim == 0:
        new = torch.randn(extra, weight.shape[1], generator=generator, dtype=torch.float32) * std
    else:
        new = torch.zeros(weight.shape[0], extra, dtype=torch.float32)
    grown = nn.Linear(
        weight.shape[1] + (extra if dim == 1 else 0),
        weight.shape[0] + (extra if dim == 0 else 0),
        bias=linear.bias is not None,
        dtype=weight.dtype,
    )
    grown.weight.data = torch.cat([weight, new.to(weight.dtype)], dim=dim)
    if linear.bias is not None:
        bias = linear.bias.data
        grown.bias.data = (
            torch.cat([bias, torch.zeros(extra, dtype=bias.dtype)]) if dim == 0 else bias.clone()
        )
    return grown


def _widen_mlp(mlp: nn.Module, size: int, std: float, generator: torch.Generator) -> None:
    """Give a SwiGLU MLP ``size`` hidden units: the new ones read the input through weights ~ N(0, std²) and
    write nothing (their output weights are zero)."""
    extra = size - mlp.down_proj.in_features
    mlp.gate_proj = _widen(mlp.gate_proj, extra, 0, std, generator)
    mlp.up_proj = _widen(mlp.up_proj, extra, 0, std, generator)
    mlp.down_proj = _widen(mlp.down_proj, extra, 1, std, generator)
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = size


def _identity_layer(
    like: nn.Module, text_config: PretrainedConfig, index: int, std: float, generator: torch.Generator
) -> nn.Module:
    """A new decoder layer of ``like``'s class whose output projections are zero (the identity on the
    residual stream); norms at one, biases at zero, the other weights ~ N(0, std²)."""
    layer = type(like)(text_config, index).to(next(like.parameters()).dtype)
    for name, parameter in layer.named_parameters():
        if name.endswith(("self_attn.o_proj.weight", "mlp.down_proj.weight")) or name.endswith("bias"):
            parameter.data.zero_()
        elif "norm" in name:
            parameter.data.fill_(1.0)
        else:
            draw = torch.randn(parameter.shape, generator=generator, dtype=torch.float32) * std
            parameter.data.copy_(draw.to(parameter.dtype))
    return layer


def grow_model(
    model: PreTrainedModel,
    intermediate_size: int | None = None,
    insert_after: Sequence[int] = (),
    *,
    vision_intermediate_size: int | None = None,
    init_std: float | None = None,
    seed: int = 0,
) -> PreTrainedModel:
    """Grow ``model``'s language model in place (see the module's docstring); returns ``model``."""
    config = model.config
    text = config.text_config
    if config.model_type not in _BASES:
        raise PaDTError(
            f"growing a {config.model_type!r} model is not supported (supported: {', '.join(_BASES)})"
        )
    layers = model.model.language_model.layers
    count = len(layers)
    bad = sorted({i for i in insert_after if not 0 <= i < count})
    if bad:
        raise PaDTError(f"grow.insert_after {bad} names no layer: the model has layers 0..{count - 1}")
    if len(set(insert_after)) != len(insert_after):
        raise PaDTError(f"grow.insert_after {list(insert_after)} names a layer twice; name each once")
    vision = config.vision_config
    for key, size, now in (
        ("intermediate_size", intermediate_size, text.intermediate_size),
        ("vision_intermediate_size", vision_intermediate_size, vision.intermediate_size),
    ):
        if size is not None and size < now:
            raise PaDTError(
                f"grow.{key} {size} is below the model's {now}; a grown model keeps every unit it has"
            )
    std = text.initializer_range if init_std is None else init_std
    generator = torch.Generator().manual_seed(seed)
    if intermediate_size is not None and intermediate_size > text.intermediate_size:
        for layer in layers:
            _widen_mlp(layer.mlp, intermediate_size, std, generator)
        text.intermediate_size = intermediate_size
    if vision_intermediate_size is not None and vision_intermediate_size > vision.intermediate_size:
        for block in model.model.visual.blocks:
            _widen_mlp(block.mlp, vision_intermediate_size, std, generator)
        vision.intermediate_size = vision_intermediate_size
    if getattr(text, "layer_types", None) is not None:  # set first: a new layer reads its own kind
        kinds = list(text.layer_types)
        for i in sorted(insert_after, reverse=True):
            kinds.insert(i + 1, kinds[i])
        text.layer_types = kinds
    grown: list[nn.Module] = []
    for i, layer in enumerate(layers):
        grown.append(layer)
        if i in insert_after:
            grown.append(_identity_layer(layer, text, len(grown), std, generator))
    for index, layer in enumerate(grown):  # the KV cache is indexed by layer
        layer.self_attn.layer_idx = index
    model.model.language_model.layers = nn.ModuleList(grown)
    text.num_hidden_layers = len(grown)
    return model


def grow_checkpoint(
    model: str | os.PathLike,
    out: str | os.PathLike,
    intermediate_size: int | None = None,
    insert_after: Sequence[int] = (),
    *,
    vision_intermediate_size: int | None = None,
    init_std: float | None = None,
    seed: int = 0,
) -> Path:
    """Write to ``out`` the checkpoint at ``model`` grown (:func:`grow_model`); returns ``out``."""
    from padt.modeling import PaDTForConditionalGeneration

    source, out = Path(model), Path(out)
    if not source.is_dir():
        raise PaDTError(f"model folder not found: {source}; train that stage first or fix the path")
    if problem := weights_problem(source):
        raise PaDTError(f"{source}: {problem}; retrain or restore that model")
    if out.resolve() == source.resolve():
        raise PaDTError(f"{out} is the model being grown; write the grown model to another folder")
    dtype = json.loads((source / "config.json").read_text()).get("dtype")
    loaded = PaDTForConditionalGeneration.from_pretrained(source, dtype=dtype or torch.float32)
    grow_model(
        loaded,
        intermediate_size,
        insert_after,
        vision_intermediate_size=vision_intermediate_size,
        init_std=init_std,
        seed=seed,
    )
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    loaded.save_pretrained(tmp)
    weights = {f.name for f in weight_files(source)} | {"model.safetensors.index.json", "config.json"}
    for item in source.iterdir():  # generation settings as trained, tokenizer, processor
        if item.is_file() and item.name not in weights and item.name not in RUN_FILES:
            shutil.copy2(item, tmp / item.name)
    out.mkdir(parents=True, exist_ok=True)
    for item in tmp.iterdir():
        os.replace(item, out / item.name)
    tmp.rmdir()
    return out


def run_grow_stage(config: GrowStageConfig) -> Path:
    """Run a recipe's grow stage: grow its model into ``training.output_dir`` and write
    ``train_summary.json`` (from what, to what)."""
    started = time.time()
    out = Path(config.training.output_dir)
    grow = config.grow
    print(f"padt train: growing {grow.model} -> {out}", flush=True)
    trained = json.loads((Path(grow.model) / "config.json").read_text())
    before, before_vision = trained.get("text_config", {}), trained.get("vision_config", {})
    grow_checkpoint(
        grow.model,
        out,
        grow.intermediate_size,
        grow.insert_after,
        vision_intermediate_size=grow.vision_intermediate_size,
        init_std=grow.init_std,
        seed=grow.seed,
    )
    grown = json.loads((out / "config.json").read_text())
    after = grown["text_config"]
    summary = {
        "kind": "grow",
        "model": grow.model,
        "num_hidden_layers": [before.get("num_hidden_layers"), after["num_hidden_layers"]],
        "intermediate_size": [before.get("intermediate_size"), after["intermediate_size"]],
        "vision_intermediate_size": [
            before_vision.get("intermediate_size"),
            grown["vision_config"]["intermediate_size"],
        ],
        "seconds": round(time.time() - started, 1),
    }
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    return out
