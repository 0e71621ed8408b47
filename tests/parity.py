"""Where the reference-parity fixtures are, the settings each one recorded, and the per-tensor report.

Folders: every folder under ``tests/fixtures/parity`` (shipped with the repository), plus the ``:``-separated
folders in ``PADT_PARITY_FIXTURES``. Each folder's ``meta.json`` records how the reference produced its outputs:
the exact ``generate`` call, the processor's pixel limits and the trainer's loss arguments. :class:`Settings`
turns them into the arguments our code takes; a recorded setting it cannot apply raises
:class:`UnsupportedSetting` naming it, so a fixture made with other settings passes or fails for the right reason.
"""

from __future__ import annotations

import ast
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHIPPED_ROOT = REPO / "tests" / "fixtures" / "parity"
REPORT: list[str] = []


def fixture_dirs() -> list[Path]:
    """The shipped fixture folders, then those named in ``PADT_PARITY_FIXTURES`` (missing ones fail later)."""
    shipped = sorted(p for p in SHIPPED_ROOT.iterdir() if p.is_dir()) if SHIPPED_ROOT.is_dir() else []
    extra = [Path(p) for p in os.environ.get("PADT_PARITY_FIXTURES", "").split(":") if p]
    folders = shipped + [p for p in extra if p.resolve() not in {s.resolve() for s in shipped}]
    return folders or [SHIPPED_ROOT / "<no fixture folder found>"]


def report(line: str) -> None:
    """Record one comparison; conftest.py prints them all at the end of the run."""
    REPORT.append(line)


class UnsupportedSetting(AssertionError):
    """A fixture recorded a setting the parity tests cannot reproduce."""


# Keyword arguments of the recorded generate call that only choose what is returned, not which tokens come out.
# padt records the decoder's states with a VRTStateRecorder instead of output_hidden_states.
_OUTPUT_ONLY = {
    "output_hidden_states",
    "output_scores",
    "output_logits",
    "return_dict_in_generate",
    "output_attentions",
}
# Keyword arguments passed on to generate as recorded.
_APPLIED = {
    "max_new_tokens",
    "min_new_tokens",
    "do_sample",
    "repetition_penalty",
    "use_cache",
    "num_beams",
    "temperature",
    "top_k",
    "top_p",
    "no_repeat_ngram_size",
    "eos_token_id",
    "pad_token_id",
    "bos_token_id",
    "length_penalty",
}
# generation_config.json fields that are bookkeeping, not decoding settings.
_CONFIG_BOOKKEEPING = {"transformers_version", "_from_model_config"}
# The reference trainer's arguments and what they mean for padt.
_LOSS_SWITCHES = {
    "use_bbox_loss": ("loss_bbox_l1", "loss_bbox_giou"),
    "use_score_loss": ("loss_score",),
    "use_mask_loss": ("loss_mask_dice", "loss_mask_focal"),
}
_TRAINER_ARGS = {
    *_LOSS_SWITCHES,
    "use_sft_vp_mask",
    "use_warm_up",
    "random_select_patch",
    "random_select_patch_num",
    "use_visual_prototype_projection",
}
_IMAGE_PROCESSOR = {"class", "min_pixels", "max_pixels", "patch_size", "temporal_patch_size", "merge_size"}


def _call_keywords(call: str) -> dict[str, Any]:
    """The literal keyword arguments of a recorded call such as ``model.generate(**x, max_new_tokens=24)``."""
    try:
        node = ast.parse(call.strip(), mode="eval").body
    except SyntaxError as error:
        raise UnsupportedSetting(f"cannot read the recorded generate call {call!r}: {error}") from None
    if not isinstance(node, ast.Call):
        raise UnsupportedSetting(f"the recorded generate call {call!r} is not a call")
    out = {}
    for keyword in node.keywords:
        if keyword.arg is None:  # **inputs: the fixture's stored inputs
            continue
        try:
            out[keyword.arg] = ast.literal_eval(keyword.value)
        except ValueError:
            raise UnsupportedSetting(
                f"generation.call: {keyword.arg}={ast.unparse(keyword.value)} is not a literal value"
            ) from None
    return out


