"""PaDT = a Qwen-VL model + visual reference tokens (docs/method.md §4, §7, §11).

:class:`PaDTMixin` holds everything PaDT adds to a base vision-language model; each base gets one class that
mixes it into the base's own ``...ForConditionalGeneration`` (here :class:`PaDTForConditionalGeneration` for
Qwen2.5-VL), and what differs between bases is asked of its adapter (:mod:`padt.backbones`). PaDT adds:

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
- ``prototype_position`` (only with ``config.prototype_position_code``, off for the published weights): a second
  learned projection of the same code, added to the prototypes only (part of the prototype transform). The
  image position code reaches the prototypes through ``vis_norm``, which starts at zero, so a spatial word
  gets almost no gradient towards it: "leftmost" and "rightmost" pull the prototypes in opposite directions
  and cancel. A randomly initialised term breaks that tie from the first step (docs/bundled-model.md).

The image placeholder tokens of the prompt still get the merger features (plus the position code when it is
on), exactly like the stock base model.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Qwen2_5_VLForConditionalGeneration, Qwen3VLForConditionalGeneration
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming
from transformers.modeling_outputs import MultimodalCausalLMOutputWithPast
from transformers.utils import ModelOutput

from padt.backbones import Backbone, backbone_of, get_backbone
from padt.config import PaDTConfigFields, PaDTQwen2_5_VLConfig, PaDTQwen3VLConfig
from padt.decoder import PaDTDecoder, PaDTDecoderOutput, normalised_position_code
from padt.errors import PaDTError
from padt.generation import VRTRepeatPenaltyLogitsProcessor, VRTStateRecorder
from padt.vrt import VRTLayout

#: Parameter-name prefixes of the modules PaDT adds (trained as the "decoder" component, together with the
#: prototype transform).
PADT_MODULE_PREFIXES = ("vis_norm.", "vis_proj.", "vl_decoder.", "prototype_position.")
PROTOTYPE_RANK = 64  # the reference's rank-64 bottleneck (``lora_r``)
IMAGE_POSITION_CODE_DIM = 32  # 8 frequencies x (sin, cos) x (x, y) for ``config.image_position_code``
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def _register_reference_layout(class_name: str, backbone: Backbone) -> None:
    """Loading renames the reference's checkpoint keys and ``save_pretrained`` writes them back, so checkpoints
    stay loadable by the reference code, whether the model was loaded or built from a config."""
    if backbone.reference_key_mapping:
        register_checkpoint_conversion_mapping(
            class_name,
            [
                WeightRenaming(source_patterns=k, target_patterns=v)
                for k, v in backbone.reference_key_mapping.items()
            ],
            overwrite=True,
        )


_register_reference_layout("PaDTForConditionalGeneration", get_backbone("qwen2_5_vl"))


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
        features: the base's own vision outputs (:class:`~padt.backbones.VisionFeatures`; e.g. Qwen3-VL's
            DeepStack features), handed back to its adapter.
    """

    image_embeds: torch.Tensor | None = None
    prototypes: torch.Tensor | None = None
    high_res_image_embeds: torch.Tensor | None = None
    visual_pe: tuple[torch.Tensor, torch.Tensor] | None = None
    image_grid_thw: torch.Tensor | None = None
    features: Any = None


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


