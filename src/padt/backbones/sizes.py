"""The published sizes of the base models, as PaDT configs (for benchmarks and memory estimates: the
architecture at full size with random or meta weights, no download).

Dimensions are those of each instruct model's ``config.json``; token ids default to the real tokenizers' (pass
``special_token_ids`` to pair a size with another tokenizer, e.g. the tiny one in a benchmark).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: name -> (base, text dims, vision dims)
SIZES: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "qwen2.5-vl-3b": (
        "qwen2_5_vl",
        dict(
            hidden_size=2048,
            intermediate_size=11008,
            num_hidden_layers=36,
            num_attention_heads=16,
            num_key_value_heads=2,
            vocab_size=151936,
            tie_word_embeddings=True,
        ),
        dict(
            depth=32,
            hidden_size=1280,
            intermediate_size=3420,
            num_heads=16,
            fullatt_block_indexes=[7, 15, 23, 31],
            window_size=112,
        ),
    ),
    "qwen2.5-vl-7b": (
        "qwen2_5_vl",
        dict(
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            vocab_size=152064,
            tie_word_embeddings=False,
        ),
        dict(
            depth=32,
            hidden_size=1280,
            intermediate_size=3420,
            num_heads=16,
            fullatt_block_indexes=[7, 15, 23, 31],
            window_size=112,
        ),
    ),
    "qwen3-vl-2b": (
        "qwen3_vl",
        dict(
            hidden_size=2048,
            intermediate_size=6144,
            num_hidden_layers=28,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=128,
            vocab_size=151936,
            tie_word_embeddings=True,
        ),
        dict(
            depth=24,
            hidden_size=1024,
            intermediate_size=4096,
            num_heads=16,
            deepstack_visual_indexes=[5, 11, 17],
        ),
    ),
    "qwen3-vl-4b": (
        "qwen3_vl",
        dict(
            hidden_size=2560,
            intermediate_size=9728,
            num_hidden_layers=36,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
            vocab_size=151936,
            tie_word_embeddings=True,
        ),
        dict(
            depth=24,
            hidden_size=1024,
            intermediate_size=4096,
            num_heads=16,
            deepstack_visual_indexes=[5, 11, 17],
        ),
    ),
    "qwen3-vl-8b": (
        "qwen3_vl",
        dict(
            hidden_size=4096,
            intermediate_size=12288,
            num_hidden_layers=36,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
            vocab_size=151936,
            tie_word_embeddings=False,
        ),
        dict(
            depth=27,
            hidden_size=1152,
            intermediate_size=4304,
            num_heads=16,
            deepstack_visual_indexes=[8, 16, 24],
        ),
    ),
}
_ROPE = {
    "qwen2_5_vl": {"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1000000.0},
    "qwen3_vl": {
        "rope_type": "default",
        "mrope_section": [24, 20, 20],
        "mrope_interleaved": True,
        "rope_theta": 5000000.0,
    },
}
#: The real tokenizers' ids of the special tokens the configs name.
QWEN_TOKEN_IDS = {
    "<|endoftext|>": 151643,
    "<|im_end|>": 151645,
    "<|vision_start|>": 151652,
    "<|vision_end|>": 151653,
    "<|image_pad|>": 151655,
    "<|video_pad|>": 151656,
}


def padt_config(name: str, special_token_ids: Mapping[str, int] | None = None) -> Any:
    """The PaDT config of a published size (``qwen2.5-vl-3b``, ``qwen3-vl-4b``, ...)."""
    from padt.errors import PaDTError
    from padt.modeling import padt_class_for

    if name not in SIZES:
        raise PaDTError(f"unknown model size {name!r}; choose one of {', '.join(SIZES)}")
    base, text, vision = SIZES[name]
    ids = dict(QWEN_TOKEN_IDS) | dict(special_token_ids or {})
    text = text | {
        "rope_parameters": dict(_ROPE[base]),
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    vision = vision | {"out_hidden_size": text["hidden_size"]}
    config = padt_class_for(base).config_class(
        text_config=text,
        vision_config=vision,
        tie_word_embeddings=text["tie_word_embeddings"],
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    config._attn_implementation = "sdpa"
    return config
