"""PaDT: Patch-as-Decodable-Token (visual reference tokens) for Qwen2.5-VL on current transformers.

from padt import PaDT, PaDTForConditionalGeneration, PaDTProcessor, predict
"""

from padt.errors import PaDTError

__version__ = "0.1.0"

_LAZY = {
    "PaDTForConditionalGeneration": "padt.modeling",
    "PaDTVisionOutput": "padt.modeling",
    "PaDTConfig": "padt.config",
    "PaDTProcessor": "padt.processing",
    "PaDT": "padt.inference",
    "Prediction": "padt.inference",
    "predict": "padt.inference",
    "VRTLayout": "padt.vrt",
    "get_backbone": "padt.backbones",
    "get_task": "padt.tasks",
    "TinyModelSpec": "padt.tiny",
    "tiny_model": "padt.tiny",
}

__all__ = ["PaDTError", "__version__", *_LAZY]


def __getattr__(name: str):
    # Heavy modules (torch, transformers) load on first use, so `padt --help` stays fast.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'padt' has no attribute {name!r}")
