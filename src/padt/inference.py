"""From images and a prompt to text, boxes, masks and scores: :func:`predict` and the ``PaDT`` pipeline.

Steps: processor (prompt batch and its :class:`~padt.vrt.VRTLayout`) -> ``model.generate`` (with a
:class:`VRTStateRecorder`) -> local VRT ids -> the model's answer format (:mod:`padt.answers`: parser, decoder on
the states that emitted each VRT run) -> pixel boxes, masks and scores on the original images. The ``padt
predict`` command is :mod:`padt.commands.predict`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import LogitsProcessorList

from padt.answers import answer_format_of
from padt.errors import PaDTError
from padt.generation import (
    OVDEndPenaltyLogitsProcessor,
    OVDGrammarLogitsProcessor,
    VRTStateRecorder,
    ovd_end_penalty_of,
    ovd_grammar_of,
)
from padt.modeling import PaDTForConditionalGeneration, PaDTMixin
from padt.postprocess import Prediction, mask_box_weight_of, ovd_duplicate_iou_of
from padt.processing import PaDTProcessor

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: The model that ships with padt (trained by ``configs/bundled.yaml`` on the synthetic world).
BUNDLED_MODEL = Path(__file__).parent / "assets" / "bundled"


def default_model() -> Path:
    """The bundled model's folder; the default of ``padt predict``, ``padt demo`` and ``padt eval``."""
    if not (BUNDLED_MODEL / "config.json").is_file():
        raise PaDTError(
            f"the bundled model is missing from {BUNDLED_MODEL}; reinstall padt or pass --model PATH"
        )
    return BUNDLED_MODEL


