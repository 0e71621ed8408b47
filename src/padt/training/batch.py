"""One PaDT training step's data and losses (docs/method.md §8.1-§8.5), independent of any trainer.

- :class:`PaDTCollator` turns records into a prompt batch (images, chat template, left padding) plus, per
  object, what the losses need that does not change from step to step: its image, its foreground patches on
  the processor's actual grid, its box and its mask target. It runs in data-loader workers.
- :func:`padt_loss` does the per-step part: draws each object's VRTs afresh, fills the answer templates,
  appends the completions, runs one forward, and computes the robust token loss and the decoder losses by
  teacher forcing. Trainers (:mod:`padt.training.trainer`) and benchmarks call it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from padt.data.patches import box_foreground_patches, foreground_patches
from padt.data.records import Record
from padt.errors import PaDTError
from padt.losses import (
    PaDTCriterion,
    build_foreground_sets,
    gt_mask_for_loss,
    robust_token_loss,
    stack_mask_targets,
)
from padt.processing import PaDTProcessor
from padt.text_boxes import ANSWER_FORMATS, box_text
from padt.training.sampling import DEFAULT_VRTS_PER_OBJECT, fill_answer_template, sample_foreground_vrts

DECODER_TERMS = ("loss_bbox_l1", "loss_bbox_giou", "loss_score", "loss_mask_dice", "loss_mask_focal")


@dataclass
class TrainObject:
    """One grounded object of a training sample, on the grid the processor gave its image."""

    image: int  # batch index of its image
    local_offset: int  # offset of that image in the sample's local VRT range
    grid_cols: int  # merged-grid columns of that image
    patches: list[int]  # foreground merged-patch indices in that image
    bbox: list[float]  # normalised xyxy
    mask: torch.Tensor | None  # (4H, 4W) bool target, or None


@dataclass
class PaDTTrainBatch:
    """What :class:`PaDTCollator` returns besides the model inputs."""

    records: list[Record]
    objects: list[list[TrainObject]]
    resized_hw: list[tuple[int, int]]  # per batch image, the processor's resized (h, w) in pixels
    layout: Any  # padt.vrt.VRTLayout of the prompt batch
    indices: list[int] = field(default_factory=list)  # dataset indices (for per-sample random streams)


class PaDTDataset(torch.utils.data.Dataset):
    """Records with their image folder; items are ``(index, record, image paths)``."""

    def __init__(self, records: Sequence[Record], image_root: str | os.PathLike | None = None) -> None:
        self.records = list(records)
        self.image_root = Path(image_root) if image_root is not None else None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[int, Record, list[str]]:
        record = self.records[index]
        root = self.image_root
        paths = [os.fspath(root / name) if root is not None else name for name in record.images]
        return index, record, paths


class PaDTCollator:
    """Records -> model inputs (prompt batch) + a :class:`PaDTTrainBatch`.

    Args:
        processor: the model's :class:`PaDTProcessor`.
        patches: ``"record"`` uses each object's stored patch list (it must have been computed for the same
            processor settings); ``"recompute"`` derives it from the mask (or box) on the actual grid, which
            is always right and costs a resize per object.
        with_masks: build mask targets (set False when the mask losses are off).
        strict_patches: RefCOCO's ``>`` coverage test when recomputing (§9.3).
    """

    def __init__(
        self,
        processor: PaDTProcessor,
        *,
        patches: str = "record",
        with_masks: bool = True,
        strict_patches: bool = False,
    ) -> None:
        if patches not in ("record", "recompute"):
            raise PaDTError(f"patches must be 'record' or 'recompute', got {patches!r}")
        self.processor = processor
        self.patches = patches
        self.with_masks = with_masks
        self.strict_patches = strict_patches

    def __call__(self, items: Sequence[tuple[int, Record, list[str]]]) -> dict[str, Any]:
        indices = [int(i) for i, _, _ in items]
        records = [r for _, r, _ in items]
        batch = self.processor([r.prompt for r in records], [paths for _, _, paths in items])
        layout = batch.layout
        grid = layout.image_grid_thw
        patch = int(self.processor.image_processor.patch_size)
        resized = [(int(h) * patch, int(w) * patch) for _, h, w in grid.tolist()]
        merge = self.processor.merge_size
        objects = []
        image = 0
        for b, record in enumerate(records):
            own = list(range(image, image + len(record.images)))
            image += len(record.images)
            sample_objects = []
            for k, obj in enumerate(record.objects):
                where = f"record {record.id!r}, object {k}"
                which = int(obj.extra.get("image_index", 0))
                if not 0 <= which < len(own):
                    raise PaDTError(f"{where}: image_index {which} but the record has {len(own)} image(s)")
                i = own[which]
                _, gh, gw = (int(v) for v in grid[i].tolist())
                rows, cols = gh // merge, gw // merge
                width, height = batch.image_sizes[b][which]
                patches = self._patches(obj, (rows, cols), (height, width), where)
                mask = None
                if self.with_masks and obj.rle is not None:
                    mask = gt_mask_for_loss(obj.rle, (gh, gw))
                sample_objects.append(
                    TrainObject(
                        image=i,
                        local_offset=int(layout.image_local_offset[i]),
                        grid_cols=cols,
                        patches=patches,
                        bbox=list(obj.bbox),
                        mask=mask,
                    )
                )
            objects.append(sample_objects)
        extra = PaDTTrainBatch(
            records=records, objects=objects, resized_hw=resized, layout=layout, indices=indices
        )
        return dict(batch.inputs) | {"padt": extra}

    def _patches(
        self, obj: Any, grid_hw: tuple[int, int], image_hw: tuple[int, int], where: str
    ) -> list[int]:
        rows, cols = grid_hw
        if self.patches == "record":
            patches = list(obj.patches)
            if patches and max(patches) >= rows * cols:
                raise PaDTError(
                    f"{where}: patch index {max(patches)} is outside the image's {rows}x{cols} VRT grid; the "
                    "patch lists were computed for other image sizes (use patches: recompute)"
                )
        elif obj.rle is not None:
            patches = foreground_patches(dict(obj.rle), grid_hw, strict=self.strict_patches)
        else:
            h, w = image_hw
            x1, y1, x2, y2 = obj.bbox
            patches = box_foreground_patches(
                [x1 * w, y1 * h, x2 * w, y2 * h], (h, w), grid_hw, strict=self.strict_patches
            )
        if not patches:
            raise PaDTError(
                f"{where}: the object covers no image patch; drop it from the record (docs/method.md §9.3)"
            )
        return patches


@dataclass
class StepOptions:
    """Per-step PaDT options (docs/method.md §8.1, §8.3, §8.4).

    Attributes:
        vrts_per_object: VRTs drawn per object per step (5; ``-1`` = every foreground patch).
        random_select: draw at random (True) or one per centre/left/top/right/bottom group (False).
        robust_loss: leave the object's other foreground VRTs out of the softmax (§8.3); False = plain CE.
        answer_format: ``"vrt"`` (PaDT) or ``"text"`` (``[x1,y1,x2,y2]`` coordinates, no decoder).
    """

    vrts_per_object: int = DEFAULT_VRTS_PER_OBJECT
    random_select: bool = True
    robust_loss: bool = True
    answer_format: str = "vrt"

    def __post_init__(self) -> None:
        if self.answer_format not in ANSWER_FORMATS:
            raise PaDTError(f"answer_format must be one of {ANSWER_FORMATS}, got {self.answer_format!r}")
        if self.vrts_per_object == 0:
            raise PaDTError("vrts_per_object must be positive, or -1 for every foreground patch")


def build_completions(
    extra: PaDTTrainBatch,
    rng: np.random.Generator | Sequence[np.random.Generator],
    options: StepOptions,
    *,
    eos: str = "<|im_end|>",
) -> tuple[list[str], list[list[list[int]]]]:
    """The completion text of every sample (ending with ``eos``) and, per sample and object, the local VRT
    indices written (empty for text coordinates).

    ``rng`` is one generator or one per sample.
    """
    texts, runs = [], []
    rngs = rng if isinstance(rng, Sequence) else [rng] * len(extra.records)
    for record, objects, sample_rng in zip(extra.records, extra.objects, rngs):
        if options.answer_format == "text":
            boxes = [box_text(o.bbox, extra.resized_hw[o.image]) for o in objects]
            texts.append(fill_answer_template(record.answer_template, boxes, eos=eos))
            runs.append([[] for _ in objects])
            continue
        sample_runs = []
        for obj in objects:
            picked = sample_foreground_vrts(
                obj.patches,
                sample_rng,
                options.vrts_per_object,
                random_select=options.random_select,
                grid_cols=obj.grid_cols,
            )
            sample_runs.append([obj.local_offset + p for p in picked])
        texts.append(fill_answer_template(record.answer_template, sample_runs, eos=eos))
        runs.append(sample_runs)
    return texts, runs


def unwrap_padt(model: torch.nn.Module) -> Any:
    """The :class:`PaDTForConditionalGeneration` inside DDP/FSDP/peft/compile wrappers."""
    seen = 0
    while not hasattr(model, "decode_objects") and seen < 8:
        seen += 1
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        elif hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            break
    if not hasattr(model, "decode_objects"):
        raise PaDTError(f"expected a PaDT model, got {type(model).__name__}")
    return model


def padt_loss(
    model: torch.nn.Module,
    processor: PaDTProcessor,
    inputs: Mapping[str, Any],
    rng: np.random.Generator | Sequence[np.random.Generator],
    *,
    options: StepOptions | None = None,
    criterion: PaDTCriterion | None = None,
    warmup: bool = False,
) -> dict[str, torch.Tensor]:
    """Forward one collated batch and return the named loss terms and ``loss`` (their weighted sum).

    Args:
        model: the PaDT model, possibly wrapped (DDP, peft, ...); the forward goes through the wrapper.
        processor: its processor (tokenises the completions).
        inputs: a :class:`PaDTCollator` output, on the model's device.
        rng: VRT sampling source(s).
        options: :class:`StepOptions`.
        criterion: the weighted losses (default: all terms, weight 1).
        warmup: feed the decoder the ground-truth VRT prototypes instead of the LLM's states (§8.4).
    """
    options = options or StepOptions()
    criterion = criterion or PaDTCriterion()
    extra: PaDTTrainBatch = inputs["padt"]
    padt = unwrap_padt(model)
    vocab = padt.vocab_size
    device = inputs["input_ids"].device
    layout = extra.layout

    texts, runs = build_completions(extra, rng, options, eos=processor.tokenizer.eos_token)
    completion = processor.encode_completions(texts, add_eos=False, layout=layout)
    comp_local = completion["input_ids"].to(device)
    comp_mask = completion["attention_mask"].to(device)
    layout_dev = layout.to(device)
    comp_ids = layout_dev.to_global(comp_local)

    prompt_len = inputs["input_ids"].shape[1]
    input_ids = torch.cat([inputs["input_ids"], comp_ids], dim=1)
    attention_mask = torch.cat([inputs["attention_mask"], comp_mask], dim=1)
    model_inputs = {k: v for k, v in inputs.items() if k not in ("padt", "input_ids", "attention_mask")}
    if "pixel_values" in model_inputs:
        model_inputs["pixel_values"] = model_inputs["pixel_values"].to(padt.dtype)
    model_inputs.pop("mm_token_type_ids", None)
    comp_len = comp_ids.shape[1]
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        use_cache=False,
        logits_to_keep=comp_len + 1,
        **model_inputs,
    )
    logits = out.logits[:, :-1]  # position P-1+t predicts completion token t

    objects = [o for sample in extra.objects for o in sample]
    picked = [run for sample in runs for run in sample]
    image_offsets = layout_dev.image_global_offset.tolist()
    targets = comp_ids.masked_fill(comp_mask == 0, -100)
    if options.answer_format == "vrt" and options.robust_loss:
        fg = build_foreground_sets(
            picked, [o.patches for o in objects], [image_offsets[o.image] for o in objects], vocab
        )
    else:  # plain cross-entropy: each VRT target's set holds only itself
        fg = [t.reshape(1) for t in targets[targets >= vocab]]
    loss_args: dict[str, Any] = dict(
        logits=logits,
        targets=targets,
        completion_mask=comp_mask,
        foreground_sets=fg,
        vocab_size=vocab,
    )

    if options.answer_format == "vrt" and objects and criterion.wants(*DECODER_TERMS):
        hidden = out.last_hidden_state
        vision = out.vision
        features: list[list[torch.Tensor]] = []
        object_images: list[list[int]] = []
        for b, sample_runs in enumerate(runs):
            positions = (comp_ids[b] >= vocab).nonzero().flatten()
            feats, start = [], 0
            for run in sample_runs:
                pos = positions[start : start + len(run)]
                start += len(run)
                if warmup:
                    feats.append(vision.prototypes[comp_ids[b, pos] - vocab])
                else:
                    feats.append(hidden[b, prompt_len - 1 + pos])
            if start != positions.numel():
                raise PaDTError(
                    f"sample {b}: the completion holds {positions.numel()} VRTs but its objects' runs hold {start};"
                    " the answer template must not contain VRT strings itself"
                )
            features.append(feats)
            object_images.append([o.image for o in extra.objects[b]])
        decoded = padt.decode_objects(features, vision, out.vrt_layout, object_images=object_images)
        gt_boxes = torch.tensor([o.bbox for o in objects], dtype=torch.float32, device=device)
        loss_args.update(pred_boxes=decoded.pred_boxes, pred_scores=decoded.pred_score, gt_boxes=gt_boxes)
        if criterion.wants("loss_mask_dice", "loss_mask_focal"):
            gt, valid, has = stack_mask_targets(
                [o.mask for o in objects],
                decoded.pred_mask_valid_hw.cpu(),
                tuple(decoded.pred_mask.shape[-2:]),
            )
            loss_args.update(
                pred_masks=decoded.pred_mask,
                gt_masks=gt.to(device),
                valid_masks=valid.to(device),
                has_mask=has.to(device),
            )
        terms = criterion(**loss_args)
    else:
        # No decoder term applies (text coordinates, no object in the batch, or decoder losses switched off).
        terms = robust_token_loss(**loss_args)
        terms["loss"] = criterion.weight_dict.get("loss_token", 0.0) * terms["loss_token"]
        if options.answer_format == "vrt":
            # No object in the batch: the decoder gets a zero-valued loss so that every parameter still takes
            # part in the backward pass (distributed data parallel requires it).
            terms["loss"] = terms["loss"] + 0.0 * sum(p.sum() for p in padt.vl_decoder.parameters())
    return terms


__all__ = [
    "PaDTCollator",
    "PaDTDataset",
    "PaDTTrainBatch",
    "StepOptions",
    "TrainObject",
    "build_completions",
    "padt_loss",
    "unwrap_padt",
]
