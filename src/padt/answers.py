"""How a model writes the objects of its answer: one strategy per answer format.

- :class:`VRTAnswers` (PaDT): each object is a run of visual reference tokens; the decoder turns the hidden
  states that emitted the run into a box, a mask and a score (docs/method.md §6, §8.1).
- :class:`TextCoordinateAnswers` (the baseline PaDT is compared against): each object is a box written in text,
  ``[x1,y1,x2,y2]``, in the base model's own coordinate convention (docs/method.md §5.6); no decoder.

Both fill the same answer templates (``<|Obj_k|>`` placeholders), so the two differ only in how an object is
referred to. A format builds a training completion (:meth:`AnswerFormat.write`) and turns generated
completions into predictions (:meth:`AnswerFormat.predictions`); the training step and the prediction
pipeline call these methods and never ask which format they have. A model's format is
``config.padt_answer_format`` (:func:`answer_format_of`).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from padt.box_ops import normalise_xyxy, scale_xyxy
from padt.errors import PaDTError
from padt.generation import ovd_rows
from padt.postprocess import (
    DetectedObject,
    Prediction,
    detected_objects,
    mark_duplicates,
    mask_box_weight_of,
    ovd_duplicate_iou_of,
)
from padt.processing.parsing import QuoteTracker
from padt.training.sampling import fill_answer_template, sample_foreground_vrts

if TYPE_CHECKING:
    from padt.generation import VRTStateRecorder
    from padt.processing import PaDTBatch, PaDTProcessor
    from padt.training.batch import TrainObject

#: What a written box looks like: ``[x1,y1,x2,y2]`` with integer coordinates.
BOX_PATTERN = re.compile(r"\[\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*\]")
#: Relative coordinates (Qwen3-VL) run from 0 to this value across the image.
RELATIVE_SCALE = 1000
#: A prediction's warning when a mask-box weight is set but the model writes no masks.
NO_MASK_BOXES = "mask_box_weight has no effect: this model predicts no masks; its boxes are as predicted"


class AnswerFormat(ABC):
    """How objects are written in an answer (module docstring)."""

    name: ClassVar[str]
    #: whether the PaDT decoder (and its losses) take part.
    uses_decoder: ClassVar[bool]

    @abstractmethod
    def write(
        self,
        template: str,
        objects: Sequence[TrainObject],
        rng: np.random.Generator,
        *,
        resized_hw: Sequence[tuple[int, int]],
        vrts_per_object: int,
        random_select: bool,
        eos: str,
    ) -> tuple[str, list[list[int]]]:
        """The training completion of one record (placeholders filled, ``eos`` appended) and, per object, the
        local VRT indices written (empty lists when objects are not VRTs). ``resized_hw`` is the processor's
        ``(h, w)`` in pixels of each batch image."""

    def predictions(
        self,
        model: Any,
        processor: PaDTProcessor,
        batch: PaDTBatch,
        completions: torch.Tensor,
        recorder: VRTStateRecorder,
        *,
        decode_masks: bool = True,
        mask_box_weight: float | None = None,
        ovd_duplicate_iou: float | None = None,
    ) -> list[Prediction]:
        """One :class:`Prediction` per sample from the generated LOCAL completion ids ``(B, L)`` (prompt
        removed, on the CPU). ``decode_masks``: attach each object's mask; ``mask_box_weight``: blend each
        mask's tight box into its box (:func:`~padt.postprocess.detected_objects`); ``ovd_duplicate_iou``: in
        answers to the OVD prompt, mark the objects that overlap a higher-scored one
        (:func:`~padt.postprocess.mark_duplicates`). None: the checkpoint's ``generation_config`` decides."""
        weight = mask_box_weight_of(model.generation_config, mask_box_weight)
        duplicate_iou = ovd_duplicate_iou_of(model.generation_config, ovd_duplicate_iou)
        results = self._predictions(
            model, processor, batch, completions, recorder, decode_masks=decode_masks, mask_box_weight=weight
        )
        if duplicate_iou:
            ovd = ovd_rows(
                batch.inputs["input_ids"].cpu(),
                processor.encode,
                decode=processor.decode,
                prompt_end=processor.prompt_end,
            ).tolist()
            for prediction, is_ovd in zip(results, ovd, strict=True):
                if is_ovd:
                    mark_duplicates(prediction, duplicate_iou)
        return results

    @abstractmethod
    def _predictions(
        self, model, processor, batch, completions, recorder, *, decode_masks: bool, mask_box_weight: float
    ) -> list[Prediction]:
        """:meth:`predictions` before duplicates are marked, with the mask-box weight resolved."""


