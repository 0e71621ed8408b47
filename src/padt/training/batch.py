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

from padt.answers import ANSWER_FORMATS, answer_format
from padt.backbones import default_geometry
from padt.box_ops import scale_xyxy
from padt.data.patches import box_foreground_patches, foreground_patches, merged_grid_for_image
from padt.data.records import Record
from padt.errors import PaDTError
from padt.losses import (
    DECODER_TERMS,
    PaDTCriterion,
    PaDTOutputs,
    PaDTTargets,
    build_foreground_sets,
    gt_mask_for_loss,
)
from padt.processing import PaDTProcessor
from padt.training.sampling import DEFAULT_VRTS_PER_OBJECT


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
    """Records -> ``{"inputs": model inputs of the prompt batch, "targets": PaDTTrainBatch}``.

    Args:
        processor: the model's :class:`PaDTProcessor`.
        patches: ``"record"`` uses each object's stored patch list, which is computed on the VRT grid the
            default base's processor gives the image (:func:`padt.data.patches.merged_grid_for_image`); an
            image the processor puts on another grid (other ``min_pixels``/``max_pixels``), or another base's
            cells, is an error.
            ``"recompute"`` derives the list from the mask (or box) on the actual grid, which is always right
            and costs a resize per object; ``"auto"`` uses the stored list where the grids agree and recomputes
            it where they do not.
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
        if patches not in ("record", "recompute", "auto"):
            raise PaDTError(f"patches must be 'record', 'recompute' or 'auto', got {patches!r}")
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
        geometry = self.processor.geometry
        resized = [(int(h) * geometry.patch_px, int(w) * geometry.patch_px) for _, h, w in grid.tolist()]
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
                rows, cols = geometry.grid_thw_to_vrt_grid(grid[i])
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
        return {"inputs": dict(batch.inputs), "targets": extra}

    def _patches(
        self, obj: Any, grid_hw: tuple[int, int], image_hw: tuple[int, int], where: str
    ) -> list[int]:
        return object_patches(
            obj,
            grid_hw,
            image_hw,
            source=self.patches,
            geometry=self.processor.geometry,
            strict=self.strict_patches,
            where=where,
        )


def object_patches(
    obj: Any,
    grid_hw: tuple[int, int],
    image_hw: tuple[int, int],
    *,
    source: str = "auto",
    geometry: Any = None,
    strict: bool = False,
    where: str = "object",
) -> list[int]:
    """An object's foreground patches on the ``grid_hw`` VRT grid the processor gives its ``image_hw`` image.

    ``source`` (``padt.patches``): ``record`` takes the object's stored list, computed with the default base's
    cells on the grid its processor gives the image (:func:`padt.data.patches.merged_grid_for_image`), and
    refuses other cells (``geometry``, another base) or another grid (other ``min_pixels``/``max_pixels``);
    ``recompute`` derives the list from the mask (or box) on ``grid_hw`` with ``geometry``'s cells; ``auto``
    takes the stored list where it applies and recomputes it where it does not. An object that covers no patch
    is an error (``where`` names it).
    """
    rows, cols = grid_hw
    use_record = False
    if source != "recompute":
        default_cell = default_geometry().cell_px
        if geometry is not None and geometry.cell_px != default_cell:
            problem = f"is for {default_cell}-px cells but the model's are {geometry.cell_px} px"
        else:
            stored_grid = merged_grid_for_image(*image_hw)  # the grid the stored lists are computed on
            problem = (
                f"is for a {stored_grid[0]}x{stored_grid[1]} VRT grid but the processor puts this image on "
                f"{rows}x{cols} (its min_pixels/max_pixels differ from the default)"
                if stored_grid != (rows, cols)
                else ""
            )
        if problem and source == "record":
            raise PaDTError(f"{where}: the stored patch list {problem}; use padt.patches: recompute or auto")
        use_record = not problem
    if use_record:
        patches = list(obj.patches)
        if patches and max(patches) >= rows * cols:
            raise PaDTError(
                f"{where}: patch index {max(patches)} is outside the image's {rows}x{cols} VRT grid; the "
                "patch lists were computed for other image sizes (use patches: recompute)"
            )
    elif obj.rle is not None:
        patches = foreground_patches(dict(obj.rle), grid_hw, strict=strict, geometry=geometry)
    else:
        h, w = image_hw
        patches = box_foreground_patches(
            scale_xyxy(obj.bbox, w, h), (h, w), grid_hw, strict=strict, geometry=geometry
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
        answer_format: ``"vrt"`` (PaDT) or ``"text"`` (``[x1,y1,x2,y2]`` coordinates, no decoder); the model
            being trained writes it into its config, and its base decides the text coordinates.
        count_token_weight: factor on the token loss of the counts in OVD answers (the number before each
            kind's name, :func:`count_token_weights`); 1 = the reference's plain per-token mean.
    """

    vrts_per_object: int = DEFAULT_VRTS_PER_OBJECT
    random_select: bool = True
    robust_loss: bool = True
    answer_format: str = "vrt"
    count_token_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.answer_format not in ANSWER_FORMATS:
            raise PaDTError(
                f"answer_format must be one of {tuple(ANSWER_FORMATS)}, got {self.answer_format!r}"
            )
        if self.vrts_per_object == 0:
            raise PaDTError("vrts_per_object must be positive, or -1 for every foreground patch")
        if self.count_token_weight < 0:
            raise PaDTError(f"count_token_weight must be >= 0, got {self.count_token_weight}")
        if self.count_token_weight != 1.0 and self.answer_format == "text":
            raise PaDTError(
                "count_token_weight weighs the counts of VRT answers; text answers write box coordinates as "
                "numbers too, so leave it at 1 with answer_format text"
            )


