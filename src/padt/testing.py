"""Deprecated name of :mod:`padt.tiny` (the tiny-model factory moved there); kept so old imports work."""

from padt.backbones.base import QWEN_SPECIAL_TOKENS
from padt.tiny import TINY_VOCAB_SIZE, TinyModelSpec, tiny_config, tiny_model, tiny_processor, tiny_tokenizer

__all__ = [
    "QWEN_SPECIAL_TOKENS",
    "TINY_VOCAB_SIZE",
    "TinyModelSpec",
    "tiny_config",
    "tiny_model",
    "tiny_processor",
    "tiny_tokenizer",
]