class VRTAnswers(AnswerFormat):
    """Objects as runs of visual reference tokens, decoded by the PaDT decoder."""

    name = "vrt"
    uses_decoder = True

    def write(self, template, objects, rng, *, resized_hw, vrts_per_object, random_select, eos):
        runs = []
        for obj in objects:
            picked = sample_foreground_vrts(
                obj.patches, rng, vrts_per_object, random_select=random_select, grid_cols=obj.grid_cols
            )
            runs.append([obj.local_offset + p for p in picked])
        return fill_answer_template(template, runs, eos=eos), runs

    def _predictions(self, model, processor, batch, completions, recorder, *, decode_masks, mask_box_weight):
        layout = batch.layout
        eos = model.generation_config.eos_token_id
        parsed = processor.parse(completions, eos_token_ids=eos, layout=layout.to("cpu"))
        features: list[list[torch.Tensor]] = []
        object_images: list[list[int]] = []
        object_patches: list[list[list[int]]] = []
        for b, completion in enumerate(parsed):
            features.append([recorder.features(b, obj.positions) for obj in completion.objects])
            images, patches = [], []
            for obj in completion.objects:
                located = layout.split(b, obj.vrt_indices)
                counts = Counter(image for image, _ in located)
                image = counts.most_common(1)[0][0]
                if len(counts) > 1:
                    completion.warnings.append(
                        f"an object's VRTs span {len(counts)} images; it was decoded against the majority image"
                    )
                images.append(image)
                patches.append([j for i, j in located if i == image])
            object_images.append(images)
            object_patches.append(patches)

        decoded = None
        if any(features):
            decoded = model.decode_objects(features, recorder.vision, layout, object_images=object_images)
        results, row = [], 0
        for b, completion in enumerate(parsed):
            prediction = Prediction(
                text=completion.text, warnings=list(completion.warnings), finished=completion.finished
            )
            own_images = (layout.image_sample == b).nonzero().flatten().tolist()
            if mask_box_weight > 0 and completion.objects and decoded.pred_mask is None:
                prediction.warnings.append(NO_MASK_BOXES)
            for obj, image, patches in zip(completion.objects, object_images[b], object_patches[b]):
                k = own_images.index(image)
                sl = slice(row, row + 1)
                masks = (decode_masks or mask_box_weight > 0) and decoded.pred_mask is not None
                [detected] = detected_objects(
                    decoded.pred_boxes[sl].float(),
                    decoded.pred_score[sl].float(),
                    batch.image_sizes[b][k],
                    labels=[obj.label],
                    vrt_ids=[patches],
                    pred_mask=decoded.pred_mask[sl].float() if masks else None,
                    pred_mask_valid_hw=decoded.pred_mask_valid_hw[sl],
                    mask_box_weight=mask_box_weight if masks else 0.0,
                    keep_masks=decode_masks,
                )
                prediction.objects.append(detected)
                prediction.object_images.append(k)
                row += 1
            results.append(prediction)
        return results