def build_completions(
    extra: PaDTTrainBatch,
    rng: np.random.Generator | Sequence[np.random.Generator],
    options: StepOptions,
    *,
    eos: str = "<|im_end|>",
    text_coordinates: str = "pixels",
) -> tuple[list[str], list[list[list[int]]]]:
    """The completion text of every sample (ending with ``eos``) and, per sample and object, the local VRT
    indices written (empty for text coordinates), by the answer format of ``options``.

    ``rng`` is one generator or one per sample.
    """
    fmt = answer_format(options.answer_format, text_coordinates=text_coordinates)
    texts, runs = [], []
    rngs = rng if isinstance(rng, Sequence) else [rng] * len(extra.records)
    for record, objects, sample_rng in zip(extra.records, extra.objects, rngs):
        text, sample_runs = fmt.write(
            record.answer_template,
            objects,
            sample_rng,
            resized_hw=extra.resized_hw,
            vrts_per_object=options.vrts_per_object,
            random_select=options.random_select,
            eos=eos,
        )
        texts.append(text)
        runs.append(sample_runs)
    return texts, runs


def count_token_weights(
    tokens: torch.Tensor, tasks: Sequence[str], tokenizer: Any, vocab_size: int, weight: float
) -> torch.Tensor:
    """``(B, L)`` loss factors that are ``weight`` on the counts of OVD answers and 1 elsewhere.

    A count is a text token of an OVD sample that is a number (the ``2`` of ``2 "star" (<OBJ>, <OBJ>)``; the
    VRT answer formats of docs/method.md §4.4 hold no other numbers, and :class:`StepOptions` refuses the
    weight with text coordinates). Ignored positions (negative ids) and VRTs are never counts.
    """
    weights = torch.ones(tokens.shape, dtype=torch.float32, device=tokens.device)
    pieces: dict[int, bool] = {}
    for b, task in enumerate(tasks):
        if task != "ovd":
            continue
        for t, token in enumerate(tokens[b].tolist()):
            if token < 0 or token >= vocab_size:
                continue
            if token not in pieces:
                pieces[token] = tokenizer.decode([token]).strip().isdigit()
            if pieces[token]:
                weights[b, t] = weight
    return weights


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


@dataclass
class TeacherForced:
    """One teacher-forced forward of a batch's completions (:func:`teacher_force`)."""

    out: Any  # the model's output (``last_hidden_state``, ``vision``, ...)
    logits: torch.Tensor  # (B, T, V): position t predicts completion token t
    completion_ids: torch.Tensor  # (B, T) global ids (VRTs at vocab + global patch index)
    completion_mask: torch.Tensor  # (B, T)
    runs: list[list[list[int]]]  # per sample, per object, the local VRT indices written
    layout: Any  # padt.vrt.VRTLayout of the batch, on the model's device
    prompt_len: int


def teacher_force(
    model: torch.nn.Module,
    processor: PaDTProcessor,
    batch: Mapping[str, Any],
    rng: np.random.Generator | Sequence[np.random.Generator],
    options: StepOptions | None = None,
) -> TeacherForced:
    """Fill the batch's answer templates (each object's VRTs drawn afresh), append them to the prompts and run
    one forward: the part of a training step before the losses, also what diagnostics read the model's
    next-token predictions from (e.g. ``scripts/ovd_breakdown.py --teacher-forced``)."""
    options = options or StepOptions()
    inputs, extra = batch["inputs"], batch["targets"]
    padt = unwrap_padt(model)
    device = inputs["input_ids"].device
    layout = extra.layout.to(device)  # the processor's layout of this batch, also in inputs["vrt_layout"]

    texts, runs = build_completions(
        extra,
        rng,
        options,
        eos=processor.tokenizer.eos_token,
        text_coordinates=padt.backbone.text_coordinates,
    )
    completion = processor.encode_completions(texts, add_eos=False, layout=layout)
    comp_ids = layout.to_global(completion["input_ids"].to(device))
    comp_mask = completion["attention_mask"].to(device)

    prompt_len = inputs["input_ids"].shape[1]
    model_inputs = {
        k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")
    }
    if "pixel_values" in model_inputs:
        model_inputs["pixel_values"] = model_inputs["pixel_values"].to(padt.dtype)
    model_inputs["vrt_layout"] = layout
    comp_len = comp_ids.shape[1]
    out = model(
        input_ids=torch.cat([inputs["input_ids"], comp_ids], dim=1),
        attention_mask=torch.cat([inputs["attention_mask"], comp_mask], dim=1),
        use_cache=False,
        logits_to_keep=comp_len + 1,
        **model_inputs,
    )
    return TeacherForced(
        out=out,
        logits=out.logits[:, :-1],  # position P-1+t predicts completion token t
        completion_ids=comp_ids,
        completion_mask=comp_mask,
        runs=runs,
        layout=layout,
        prompt_len=prompt_len,
    )


