"""PaDT training on transformers' ``Trainer``: checkpointing, resume, logging, gradient accumulation,
gradient checkpointing, mixed precision, DeepSpeed and FSDP all come from transformers/accelerate.

PaDT adds only its loss (:func:`padt.training.batch.padt_loss`), its collator, per-component freezing / LoRA,
and a random stream for VRT sampling that is a pure function of ``(seed, optimizer step, micro-batch, rank,
sample index)``, so a run resumed from a checkpoint draws exactly the VRTs an uninterrupted run draws.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import Trainer, TrainingArguments

from padt.commands import writable_folder
from padt.data.records import Record, read_records
from padt.errors import PaDTError
from padt.losses import DECODER_TERMS, DEFAULT_LOSS_WEIGHTS, PaDTCriterion
from padt.processing import PaDTProcessor
from padt.training.batch import (
    PaDTCollator,
    PaDTDataset,
    StepOptions,
    padt_loss,
    unwrap_padt,
)
from padt.training.config import COMPONENTS, ComponentsSection, LoraSection, PaDTSection, TrainConfig

logger = logging.getLogger(__name__)


class PaDTTrainer(Trainer):
    """``Trainer`` whose loss is PaDT's (docs/method.md §8): robust token loss + decoder losses, with named terms
    logged.

    Args:
        padt_processor: the model's :class:`PaDTProcessor` (also saved with every checkpoint).
        step_options: :class:`StepOptions` (VRT sampling, robust loss, answer format).
        criterion: :class:`PaDTCriterion` with the loss weights.
        warmup_steps: optimizer steps during which the decoder sees ground-truth prototypes (§8.4).
        sampling_seed: seed of the VRT sampling streams.
    """

    def __init__(
        self,
        *args: Any,
        padt_processor: PaDTProcessor,
        step_options: StepOptions,
        criterion: PaDTCriterion,
        warmup_steps: int = PaDTSection().warmup_steps,
        sampling_seed: int = TrainConfig.model_fields["seed"].default,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("processing_class", padt_processor)
        super().__init__(*args, **kwargs)
        self.padt_processor = padt_processor
        self.step_options = step_options
        self.criterion = criterion
        self.warmup_steps = int(warmup_steps)
        self.sampling_seed = int(sampling_seed)
        # The loss is a per-sample mean, averaged over micro-batches by the gradient accumulation.
        self.model_accepts_loss_kwargs = False
        self._micro = (-1, 0)
        self._term_sums: dict[str, torch.Tensor] = {}
        self._term_count = 0

    def sampling_rngs(self, indices: list[int]) -> list[np.random.Generator]:
        """One generator per sample, from ``(seed, step, micro-batch, rank, index)``."""
        step = self.state.global_step
        micro = self._micro[1] + 1 if self._micro[0] == step else 0
        self._micro = (step, micro)
        rank = self.args.process_index
        return [np.random.default_rng([self.sampling_seed, step, micro, rank, i]) for i in indices]

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        rngs = self.sampling_rngs(inputs["targets"].indices)
        warmup = self.state.global_step < self.warmup_steps
        terms = padt_loss(
            model,
            self.padt_processor,
            inputs,
            rngs,
            options=self.step_options,
            criterion=self.criterion,
            warmup=warmup,
        )
        for name, value in terms.items():
            if value.ndim == 0 and name != "loss":
                self._term_sums[name] = self._term_sums.get(name, 0) + value.detach().float()
        self._term_count += 1
        return (terms["loss"], terms) if return_outputs else terms["loss"]

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        """Resume the weights of a plain (not peft, DeepSpeed or FSDP) run.

        Checkpoints are written by ``save_pretrained`` in the reference's key layout (``padt.modeling``), which
        ``Trainer``'s own ``load_state_dict(strict=False)`` would silently not match: rename the keys back and
        require every weight to arrive.
        """
        model = self.model if model is None else model
        from padt.modeling import weight_files

        folder = Path(resume_from_checkpoint)
        files = weight_files(folder)
        if (
            self.is_deepspeed_enabled
            or self.is_fsdp_enabled
            or hasattr(model, "peft_config")
            or not all(f.is_file() for f in files)
        ):
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            return
        from safetensors.torch import load_file

        mapping = unwrap_padt(model).backbone.reference_key_mapping
        state: dict[str, torch.Tensor] = {}
        for file in files:
            for key, value in load_file(file, device="cpu").items():
                for pattern, replacement in mapping.items():
                    key = re.sub(pattern, replacement, key, count=1)
                state[key] = value
        result = model.load_state_dict(state, strict=False)
        tied = (
            {"lm_head.weight"} if getattr(unwrap_padt(model).config, "tie_word_embeddings", False) else set()
        )
        missing = sorted(set(result.missing_keys) - tied)
        if missing or result.unexpected_keys:
            raise PaDTError(
                f"checkpoint {folder} does not match the model: missing {missing[:5]}, "
                f"unexpected {sorted(result.unexpected_keys)[:5]}"
            )

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._term_count:
            for name, total in self._term_sums.items():
                logs[name] = round(float(total) / self._term_count, 4)
            logs["warmup"] = int(self.state.global_step - 1 < self.warmup_steps)
            self._term_sums, self._term_count = {}, 0
        super().log(logs, start_time)


# ---------------------------------------------------------------------------------------------- building
def build_model_and_processor(config: TrainConfig) -> tuple[nn.Module, PaDTProcessor]:
    """The model and processor named by ``config.model`` / ``config.processor``."""
    from padt.inference import DTYPES
    from padt.modeling import PaDTForConditionalGeneration

    spec = config.model
    pixels = config.processor.model_dump(exclude_none=True)
    dtype = DTYPES[spec.dtype]
    if spec.tiny is not None:
        from padt.tiny import tiny_model, tiny_processor

        tiny = spec.tiny
        seed = config.seed if tiny.seed is None else tiny.seed
        model = tiny_model(seed, random_prototypes=False, spec=tiny).to(dtype)
        processor = PaDTProcessor(tiny_processor(**pixels, backbone=tiny.backbone), model.vocab_size)
    else:
        path = spec.path
        if not Path(path).is_dir():
            raise PaDTError(f"model.path {path!r} is not a folder; point it at a local checkpoint")
        model = PaDTForConditionalGeneration.from_pretrained(
            path,
            dtype=dtype,
            init_padt_modules=spec.init_padt_modules,
            attn_implementation=spec.attn_implementation,
        )
        processor = PaDTProcessor.from_pretrained(path, model.vocab_size, **pixels)
    if spec.vision_from:  # a pretrained vision component (padt.training.vision_pretrain)
        from padt.training.vision_pretrain import load_vision_from

        load_vision_from(model, spec.vision_from)
    model.config.use_cache = False
    return model, processor


def apply_components(
    model: nn.Module, components: ComponentsSection | None = None, lora: LoraSection | None = None
) -> nn.Module:
    """Freeze, train or LoRA-adapt each component. Returns the model (a peft model if any is ``lora``)."""
    components = components or ComponentsSection()
    lora = lora or LoraSection()
    modes = {c: getattr(components, c) for c in COMPONENTS}
    padt = unwrap_padt(model)
    lora_targets = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and modes.get(padt.component_of(name) or "") == "lora"
    ]
    if lora_targets:
        from peft import LoraConfig, get_peft_model

        keep = [m for c, mode in modes.items() if mode == "train" for m in padt.component_modules[c]]
        peft_config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora_targets,
            modules_to_save=keep or None,
            bias="none",
        )
        model = get_peft_model(model, peft_config)
        return model
    for name, param in model.named_parameters():
        param.requires_grad_(modes.get(padt.component_of(name) or "llm") == "train")
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total


def build_dataset(config: TrainConfig, output_dir: Path) -> PaDTDataset:
    """All training records of ``config.data`` in one dataset (synthetic data generated on first use)."""
    data = config.data
    datasets: list[tuple[list[Record], Path | None]] = []
    for item in data.train:
        path = Path(item.records)
        if not path.is_file():
            raise PaDTError(f"training records not found: {path}; check data.train[].records")
        root = Path(item.image_root) if item.image_root else path.parent
        datasets.append((read_records(path), root))
    synthetic = data.synthetic_datasets()
    if synthetic:
        from accelerate import PartialState

        from padt.data.synthetic import generate_dataset
    for i, item in enumerate(synthetic):
        spec = item.model_dump(exclude_none=True)
        # The first (or only) dataset in OUTPUT_DIR/data, the others in data_1, data_2, ...
        folder = Path(spec.pop("out", output_dir / ("data" if i == 0 else f"data_{i}")))
        task, n, seed = spec.pop("task"), spec.pop("n"), spec.pop("seed")
        with PartialState().main_process_first():
            summary = generate_dataset(task, n, seed, folder, progress=PartialState().is_main_process, **spec)
        datasets.append((read_records(summary.records_path), folder))
    records: list[Record] = []
    for recs, root in datasets:
        for r in recs:
            # Image paths are resolved per record, so several sources with different roots can mix.
            if root is not None:
                r.image = (
                    [os.fspath(root / name) for name in r.images]
                    if isinstance(r.image, list)
                    else os.fspath(root / r.image)
                )
            records.append(r)
    if not records:
        raise PaDTError("the training data holds no records")
    return PaDTDataset(records)


def training_arguments(config: TrainConfig) -> TrainingArguments:
    """``TrainingArguments`` from ``config.training`` (whose defaults are PaDT's, see
    :class:`~padt.training.config.TrainingSection`)."""
    args = config.training.arguments()
    args.setdefault("seed", config.seed)
    args.setdefault("data_seed", config.seed)
    if args.get("report_to") is None:
        args["report_to"] = ["tensorboard"] if importlib.util.find_spec("tensorboard") else []
        if importlib.util.find_spec("wandb") and os.environ.get("WANDB_PROJECT"):
            args["report_to"].append("wandb")
    try:
        return TrainingArguments(**args)
    except (ValueError, ImportError, TypeError) as error:
        raise PaDTError(
            f"training arguments rejected by transformers: {str(error).splitlines()[0]}"
        ) from None


def build_trainer(config: TrainConfig) -> PaDTTrainer:
    """Model, data, collator and trainer for ``config`` (see :mod:`padt.training.config`)."""
    args = training_arguments(config)
    padt_cfg = config.padt
    model, processor = build_model_and_processor(config)
    options = StepOptions(
        vrts_per_object=padt_cfg.vrts_per_object,
        random_select=padt_cfg.random_select,
        robust_loss=padt_cfg.robust_loss,
        answer_format=padt_cfg.answer_format,
        count_token_weight=padt_cfg.count_token_weight,
    )
    weights = dict(DEFAULT_LOSS_WEIGHTS) | padt_cfg.loss_weights
    components = config.components.model_copy()
    if options.answer_format == "text":
        # Text coordinates need no decoder; it stays untouched (and out of the optimizer).
        weights.update(dict.fromkeys(DECODER_TERMS, 0.0))
        components.decoder = "freeze"
    model.config.padt_answer_format = options.answer_format
    criterion = PaDTCriterion(weights)
    model = apply_components(model, components, config.lora)
    trainable, total = count_parameters(model)
    if args.process_index == 0:
        modes = ", ".join(f"{c}={getattr(components, c)}" for c in COMPONENTS)
        print(f"padt train: {trainable:,} of {total:,} parameters trainable ({modes})")
    dataset = build_dataset(config, Path(args.output_dir))
    collator = PaDTCollator(
        processor,
        patches=padt_cfg.patches,
        with_masks=criterion.wants("loss_mask_dice", "loss_mask_focal"),
        strict_patches=padt_cfg.strict_patches,
    )
    return PaDTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=collator,
        padt_processor=processor,
        step_options=options,
        criterion=criterion,
        warmup_steps=padt_cfg.warmup_steps,
        sampling_seed=config.seed,
    )


def save_final(
    trainer: PaDTTrainer, output_dir: str | os.PathLike, generation: Mapping[str, Any] | None = None
) -> Path:
    """Write a plain ``from_pretrained`` folder (LoRA merged) that ``padt predict`` loads, with the
    ``generation`` settings (e.g. ``vrt_repeat_penalty``) in its ``generation_config``."""
    out = Path(output_dir)
    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    padt = unwrap_padt(model)
    if trainer.args.process_index == 0:
        padt.config.use_cache = True
        if generation:
            set_generation(padt.generation_config, generation)
        padt.save_pretrained(out, safe_serialization=True)
        trainer.padt_processor.save_pretrained(out)
    return out


def set_generation(generation_config: Any, settings: Mapping[str, Any], removed: Iterable[str] = ()) -> None:
    """Write a config's ``generation`` settings into a model's ``generation_config`` (in place): the keys in
    ``removed`` (set before, no longer) are dropped, the others take their values."""
    for key in removed:
        if hasattr(generation_config, key):
            delattr(generation_config, key)
    for key, value in settings.items():
        setattr(generation_config, key, value)
    generation_config._from_model_config = False  # else loading rebuilds it from the model config


SUMMARY_FILE = "train_summary.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_problem(folder: Path) -> str | None:
    """Why a ``checkpoint-*`` folder cannot be resumed from (a save interrupted half-way), or None if complete."""
    if not (folder / "trainer_state.json").is_file():
        return "no trainer_state.json"
    if any(p.is_dir() for p in folder.glob("global_step*")) or any(folder.glob("adapter_model.*")):
        return None  # DeepSpeed and peft checkpoints keep their weights elsewhere
    from padt.modeling import weights_problem

    return weights_problem(folder)


def last_complete_checkpoint(out: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest resumable ``checkpoint-*`` of ``out`` and the newer ones skipped, each with its problem."""
    found = (
        sorted(
            ((int(m.group(1)), p) for p in out.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))),
            reverse=True,
        )
        if out.is_dir()
        else []
    )
    skipped = []
    for _, folder in found:
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder, skipped
        skipped.append((folder, problem))
    return None, skipped


