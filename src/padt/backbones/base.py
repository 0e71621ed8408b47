"""What a base vision-language model must tell PaDT: the :class:`Backbone` interface.

PaDT adds the same things to any Qwen-VL-style model (the VRT embedding and head, the decoder); what differs
between bases lives behind this interface, one file per base (``padt/backbones/<base>.py``):

- patch geometry (:class:`PatchGeometry`): ViT patch side, merge size, hence the VRT cell and the resize factor;
- :meth:`Backbone.encode_images`: one pass of the vision tower, returning the merged features in raster order
  (the prompt's image tokens and the prototypes) and the high-res features and ViT RoPE the decoder reads, in
  the order the decoder expects;
- the processor (image processor class, chat template, special tokens), the default pixel limits;
- the module prefixes of each trainable component (vision, llm) for freezing and LoRA;
- the decoder's normalisation layer, the text-coordinate convention of the base, the reference checkpoint
  layout (if any), and a small random config for the tiny-model path.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from transformers.utils import ModelOutput

from padt.errors import PaDTError

if TYPE_CHECKING:
    from torch import nn
    from transformers import PretrainedConfig, PreTrainedModel, ProcessorMixin


@dataclass(frozen=True)
class PatchGeometry:
    """How a base model cuts an image into ViT patches and VRT cells.

    Attributes:
        patch_px: side of a ViT patch in pixels (14 for Qwen2.5-VL, 16 for Qwen3-VL).
        merge_size: ``m``; the merger fuses ``m x m`` patches into one token, which is one VRT.
        temporal_patch_size: frames per patch (a still image is repeated).
    """

    patch_px: int
    merge_size: int
    temporal_patch_size: int = 2

    @property
    def cell_px(self) -> int:
        """Side of one VRT cell in pixels (``patch_px * merge_size``), also the processor's resize factor."""
        return self.patch_px * self.merge_size

    def resized_hw(self, height: int, width: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
        """``(h, w)`` the processor resizes an image to: transformers' ``smart_resize`` (both sides multiples of
        :attr:`cell_px`, area within the pixel limits, aspect ratio kept)."""
        if height <= 0 or width <= 0:
            raise PaDTError(f"image size must be positive, got height={height}, width={width}")
        # The PIL image processor module holds the function and imports without torchvision.
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        try:
            return smart_resize(
                height, width, factor=self.cell_px, min_pixels=min_pixels, max_pixels=max_pixels
            )
        except ValueError as error:
            raise PaDTError(f"cannot size the patch grid of a {height}x{width} image: {error}") from None

    def vrt_grid(self, height: int, width: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
        """``(rows, cols)`` of the VRT grid of an image of ``height x width`` pixels."""
        h, w = self.resized_hw(height, width, min_pixels, max_pixels)
        return h // self.cell_px, w // self.cell_px

    def grid_thw_to_vrt_grid(self, grid_thw: torch.Tensor | list[int]) -> tuple[int, int]:
        """``(rows, cols)`` of the VRT grid of one ``image_grid_thw`` row (ViT patch grid ``(t, H, W)``)."""
        _, h, w = (int(v) for v in grid_thw)
        return h // self.merge_size, w // self.merge_size

    @classmethod
    def of(cls, image_processor: Any) -> PatchGeometry:
        """The geometry an image processor uses (its ``patch_size``, ``merge_size``, ``temporal_patch_size``)."""
        return cls(
            int(image_processor.patch_size),
            int(image_processor.merge_size),
            int(getattr(image_processor, "temporal_patch_size", 2)),
        )


@dataclass
class VisionFeatures(ModelOutput):
    """One pass of a base model's vision tower, in the orders PaDT uses.

    Attributes:
        merged: ``ΣN x D`` merger output, unit-raster order (one row per VRT).
        high_res: ``Σn x d`` last ViT block output before the merger (the decoder's high-res memory), in the
            order the decoder's ``ordering`` expects (window order for the published Qwen2.5-VL decoders).
        visual_pe: ``(cos, sin)``, each ``Σn x head_dim``: the ViT's 2-D RoPE, same order as ``high_res``.
        extra: base-specific features the language model needs besides ``merged`` (Qwen3-VL's DeepStack
            features), passed back to :meth:`Backbone.encoder_outputs`.
    """

    merged: torch.Tensor | None = None
    high_res: torch.Tensor | None = None
    visual_pe: tuple[torch.Tensor, torch.Tensor] | None = None
    extra: Any = None


class Backbone(ABC):
    """A base vision-language model as PaDT sees it (stateless; one instance per base)."""

    #: short name used in configs and on the command line (``qwen2_5_vl``, ``qwen3_vl``).
    name: ClassVar[str]
    #: ``model_type`` of the base model's transformers config.
    model_type: ClassVar[str]
    geometry: ClassVar[PatchGeometry]
    #: the processor's pixel limits PaDT uses by default (native resolution, rounded to cells).
    min_pixels: ClassVar[int]
    max_pixels: ClassVar[int]
    #: the chat template of the base's instruct models (used when a tokenizer has none).
    chat_template: ClassVar[str]
    #: how the base writes box coordinates in text: ``"pixels"`` of the resized image, or ``"relative1000"``.
    text_coordinates: ClassVar[str]
    #: parameter-name prefixes of the base's trainable components (PaDT's own modules are added by the model).
    component_prefixes: ClassVar[Mapping[str, tuple[str, ...]]]
    #: the submodule names peft keeps as full trainable copies when a component trains beside LoRA.
    component_modules: ClassVar[Mapping[str, tuple[str, ...]]]
    #: key renames from the reference implementation's checkpoint layout, if the base has one.
    reference_key_mapping: ClassVar[Mapping[str, str]] = {}
    #: decoder orderings the base supports (``reference``: the published decoders' window/raster mix, only
    #: meaningful for Qwen2.5-VL) and the one a new PaDT config gets.
    decoder_orderings: ClassVar[tuple[str, ...]] = ("reference", "raster")
    default_decoder_ordering: ClassVar[str] = "reference"

    # ------------------------------------------------------------------------------------------ classes
    @property
    @abstractmethod
    def config_class(self) -> type[PretrainedConfig]:
        """The base model's transformers config class."""

    @property
    @abstractmethod
    def model_class(self) -> type[PreTrainedModel]:
        """The base model's ``...ForConditionalGeneration`` class."""

    @property
    @abstractmethod
    def decoder_norm(self) -> type[nn.Module]:
        """The RMSNorm class the PaDT decoder uses (parameter ``weight`` only)."""

    # ------------------------------------------------------------------------------------------ vision
    @abstractmethod
    def encode_images(
        self,
        model: PreTrainedModel,
        pixel_values: torch.Tensor,
        image_grid_thw: torch.Tensor,
        *,
        raster: bool,
    ) -> VisionFeatures:
        """Run the vision tower of ``model`` once. ``raster=True`` returns ``high_res``/``visual_pe`` in true
        patch-raster order; otherwise in the order the published decoders were trained with."""

    @abstractmethod
    def run_language_model(
        self,
        model: PreTrainedModel,
        *,
        input_ids: torch.Tensor,
        inputs_embeds: torch.Tensor,
        vision: Any,
        prefill: bool,
        **kwargs: Any,
    ) -> Any:
        """Run the base model's language model on ``inputs_embeds`` (text and VRT embeddings already in place).

        On the ``prefill`` call the prompt's image tokens receive ``vision.image_embeds`` (and whatever else the
        base feeds image positions); ``input_ids`` (global VRT ids) locate them. ``kwargs`` are the base
        model's own (attention mask, positions, cache, ``image_grid_thw``, ``mm_token_type_ids``...). Returns its
        output (``last_hidden_state``, ``cache``, ...)."""

    # ------------------------------------------------------------------------------------------ processor
    @abstractmethod
    def build_processor(
        self, image_processor: Any, tokenizer: Any, chat_template: str | None = None
    ) -> ProcessorMixin:
        """The base's transformers processor around an image processor and a tokenizer (no video processor)."""

    @abstractmethod
    def image_processor(self, min_pixels: int | None = None, max_pixels: int | None = None) -> Any:
        """A fresh image processor with this base's geometry and the given (or default) pixel limits."""

    def load_image_processor(self, folder: str, **overrides: Any) -> Any:
        """The image processor saved in ``folder`` (offline)."""
        return type(self.image_processor()).from_pretrained(folder, local_files_only=True, **overrides)

    # ------------------------------------------------------------------------------------------ tiny models
    @abstractmethod
    def tiny_config(self, special_token_ids: Mapping[str, int], **sizes: Any) -> PretrainedConfig:
        """A small random base config with this base's geometry (``sizes``: see :class:`padt.tiny.TinyModelSpec`)."""

    @property
    def special_tokens(self) -> tuple[str, ...]:
        """The base tokenizer's special tokens in id order (the tiny tokenizer appends them)."""
        return QWEN_SPECIAL_TOKENS


def unit_order_to_raster(
    unit_order: torch.Tensor, image_grid_thw: torch.Tensor, merge_size: int
) -> torch.Tensor:
    """Permutation ``perm`` with ``raster = tokens[perm]`` for ViT patch tokens of images (``t = 1``) that come
    grouped by merge unit: unit ``unit_order[k]`` (a batch-global unit index) at position ``k``, its ``m x m``
    patches consecutive in raster order within the unit. Raster order is row-major over each image's patch grid.
    An identity ``unit_order`` is the processor's own order; Qwen2.5-VL's windowed ViT permutes the units."""
    m2 = merge_size * merge_size
    grid = image_grid_thw.to(unit_order.device)
    units = grid.prod(-1) // m2
    unit_start = torch.cumsum(units, 0) - units
    patch_start = unit_start * m2
    image_of_unit = torch.repeat_interleave(torch.arange(grid.shape[0], device=grid.device), units)
    p = torch.arange(unit_order.numel() * m2, device=grid.device)
    unit = unit_order[p // m2]
    image = image_of_unit[unit]
    local = unit - unit_start[image]
    width = grid[image, 2]
    unit_row, unit_col = local // (width // merge_size), local % (width // merge_size)
    sub_row, sub_col = (p % m2) // merge_size, (p % m2) % merge_size
    raster = (unit_row * merge_size + sub_row) * width + unit_col * merge_size + sub_col + patch_start[image]
    perm = torch.empty_like(raster)
    perm[raster] = p
    return perm


#: Qwen's special tokens, in the order of their ids (shared by Qwen2.5-VL and Qwen3-VL).
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