def resolve_device_and_dtype(device: str | None, dtype: str = "auto") -> tuple[str, str]:
    """``(device, dtype name)``: the device defaults to CUDA when there is one; ``auto`` is bf16 on a GPU and fp32
    on the CPU. A device that is not there is a one-line error."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise PaDTError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if kind == "cuda":
        index = torch.device(device).index or 0
        if not torch.cuda.is_available():
            raise PaDTError(f"--device {device}: no CUDA GPU is available here; use --device cpu")
        if index >= torch.cuda.device_count():
            raise PaDTError(f"--device {device}: there are only {torch.cuda.device_count()} CUDA devices")
    elif kind == "mps" and not torch.backends.mps.is_available():
        raise PaDTError(f"--device {device}: MPS is not available here; use --device cpu")
    if dtype == "auto":
        dtype = "bf16" if kind == "cuda" else "fp32"
    if dtype not in DTYPES:
        raise PaDTError(f"unknown dtype {dtype!r}; choose one of auto, {', '.join(DTYPES)}")
    return device, dtype


@torch.inference_mode()
def predict(
    model: PaDTMixin,
    processor: PaDTProcessor,
    images: Any,
    prompts: str | Sequence[str] | None,
    *,
    task: str | Sequence[str | None] | None = None,
    max_new_tokens: int = 512,
    decode_masks: bool = True,
    mask_box_weight: float | None = None,
    ovd_end_penalty: float | None = None,
    ovd_duplicate_iou: float | None = None,
    ovd_grammar: bool | None = None,
    **generate_kwargs: Any,
) -> list[Prediction]:
    """Batched prediction.

    Args:
        model: a loaded PaDT model.
        processor: its :class:`~padt.processing.PaDTProcessor`.
        images: per sample ``None``, an image or a list of images (PIL or paths); one image for one sample.
        prompts: a prompt (or, with ``task``, the task text) per sample.
        task: ``rec``/``res``/``ovd``/``ric`` to build the reference prompt from the text (:mod:`padt.tasks`).
        decode_masks: attach each object's mask.
        mask_box_weight: blend each object's mask's tight box into its box by this weight (0: the box head's
            box, as the reference; None: the checkpoint's ``generation_config``; docs/method.md §6.5).
        ovd_end_penalty: lower by this much the tokens that end an OVD answer after an object group (0: off, as
            the reference; None: the checkpoint's ``generation_config``; docs/method.md §6.3).
        ovd_duplicate_iou: in OVD answers, mark as a duplicate each object whose box overlaps a higher-scored
            one's by more than this IoU (0: off, as the reference; None: the checkpoint's; docs/method.md §6.5).
        ovd_grammar: hold OVD answers to their format: the prompt's class names only, as many runs as each
            count says, an end within ``max_new_tokens`` (False: off, as the reference; None: the checkpoint's;
            docs/method.md §6.3).
        max_new_tokens, generate_kwargs: passed to ``generate`` (greedy by default; the checkpoint's
            ``generation_config`` applies).
    Returns:
        One :class:`Prediction` per sample.
    """
    if max_new_tokens < 1:
        raise PaDTError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    mask_box_weight_of(model.generation_config, mask_box_weight)  # a bad weight fails before generating
    ovd_end_penalty = ovd_end_penalty_of(model.generation_config, ovd_end_penalty)
    ovd_duplicate_iou_of(model.generation_config, ovd_duplicate_iou)
    ovd_grammar = ovd_grammar_of(model.generation_config, ovd_grammar)
    if isinstance(prompts, str) or prompts is None:
        prompts = [prompts or ""]
        if not isinstance(images, (list, tuple)) or (images and not isinstance(images[0], (list, tuple))):
            images = [images]
    batch = processor(list(prompts), images, task=task).to(model.device)
    inputs = dict(batch.inputs)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    prompt_length = inputs["input_ids"].shape[1]
    recorder = VRTStateRecorder(model.vocab_size, prompt_length)
    generate_kwargs.setdefault("do_sample", False)
    added: list[Any] = []
    if ovd_end_penalty > 0:
        added.append(
            OVDEndPenaltyLogitsProcessor(
                processor.encode,
                model.vocab_size,
                ovd_end_penalty,
                inputs["input_ids"],
                decode=processor.decode,
                prompt_end=processor.prompt_end,
            )
        )
    if ovd_grammar:  # last: what the penalties leave is then held to the grammar
        added.append(
            OVDGrammarLogitsProcessor(
                processor.encode,
                processor.decode,
                model.vocab_size,
                inputs["input_ids"],
                model.generation_config.eos_token_id,
                max_new_tokens,
                prompt_end=processor.prompt_end,
            )
        )
    if added:
        processors = LogitsProcessorList(generate_kwargs.pop("logits_processor", None) or [])
        processors.extend(added)
        generate_kwargs["logits_processor"] = processors
    sequences = model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        vrt_recorder=recorder,
        pad_token_id=processor.pad_token_id,
        **generate_kwargs,
    )
    completions = batch.layout.to_local(sequences[:, prompt_length:]).cpu()
    return answer_format_of(model).predictions(
        model,
        processor,
        batch,
        completions,
        recorder,
        decode_masks=decode_masks,
        mask_box_weight=mask_box_weight,
        ovd_duplicate_iou=ovd_duplicate_iou,
    )


class PaDT:
    """Load a checkpoint once, predict many times.

    >>> pipe = PaDT.from_pretrained("path/to/checkpoint")          # doctest: +SKIP
    >>> pipe("photo.jpg", "the dog on the left", task="rec")[0].objects[0].box_xyxy   # doctest: +SKIP
    """

    def __init__(self, model: PaDTMixin, processor: PaDTProcessor) -> None:
        self.model = model.eval()
        self.processor = processor

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        device: str | None = None,
        dtype: str = "auto",
        max_side: int | None = None,
    ) -> PaDT:
        """Model and processor from one folder. ``device`` defaults to CUDA when available; ``dtype`` is
        ``auto`` (bf16 on GPU, fp32 on CPU), ``bf16``, ``fp16`` or ``fp32``."""
        folder = Path(path)
        if not folder.is_dir():
            raise PaDTError(
                f"model folder {os.fspath(path)!r} does not exist; pass a checkpoint folder to --model"
            )
        device, dtype = resolve_device_and_dtype(device, dtype)
        model = PaDTForConditionalGeneration.from_pretrained(
            folder, dtype=DTYPES[dtype], attn_implementation="sdpa"
        )
        model.to(device)
        processor = PaDTProcessor.from_pretrained(folder, model.vocab_size, max_side=max_side)
        return cls(model, processor)

    def __call__(self, images: Any, prompts: str | Sequence[str] | None, **kwargs: Any) -> list[Prediction]:
        return predict(self.model, self.processor, images, prompts, **kwargs)


__all__ = [
    "BUNDLED_MODEL",
    "DTYPES",
    "PaDT",
    "Prediction",
    "default_model",
    "predict",
    "resolve_device_and_dtype",
]
