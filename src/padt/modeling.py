"""PaDT = Qwen2.5-VL + visual reference tokens (docs/method.md §4, §7, §11).

:class:`PaDTForConditionalGeneration` subclasses transformers' ``Qwen2_5_VLForConditionalGeneration`` and adds
only what PaDT adds:

- ``vis_norm`` / ``vis_proj``: the prototype transform. A VRT's embedding *and* its output vector are the
  prototype ``LN(img) + W2 W1 LN(img)`` of the merged patch it names (post-merger feature, unit-raster order).
- the VRT input embedding and output head: ids ``>= V`` embed as prototypes; the logits are the text logits
  followed by ``h . prototype`` for every image of the batch, with other samples' VRTs masked to ``-inf``.
- ``vl_decoder``: the :class:`~padt.decoder.PaDTDecoder`.
- ``image_position`` (only with ``config.image_position_code``, off for the published weights): a learned
  projection of a sinusoidal code of each merged patch's normalised ``(x, y)`` centre, added to the merger
  features. Qwen2.5-VL's ViT has only relative (RoPE) positions, so its features do not say *where* a patch is;
  a pretrained ViT picks that up from its data, a tiny one trained from scratch does not, and then neither the
  VRT logits (``h . prototype``) nor the image tokens can express "the leftmost ...".

The image placeholder tokens of the prompt still get the merger features (plus the position code when it is
on), exactly like stock Qwen2.5-VL.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming
from transformers.modeling_outputs import BaseModelOutputWithPooling, MultimodalCausalLMOutputWithPast
from transformers.utils import ModelOutput
from transformers.vision_utils import get_vision_position_ids, get_vision_window_index

from padt.decoder import PaDTDecoder, PaDTDecoderConfig, PaDTDecoderOutput, normalised_position_code
from padt.errors import PaDTError
from padt.generation import VRTRepeatPenaltyLogitsProcessor, VRTStateRecorder
from padt.vrt import VRTLayout

# Checkpoints saved by the reference (transformers 4.50) keep the vision tower at ``visual.*`` and the text
# model at ``model.*``; transformers 5 nests both under ``model.`` (§11.1). PaDT's own keys are unaffected.
REFERENCE_KEY_MAPPING = {
    r"^visual": "model.visual",
    r"^model(?!\.(language_model|visual))": "model.language_model",
}
# Registered for the class, so loading renames 4.50 keys and save_pretrained writes the reference's layout back
# (checkpoints stay loadable by the reference code), whether the model was loaded or built from a config.
register_checkpoint_conversion_mapping(
    "PaDTForConditionalGeneration",
    [WeightRenaming(source_patterns=k, target_patterns=v) for k, v in REFERENCE_KEY_MAPPING.items()],
    overwrite=True,
)
PADT_MODULE_PREFIXES = ("vis_norm.", "vis_proj.", "vl_decoder.")
PROTOTYPE_RANK = 64  # the reference's rank-64 bottleneck (``lora_r``)
IMAGE_POSITION_CODE_DIM = 32  # 8 frequencies x (sin, cos) x (x, y) for ``config.image_position_code``
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


@dataclass
class PaDTVisionOutput(ModelOutput):
    """Everything PaDT takes from one pass of the vision tower.

    Attributes:
        image_embeds: ``ΣN x D`` merger output, unit-raster order (what the prompt's image tokens receive).
        prototypes: ``ΣN x D`` VRT embeddings/output vectors, unit-raster order.
        high_res_image_embeds: ``Σn x d`` last ViT block output before the merger, ViT **window** order (patch
            raster order when the decoder's ``ordering`` is ``"raster"``).
        visual_pe: ``(cos, sin)``, each ``Σn x head_dim``: the ViT 2-D RoPE, in the same order.
        image_grid_thw: ``I x 3`` patch grids.
    """

    image_embeds: torch.Tensor | None = None
    prototypes: torch.Tensor | None = None
    high_res_image_embeds: torch.Tensor | None = None
    visual_pe: tuple[torch.Tensor, torch.Tensor] | None = None
    image_grid_thw: torch.Tensor | None = None


@dataclass
class PaDTCausalLMOutput(MultimodalCausalLMOutputWithPast):
    """``MultimodalCausalLMOutputWithPast`` plus PaDT's fields.

    Attributes:
        logits: ``B x L x (V + ΣN)``: text logits then one column per VRT of the batch; columns of other samples'
            images are ``-inf``.
        last_hidden_state: ``B x L x D`` last decoder layer after the final norm (the decoder's VRT features).
        vision: the :class:`PaDTVisionOutput` of this call (or the cached one during generation).
        vrt_layout: the :class:`~padt.vrt.VRTLayout` of the batch.
        vrt_allowed: ``B x (V + ΣN)`` bool, the logit mask.
    """

    last_hidden_state: torch.Tensor | None = None
    vision: PaDTVisionOutput | None = None
    vrt_layout: VRTLayout | None = None
    vrt_allowed: torch.Tensor | None = None


def prepare_padt_config(config: Qwen2_5_VLConfig) -> Qwen2_5_VLConfig:
    """Fill in PaDT's config fields the way the reference does (§7.1, §11.2), in place.

    ``vl_decoder`` defaults to the vision tower's width, heads and MLP size (what the reference trainer
    writes); ``llm_hidden_state`` and ``spatial_merge_size`` are always overwritten from the backbone.
    """
    vision = config.vision_config
    values = dict(getattr(config, "vl_decoder", None) or {})
    values.setdefault("hidden_size", vision.hidden_size)
    values.setdefault("intermediate_size", vision.intermediate_size)
    values.setdefault("num_heads", vision.num_heads)
    values.setdefault("name", "PaDTDecoder")
    values.setdefault("attn_implementation", "flash_attention_2")
    values.setdefault("use_mask_loss", True)
    values["llm_hidden_state"] = config.text_config.hidden_size
    values["spatial_merge_size"] = vision.spatial_merge_size
    if values["hidden_size"] != vision.hidden_size or values["num_heads"] != vision.num_heads:
        raise PaDTError(
            f"vl_decoder.hidden_size/num_heads ({values['hidden_size']}/{values['num_heads']}) must equal the vision "
            f"tower's ({vision.hidden_size}/{vision.num_heads}): the decoder adds raw ViT features and uses ViT RoPE"
        )
    config.vl_decoder = values
    if getattr(config, "use_visual_prototype_projection", None) is None:
        config.use_visual_prototype_projection = True
    config.architectures = ["PaDTForConditionalGeneration"]
    return config


def window_to_raster(
    window_index: torch.Tensor, image_grid_thw: torch.Tensor, merge_size: int = 2
) -> torch.Tensor:
    """Permutation ``perm`` with ``raster = window_ordered[perm]`` for ViT patch tokens (images, ``t = 1``).

    The ViT's last hidden state and RoPE come in window order: merge units permuted by ``window_index``, the
    ``merge_size**2`` patches of a unit consecutive. Raster order is row-major over each image's patch grid.
    """
    m2 = merge_size * merge_size
    grid = image_grid_thw.to(window_index.device)
    units = grid.prod(-1) // m2
    unit_start = torch.cumsum(units, 0) - units
    patch_start = unit_start * m2
    image_of_unit = torch.repeat_interleave(torch.arange(grid.shape[0], device=grid.device), units)
    p = torch.arange(window_index.numel() * m2, device=grid.device)
    unit = window_index[p // m2]
    image = image_of_unit[unit]
    local = unit - unit_start[image]
    width = grid[image, 2]
    unit_row, unit_col = local // (width // merge_size), local % (width // merge_size)
    sub_row, sub_col = (p % m2) // merge_size, (p % m2) % merge_size
    raster = (unit_row * merge_size + sub_row) * width + unit_col * merge_size + sub_col + patch_start[image]
    perm = torch.empty_like(raster)
    perm[raster] = p
    return perm


class PaDTForConditionalGeneration(Qwen2_5_VLForConditionalGeneration):
    """Qwen2.5-VL that reads and writes visual reference tokens, plus the PaDT decoder."""

    def __init__(self, config: Qwen2_5_VLConfig) -> None:
        prepare_padt_config(config)
        super().__init__(config)
        hidden = config.text_config.hidden_size
        if config.use_visual_prototype_projection:
            self.vis_norm = nn.LayerNorm(hidden, eps=1e-5)
            self.vis_proj = nn.Sequential(
                nn.Linear(hidden, PROTOTYPE_RANK, bias=False), nn.Linear(PROTOTYPE_RANK, hidden, bias=False)
            )
        self.vl_decoder = PaDTDecoder(PaDTDecoderConfig.from_dict(config.vl_decoder))
        self.image_position = (
            nn.Linear(IMAGE_POSITION_CODE_DIM, hidden, bias=False)
            if getattr(config, "image_position_code", False)
            else None
        )
        self.post_init()

    # ------------------------------------------------------------------------------------------ init / loading
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        # The prototype LayerNorm starts at zero, so every prototype is 0 at the start of training (§4.1).
        if module is getattr(self, "vis_norm", None):
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *args: Any,
        init_padt_modules: bool = False,
        **kwargs: Any,
    ) -> PaDTForConditionalGeneration:
        """Load a PaDT checkpoint: the reference's layout (transformers 4.50 keys) or padt's own.

        Any missing, unexpected or mismatched key is an error that lists them. With
        ``init_padt_modules=True`` a plain Qwen2.5-VL checkpoint is accepted: the PaDT modules (``vis_norm``,
        ``vis_proj``, ``vl_decoder``) are then freshly initialised, as the reference does before training.
        """
        path = os.fspath(pretrained_model_name_or_path)
        if os.path.isdir(path) and not any(os.path.exists(os.path.join(path, f)) for f in WEIGHT_FILES):
            raise PaDTError(
                f"no model weights in {path} (looked for {', '.join(WEIGHT_FILES)}); point --model at a folder "
                "written by save_pretrained"
            )
        if not os.path.isdir(path) and os.environ.get("HF_HUB_OFFLINE") == "1":
            raise PaDTError(f"model folder {path} does not exist")
        user_wants_info = kwargs.pop("output_loading_info", False)
        # Load mismatched shapes as "mismatched" (instead of transformers' unnamed error) so they can be listed.
        kwargs.setdefault("ignore_mismatched_sizes", True)
        model, info = super().from_pretrained(path, *args, output_loading_info=True, **kwargs)
        problems = []
        missing = [
            k
            for k in info.get("missing_keys", [])
            if not (init_padt_modules and k.startswith(PADT_MODULE_PREFIXES))
        ]
        if missing:
            problems.append(f"missing keys {sorted(missing)}")
        if info.get("unexpected_keys"):
            problems.append(f"unexpected keys {sorted(info['unexpected_keys'])}")
        if info.get("mismatched_keys"):
            shapes = sorted(
                f"{k[0]} (checkpoint {tuple(k[1])}, model {tuple(k[2])})" if isinstance(k, tuple) else str(k)
                for k in info["mismatched_keys"]
            )
            problems.append(f"mismatched keys [{', '.join(shapes)}]")
        if problems:
            hint = (
                ""
                if init_padt_modules
                else " (to start from a plain Qwen2.5-VL checkpoint pass init_padt_modules=True)"
            )
            raise PaDTError(f"checkpoint {path} does not match PaDT: " + "; ".join(problems) + hint)
        return (model, info) if user_wants_info else model

    # ------------------------------------------------------------------------------------------ vision
    @property
    def vocab_size(self) -> int:
        """``V``: rows of the text embedding table; VRT ids start here."""
        return self.config.text_config.vocab_size

    @property
    def merge_size(self) -> int:
        return self.config.vision_config.spatial_merge_size

    def image_prototypes(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """``ΣN x D`` prototypes from post-merger features: ``LN(x) + vis_proj(LN(x))`` (§4.1)."""
        if not self.config.use_visual_prototype_projection:
            return image_embeds.clone()
        x = self.vis_norm(image_embeds)
        return x + self.vis_proj(x)

    def image_position_embeds(self, image_grid_thw: torch.Tensor) -> torch.Tensor:
        """``ΣN x D`` learned embedding of each merged patch's normalised ``(x, y)`` centre, unit-raster order."""
        units_hw = image_grid_thw[:, 1:] // self.merge_size
        codes = [
            normalised_position_code(
                torch.arange(int(h * w), device=units_hw.device), units_hw[i : i + 1], IMAGE_POSITION_CODE_DIM
            )[0].repeat(int(image_grid_thw[i, 0]), 1)
            for i, (h, w) in enumerate(units_hw.tolist())
        ]
        weight = self.image_position.weight
        return self.image_position(torch.cat(codes).to(device=weight.device, dtype=weight.dtype))

    def encode_images(
        self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor | None
    ) -> PaDTVisionOutput:
        """One pass of the vision tower, returning what the LLM and the decoder need (§2.4)."""
        if image_grid_thw is None:
            raise PaDTError(
                "pixel_values were given without image_grid_thw; pass both, as the processor returns them"
            )
        visual = self.model.visual
        grid = image_grid_thw.to(pixel_values.device)
        expected = int(grid.prod(-1).sum())
        if pixel_values.shape[0] != expected:
            raise PaDTError(
                f"pixel_values has {pixel_values.shape[0]} patches but image_grid_thw describes {expected}; "
                "pass the processor's pixel_values and image_grid_thw together"
            )
        position_ids = get_vision_position_ids(grid, self.merge_size)
        window_index, cu_window_seqlens = get_vision_window_index(
            grid,
            spatial_merge_size=self.merge_size,
            window_size=visual.window_size,
            patch_size=visual.patch_size,
        )
        out = visual(
            pixel_values.type(visual.dtype),
            grid_thw=grid,
            position_ids=position_ids,
            window_index=window_index,
            cu_window_seqlens=cu_window_seqlens,
        )
        # The ViT's RoPE, permuted into window order like its last hidden state (the decoder's visual PE).
        cos, sin = visual.rotary_pos_emb(out.last_hidden_state, position_ids)
        seq_len = out.last_hidden_state.shape[0]
        visual_pe = tuple(visual.permute_input_for_window_attn(t, window_index, seq_len) for t in (cos, sin))
        image_embeds = out.pooler_output
        if self.image_position is not None:
            image_embeds = image_embeds + self.image_position_embeds(grid).to(image_embeds.dtype)
        high_res = out.last_hidden_state
        if self.vl_decoder.config.ordering == "raster":
            perm = window_to_raster(window_index.to(grid.device), grid, self.merge_size)
            high_res, visual_pe = high_res[perm], tuple(t[perm] for t in visual_pe)
        return PaDTVisionOutput(
            image_embeds=image_embeds,
            prototypes=self.image_prototypes(image_embeds),
            high_res_image_embeds=high_res,
            visual_pe=visual_pe,
            image_grid_thw=grid,
        )

    # ------------------------------------------------------------------------------------------ VRT head
    def embed_tokens_with_vrts(
        self, input_ids: torch.Tensor, prototypes: torch.Tensor | None
    ) -> torch.Tensor:
        """Input embeddings: text ids from ``embed_tokens``, global VRT ids ``V + r`` from ``prototypes[r]``.

        A gather from the two tables: the extended table ``[E; prototypes]`` is never materialised.
        """
        embed = self.get_input_embeddings()
        vocab = self.vocab_size
        is_vrt = input_ids >= vocab
        text = embed(input_ids.clamp(max=vocab - 1))
        if prototypes is None or prototypes.shape[0] == 0:
            if not torch.compiler.is_compiling() and bool(is_vrt.any()):
                raise PaDTError(
                    "the input holds VRT ids but no image was given; pass the images the VRTs refer to"
                )
            return text
        vrt = prototypes.to(text.dtype)[(input_ids - vocab).clamp(0, prototypes.shape[0] - 1)]
        return torch.where(is_vrt[..., None], vrt, text)

    def vrt_logits(
        self, hidden: torch.Tensor, prototypes: torch.Tensor | None, allowed: torch.Tensor | None
    ) -> torch.Tensor:
        """``B x L x (V + ΣN)`` logits: the text head, then a plain dot product with every prototype (§4.3);
        VRTs of other samples' images are ``-inf``."""
        text = self.lm_head(hidden)
        if prototypes is None or prototypes.shape[0] == 0:
            return text
        vrt = hidden @ prototypes.to(hidden.dtype).T
        logits = torch.cat([text, vrt], dim=-1)
        if allowed is not None:
            logits = logits.masked_fill(~allowed[:, None, :], float("-inf"))
        return logits

    def _check_vrt_ids(self, input_ids: torch.Tensor, layout: VRTLayout) -> None:
        vocab = self.vocab_size
        rel = input_ids - vocab
        start = layout.sample_global_offset.to(input_ids.device)[:, None]
        end = start + layout.sample_num_vrts.to(input_ids.device)[:, None]
        bad = (input_ids >= vocab) & ((rel < start) | (rel >= end))
        if bool(bad.any()):
            row, col = (int(v) for v in bad.nonzero()[0])
            raise PaDTError(
                f"VRT id {int(input_ids[row, col])} at sample {row}, position {col} is not one of the sample's own "
                f"images (allowed ids {vocab + int(start[row, 0])}..{vocab + int(end[row, 0]) - 1}); convert local "
                "VRT ids to global ones with VRTLayout.to_global and reference only the sample's images"
            )

    # ------------------------------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        mm_token_type_ids: torch.IntTensor | None = None,
        second_per_grid_ts: torch.Tensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        vision: PaDTVisionOutput | None = None,
        vrt_layout: VRTLayout | None = None,
        vrt_allowed: torch.Tensor | None = None,
        vrt_recorder: VRTStateRecorder | None = None,
        **kwargs: Any,
    ) -> PaDTCausalLMOutput:
        """Forward with global VRT ids in ``input_ids``.

        On a call with ``pixel_values`` (training, or generation prefill) the vision tower runs once and the
        prototypes, the :class:`VRTLayout` and the logit mask are built; later generation steps pass the cached
        ``vision``, ``vrt_layout`` and ``vrt_allowed`` instead. ``labels`` (optional) gives a plain next-token
        cross-entropy over text + VRT classes; PaDT training uses :mod:`padt.losses` instead.
        """
        if pixel_values_videos is not None:
            raise PaDTError("video input is not supported by PaDT; pass images")
        if input_ids is None:
            raise PaDTError("PaDT needs input_ids (VRT ids are embedded from the prototypes); pass input_ids")
        if pixel_values is not None:
            vision = self.encode_images(pixel_values, image_grid_thw)
        if vrt_layout is None:
            vrt_layout = VRTLayout.from_input_ids(
                input_ids,
                image_grid_thw if vision is not None else None,
                vocab_size=self.vocab_size,
                image_token_id=self.config.image_token_id,
                merge_size=self.merge_size,
            )
            self._check_vrt_ids(input_ids, vrt_layout)
            vrt_allowed = vrt_layout.allowed_mask() if vrt_layout.num_vrts else None
        prototypes = vision.prototypes if vision is not None else None

        inputs_embeds = self.embed_tokens_with_vrts(input_ids, prototypes)
        encoder_outputs = None
        if pixel_values is not None:
            # The prompt's <|image_pad|> tokens get the raw merger features (stock Qwen2.5-VL behaviour).
            sizes = (vision.image_grid_thw.prod(-1) // self.merge_size**2).tolist()
            encoder_outputs = {
                "image": BaseModelOutputWithPooling(
                    last_hidden_state=vision.high_res_image_embeds,
                    pooler_output=torch.split(vision.image_embeds, sizes),
                )
            }
            if mm_token_type_ids is None:
                mm_token_type_ids = (input_ids == self.config.image_token_id).int()
        outputs = self.model(
            input_ids=input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            image_grid_thw=image_grid_thw,
            mm_token_type_ids=mm_token_type_ids,
            mm_encoder_outputs=encoder_outputs,
            **kwargs,
        )
        hidden = outputs.last_hidden_state
        kept = (
            hidden[:, -logits_to_keep:] if isinstance(logits_to_keep, int) and logits_to_keep > 0 else hidden
        )
        if isinstance(logits_to_keep, torch.Tensor):
            kept = hidden[:, logits_to_keep]
        logits = self.vrt_logits(kept, prototypes, vrt_allowed)

        loss = None
        if labels is not None:
            shift_logits = logits[:, :-1].float().reshape(-1, logits.shape[-1])
            shift_labels = labels[:, 1:].reshape(-1).to(logits.device)
            loss = nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=-100)

        return PaDTCausalLMOutput(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            last_hidden_state=hidden,
            vision=vision,
            vrt_layout=vrt_layout,
            vrt_allowed=vrt_allowed,
        )

    # ------------------------------------------------------------------------------------------ decoder
    def decode_objects(
        self,
        vrt_features: list[list[torch.Tensor]],
        vision: PaDTVisionOutput,
        vrt_layout: VRTLayout,
        object_images: list[list[int]] | None = None,
    ) -> PaDTDecoderOutput:
        """Run the PaDT decoder on every object of every sample.

        Args:
            vrt_features: per sample, per object, a ``k x D`` tensor of the hidden states that predicted the
                object's VRTs (or, in warm-up, the prototypes of its ground-truth VRTs).
            vision: the vision outputs of the forward pass (``output.vision``).
            vrt_layout: the batch layout (``output.vrt_layout``).
            object_images: per sample, per object, the batch index of the image the object refers to. Optional
                when every sample that has objects has exactly one image.
        Returns:
            :class:`PaDTDecoderOutput` with one row per object, in (sample, object) order, and ``sample_idx``.
        """
        if len(vrt_features) != vrt_layout.num_samples:
            raise PaDTError(
                f"got objects for {len(vrt_features)} samples but the batch has {vrt_layout.num_samples}"
            )
        flat, images, samples = [], [], []
        for b, objects in enumerate(vrt_features):
            if not objects:
                continue
            own = (vrt_layout.image_sample == b).nonzero().flatten().tolist()
            if object_images is None:
                if len(own) != 1:
                    raise PaDTError(
                        f"sample {b} has {len(own)} images; pass object_images to say which image each object is in"
                    )
                chosen = [own[0]] * len(objects)
            else:
                chosen = list(object_images[b])
                if len(chosen) != len(objects) or any(i not in own for i in chosen):
                    raise PaDTError(
                        f"object_images[{b}] must give one of the sample's images {own} per object"
                    )
            for f in objects:
                if f.ndim != 2 or f.shape[0] == 0:
                    raise PaDTError(
                        f"each object needs a (k, D) tensor with k >= 1 VRT features, got {tuple(f.shape)}"
                    )
            flat.extend(objects)
            images.extend(chosen)
            samples.extend([b] * len(objects))
        device = self.vl_decoder.vp_embedding.weight.device
        out = self.vl_decoder(
            flat,
            torch.tensor(images, dtype=torch.long, device=device),
            vision.prototypes,
            vision.high_res_image_embeds,
            vision.visual_pe,
            vision.image_grid_thw,
        )
        out.sample_idx = torch.tensor(samples, dtype=torch.long, device=device)
        return out

    # ------------------------------------------------------------------------------------------ generation
    def generate(
        self,
        input_ids: torch.LongTensor | None = None,
        *args: Any,
        vrt_recorder: VRTStateRecorder | None = None,
        vrt_repeat_penalty: float | None = None,
        **kwargs: Any,
    ) -> Any:
        """transformers' ``generate`` with global VRT ids in and out.

        Pass a :class:`~padt.generation.VRTStateRecorder` as ``vrt_recorder`` to collect the hidden states the
        decoder needs. ``vrt_repeat_penalty`` (default: the entry of that name in the checkpoint's
        ``generation_config``, else 0 = off) adds :class:`~padt.generation.VRTRepeatPenaltyLogitsProcessor`.
        Everything else is stock: greedy, sampling, logits processors, the checkpoint's ``generation_config``,
        static caches and compilation.
        """
        if vrt_repeat_penalty is None:
            vrt_repeat_penalty = float(getattr(self.generation_config, "vrt_repeat_penalty", 0.0) or 0.0)
        if vrt_repeat_penalty:
            from transformers import LogitsProcessorList

            processors = LogitsProcessorList(kwargs.pop("logits_processor", None) or [])
            processors.append(VRTRepeatPenaltyLogitsProcessor(self.vocab_size, vrt_repeat_penalty))
            kwargs["logits_processor"] = processors
        if (
            input_ids is not None
            and kwargs.get("mm_token_type_ids") is None
            and kwargs.get("pixel_values") is not None
        ):
            # M-RoPE needs the image-token positions; derive them when the caller did not pass them.
            kwargs["mm_token_type_ids"] = (input_ids == self.config.image_token_id).int()
        if vrt_recorder is not None:
            kwargs["vrt_recorder"] = vrt_recorder
        out = super().generate(input_ids, *args, **kwargs)
        if vrt_recorder is not None:
            vrt_recorder.finish(out if isinstance(out, torch.Tensor) else out.sequences)
        return out

    def prepare_inputs_for_generation(
        self, input_ids: torch.LongTensor, *args: Any, **kwargs: Any
    ) -> dict[str, Any]:
        recorder = kwargs.pop("vrt_recorder", None)
        if recorder is not None:
            recorder.observe(input_ids)
        return super().prepare_inputs_for_generation(input_ids, *args, **kwargs)

    def _update_model_kwargs_for_generation(
        self, outputs: Any, model_kwargs: dict[str, Any], *args: Any, **kwargs: Any
    ) -> dict[str, Any]:
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, *args, **kwargs)
        # Carry the prefill's prototypes, layout and logit mask to the decode steps (the ViT runs once).
        if getattr(outputs, "vision", None) is not None:
            model_kwargs["vision"] = outputs.vision
        if getattr(outputs, "vrt_layout", None) is not None:
            model_kwargs["vrt_layout"] = outputs.vrt_layout
            model_kwargs["vrt_allowed"] = outputs.vrt_allowed
        if (recorder := model_kwargs.get("vrt_recorder")) is not None:
            recorder.after_forward(outputs.last_hidden_state)
            if recorder.vision is None:
                recorder.vision, recorder.vrt_layout = outputs.vision, outputs.vrt_layout
        return model_kwargs