class PaDTMixin:
    """What PaDT adds to a base ``...ForConditionalGeneration`` (mixed in before it; see the module docstring).

    ``backbone`` is the base's adapter (:mod:`padt.backbones`); ``config`` a PaDT config of that base
    (:mod:`padt.config`). A plain base config is converted.
    """

    config_class: type
    backbone: Backbone

    def __init__(self, config: Any) -> None:
        if not isinstance(config, PaDTConfigFields):
            config = self.config_class.from_dict(config.to_dict())
        super().__init__(config)
        self.backbone = backbone_of(config)
        hidden = config.text_config.hidden_size
        if config.use_visual_prototype_projection:
            self.vis_norm = nn.LayerNorm(hidden, eps=1e-5)
            self.vis_proj = nn.Sequential(
                nn.Linear(hidden, PROTOTYPE_RANK, bias=False), nn.Linear(PROTOTYPE_RANK, hidden, bias=False)
            )
        self.vl_decoder = PaDTDecoder(config.decoder_config, norm=self.backbone.decoder_norm)
        self.image_position = (
            nn.Linear(IMAGE_POSITION_CODE_DIM, hidden, bias=False) if config.image_position_code else None
        )
        # Built without drawing random numbers (it is initialised last, in _init_weights), so turning it on
        # leaves every other initial weight as it was.
        self.prototype_position = (
            nn.utils.skip_init(nn.Linear, IMAGE_POSITION_CODE_DIM, hidden, bias=False)
            if config.prototype_position_code
            else None
        )
        self.post_init()

    # ------------------------------------------------------------------------------------------ components
    @property
    def component_prefixes(self) -> dict[str, tuple[str, ...]]:
        """Parameter-name prefixes of each trainable component: ``vision`` (the base's vision tower and the
        image position code), ``llm`` (the language model and its head), ``decoder`` (PaDT's modules)."""
        base = self.backbone.component_prefixes
        return {
            "vision": (*base["vision"], "image_position."),
            "llm": tuple(base["llm"]),
            "decoder": PADT_MODULE_PREFIXES,
        }

    @property
    def component_modules(self) -> dict[str, tuple[str, ...]]:
        """The submodule names of each component (what peft keeps as full trainable copies)."""
        base = self.backbone.component_modules
        return {
            "vision": (*base["vision"], "image_position"),
            "llm": tuple(base["llm"]),
            "decoder": ("vl_decoder", "vis_norm", "vis_proj", "prototype_position"),
        }

    def component_of(self, name: str) -> str | None:
        """The component a parameter or module name belongs to (``None`` if none)."""
        for component, prefixes in self.component_prefixes.items():
            if name.startswith(prefixes):
                return component
        return None

    # ------------------------------------------------------------------------------------------ init / loading
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        # The prototype LayerNorm starts at zero, so every prototype is 0 at the start of training (§4.1).
        if module is getattr(self, "vis_norm", None):
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)
        if module is getattr(self, "prototype_position", None):
            nn.init.normal_(module.weight, std=self.config.prototype_position_init_std)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *args: Any,
        init_padt_modules: bool = False,
        **kwargs: Any,
    ) -> PaDTMixin:
        """Load a PaDT checkpoint: the reference's layout (transformers 4.50 keys) or padt's own.

        The class follows the checkpoint's base (``model_type`` in its ``config.json``), so
        ``PaDTForConditionalGeneration.from_pretrained`` also loads a Qwen3-VL PaDT. Any missing, unexpected or
        mismatched key is an error that lists them. With ``init_padt_modules=True`` a plain base checkpoint is
        accepted: the PaDT modules (``vis_norm``, ``vis_proj``, ``vl_decoder``) are then freshly initialised, as
        the reference does before training.
        """
        path = os.fspath(pretrained_model_name_or_path)
        if (
            os.path.isdir(path)
            and "config" not in kwargs
            and not os.path.isfile(os.path.join(path, "config.json"))
        ):
            # Without it transformers would build the base's default (a 7B model) and only then fail.
            raise PaDTError(
                f"no config.json in {path}; point --model at a folder written by save_pretrained (config.json, "
                "weights, tokenizer and processor files)"
            )
        model_type = _checkpoint_model_type(path)
        if model_type is not None and model_type != cls.config_class.model_type:
            if model_type not in PADT_CLASSES:
                raise PaDTError(
                    f"{path} holds a {model_type!r} model; PaDT runs on {', '.join(PADT_CLASSES)}"
                )
            return PADT_CLASSES[model_type].from_pretrained(
                path, *args, init_padt_modules=init_padt_modules, **kwargs
            )
        if os.path.isdir(path) and (problem := weights_problem(path)) is not None:
            if problem == "no model weights":
                raise PaDTError(
                    f"no model weights in {path} (looked for {', '.join(WEIGHT_FILES)}); point --model at a folder "
                    "written by save_pretrained"
                )
            raise PaDTError(f"cannot load {path}: {problem}; copy the checkpoint again")
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
            if not (init_padt_modules and k.startswith((*PADT_MODULE_PREFIXES, "image_position.")))
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
                else f" (to start from a plain {cls.config_class.model_type} checkpoint pass init_padt_modules=True)"
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

    def image_position_embeds(
        self, image_grid_thw: torch.Tensor, projection: nn.Linear | None = None
    ) -> torch.Tensor:
        """``ΣN x D`` learned embedding of each merged patch's normalised ``(x, y)`` centre, unit-raster order,
        through ``projection`` (default ``image_position``)."""
        projection = self.image_position if projection is None else projection
        units_hw = image_grid_thw[:, 1:] // self.merge_size
        codes = [
            normalised_position_code(
                torch.arange(int(h * w), device=units_hw.device), units_hw[i : i + 1], IMAGE_POSITION_CODE_DIM
            )[0].repeat(int(image_grid_thw[i, 0]), 1)
            for i, (h, w) in enumerate(units_hw.tolist())
        ]
        weight = projection.weight
        return projection(torch.cat(codes).to(device=weight.device, dtype=weight.dtype))

    def encode_images(
        self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor | None
    ) -> PaDTVisionOutput:
        """One pass of the vision tower, returning what the LLM and the decoder need (§2.4)."""
        if image_grid_thw is None:
            raise PaDTError(
                "pixel_values were given without image_grid_thw; pass both, as the processor returns them"
            )
        grid = image_grid_thw.to(pixel_values.device)
        expected = int(grid.prod(-1).sum())
        if pixel_values.shape[0] != expected:
            raise PaDTError(
                f"pixel_values has {pixel_values.shape[0]} patches but image_grid_thw describes {expected}; "
                "pass the processor's pixel_values and image_grid_thw together"
            )
        raster = self.vl_decoder.config.ordering == "raster"
        features = self.backbone.encode_images(self, pixel_values, grid, raster=raster)
        image_embeds = features.merged
        if self.image_position is not None:
            image_embeds = image_embeds + self.image_position_embeds(grid).to(image_embeds.dtype)
        prototypes = self.image_prototypes(image_embeds)
        if self.prototype_position is not None:
            position = self.image_position_embeds(grid, self.prototype_position)
            prototypes = prototypes + position.to(prototypes.dtype)
        return PaDTVisionOutput(
            image_embeds=image_embeds,
            prototypes=prototypes,
            high_res_image_embeds=features.high_res,
            visual_pe=features.visual_pe,
            image_grid_thw=grid,
            features=features,
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

        ``vrt_layout``: the batch's :class:`VRTLayout`, as the processor built it (``PaDTBatch.inputs`` carries
        it); without one it is read off ``input_ids`` and ``image_grid_thw`` and the VRT ids are checked against
        it. On a call with ``pixel_values`` (training, or generation prefill) the vision tower runs once and the
        prototypes and the logit mask are built; later generation steps pass the cached ``vision``,
        ``vrt_layout`` and ``vrt_allowed`` instead. ``labels`` (optional) gives a plain next-token
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
            vrt_layout.check_global_ids(input_ids)
        elif vrt_layout.image_grid_thw.device != input_ids.device:
            vrt_layout = vrt_layout.to(input_ids.device)
        if vrt_allowed is None and vrt_layout.num_vrts:
            vrt_allowed = vrt_layout.allowed_mask()
        prototypes = vision.prototypes if vision is not None else None

        inputs_embeds = self.embed_tokens_with_vrts(input_ids, prototypes)
        if pixel_values is not None and mm_token_type_ids is None:
            mm_token_type_ids = (input_ids == self.config.image_token_id).int()
        # The prompt's <|image_pad|> tokens get the raw merger features (stock base model behaviour), plus what
        # else the base feeds image positions; the adapter runs the base's language model.
        outputs = self.backbone.run_language_model(
            self,
            input_ids=input_ids,
            inputs_embeds=inputs_embeds,
            vision=vision,
            prefill=pixel_values is not None,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            image_grid_thw=image_grid_thw,
            mm_token_type_ids=mm_token_type_ids,
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
        *,
        placeholder_if_empty: bool = False,
    ) -> PaDTDecoderOutput:
        """Run the PaDT decoder on every object of every sample.

        Args:
            vrt_features: per sample, per object, a ``k x D`` tensor of the hidden states that predicted the
                object's VRTs (or, in warm-up, the prototypes of its ground-truth VRTs).
            vision: the vision outputs of the forward pass (``output.vision``).
            vrt_layout: the batch layout (``output.vrt_layout``).
            object_images: per sample, per object, the batch index of the image the object refers to. Optional
                when every sample that has objects has exactly one image.
            placeholder_if_empty: without any object, decode one placeholder object instead of nothing (a
                training step keeps the decoder in the graph that way; see :meth:`PaDTDecoder.placeholder`).
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
        if not flat and placeholder_if_empty:
            out = self.vl_decoder.placeholder()
            out.sample_idx = torch.full((1,), -1, dtype=torch.long, device=device)
            return out
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
        vrt_reuse_penalty: float | None = None,
        **kwargs: Any,
    ) -> Any:
        """transformers' ``generate`` with global VRT ids in and out.

        Pass a :class:`~padt.generation.VRTStateRecorder` as ``vrt_recorder`` to collect the hidden states the
        decoder needs. ``vrt_repeat_penalty`` and ``vrt_reuse_penalty`` (default: the entries of those names in
        the checkpoint's ``generation_config``, else 0 = off) add
        :class:`~padt.generation.VRTRepeatPenaltyLogitsProcessor`.
        Everything else is stock: greedy, sampling, logits processors, the checkpoint's ``generation_config``,
        static caches and compilation.
        """
        if vrt_repeat_penalty is None:
            vrt_repeat_penalty = float(getattr(self.generation_config, "vrt_repeat_penalty", 0.0) or 0.0)
        if vrt_reuse_penalty is None:
            vrt_reuse_penalty = float(getattr(self.generation_config, "vrt_reuse_penalty", 0.0) or 0.0)
        if vrt_repeat_penalty or vrt_reuse_penalty:
            from transformers import LogitsProcessorList

            processors = LogitsProcessorList(kwargs.pop("logits_processor", None) or [])
            processors.append(
                VRTRepeatPenaltyLogitsProcessor(
                    self.vocab_size,
                    vrt_repeat_penalty,
                    vrt_reuse_penalty,
                    prompt_length=0 if input_ids is None else input_ids.shape[-1],
                )
            )
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


def weight_files(folder: str | os.PathLike) -> list[Path]:
    """The safetensors files of a checkpoint folder: the shards its ``model.safetensors.index.json`` names,
    sorted, else ``model.safetensors``. A broken index raises ``ValueError``, ``KeyError`` or ``OSError``."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return [
            folder / name
            for name in sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        ]
    return [folder / "model.safetensors"]