@dataclass
class Settings:
    """What one fixture's ``meta.json`` says the reference did, as arguments for padt."""

    generate_kwargs: dict[str, Any]
    generation_config: dict[str, Any]
    image_processor: dict[str, Any]
    loss_weights: dict[str, float]
    robust_loss: bool
    warm_up: bool
    random_select: bool
    vrts_per_object: int
    prototype_projection: bool | None

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Settings:
        generation = meta.get("generation", {})
        if "call" not in generation:
            raise UnsupportedSetting("meta.json has no generation.call; the generate settings are unknown")
        recorded = _call_keywords(generation["call"])
        unknown = sorted(set(recorded) - _APPLIED - _OUTPUT_ONLY)
        if unknown:
            raise UnsupportedSetting(f"generation.call: the parity tests cannot apply {unknown}")
        if recorded.get("do_sample"):
            raise UnsupportedSetting(
                "generation.call: do_sample=True cannot be reproduced (the fixture does not record the sampler's "
                "random state); record a greedy or beam-search call"
            )
        if recorded.get("use_cache") is False:
            raise UnsupportedSetting(
                "generation.call: use_cache=False; padt generation always uses the KV cache"
            )
        kwargs = {k: v for k, v in recorded.items() if k in _APPLIED and k != "use_cache"}
        if generation.get("eos_suppressed"):
            kwargs.setdefault("min_new_tokens", kwargs.get("max_new_tokens", generation.get("new_tokens")))
        config = {
            k: v
            for k, v in generation.get("generation_config_json", {}).items()
            if k not in _CONFIG_BOOKKEEPING
        }

        image_processor = meta.get("tokenizer", {}).get("image_processor", {})
        unknown = sorted(set(image_processor) - _IMAGE_PROCESSOR)
        if unknown:
            raise UnsupportedSetting(f"tokenizer.image_processor: the parity tests cannot apply {unknown}")

        args = meta.get("trainer_args_used", {})
        unknown = sorted(set(args) - _TRAINER_ARGS)
        if unknown:
            raise UnsupportedSetting(f"trainer_args_used: the parity tests cannot apply {unknown}")
        weights = {"loss_token": 1.0}
        for switch, terms in _LOSS_SWITCHES.items():
            weights.update(dict.fromkeys(terms, 1.0 if args.get(switch, True) else 0.0))
        return cls(
            generate_kwargs=kwargs,
            generation_config=config,
            image_processor=image_processor,
            loss_weights=weights,
            robust_loss=bool(args.get("use_sft_vp_mask", True)),
            warm_up=bool(args.get("use_warm_up", True)),
            random_select=bool(args.get("random_select_patch", True)),
            vrts_per_object=int(args.get("random_select_patch_num", 5)),
            prototype_projection=args.get("use_visual_prototype_projection"),
        )

    @classmethod
    def of(cls, folder: str | Path) -> Settings:
        return cls.from_meta(json.loads((Path(folder) / "meta.json").read_text()))

    @property
    def processor_kwargs(self) -> dict[str, int]:
        """The recorded pixel limits, as ``PaDTProcessor.from_pretrained`` arguments."""
        return {
            k: int(self.image_processor[k]) for k in ("min_pixels", "max_pixels") if k in self.image_processor
        }

    def check_image_processor(self, image_processor: Any) -> None:
        """The loaded image processor must use every recorded setting (together they decide each image's grid);
        the patch geometry comes with the checkpoint and cannot be changed."""
        size = getattr(image_processor, "size", None) or {}
        actual = {
            "min_pixels": size.get("shortest_edge"),
            "max_pixels": size.get("longest_edge"),
            **{
                k: getattr(image_processor, k, None)
                for k in ("patch_size", "temporal_patch_size", "merge_size")
            },
        }
        for name, value in self.image_processor.items():
            if name != "class" and actual[name] != value:
                raise UnsupportedSetting(
                    f"tokenizer.image_processor.{name}={value} cannot be applied: the processor loaded from the "
                    f"fixture uses {actual[name]}"
                )


def load_processor(folder: str | Path):
    """The fixture's processor, with the pixel limits its ``meta.json`` recorded."""
    from padt.processing import PaDTProcessor

    settings = Settings.of(folder)
    processor = PaDTProcessor.from_pretrained(folder, **settings.processor_kwargs)
    settings.check_image_processor(processor.image_processor)
    return processor
