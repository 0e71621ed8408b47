"""Qwen2.5-VL as a PaDT base: 14-px patches, 2x2 merge (28-px VRT cells), windowed ViT attention.

The published PaDT checkpoints are Qwen2.5-VL-3B/7B. Their decoders were trained on the ViT's high-res features
and RoPE in *window* order (docs/method.md §2.4, §7.7), so :meth:`Qwen2_5_VLBackbone.encode_images` returns
them in that order unless asked for true raster order; the window permutation lives only here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLRMSNorm
from transformers.vision_utils import get_vision_position_ids, get_vision_window_index

from padt.backbones.base import Backbone, PatchGeometry, VisionFeatures, unit_order_to_raster
from padt.errors import PaDTError

GEOMETRY = PatchGeometry(patch_px=14, merge_size=2, temporal_patch_size=2)

#: Qwen2.5-VL's chat template (as saved with the reference checkpoints' processor, chat_template.json).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in "
    "messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful "
    "assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string "
    "%}{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}{% if "
    "content['type'] == 'image' or 'image' in content or 'image_url' in content %}{% set image_count.value = "
    "image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif "
    "%}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video' or 'video' in content "
    "%}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value "
    "}}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}{{ "
    "content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt "
    "%}<|im_start|>assistant\n{% endif %}"
)

#: Checkpoints saved by the reference (transformers 4.50) keep the vision tower at ``visual.*`` and the text
#: model at ``model.*``; transformers 5 nests both under ``model.`` (docs/method.md §11.1).
REFERENCE_KEY_MAPPING = {
    r"^visual": "model.visual",
    r"^model(?!\.(language_model|visual))": "model.language_model",
}


class _StillImageQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` without a video processor.

    PaDT only reads still images, and transformers' video processor needs torchvision. A processor whose
    ``__init__`` does not name ``video_processor`` simply has no such attribute, which transformers supports.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        # Saved files name the stock class so that any Qwen2.5-VL loader reads them.
        out = super().to_dict()
        out["processor_class"] = Qwen2_5_VLProcessor.__name__
        return out


def window_to_raster(
    window_index: torch.Tensor, image_grid_thw: torch.Tensor, merge_size: int = GEOMETRY.merge_size
) -> torch.Tensor:
    """Permutation ``perm`` with ``raster = window_ordered[perm]`` for the ViT's patch tokens: its last hidden
    state and RoPE come in window order, merge units permuted by ``window_index``."""
    return unit_order_to_raster(window_index, image_grid_thw, merge_size)


class Qwen2_5_VLBackbone(Backbone):
    name = "qwen2_5_vl"
    model_type = "qwen2_5_vl"
    geometry = GEOMETRY
    # The reference trained with these limits: native resolution rounded to 28 px (docs/method.md §2.2).
    min_pixels = 3136
    max_pixels = 12845056
    chat_template = CHAT_TEMPLATE
    text_coordinates = "pixels"
    component_prefixes: Mapping[str, tuple[str, ...]] = {
        "vision": ("model.visual.",),
        "llm": ("model.language_model.", "lm_head."),
    }
    component_modules: Mapping[str, tuple[str, ...]] = {
        "vision": ("visual",),
        "llm": ("language_model", "lm_head"),
    }
    reference_key_mapping = REFERENCE_KEY_MAPPING

    @property
    def config_class(self) -> type[Qwen2_5_VLConfig]:
        return Qwen2_5_VLConfig

    @property
    def model_class(self) -> type[Qwen2_5_VLForConditionalGeneration]:
        return Qwen2_5_VLForConditionalGeneration

    @property
    def decoder_norm(self) -> type[Qwen2_5_VLRMSNorm]:
        return Qwen2_5_VLRMSNorm

    def encode_images(
        self, model: Any, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor, *, raster: bool
    ) -> VisionFeatures:
        visual = model.model.visual
        merge = visual.spatial_merge_size
        grid = image_grid_thw.to(pixel_values.device)
        position_ids = get_vision_position_ids(grid, merge)
        window_index, cu_window_seqlens = get_vision_window_index(
            grid, spatial_merge_size=merge, window_size=visual.window_size, patch_size=visual.patch_size
        )
        out = visual(
            pixel_values.type(visual.dtype),
            grid_thw=grid,
            position_ids=position_ids,
            window_index=window_index,
            cu_window_seqlens=cu_window_seqlens,
        )
        # transformers 5 returns the merged features in raster order (pooler_output) and the last block's
        # output in window order; the ViT's RoPE is recomputed and permuted into the same window order.
        cos, sin = visual.rotary_pos_emb(out.last_hidden_state, position_ids)
        seq_len = out.last_hidden_state.shape[0]
        visual_pe = tuple(visual.permute_input_for_window_attn(t, window_index, seq_len) for t in (cos, sin))
        high_res = out.last_hidden_state
        if raster:
            perm = window_to_raster(window_index.to(grid.device), grid, merge)
            high_res, visual_pe = high_res[perm], tuple(t[perm] for t in visual_pe)
        return VisionFeatures(merged=out.pooler_output, high_res=high_res, visual_pe=visual_pe)

    def run_language_model(
        self,
        model: Any,
        *,
        input_ids: torch.Tensor,
        inputs_embeds: torch.Tensor,
        vision: Any,
        prefill: bool,
        **kwargs: Any,
    ) -> Any:
        encoder_outputs = None
        if prefill:
            sizes = (vision.image_grid_thw.prod(-1) // self.geometry.merge_size**2).tolist()
            encoder_outputs = {
                "image": BaseModelOutputWithPooling(
                    last_hidden_state=vision.high_res_image_embeds,
                    pooler_output=torch.split(vision.image_embeds, sizes),
                )
            }
        return model.model(
            input_ids=input_ids, inputs_embeds=inputs_embeds, mm_encoder_outputs=encoder_outputs, **kwargs
        )

    def build_processor(self, image_processor: Any, tokenizer: Any, chat_template: str | None = None) -> Any:
        template = chat_template or getattr(tokenizer, "chat_template", None) or CHAT_TEMPLATE
        return _StillImageQwen2_5_VLProcessor(
            image_processor=image_processor, tokenizer=tokenizer, chat_template=template
        )

    def image_processor(self, min_pixels: int | None = None, max_pixels: int | None = None) -> Any:
        from transformers import Qwen2VLImageProcessorPil

        g = self.geometry
        return Qwen2VLImageProcessorPil(
            min_pixels=min_pixels or self.min_pixels,
            max_pixels=max_pixels or self.max_pixels,
            patch_size=g.patch_px,
            temporal_patch_size=g.temporal_patch_size,
            merge_size=g.merge_size,
        )

    def tiny_config(
        self,
        special_token_ids: Mapping[str, int],
        *,
        vocab_size: int,
        hidden_size: int,
        num_hidden_layers: int,
        vision_hidden_size: int,
        vision_depth: int,
        vision_num_heads: int,
        tie_word_embeddings: bool,
    ) -> Qwen2_5_VLConfig:
        ids = special_token_ids
        heads = 4
        if hidden_size % heads:
            raise PaDTError(f"a tiny model's hidden_size must be a multiple of {heads}, got {hidden_size}")
        half = hidden_size // heads // 2  # M-RoPE sections (t, h, w) must sum to half the head dim
        mrope = [half - 2 * (half // 3), half // 3, half // 3]
        g = self.geometry
        return Qwen2_5_VLConfig(
            text_config={
                "vocab_size": vocab_size,
                "hidden_size": hidden_size,
                "intermediate_size": 2 * hidden_size,
                "num_hidden_layers": num_hidden_layers,
                "num_attention_heads": heads,
                "num_key_value_heads": 2,
                "max_position_embeddings": 4096,
                "rms_norm_eps": 1e-6,
                "rope_parameters": {"rope_type": "default", "mrope_section": mrope, "rope_theta": 1000000.0},
                "bos_token_id": ids["<|endoftext|>"],
                "eos_token_id": ids["<|im_end|>"],
                "pad_token_id": ids["<|endoftext|>"],
            },
            vision_config={
                "depth": vision_depth,
                "hidden_size": vision_hidden_size,
                "intermediate_size": 2 * vision_hidden_size,
                "num_heads": vision_num_heads,
                "out_hidden_size": hidden_size,
                "patch_size": g.patch_px,
                "spatial_merge_size": g.merge_size,
                "temporal_patch_size": g.temporal_patch_size,
                "window_size": 4 * g.cell_px,
                "fullatt_block_indexes": [vision_depth - 1],
            },
            image_token_id=ids["<|image_pad|>"],
            video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"],
            vision_end_token_id=ids["<|vision_end|>"],
            tie_word_embeddings=tie_word_embeddings,
        )