def padt_loss(
    model: torch.nn.Module,
    processor: PaDTProcessor,
    batch: Mapping[str, Any],
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
        batch: a :class:`PaDTCollator` output (``inputs`` on the model's device, ``targets``).
        rng: VRT sampling source(s).
        options: :class:`StepOptions`.
        criterion: the weighted losses (default: all terms, weight 1).
        warmup: feed the decoder the ground-truth VRT prototypes instead of the LLM's states (§8.4).
    """
    options = options or StepOptions()
    criterion = criterion or PaDTCriterion()
    extra = batch["targets"]
    padt = unwrap_padt(model)
    vocab = padt.vocab_size
    forced = teacher_force(model, processor, batch, rng, options)
    out, runs, comp_ids, comp_mask = forced.out, forced.runs, forced.completion_ids, forced.completion_mask
    device, layout = comp_ids.device, forced.layout

    objects = [o for sample in extra.objects for o in sample]
    picked = [run for sample in runs for run in sample]
    tokens = comp_ids.masked_fill(comp_mask == 0, -100)
    fmt_is_vrt = options.answer_format == "vrt"
    if fmt_is_vrt and options.robust_loss:
        fg = build_foreground_sets(picked, [layout.global_ids(o.image, o.patches) for o in objects])
    else:  # plain cross-entropy: each VRT target's set holds only itself
        fg = [t.reshape(1) for t in tokens[tokens >= vocab]]
    targets = PaDTTargets(
        tokens=tokens,
        completion_mask=comp_mask,
        foreground_sets=fg,
        vocab_size=vocab,
        boxes=torch.tensor([o.bbox for o in objects], dtype=torch.float32, device=device).reshape(-1, 4),
        masks=[o.mask for o in objects],
        token_weights=None
        if options.count_token_weight == 1.0
        else count_token_weights(
            tokens, [r.task for r in extra.records], processor.tokenizer, vocab, options.count_token_weight
        ),
    )
    decoded = None
    if fmt_is_vrt and criterion.wants_decoder:
        decoded = padt.decode_objects(
            _decoder_features(out, runs, comp_ids, forced.prompt_len, vocab, warmup),
            out.vision,
            layout,
            object_images=[[o.image for o in sample] for sample in extra.objects],
            placeholder_if_empty=True,
        )
    return criterion(PaDTOutputs(logits=forced.logits, decoded=decoded), targets)


def _decoder_features(
    out: Any, runs: list[list[list[int]]], comp_ids: torch.Tensor, prompt_len: int, vocab: int, warmup: bool
) -> list[list[torch.Tensor]]:
    """Per sample, per object, the decoder's input features by teacher forcing (§8.4): the last-layer states
    that predicted the object's VRTs, or during warm-up the prototypes of those VRTs."""
    features = []
    for b, sample_runs in enumerate(runs):
        positions = (comp_ids[b] >= vocab).nonzero().flatten()
        feats, start = [], 0
        for run in sample_runs:
            pos = positions[start : start + len(run)]
            start += len(run)
            if warmup:
                feats.append(out.vision.prototypes[comp_ids[b, pos] - vocab])
            else:
                feats.append(out.last_hidden_state[b, prompt_len - 1 + pos])
        if start != positions.numel():
            raise PaDTError(
                f"sample {b}: the completion holds {positions.numel()} VRTs but its objects' runs hold {start}; "
                "the answer template must not contain VRT strings itself"
            )
        features.append(feats)
    return features


__all__ = [
    "DECODER_TERMS",
    "PaDTCollator",
    "PaDTDataset",
    "PaDTTrainBatch",
    "StepOptions",
    "TeacherForced",
    "TrainObject",
    "build_completions",
    "count_token_weights",
    "padt_loss",
    "teacher_force",
    "unwrap_padt",
]
