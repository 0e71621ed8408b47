"""Vision pretraining: the vision tower alone, with dense labels that the synthetic world gives for free.

Real PaDT starts from Qwen2.5-VL, whose ViT already knows what things look like. A model built from scratch
has no such tower, and teaching one through the language model's loss alone is slow (the tiny bundled model's
tower learnt colour and size but hardly the kinds of objects). This stage trains the vision component
(``model.visual`` and the image position code) with linear heads on the features the model gives its image
tokens (:meth:`~padt.modeling.PaDTForConditionalGeneration.encode_images` ``.image_embeds``: merged patches,
raster order), one prediction per merged patch:

- ``shape``, ``colour``, ``size``: of the object that covers most of the patch, or background (class 0);
- ``box``: the distances from the patch centre to that object's box edges (left, top, right, bottom, in
  patches), as FCOS regresses them, so that each patch knows its object's extent;
- ``mask``: the object's coverage of the patch's 4x4 sub-cells (7 px each), a boundary-aware target;
- ``position``: the patch centre's normalised (x, y), which the image position code makes linearly readable
  (the language model needs it for "the leftmost ...", the decoder for boxes);
- ``count``: how many objects of the patch's kind the scene holds (``COUNT_MAX`` or more as one class; 0 for
  background). An OVD answer states each kind's count before it points at the objects (``2 "star" (...)``);
  attention averages over the patches it selects, so a language model reading plain kind features learns the
  area of a kind, not the number of its objects. The head asks every patch of a kind to carry the count, so
  that the language model would only have to look at one of them (measured: the tower does not learn it;
  docs/bundled-model.md);
- ``centre``: the kind of the object whose box centre lies in the patch (0 for none): one patch per object,
  whatever its size, so that objects (not patches) of a kind can be counted.

No language model or decoder runs, so a step costs a fraction of a PaDT step. Labels are computed on the
grid the processor gives each image (its ``smart_resize``), with the foreground rule of
:mod:`padt.data.patches`. The heads are linear so that what they read is linearly available to the language
model and to the VRT prototypes (``h · prototype``).

Checkpointing, resume, logging and schedules come from transformers' ``Trainer``. The result is a normal PaDT
checkpoint folder (only the vision component trained; the heads in ``vision_heads.safetensors``) that a PaDT
stage starts from with ``model.vision_from`` (see :mod:`padt.training.stages`), and that
``scripts/shape_probe.py --model`` probes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm
from transformers import Trainer

from padt.backbones import PatchGeometry, default_geometry
from padt.data.patches import COVERAGE
from padt.data.synthetic import COLOURS, SHAPES, SIZES, Scene, make_scene
from padt.errors import PaDTError
from padt.masks import resize_bilinear_cv2

if TYPE_CHECKING:
    from padt.training.config import VisionStageConfig

HEADS: dict[str, int] = {  # output width of each head
    "shape": 1 + len(SHAPES),
    "colour": 1 + len(COLOURS),
    "size": 1 + len(SIZES),
    "box": 4,
    "mask": 16,
    "position": 2,
    "count": 1 + 6,  # 0 background, then 1 .. COUNT_MAX objects of the patch's kind
    "centre": 1 + len(SHAPES),
}
COUNT_MAX = HEADS["count"] - 1
CLASS_HEADS = ("shape", "colour", "size")
# Per-object heads on the object's features averaged over its foreground patches: name -> attribute.
OBJECT_HEADS = {"object": "shape", "object_colour": "colour", "object_size": "size"}
LOSS_TERMS = (*HEADS, *OBJECT_HEADS)
#: Loss weights unless ``vision.loss_weights`` says otherwise: every per-patch head but the position (measured:
#: it does not help the shape probe), no object head (``configs/bundled.yaml`` turns ``object`` on).
DEFAULT_WEIGHTS = (
    dict.fromkeys(HEADS, 1.0)
    | {"position": 0.0, "count": 0.0, "centre": 0.0}
    | dict.fromkeys(OBJECT_HEADS, 0.0)
)
SUB = 4  # sub-cells per side of a merged patch in the mask target
HEADS_FILE = "vision_heads.safetensors"
# Random stream of the pretraining scenes (padt.data.synthetic uses 0-3 for its datasets).
_SCENE_STREAM = 7


# ---------------------------------------------------------------------------------------------- labels
def cell_targets(
    scene: Scene, grid_hw: tuple[int, int], geometry: PatchGeometry | None = None
) -> dict[str, np.ndarray]:
    """Dense per-merged-patch targets of ``scene`` on a ``rows x cols`` grid of the resized image.

    Returns ``shape``/``colour``/``size`` ``(N,)`` int (0 = background), ``box`` ``(N, 4)`` float (patch
    centre to the box edges, in cells), ``mask`` ``(N, 16)`` float (coverage of the 4x4 sub-cells, row-major),
    ``position`` ``(N, 2)`` float (the patch centre's normalised x, y), ``count`` ``(N,)`` int (objects of the
    patch's kind in the scene, at most ``COUNT_MAX``; 0 = background), ``centre`` ``(N,)`` int (the kind of
    the object whose box centre lies in the patch, the topmost if several; 0 = none),
    ``fg`` and ``owner`` (the object each patch is labelled with, -1 for background), and ``patches``: per object,
    its foreground patch indices on this grid. A patch is labelled with the object that covers most of it, if
    that object's coverage passes the foreground rule of :func:`padt.data.patches.foreground_patches`.
    ``geometry`` is the base's (default: Qwen2.5-VL's 28-px cells).
    """
    cell = (geometry or default_geometry()).cell_px
    rows, cols = grid_hw
    n = rows * cols
    out_hw = (rows * cell, cols * cell)
    threshold = 255.0 * COVERAGE.numerator * cell * cell  # foreground: sum * denominator >= threshold
    cell_sums, subs, patches = [], [], []
    for obj in scene.objects:
        # The same resize and test as padt.data.patches.foreground_patches.
        scaled = resize_bilinear_cv2(obj.mask.astype(np.uint8) * np.uint8(255), out_hw)
        sums = scaled.reshape(rows, cell, cols, cell).sum(axis=(1, 3), dtype=np.float64).reshape(-1)
        step = cell // SUB
        sub = scaled.reshape(rows, SUB, step, cols, SUB, step).sum(axis=(2, 5), dtype=np.float64)
        subs.append(sub.transpose(0, 2, 1, 3).reshape(n, SUB * SUB) / (255.0 * step * step))
        cell_sums.append(sums)
        patches.append(np.flatnonzero(sums * COVERAGE.denominator >= threshold).tolist())
    sums = np.stack(cell_sums)
    best = sums.argmax(0)
    fg = sums.max(0) * COVERAGE.denominator >= threshold
    targets = {name: np.zeros(n, dtype=np.int64) for name in CLASS_HEADS}
    box = np.zeros((n, 4), dtype=np.float32)
    sy, sx = out_hw[0] / scene.height, out_hw[1] / scene.width
    centres_y = (np.arange(n) // cols + 0.5) * cell
    centres_x = (np.arange(n) % cols + 0.5) * cell
    count = np.zeros(n, dtype=np.int64)
    centre = np.zeros(n, dtype=np.int64)
    for obj in scene.objects:  # painted in order, so a later (upper) object's centre wins a shared patch
        x1, y1, x2, y2 = obj.box
        row = min(int((y1 + y2) / 2 * sy // cell), rows - 1)
        col = min(int((x1 + x2) / 2 * sx // cell), cols - 1)
        centre[row * cols + col] = SHAPES.index(obj.shape) + 1
    per_kind = {kind: sum(o.shape == kind for o in scene.objects) for kind in SHAPES}
    for j in np.flatnonzero(fg):
        obj = scene.objects[best[j]]
        count[j] = min(per_kind[obj.shape], COUNT_MAX)
        targets["shape"][j] = SHAPES.index(obj.shape) + 1
        targets["colour"][j] = list(COLOURS).index(obj.colour) + 1
        targets["size"][j] = list(SIZES).index(obj.size) + 1
        x1, y1, x2, y2 = obj.box
        box[j] = [
            centres_x[j] - x1 * sx,
            centres_y[j] - y1 * sy,
            x2 * sx - centres_x[j],
            y2 * sy - centres_y[j],
        ]
    mask = np.stack(subs)[best, np.arange(n)].astype(np.float32)
    position = np.stack([centres_x / out_hw[1], centres_y / out_hw[0]], axis=1).astype(np.float32)
    return targets | {
        "box": box / cell,
        "mask": mask,
        "position": position,
        "count": count,
        "centre": centre,
        "fg": fg,
        "owner": np.where(fg, best, -1),
        "patches": patches,
    }


class PretrainScenes(torch.utils.data.Dataset):
    """Scenes with their processor inputs and dense targets, built once in memory.

    :meth:`generate` draws them from the synthetic world, scene ``i`` from the random stream ``(seed, i)``, so
    the set is a pure function of its settings.
    """

    def __init__(
        self,
        image_processor: Any,
        scenes: Iterable[Scene],
        *,
        progress: bool = False,
        desc: str = "pretraining scenes",
        total: int | None = None,
    ) -> None:
        geometry = PatchGeometry.of(image_processor)
        merge = geometry.merge_size
        self.items: list[dict[str, Any]] = []
        for scene in tqdm(scenes, desc=desc, unit="scene", total=total, disable=not progress):
            vision = image_processor(images=[scene.image], return_tensors="pt")
            grid = vision["image_grid_thw"][0]
            targets = cell_targets(scene, (int(grid[1]) // merge, int(grid[2]) // merge), geometry)
            self.items.append(
                {
                    "pixel_values": vision["pixel_values"].to(torch.bfloat16),
                    "image_grid_thw": grid,
                    "targets": {
                        k: torch.from_numpy(v) for k, v in targets.items() if k not in ("owner", "patches")
                    },
                    # (shape, colour, size) class indices (0-based) and foreground patches of every object that has any
                    "objects": [
                        ((SHAPES.index(o.shape), list(COLOURS).index(o.colour), list(SIZES).index(o.size)), p)
                        for o, p in zip(scene.objects, targets["patches"], strict=True)
                        if p
                    ],
                }
            )

    @classmethod
    def generate(
        cls,
        image_processor: Any,
        *,
        n: int,
        seed: int,
        min_size: int = 112,
        max_size: int = 196,
        max_objects: int = 6,
        progress: bool = True,
        desc: str = "pretraining scenes",
    ) -> PretrainScenes:
        """``n`` synthetic scenes (:func:`padt.data.synthetic.make_scene`) of the stream ``seed``."""
        scenes = (
            make_scene(
                np.random.default_rng([seed, _SCENE_STREAM, i]),
                min_size=min_size,
                max_size=max_size,
                max_objects=max_objects,
            )
            for i in range(n)
        )
        return cls(image_processor, scenes, progress=progress, desc=desc, total=n)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.items[index]


def collate(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Images concatenated as the processor batches them; targets concatenated over all merged patches; and
    the objects: ``(cell, object)`` pairs of each object's foreground patches (batch-wide indices) and each
    object's ``shape``/``colour``/``size`` class (0-based)."""
    cells, owners, labels = [], [], []
    offset = 0
    for it in items:
        for attributes, patches in it["objects"]:
            cells.append(torch.as_tensor(patches, dtype=torch.long) + offset)
            owners.append(torch.full((len(patches),), len(labels), dtype=torch.long))
            labels.append(attributes)
        offset += len(it["targets"]["shape"])
    labels = torch.tensor(labels, dtype=torch.long).view(-1, 3)
    objects = {
        "cell": torch.cat(cells) if cells else torch.zeros(0, dtype=torch.long),
        "object": torch.cat(owners) if owners else torch.zeros(0, dtype=torch.long),
        **{attr: labels[:, k] for k, attr in enumerate(CLASS_HEADS)},
    }
    return {
        "pixel_values": torch.cat([it["pixel_values"] for it in items]).float(),
        "image_grid_thw": torch.stack([it["image_grid_thw"] for it in items]),
        "targets": {k: torch.cat([it["targets"][k] for it in items]) for k in items[0]["targets"]},
        "objects": objects,
    }


