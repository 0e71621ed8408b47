"""From images and a prompt to text, boxes, masks and scores: the ``PaDT`` pipeline and ``padt predict``.

Steps: processor -> :meth:`PaDTForConditionalGeneration.generate` (with a :class:`VRTStateRecorder`) -> local VRT
ids -> parser (one object per VRT run) -> decoder on the states that emitted each run -> pixel boxes, masks
and scores on the original images.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from padt.errors import PaDTError
from padt.generation import VRTStateRecorder
from padt.modeling import PaDTForConditionalGeneration
from padt.postprocess import DetectedObject, detected_objects
from padt.processing import PaDTProcessor, ParsedCompletion
from padt.prompts import TASKS

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


@dataclass
class Prediction:
    """What the model said about one sample.

    Attributes:
        text: the completion, VRTs written ``<|VRT_j|>``.
        objects: one :class:`~padt.postprocess.DetectedObject` per VRT run, boxes/masks on the original image.
        object_images: index (within the sample) of the image each object lies in.
        warnings: anything the parser skipped or found malformed.
        finished: False when generation stopped before the end-of-answer token (``max_new_tokens``).
    """

    text: str
    objects: list[DetectedObject] = field(default_factory=list)
    object_images: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    finished: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "objects": [o.to_json() | {"image": i} for o, i in zip(self.objects, self.object_images)],
            "finished": self.finished,
            "warnings": self.warnings,
        }


def _object_image(layout, sample: int, vrt_indices: list[int]) -> tuple[int, str | None]:
    """Batch image index of a run (its majority image) and a warning if the run spans several images."""
    images = Counter(layout.locate(sample, j)[0] for j in vrt_indices)
    image, _ = images.most_common(1)[0]
    warning = None
    if len(images) > 1:
        warning = f"an object's VRTs span {len(images)} images; it was decoded against the majority image"
    return image, warning


@torch.inference_mode()
def predict(
    model: PaDTForConditionalGeneration,
    processor: PaDTProcessor,
    images: Any,
    prompts: str | Sequence[str] | None,
    *,
    task: str | Sequence[str | None] | None = None,
    max_new_tokens: int = 512,
    decode_masks: bool = True,
    **generate_kwargs: Any,
) -> list[Prediction]:
    """Batched prediction.

    Args:
        model: a loaded PaDT model.
        processor: its :class:`~padt.processing.PaDTProcessor`.
        images: per sample ``None``, an image or a list of images (PIL or paths); one image for one sample.
        prompts: a prompt (or, with ``task``, the task text) per sample.
        task: ``rec``/``res``/``ovd``/``ric`` to build the reference prompt from the text.
        max_new_tokens, generate_kwargs: passed to ``generate`` (greedy by default; the checkpoint's
            ``generation_config`` applies).
    Returns:
        One :class:`Prediction` per sample.
    """
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
    sequences = model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        vrt_recorder=recorder,
        pad_token_id=processor.pad_token_id,
        **generate_kwargs,
    )
    layout = batch.layout
    completions = layout.to_local(sequences[:, prompt_length:])
    eos = model.generation_config.eos_token_id
    if getattr(model.config, "padt_answer_format", "vrt") == "text":
        return _text_box_predictions(processor, completions.cpu(), eos, batch)
    parsed: list[ParsedCompletion] = processor.parse_completions(
        completions.cpu(), eos_token_ids=eos, layout=layout
    )

    features: list[list[torch.Tensor]] = []
    object_images: list[list[int]] = []
    for b, completion in enumerate(parsed):
        features.append([recorder.features(b, obj.positions) for obj in completion.objects])
        chosen = []
        for obj in completion.objects:
            image, warning = _object_image(layout, b, obj.vrt_indices)
            chosen.append(image)
            if warning:
                completion.warnings.append(warning)
        object_images.append(chosen)

    decoded = None
    if any(features) and recorder.vision is not None:
        decoded = model.decode_objects(
            features, recorder.vision, recorder.vrt_layout, object_images=object_images
        )

    results = []
    row = 0
    for b, completion in enumerate(parsed):
        prediction = Prediction(
            text=completion.text, warnings=list(completion.warnings), finished=completion.finished
        )
        own_images = (layout.image_sample == b).nonzero().flatten().tolist()
        for obj, image in zip(completion.objects, object_images[b]):
            k = own_images.index(image)
            size = batch.image_sizes[b][k]
            start = int(layout.image_local_offset[image])
            sl = slice(row, row + 1)
            [detected] = detected_objects(
                decoded.pred_boxes[sl].float(),
                decoded.pred_score[sl].float(),
                size,
                labels=[obj.label],
                vrt_ids=[[j - start for j in obj.vrt_indices]],
                pred_mask=decoded.pred_mask[sl].float() if decode_masks else None,
                pred_mask_valid_hw=decoded.pred_mask_valid_hw[sl],
            )
            prediction.objects.append(detected)
            prediction.object_images.append(k)
            row += 1
        results.append(prediction)
    return results


def _text_box_predictions(
    processor: PaDTProcessor, completions: torch.Tensor, eos: Any, batch: Any
) -> list[Prediction]:
    """Predictions of a text-coordinate model (:mod:`padt.text_boxes`): boxes parsed from the text, on the
    sample's first image, score 1, no mask."""
    from padt.text_boxes import parse_text_boxes

    layout = batch.layout
    results = []
    for b, completion in enumerate(
        processor.parse_completions(completions, eos_token_ids=eos, layout=layout)
    ):
        prediction = Prediction(
            text=completion.text, warnings=list(completion.warnings), finished=completion.finished
        )
        images = (layout.image_sample == b).nonzero().flatten().tolist()
        if images:
            _, gh, gw = (int(v) for v in layout.image_grid_thw[images[0]].tolist())
            width, height = batch.image_sizes[b][0]
            patch = int(processor.image_processor.patch_size)
            for label, (x1, y1, x2, y2) in parse_text_boxes(completion.text, (gh * patch, gw * patch)):
                box = (x1 * width, y1 * height, x2 * width, y2 * height)
                prediction.objects.append(DetectedObject(label=label, vrt_ids=[], box_xyxy=box, score=1.0))
                prediction.object_images.append(0)
        results.append(prediction)
    return results