def finished_run(config: TrainConfig) -> dict | None:
    """The summary of a finished run in ``config``'s output folder that the config would only repeat (same or
    fewer steps or epochs), or None."""
    out = Path(config.training.output_dir)
    path = out / SUMMARY_FILE
    if not path.is_file() or not (out / "config.json").is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except ValueError:
        return None
    training = config.training.arguments()
    max_steps = int(training.get("max_steps", -1))
    if max_steps > 0:
        return summary if summary.get("global_step", 0) >= max_steps else None
    epochs = float(training.get("num_train_epochs", 3.0))
    return summary if summary.get("max_steps", 0) <= 0 and summary.get("num_train_epochs") == epochs else None


def train(config: TrainConfig) -> Path:
    """Train as ``config`` says, resuming from the newest complete checkpoint when asked (``resume: auto`` resumes
    when the output folder has one); returns the folder of the final model. A finished run is not trained again
    (unless ``resume: false``): the call says so and returns its folder."""
    out = Path(config.training.output_dir)
    writable_folder(out, "training.output_dir")  # before the model is built
    resume = config.resume
    if resume is not False and (done := finished_run(config)) is not None:
        print(
            f"padt train: {out} already holds the finished run (step {done.get('global_step')}); nothing to do. "
            "Raise training.max_steps to train on, or pass --no-resume (or another output_dir) to start again."
        )
        return out
    trainer = build_trainer(config)
    last, skipped = last_complete_checkpoint(out) if resume is not False else (None, [])
    if resume is True and last is None:
        raise PaDTError(f"resume: true but {out} holds no complete checkpoint-*; set resume: auto or false")
    if trainer.args.process_index == 0:
        for folder, problem in skipped:
            print(f"padt train: skipping {folder.name}, an interrupted save ({problem})")
        if last is not None:
            print(f"padt train: resuming from {last}")
    result = trainer.train(resume_from_checkpoint=os.fspath(last) if last is not None else None)
    final = save_final(trainer, out, config.generation)
    if trainer.args.process_index == 0:
        logged = [h for h in trainer.state.log_history if "loss" in h]
        summary = {
            "global_step": trainer.state.global_step,
            "max_steps": trainer.args.max_steps,
            "num_train_epochs": trainer.args.num_train_epochs,
            # Over every logged step of the run, a resumed part included (result.training_loss covers only the
            # steps this process ran).
            "train_loss": sum(h["loss"] for h in logged) / len(logged) if logged else result.training_loss,
            "metrics": result.metrics,
            "log_history": trainer.state.log_history,
        }
        tmp = out / (SUMMARY_FILE + ".tmp")
        tmp.write_text(json.dumps(summary, indent=2))
        os.replace(tmp, out / SUMMARY_FILE)
        print(f"padt train: model written to {final}")
    return final