# ---------------------------------------------------------------------------------------------- model
class VisionHeads(nn.Module):
    """One linear head per dense target (:data:`HEADS`) on the ``D``-wide image features, and per object one
    for each of its attributes (:data:`OBJECT_HEADS`) from its features averaged over the patches it owns (what
    the shape probe reads)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({name: nn.Linear(dim, width) for name, width in HEADS.items()})
        self.object_heads = nn.ModuleDict(
            {name: nn.Linear(dim, HEADS[attr] - 1) for name, attr in OBJECT_HEADS.items()}
        )

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: head(features) for name, head in self.heads.items()}

    def objects(
        self, features: torch.Tensor, cell: torch.Tensor, owner: torch.Tensor, count: int
    ) -> dict[str, torch.Tensor]:
        """Per object head, ``count x classes`` logits from each object's features averaged over its patches,
        given as ``(cell, owner)`` pairs (:func:`collate`)."""
        pooled = features.new_zeros(count, features.shape[-1]).index_add_(0, owner, features[cell])
        pooled = pooled / torch.bincount(owner, minlength=count).clamp(min=1)[:, None].to(features.dtype)
        return {name: head(pooled) for name, head in self.object_heads.items()}


class VisionPretrainModel(nn.Module):
    """The PaDT model's vision component plus :class:`VisionHeads`, as one module for ``Trainer``.

    Only the vision component (``model.visual``, ``image_position``) and the heads are registered, so
    checkpoints hold just them; features come from the PaDT model's own ``encode_images``.
    """

    def __init__(self, padt_model: nn.Module, loss_weights: Mapping[str, float]) -> None:
        super().__init__()
        self.visual = padt_model.model.visual
        self.image_position = padt_model.image_position  # None unless the model has the position code
        self.heads = VisionHeads(padt_model.config.text_config.hidden_size)
        self.encode_images = (
            padt_model.encode_images
        )  # a bound method: the rest of the model is not a submodule
        unknown = sorted(set(loss_weights) - set(LOSS_TERMS))
        if unknown:
            raise PaDTError(f"vision.loss_weights: unknown terms {unknown}; known: {', '.join(LOSS_TERMS)}")
        self.loss_weights = {
            name: float(loss_weights.get(name, DEFAULT_WEIGHTS[name])) for name in LOSS_TERMS
        }

    def features(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> torch.Tensor:
        return self.encode_images(pixel_values, image_grid_thw).image_embeds

    def forward(
        self,
        pixel_values: torch.Tensor,
        image_grid_thw: torch.Tensor,
        targets: Mapping[str, torch.Tensor],
        objects: Mapping[str, torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        features = self.features(pixel_values, image_grid_thw).float()
        out = self.heads(features)
        if any(self.loss_weights[name] for name in OBJECT_HEADS):
            out |= self.heads.objects(features, objects["cell"], objects["object"], len(objects["shape"]))
        terms = vision_losses(out, targets, objects)
        terms["loss"] = sum(
            self.loss_weights[name] * terms[f"loss_{name}"] for name in LOSS_TERMS if f"loss_{name}" in terms
        )
        return terms


def vision_losses(
    out: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor], objects: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Cross-entropy for the class heads (all patches, background included), smooth L1 for the box distances
    (foreground patches), BCE against the sub-cell coverage for the mask (all patches), L1 for the position
    (all patches), cross-entropy for the count and the centre (all patches) and for the object heads present in
    ``out``."""
    fn = nn.functional
    terms = {f"loss_{name}": fn.cross_entropy(out[name], targets[name]) for name in CLASS_HEADS}
    fg = targets["fg"]
    terms["loss_box"] = (
        fn.smooth_l1_loss(out["box"][fg], targets["box"][fg]) if bool(fg.any()) else out["box"].sum() * 0
    )
    terms["loss_mask"] = fn.binary_cross_entropy_with_logits(out["mask"], targets["mask"])
    terms["loss_position"] = fn.l1_loss(out["position"], targets["position"])
    terms["loss_count"] = fn.cross_entropy(out["count"], targets["count"])
    terms["loss_centre"] = fn.cross_entropy(out["centre"], targets["centre"])
    for name, attr in OBJECT_HEADS.items():
        if name in out:
            terms[f"loss_{name}"] = (
                fn.cross_entropy(out[name], objects[attr]) if len(objects[attr]) else out[name].sum() * 0
            )
    return terms


