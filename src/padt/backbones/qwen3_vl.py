"""Qwen3-VL as a PaDT base: 16-px patches, 2x2 merge (32-px VRT cells), no window attention, DeepStack.

What differs from Qwen2.5-VL (docs/method.md §13):

- a VRT is a 32 x 32-px cell and images are resized to multiples of 32;
- the ViT has no windows: its last hidden state comes in the processor's order (patches grouped by merge unit),
  so the decoder always reads its high-res memory in true raster order (``vl_decoder.ordering: raster``; the
  published decoders' window order exists only for Qwen2.5-VL);
- DeepStack: merged features of three ViT layers are added to the language model's hidden states at the
  image-token positions of its first layers. A VRT fed back as input is not an image position; with
  ``vrt_deepstack`` (a config field, off by default) it also gets the DeepStack features of the patch it names;
- the text-coordinate answer format writes 0-1000 relative coordinates, as Qwen3-VL grounds objects;
- the chat template has no default system prompt.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextRMSNorm

from padt.backbones.base import Backbone, PatchGeometry, VisionFeatures, unit_order_to_raster
from padt.errors import PaDTError

GEOMETRY = PatchGeometry(patch_px=16, merge_size=2, temporal_patch_size=2)

#: The Qwen3-VL instruct models' chat template for system, user and assistant turns with images and text (a
#: checkpoint's own ``chat_template.jinja``/``.json`` is used when it has one; tool calls are not rendered here).
CHAT_TEMPLATE = (
    "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\\n' }}{%- if messages[0].content is string %}"
    "{{- messages[0].content }}{%- else %}{%- for content in messages[0].content %}{%- if 'text' in content %}"
    "{{- content.text }}{%- endif %}{%- endfor %}{%- endif %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- set image_count = namespace(value=0) %}{%- set video_count = namespace(value=0) %}"
    "{%- for message in messages %}{%- if message.role != 'system' %}"
    "{{- '<|im_start|>' + message.role + '\\n' }}{%- if message.content is string %}{{- message.content }}"
    "{%- else %}{%- for content in message.content %}"
    "{%- if content.type == 'image' or 'image' in content or 'image_url' in content %}"
    "{%- set image_count.value = image_count.value + 1 %}"
    "{%- if add_vision_id %}{{- 'Picture ' + image_count.value|string + ': ' }}{%- endif %}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif content.type == 'video' or 'video' in content %}{%- set video_count.value = video_count.value + 1 %}"
    "{%- if add_vision_id %}{{- 'Video ' + video_count.value|string + ': ' }}{%- endif %}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif 'text' in content %}{{- content.text }}{%- endif %}{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


class _StillImageQwen3VLProcessor(Qwen3VLProcessor):
    """``Qwen3VLProcessor`` without a video processor (PaDT reads still images; the video processor needs
    torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["processor_class"] = Qwen3VLProcessor.__name__
        return out


class Qwen3VLBackbone(Backbone):
    name = "qwen3_vl"
    model_type = "qwen3_vl"
    geometry = GEOMETRY
    # Native resolution rounded to 32-px cells, at least four cells; Qwen3-VL's own processor caps at 4096^2.
    min_pixels = 4 * 32 * 32
    max_pixels = 16777216
    chat_template = CHAT_TEMPLATE
    text_coordinates = "relative1000"
    component_prefixes: Mapping[str, tuple[str, ...]] = {
        "vision": ("model.visual.",),
        "llm": ("model.language_model.", "lm_head."),
    }
    component_modules: Mapping[str, tuple[str, ...]] = {
        "vision": ("visual",),
        "llm": ("language_model", "lm_head"),
    }
    decoder_orderings = ("raster",)
    default_decoder_ordering = "raster"

    @property
    def config_class(self) -> type[Qwen3VLConfig]:
        return Qwen3VLConfig

    @property
    def model_class(self) -> type[Qwen3VLForConditionalGeneration]:
        return Qwen3VLForConditionalGeneration

    @property
    def decoder_norm(self) -> type[Qwen3VLTextRMSNorm]:
        return Qwen3VLTextRMSNorm

    def encode_images(
        self, model: Any, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor, *, raster: bool
    ) -> VisionFeatures:
        if not raster:
            raise PaDTError(
                "Qwen3-VL has no window order; its PaDT decoder reads in raster order (ordering: raster)"
            )
        from transformers.vision_utils import get_vision_position_ids

        visual = model.model.visual
        merge = visual.spatial_merge_size
        grid = image_grid_thw.to(pixel_values.device)
        out = visual(pixel_values.type(visual.dtype), grid_thw=grid, return_dict=True)
        # The ViT's 2-D RoPE in the processor's (unit-grouped) order, as its blocks used it.
        position_ids = get_vision_position_ids(grid, merge)
        cos, sin = visual.rotary_pos_emb(out.last_hidden_state, position_ids)
        perm = unit_order_to_raster(
            torch.arange(int(grid.prod(-1).sum()) // merge**2, device=grid.device), grid, merge
        )
        return VisionFeatures(
            merged=out.pooler_output,
            high_res=out.last_hidden_state[perm],
            visual_pe=(cos[perm], sin[perm]),
            extra=list(out.deepstack_features),
        )

    def run_language_model(
        self,
        model: Any,
        *,
        input_ids: torch.Tensor,
        inputs_embeds: torch.Tensor,
        vision: Any,
        prefill: bool,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: Any = None,
        image_grid_thw: torch.Tensor | None = None,
        mm_token_type_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """Qwen3-VL's model forward with two changes: the VRT embeddings are already in ``inputs_embeds`` (its
        forward takes ids or embeddings, not both), and with ``config.vrt_deepstack`` a VRT input position also
        receives the DeepStack features of the patch it names, in the same first layers as image positions."""
        base = model.model
        image_mask = input_ids == model.config.image_token_id
        masks: list[torch.Tensor] = []
        if prefill:
            inputs_embeds = inputs_embeds.masked_scatter(
                image_mask[..., None], vision.image_embeds.to(inputs_embeds.dtype)
            )
            masks.append(image_mask)
        vocab = model.config.text_config.vocab_size
        vrt_mask = input_ids >= vocab
        deepstack_vrts = (
            bool(getattr(model.config, "vrt_deepstack", False))
            and vision is not None
            and bool(vrt_mask.any())
        )
        if deepstack_vrts:
            masks.append(vrt_mask)
        visual_pos_masks, deepstack = None, None
        if masks and vision is not None and vision.features.extra:
            visual_pos_masks = masks[0] if len(masks) == 1 else masks[0] | masks[1]
            deepstack = []
            for features in vision.features.extra:
                rows = inputs_embeds.new_zeros(int(visual_pos_masks.sum()), features.shape[-1])
                if prefill:
                    rows[image_mask[visual_pos_masks]] = features.to(rows.dtype)
                if deepstack_vrts:
                    rows[vrt_mask[visual_pos_masks]] = features[input_ids[vrt_mask] - vocab].to(rows.dtype)
                deepstack.append(rows)
        if position_ids is None:
            position_ids = base.compute_3d_position_ids(
                input_ids=input_ids,
                inputs_embeds=inputs_embeds,
                image_grid_thw=image_grid_thw,
                attention_mask=attention_mask,
                cache=cache,
                mm_token_type_ids=mm_token_type_ids,
            )
        return base.language_model(
            input_ids=None,
            position_ids=position_ids,
            attention_mask=attention_mask,
            cache=cache,
            inputs_embeds=inputs_embeds,
            visual_pos_masks=visual_pos_masks,
            deepstack_visual_embeds=deepstack,
            **kwargs,
        )

    def build_processor(self, image_processor: Any, tokenizer: Any, chat_template: str | None = None) -> Any:
        template = chat_template or getattr(tokenizer, "chat_template", None) or CHAT_TEMPLATE
        return _StillImageQwen3VLProcessor(
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
            image_mean=[0.5, 0.5, 0.5],
            image_std=[0.5, 0.5, 0.5],
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
    ) -> Qwen3VLConfig:
        ids = special_token_ids
        heads = 4
        if hidden_size % heads:
            raise PaDTError(f"a tiny model's hidden_size must be a multiple of {heads}, got {hidden_size}")
        head_dim = hidden_size // heads
        half = head_dim // 2  # interleaved M-RoPE sections (t, h, w) sum to half the head dim
        mrope = [half - 2 * (half // 4), half // 4, half // 4]
        g = self.geometry
        # DeepStack taps spread over the tower (Qwen3-VL taps 3 of its blocks).
        taps = sorted({max(0, (vision_depth * k) // 4 - 1) for k in (1, 2, 3)})
        return Qwen3VLConfig(
            text_config={
                "vocab_size": vocab_size,
                "hidden_size": hidden_size,
                "intermediate_size": 2 * hidden_size,
                "num_hidden_layers": num_hidden_layers,
                "num_attention_heads": heads,
                "num_key_value_heads": 2,
                "head_dim": head_dim,
                "max_position_embeddings": 4096,
                "rms_norm_eps": 1e-6,
                "rope_parameters": {
                    "rope_type": "default",
                    "mrope_section": mrope,
                    "mrope_interleaved": True,
                    "rope_theta": 5000000.0,
                },
                "bos_token_id": ids["<|endoftext|>"],
                "eos_token_id": ids["<|im_end|>"],
                "pad_token_id": ids["<|endoftext|>"],
                "tie_word_embeddings": tie_word_embeddings,
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
                "num_position_embeddings": 256,
                "deepstack_visual_indexes": taps,
            },
            image_token_id=ids["<|image_pad|>"],
            video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"],
            vision_end_token_id=ids["<|vision_end|>"],
            tie_word_embeddings=tie_word_embeddings,
        )