class PaDT:
    """Load a checkpoint once, predict many times.

    >>> pipe = PaDT.from_pretrained("path/to/checkpoint")          # doctest: +SKIP
    >>> pipe("photo.jpg", "the dog on the left", task="rec")[0].objects[0].box_xyxy   # doctest: +SKIP
    """

    def __init__(self, model: PaDTForConditionalGeneration, processor: PaDTProcessor) -> None:
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
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if dtype == "auto":
            dtype = "bf16" if device.startswith("cuda") else "fp32"
        if dtype not in DTYPES:
            raise PaDTError(f"unknown dtype {dtype!r}; choose one of auto, {', '.join(DTYPES)}")
        model = PaDTForConditionalGeneration.from_pretrained(
            folder, dtype=DTYPES[dtype], attn_implementation="sdpa"
        )
        model.to(device)
        processor = PaDTProcessor.from_pretrained(folder, model.vocab_size, max_side=max_side)
        return cls(model, processor)

    def __call__(self, images: Any, prompts: str | Sequence[str] | None, **kwargs: Any) -> list[Prediction]:
        return predict(self.model, self.processor, images, prompts, **kwargs)


# ------------------------------------------------------------------------------------------------ CLI
def add_vrt_repeat_penalty_argument(parser: argparse.ArgumentParser) -> None:
    """``--vrt-repeat-penalty`` (shared by predict and eval)."""
    parser.add_argument(
        "--vrt-repeat-penalty",
        type=float,
        default=None,
        metavar="P",
        help="lower the logits of the VRTs already in an object's run by P (0: plain greedy, inf: "
        "never repeat; default: the checkpoint's generation_config)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help="checkpoint folder (model + processor files; default: the bundled model)",
    )
    parser.add_argument(
        "--image", action="append", required=True, help="input image; repeat for several images in one prompt"
    )
    parser.add_argument("--prompt", default="", help="prompt, or with --task the sentence / class list")
    parser.add_argument(
        "--task",
        choices=TASKS,
        help="build the reference prompt: rec/res sentence, ovd comma-separated classes, ric (no text)",
    )
    parser.add_argument(
        "--json", type=Path, help="write {text, objects: [{label, vrt_ids, box_xyxy, score, mask_rle}]} here"
    )
    parser.add_argument(
        "--overlay", type=Path, help="write the image with boxes, labels, scores and masks here"
    )
    parser.add_argument("--show-vrt", action="store_true", help="also outline the VRT cells on the overlay")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--max-side", type=int, default=None, help="cap the longer image side (px) first")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPES])
    add_vrt_repeat_penalty_argument(parser)


def run(args: argparse.Namespace) -> int:
    if not args.prompt.strip() and args.task != "ric":
        raise PaDTError("the prompt is empty; pass --prompt TEXT (or --task ric for a caption)")
    for image in args.image:
        if not Path(image).is_file():
            raise PaDTError(f"image file not found: {image}")
    pipe = PaDT.from_pretrained(
        args.model or default_model(), device=args.device, dtype=args.dtype, max_side=args.max_side
    )
    [prediction] = pipe(
        [list(args.image)],
        [args.prompt],
        task=args.task,
        max_new_tokens=args.max_new_tokens,
        vrt_repeat_penalty=args.vrt_repeat_penalty,
    )  # None: the checkpoint's setting
    print(prediction.text)
    for obj, image in zip(prediction.objects, prediction.object_images):
        where = f" [image {image}]" if len(args.image) > 1 else ""
        box = ", ".join(f"{v:.1f}" for v in obj.box_xyxy)
        print(f"  {obj.label or '(no label)'}{where}: box [{box}] score {obj.score:.3f} VRTs {obj.vrt_ids}")
    for warning in prediction.warnings:
        print(f"padt: warning: {warning}", file=sys.stderr)
    if args.task in ("rec", "res") and not prediction.objects:
        print("padt: warning: the model referred to no image patch (no VRT in its answer)", file=sys.stderr)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(prediction.to_json(), indent=2))
    if args.overlay:
        from padt.visualize import draw_prediction

        draw_prediction(
            args.image[0],
            prediction,
            image_index=0,
            show_vrt=args.show_vrt,
            merge_size=pipe.processor.merge_size,
            processor=pipe.processor,
        ).save(args.overlay)
        print(f"overlay written to {args.overlay}")
    return 0
