"""Base models PaDT runs on, one adapter each (:class:`~padt.backbones.base.Backbone`).

Adding a base means writing ``padt/backbones/<name>.py`` (a :class:`Backbone` subclass) and listing it in
:data:`BACKBONE_MODULES`; PaDT's model, processor, data, training and evaluation code ask the adapter.
"""

from __future__ import annotations

import importlib
from functools import cache

from padt.backbones.base import Backbone, PatchGeometry, VisionFeatures
from padt.errors import PaDTError

#: name (= the base config's ``model_type``) -> ``module:class`` of its adapter.
BACKBONE_MODULES: dict[str, str] = {
    "qwen2_5_vl": "padt.backbones.qwen2_5_vl:Qwen2_5_VLBackbone",
    "qwen3_vl": "padt.backbones.qwen3_vl:Qwen3VLBackbone",
}
DEFAULT_BACKBONE = "qwen2_5_vl"


@cache
def get_backbone(name: str = DEFAULT_BACKBONE) -> Backbone:
    """The adapter of a base model, by name or ``model_type`` (``qwen2_5_vl``, ...)."""
    if name not in BACKBONE_MODULES:
        raise PaDTError(f"unknown base model {name!r}; padt supports {', '.join(BACKBONE_MODULES)}")
    module, cls = BACKBONE_MODULES[name].split(":")
    return getattr(importlib.import_module(module), cls)()


def backbone_of(config: object) -> Backbone:
    """The adapter of a model config (by its ``model_type``)."""
    return get_backbone(str(getattr(config, "model_type", DEFAULT_BACKBONE)))


def default_geometry() -> PatchGeometry:
    """The patch geometry of the default base (Qwen2.5-VL, the published checkpoints' base)."""
    return get_backbone(DEFAULT_BACKBONE).geometry


__all__ = [
    "BACKBONE_MODULES",
    "DEFAULT_BACKBONE",
    "Backbone",
    "PatchGeometry",
    "VisionFeatures",
    "backbone_of",
    "default_geometry",
    "get_backbone",
]