# ---------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_vision(
    model: VisionPretrainModel, scenes: PretrainScenes, batch_size: int = 32
) -> dict[str, float]:
    """Per-head accuracies on held-out scenes, and the object-level shape probe.

    ``shape``/``colour``/``size`` accuracies are over foreground patches (``shape_small``/``shape_large`` by
    the size of the covering object), ``background`` is the share of background patches called background,
    ``box_l1`` the mean absolute error of the box distances in patches, ``mask_iou`` the IoU of the thresholded
    sub-cell masks over all patches, ``position_l1`` the mean absolute error of the normalised position,
    ``count`` the count head's accuracy on foreground patches (``count_several`` on those whose kind the scene
    holds more than once), ``centre`` the share of object centres whose patch the centre head finds with the
    right kind, ``centre_false`` the share of other patches it calls a centre.
    ``probe`` is :func:`padt.evaluation.probe.linear_probe` of the shape on each object's features averaged
    over its foreground patches (fitted on 70% of the scenes, scored on the rest) and ``probe_chance`` the
    majority-class rate.
    """
    from padt.evaluation.probe import linear_probe, majority_rate, object_features

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    preds: dict[str, list[torch.Tensor]] = {name: [] for name in HEADS}
    per_scene = []
    for start in range(0, len(scenes), batch_size):
        items = [scenes[i] for i in range(start, min(start + batch_size, len(scenes)))]
        batch = collate(items)
        f = model.features(batch["pixel_values"].to(device), batch["image_grid_thw"].to(device)).float().cpu()
        out = model.heads(f)
        for name in HEADS:
            preds[name].append(out[name])
        sizes = [int(it["image_grid_thw"].prod()) // 4 for it in items]
        per_scene.extend(torch.split(f, sizes))
    targets = collate(scenes.items)["targets"]
    pred = {name: torch.cat(v) for name, v in preds.items()}
    fg = targets["fg"]
    metrics = {
        name: (pred[name].argmax(-1)[fg] == targets[name][fg]).float().mean().item() for name in CLASS_HEADS
    }
    for size_index, size_name in enumerate(SIZES, 1):
        sel = fg & (targets["size"] == size_index)
        metrics[f"shape_{size_name}"] = (
            (pred["shape"].argmax(-1)[sel] == targets["shape"][sel]).float().mean().item()
        )
    metrics["background"] = (pred["shape"].argmax(-1)[~fg] == 0).float().mean().item()
    metrics["box_l1"] = (pred["box"][fg] - targets["box"][fg]).abs().mean().item()
    metrics["position_l1"] = (pred["position"] - targets["position"]).abs().mean().item()
    counted = pred["count"].argmax(-1) == targets["count"]
    metrics["count"] = counted[fg].float().mean().item()
    several = fg & (targets["count"] > 1)
    if bool(several.any()):
        metrics["count_several"] = counted[several].float().mean().item()
    centres, marked = targets["centre"] > 0, pred["centre"].argmax(-1)
    metrics["centre"] = (marked[centres] == targets["centre"][centres]).float().mean().item()
    metrics["centre_false"] = (marked[~centres] > 0).float().mean().item()
    hit, truth = pred["mask"] > 0, targets["mask"] > 0.5
    metrics["mask_iou"] = ((hit & truth).sum() / (hit | truth).sum().clamp(min=1)).item()

    x, y, scene_of = [], [], []
    for s, (item, f) in enumerate(zip(scenes.items, per_scene, strict=True)):
        if item["objects"]:
            x.append(object_features(f, [p for _, p in item["objects"]]))
            y.extend(attributes[0] for attributes, _ in item["objects"])
            scene_of.extend([s] * len(item["objects"]))
    if len(set(scene_of)) >= 2:
        train = torch.tensor(scene_of) < int(0.7 * len(scenes))
        labels = torch.tensor(y)
        metrics["probe"] = linear_probe(torch.cat(x), labels, train, len(SHAPES))
        metrics["probe_chance"] = majority_rate(labels, train)
    model.train(was_training)
    return metrics


class VisionPretrainer(Trainer):
    """``Trainer`` for :class:`VisionPretrainModel`: logs each head's loss and evaluates with
    :func:`evaluate_vision`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._term_sums: dict[str, float] = {}
        self._term_count = 0

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        terms = model(**inputs)
        for name, value in terms.items():
            if name != "loss":
                self._term_sums[name] = self._term_sums.get(name, 0.0) + float(value.detach())
        self._term_count += 1
        return (terms["loss"], terms) if return_outputs else terms["loss"]

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._term_count:
            logs.update({k: round(v / self._term_count, 4) for k, v in self._term_sums.items()})
            self._term_sums, self._term_count = {}, 0
        super().log(logs, start_time)

    def evaluate(
        self, eval_dataset: Any = None, ignore_keys: Any = None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        scenes = eval_dataset if eval_dataset is not None else self.eval_dataset
        metrics = {
            f"{metric_key_prefix}_{k}": round(v, 4)
            for k, v in evaluate_vision(self.model, scenes, self.args.per_device_eval_batch_size).items()
        }
        self.log(metrics)
        return metrics


# ---------------------------------------------------------------------------------------------- running
def pretrain_vision(config: VisionStageConfig) -> Path:
    """Run vision pretraining as ``config`` says (see ``configs/bundled.yaml``), resuming from the last
    checkpoint in ``training.output_dir`` when asked. Writes the PaDT checkpoint, the heads and
    ``train_summary.json`` (final per-head metrics and probe) there and returns the folder."""
    from transformers.trainer_utils import get_last_checkpoint

    from padt.training.trainer import build_model_and_processor, training_arguments

    spec, vision = config.data.synthetic, config.vision
    if config.training.model_extra.get("per_device_eval_batch_size") is None:
        config = config.model_copy(deep=True)
        config.training.per_device_eval_batch_size = 32
    args = training_arguments(config)
    model, processor = build_model_and_processor(config)
    for name, param in model.named_parameters():
        param.requires_grad_(model.component_of(name) == "vision")
    model.to(args.device)
    wrapper = VisionPretrainModel(model, vision.loss_weights)
    main = args.process_index == 0
    scene_args = {"min_size": spec.min_size, "max_size": spec.max_size, "max_objects": spec.max_objects}
    train_set = PretrainScenes.generate(
        processor.image_processor, n=spec.n, seed=spec.seed, progress=main, **scene_args
    )
    eval_set = PretrainScenes.generate(
        processor.image_processor,
        n=vision.eval_scenes,
        seed=vision.eval_seed,
        progress=main,
        desc="held-out scenes",
        **scene_args,
    )
    trainer = VisionPretrainer(
        model=wrapper, args=args, train_dataset=train_set, eval_dataset=eval_set, data_collator=collate
    )
    out = Path(args.output_dir)
    resume = config.resume
    last = get_last_checkpoint(os.fspath(out)) if out.is_dir() else None
    if resume is True and last is None:
        raise PaDTError(f"resume: true but {out} holds no checkpoint-*; set resume: auto or false")
    checkpoint = last if resume in ("auto", True) else None
    if checkpoint and main:
        print(f"padt train: resuming vision pretraining from {checkpoint}")
    result = trainer.train(resume_from_checkpoint=checkpoint)
    metrics = evaluate_vision(wrapper, eval_set, args.per_device_eval_batch_size)
    if main:
        from safetensors.torch import save_file

        model.config.use_cache = True
        model.save_pretrained(out, safe_serialization=True)
        processor.save_pretrained(out)
        save_file(
            {k: v.contiguous() for k, v in wrapper.heads.state_dict().items()}, os.fspath(out / HEADS_FILE)
        )
        summary = {
            "global_step": trainer.state.global_step,
            "train_loss": result.training_loss,
            "metrics": result.metrics,
            "held_out": metrics,
        }
        (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
        print(
            "padt train: vision pretraining done; held-out: "
            + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items())
        )
    return out


def load_vision_from(model: nn.Module, path: str | os.PathLike) -> None:
    """Copy the vision component (``model.visual`` and the image position code) of the PaDT checkpoint at
    ``path`` into ``model``; every other weight stays as it is."""
    from padt.modeling import PaDTForConditionalGeneration

    folder = Path(path)
    if not folder.is_dir():
        raise PaDTError(
            f"model.vision_from {os.fspath(folder)!r} is not a folder; point it at a finished "
            "vision pretraining stage"
        )
    source = PaDTForConditionalGeneration.from_pretrained(folder, dtype=next(model.parameters()).dtype)
    theirs = {k: v for k, v in source.state_dict().items() if source.component_of(k) == "vision"}
    ours = {k: v for k, v in model.state_dict().items() if model.component_of(k) == "vision"}
    if set(theirs) != set(ours) or any(theirs[k].shape != ours[k].shape for k in ours):
        differ = sorted(set(theirs) ^ set(ours)) or sorted(
            k for k in ours if theirs[k].shape != ours[k].shape
        )
        raise PaDTError(
            f"the vision tower in {os.fspath(folder)} does not match this model ({differ[:3]}); "
            "pretrain it with the same model settings"
        )
    with torch.no_grad():
        for key, value in ours.items():
            value.copy_(theirs[key])