def weights_problem(folder: str | os.PathLike) -> str | None:
    """Why the safetensors weights of a checkpoint folder cannot be read (missing, empty, cut short), or None.
    Only file headers are read; a folder with PyTorch ``.bin`` weights is not checked."""
    folder = os.fspath(folder)
    if os.path.isfile(os.path.join(folder, "model.safetensors.index.json")) or os.path.isfile(
        os.path.join(folder, "model.safetensors")
    ):
        try:
            files = [f.name for f in weight_files(folder)]
        except (ValueError, KeyError, OSError):
            return "model.safetensors.index.json is not a valid index"
    else:
        return (
            None if any(os.path.exists(os.path.join(folder, f)) for f in WEIGHT_FILES) else "no model weights"
        )
    from safetensors import safe_open

    for name in files:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            return f"{name} is missing"
        try:
            with safe_open(path, framework="pt") as f:
                f.keys()
        except Exception:
            return f"{name} is empty or cut short ({os.path.getsize(path):,} bytes)"
    return None


def _checkpoint_model_type(path: str) -> str | None:
    """``model_type`` in a checkpoint folder's ``config.json`` (None if there is none)."""
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        return None
    try:
        with open(config, encoding="utf-8") as f:
            return json.load(f).get("model_type")
    except (OSError, ValueError):
        raise PaDTError(f"{config} is not valid JSON; restore the checkpoint's config.json") from None


class PaDTForConditionalGeneration(PaDTMixin, Qwen2_5_VLForConditionalGeneration):
    """Qwen2.5-VL that reads and writes visual reference tokens, plus the PaDT decoder (the published
    checkpoints' architecture). ``from_pretrained`` loads a PaDT of any supported base."""

    config_class = PaDTQwen2_5_VLConfig


class PaDTQwen3VLForConditionalGeneration(PaDTMixin, Qwen3VLForConditionalGeneration):
    """Qwen3-VL that reads and writes visual reference tokens, plus the PaDT decoder
    (:mod:`padt.backbones.qwen3_vl`)."""

    config_class = PaDTQwen3VLConfig


#: ``model_type`` of the base -> its PaDT class.
PADT_CLASSES: dict[str, type[PaDTMixin]] = {
    "qwen2_5_vl": PaDTForConditionalGeneration,
    "qwen3_vl": PaDTQwen3VLForConditionalGeneration,
}


def padt_class_for(model_type: str) -> type[PaDTMixin]:
    """The PaDT class of a base model type."""
    if model_type not in PADT_CLASSES:
        raise PaDTError(f"PaDT runs on {', '.join(PADT_CLASSES)}, not {model_type!r}")
    return PADT_CLASSES[model_type]
