"""PaDT's model configs: a base model's config plus PaDT's fields, typed and checked when built.

Each base gets a subclass of its own transformers config (``model_type`` unchanged, so a saved ``config.json``
still reads as the base's and the reference's checkpoints load as they are):

- ``vl_decoder``: the decoder's settings, stored as the reference's dict (docs/method.md §11.2) and read
  through :attr:`PaDTConfigFields.decoder_config` as a :class:`~padt.decoder.PaDTDecoderConfig` (unknown keys are
  an error). ``hidden_size``/``num_heads``/``intermediate_size`` default to the vision tower's;
  ``llm_hidden_state`` and ``spatial_merge_size`` always follow the base.
- ``use_visual_prototype_projection``: the prototype transform (``vis_norm`` + ``vis_proj``), on in every
  published checkpoint.
- ``image_position_code``: padt's absolute position code for vision towers trained from scratch (off).
- ``prototype_position_code``: padt's position term in the VRT prototypes, randomly initialised (off), and
  ``prototype_position_init_std``: the std of that init (it shapes training only).
- ``padt_answer_format``: how the model writes objects, ``vrt`` (PaDT) or ``text`` (the coordinate baseline).
"""

from __future__ import annotations

from typing import Any

from transformers import Qwen2_5_VLConfig, Qwen3VLConfig

from padt.decoder import PaDTDecoderConfig
from padt.errors import PaDTError

ANSWER_FORMATS = ("vrt", "text")
#: Default std of the prototype position term's random init (not zero: at zero the term stays unused).
PROTOTYPE_POSITION_INIT_STD = 0.015
#: Fields written to config.json even at their default value (the reference's loaders expect them).
ALWAYS_SAVED = ("vl_decoder", "use_visual_prototype_projection")
#: padt's own fields and their defaults: written to config.json only when they differ, so that configs of the
#: published layout stay as the reference wrote them.
OPTIONAL_FIELDS = {
    "image_position_code": False,
    "prototype_position_code": False,
    "prototype_position_init_std": PROTOTYPE_POSITION_INIT_STD,
    "padt_answer_format": "vrt",
    "vrt_deepstack": False,
}


class PaDTConfigFields:
    """What every PaDT config adds to its base config (shared by the per-base subclasses)."""

    vl_decoder: dict[str, Any] | None
    use_visual_prototype_projection: bool
    image_position_code: bool
    prototype_position_code: bool
    prototype_position_init_std: float
    padt_answer_format: str

    def _finish_padt_fields(self) -> None:
        """Fill in and check PaDT's fields (called at the end of ``__post_init__`` and when one changes)."""
        object.__setattr__(self, "_finishing_padt", True)
        try:
            self._complete_padt_fields()
        finally:
            object.__setattr__(self, "_finishing_padt", False)

    def _complete_padt_fields(self) -> None:
        from padt.backbones import backbone_of

        base = backbone_of(self)
        vision = self.vision_config
        values = dict(self.vl_decoder or {})
        if isinstance(self.vl_decoder, PaDTDecoderConfig):
            values = self.vl_decoder.to_dict()
        values.setdefault("ordering", base.default_decoder_ordering)
        if values["ordering"] not in base.decoder_orderings:
            raise PaDTError(
                f"vl_decoder.ordering {values['ordering']!r} does not apply to {base.name}; use one of "
                f"{', '.join(base.decoder_orderings)}"
            )
        values.setdefault("hidden_size", vision.hidden_size)
        values.setdefault("intermediate_size", vision.intermediate_size)
        values.setdefault("num_heads", vision.num_heads)
        values["llm_hidden_state"] = self.text_config.hidden_size
        values["spatial_merge_size"] = vision.spatial_merge_size
        try:
            decoder = PaDTDecoderConfig.from_dict(values)
        except ValueError as error:
            raise PaDTError(str(error)) from None
        if decoder.hidden_size != vision.hidden_size or decoder.num_heads != vision.num_heads:
            raise PaDTError(
                f"vl_decoder.hidden_size/num_heads ({decoder.hidden_size}/{decoder.num_heads}) must equal the vision "
                f"tower's ({vision.hidden_size}/{vision.num_heads}): the decoder adds raw ViT features and uses ViT RoPE"
            )
        self.vl_decoder = decoder.to_dict(reference_layout=True)
        std = self.prototype_position_init_std
        if isinstance(std, bool) or not isinstance(std, int | float) or not 0 <= std < float("inf"):
            raise PaDTError(f"prototype_position_init_std must be a number >= 0, got {std!r}")
        if self.padt_answer_format not in ANSWER_FORMATS:
            raise PaDTError(
                f"padt_answer_format must be one of {', '.join(ANSWER_FORMATS)}, got {self.padt_answer_format!r}"
            )
        self.architectures = [_PADT_CLASS.get(self.model_type, "PaDTForConditionalGeneration")]

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        # A PaDT field changed after construction (e.g. from_pretrained(..., vl_decoder=...)) is checked and
        # completed again, so the config never holds an unchecked decoder.
        if (
            name in ("vl_decoder", "padt_answer_format")
            and getattr(self, "_post_init_done", False)
            and not getattr(self, "_finishing_padt", False)
        ):
            self._finish_padt_fields()

    @property
    def decoder_config(self) -> PaDTDecoderConfig:
        """The decoder's settings, typed."""
        return PaDTDecoderConfig.from_dict(self.vl_decoder or {})

    def to_diff_dict(self) -> dict[str, Any]:
        out = super().to_diff_dict()  # type: ignore[misc]
        for key in ALWAYS_SAVED:
            out[key] = getattr(self, key)
        for key, default in OPTIONAL_FIELDS.items():
            if out.get(key, default) == default:
                out.pop(key, None)
        return out


_PADT_CLASS = {
    "qwen2_5_vl": "PaDTForConditionalGeneration",
    "qwen3_vl": "PaDTQwen3VLForConditionalGeneration",
}


class PaDTQwen2_5_VLConfig(PaDTConfigFields, Qwen2_5_VLConfig):
    """A Qwen2.5-VL config with PaDT's fields (module docstring)."""

    vl_decoder: dict | None = None
    use_visual_prototype_projection: bool = True
    image_position_code: bool = False
    prototype_position_code: bool = False
    prototype_position_init_std: float = PROTOTYPE_POSITION_INIT_STD
    padt_answer_format: str = "vrt"

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        self._finish_padt_fields()


class PaDTQwen3VLConfig(PaDTConfigFields, Qwen3VLConfig):
    """A Qwen3-VL config with PaDT's fields (module docstring), plus ``vrt_deepstack``: whether a VRT fed back as
    input also receives the DeepStack features of the patch it names (docs/method.md §13)."""

    vl_decoder: dict | None = None
    use_visual_prototype_projection: bool = True
    image_position_code: bool = False
    prototype_position_code: bool = False
    prototype_position_init_std: float = PROTOTYPE_POSITION_INIT_STD
    padt_answer_format: str = "vrt"
    vrt_deepstack: bool = False

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        self._finish_padt_fields()


#: The config of the published checkpoints' base.
PaDTConfig = PaDTQwen2_5_VLConfig

__all__ = [
    "ANSWER_FORMATS",
    "PROTOTYPE_POSITION_INIT_STD",
    "PaDTConfig",
    "PaDTConfigFields",
    "PaDTQwen2_5_VLConfig",
    "PaDTQwen3VLConfig",
]