class TextCoordinateAnswers(AnswerFormat):
    """Objects as ``[x1,y1,x2,y2]`` text boxes (no decoder, score 1, no mask).

    ``coordinates``: the base model's convention, ``"pixels"`` of the processor's resized image (Qwen2.5-VL)
    or ``"relative1000"``, 0-1000 across the image (Qwen3-VL).
    """

    name = "text"
    uses_decoder = False

    def __init__(self, coordinates: str = "pixels") -> None:
        if coordinates not in ("pixels", "relative1000"):
            raise PaDTError(f"text coordinates are 'pixels' or 'relative1000', got {coordinates!r}")
        self.coordinates = coordinates

    def _extent(self, resized_hw: tuple[int, int]) -> tuple[int, int]:
        """``(h, w)`` the written coordinates run over."""
        return (RELATIVE_SCALE, RELATIVE_SCALE) if self.coordinates == "relative1000" else resized_hw

    def box_text(self, bbox_xyxy: Sequence[float], resized_hw: tuple[int, int]) -> str:
        """``[x1,y1,x2,y2]`` in integers, clipped to the image, from a normalised xyxy box."""
        h, w = self._extent(resized_hw)
        coords = [round(v) for v in scale_xyxy(bbox_xyxy, w, h)]
        return "[" + ",".join(str(min(max(c, 0), side)) for c, side in zip(coords, (w, h, w, h))) + "]"

    def parse_boxes(self, text: str, resized_hw: tuple[int, int]) -> list[tuple[str, list[float]]]:
        """``(label, normalised xyxy box)`` for every ``[x1,y1,x2,y2]`` of a completion, in order.

        The label is the quoted phrase the box belongs to, by the same rule as for VRT runs
        (:class:`~padt.processing.parsing.QuoteTracker`). Boxes are clipped to the image; corners are put in
        order.
        """
        h, w = self._extent(resized_hw)
        if h <= 0 or w <= 0:
            raise PaDTError(f"resized image size must be positive, got {resized_hw}")
        out = []
        quotes, seen = QuoteTracker(), 0
        for match in BOX_PATTERN.finditer(text):
            quotes.feed(text[seen : match.start()])
            seen = match.start()
            x1, y1, x2, y2 = normalise_xyxy([int(v) for v in match.groups()], w, h)
            xs, ys = sorted((x1, x2)), sorted((y1, y2))
            out.append((quotes.current(), [xs[0], ys[0], xs[1], ys[1]]))
        return out

    def write(self, template, objects, rng, *, resized_hw, vrts_per_object, random_select, eos):
        boxes = [self.box_text(o.bbox, resized_hw[o.image]) for o in objects]
        return fill_answer_template(template, boxes, eos=eos), [[] for _ in objects]

    def _predictions(self, model, processor, batch, completions, recorder, *, decode_masks, mask_box_weight):
        layout = batch.layout.to("cpu")
        eos = model.generation_config.eos_token_id
        patch = processor.geometry.patch_px
        results = []
        for b, completion in enumerate(processor.parse(completions, eos_token_ids=eos, layout=layout)):
            prediction = Prediction(
                text=completion.text, warnings=list(completion.warnings), finished=completion.finished
            )
            images = (layout.image_sample == b).nonzero().flatten().tolist()
            if images:
                _, gh, gw = (int(v) for v in layout.image_grid_thw[images[0]].tolist())
                width, height = batch.image_sizes[b][0]
                found = self.parse_boxes(completion.text, (gh * patch, gw * patch))
                if mask_box_weight > 0 and found:
                    prediction.warnings.append(NO_MASK_BOXES)
                for label, box in found:
                    pixel_box = tuple(scale_xyxy(box, width, height))
                    prediction.objects.append(
                        DetectedObject(label=label, vrt_ids=[], box_xyxy=pixel_box, score=1.0)
                    )
                    prediction.object_images.append(0)
            results.append(prediction)
        return results


ANSWER_FORMATS: dict[str, type[AnswerFormat]] = {"vrt": VRTAnswers, "text": TextCoordinateAnswers}


def answer_format(name: str, *, text_coordinates: str = "pixels") -> AnswerFormat:
    """The answer format called ``name`` (``vrt`` or ``text``), for a base with the given text coordinates."""
    if name not in ANSWER_FORMATS:
        raise PaDTError(f"unknown answer format {name!r}; choose one of {', '.join(ANSWER_FORMATS)}")
    return TextCoordinateAnswers(text_coordinates) if name == "text" else VRTAnswers()


def answer_format_of(model: Any) -> AnswerFormat:
    """The answer format a model was trained with (``config.padt_answer_format``), in its base's conventions."""
    return answer_format(model.config.padt_answer_format, text_coordinates=model.backbone.text_coordinates)


__all__ = [
    "ANSWER_FORMATS",
    "AnswerFormat",
    "TextCoordinateAnswers",
    "VRTAnswers",
    "answer_format",
    "answer_format_of",
]
