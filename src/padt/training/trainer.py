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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from padt.data.records import Record, read_records
from padt.errors import PaDTError
from padt.losses import DEFAULT_LOSS_WEIGHTS, LOSS_TERMS, PaDTCriterion
from padt.processing import PaDTProcessor
from padt.training.batch import (
    DECODER_TERMS,
    PaDTCollator,
    PaDTDataset,
    StepOptions,
    padt_loss,
    unwrap_padt,
)
from padt.training.config import COMPONENTS

logger = logging.getLogger(__name__)

# Modules of each component, by name prefix in PaDTForConditionalGeneration.
COMPONENT_PREFIXES = {
    "vision": ("model.visual.", "image_position."),
    "llm": ("model.language_model.", "lm_head."),
    "decoder": ("vis_norm.", "vis_proj.", "vl_decoder."),
}
# The attribute each component's modules hang from (what peft keeps as a full trainable copy).
COMPONENT_MODULES = {"vision": ["visual", "image_position"], "llm": ["language_model", "lm_head"], "decoder": ["vl_decoder", "vis_norm", "vis_proj"]}


class PaDTTrainer(Trainer):
    """``Trainer`` whose loss is PaDT's (§5): robust token loss + decoder losses, with named terms logged.

    Args:
        padt_processor: the model's :class:`PaDTProcessor` (also saved with every checkpoint).
        step_options: :class:`StepOptions` (VRT sampling, robust loss, answer format).
        criterion: :class:`PaDTCriterion` with the loss weights.
        warmup_steps: optimizer steps during which the decoder sees ground-truth prototypes (§5.5).
        sampling_seed: seed of the VRT sampling streams.
    """

    def __init__(self, *args: Any, padt_processor: PaDTProcessor, step_options: StepOptions,
                 criterion: PaDTCriterion, warmup_steps: int = 300, sampling_seed: int = 42,
                 **kwargs: Any) -> None:
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

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        rngs = self.sampling_rngs(inputs["padt"].indices)
        warmup = self.state.global_step < self.warmup_steps
        terms = padt_loss(model, self.padt_processor, inputs, rngs, options=self.step_options,
                          criterion=self.criterion, warmup=warmup)
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
        folder = Path(resume_from_checkpoint)
        index = folder / "model.safetensors.index.json"
        files = sorted({folder / f for f in json.loads(index.read_text())["weight_map"].values()}) \
            if index.is_file() else [folder / "model.safetensors"]
        if self.is_deepspeed_enabled or self.is_fsdp_enabled or hasattr(model, "peft_config") \
                or not all(f.is_file() for f in files):
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            return
        from safetensors.torch import load_file

        from padt.modeling import REFERENCE_KEY_MAPPING

        state: dict[str, torch.Tensor] = {}
        for file in files:
            for key, value in load_file(file, device="cpu").items():
                for pattern, replacement in REFERENCE_KEY_MAPPING.items():
                    key = re.sub(pattern, replacement, key, count=1)
                state[key] = value
        result = model.load_state_dict(state, strict=False)
        tied = {"lm_head.weight"} if getattr(unwrap_padt(model).config, "tie_word_embeddings", False) else set()
        missing = sorted(set(result.missing_keys) - tied)
        if missing or result.unexpected_keys:
            raise PaDTError(f"checkpoint {folder} does not match the model: missing {missing[:5]}, "
                            f"unexpected {sorted(result.unexpected_keys)[:5]}")

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._term_count:
            for name, total in self._term_sums.items():
                logs[name] = round(float(total) / self._term_count, 4)
            logs["warmup"] = int(self.state.global_step - 1 < self.warmup_steps)
            self._term_sums, self._term_count = {}, 0
        super().log(logs, start_time)


# ---------------------------------------------------------------------------------------------- building
def build_model_and_processor(config: Mapping[str, Any]) -> tuple[nn.Module, PaDTProcessor]:
    """The model and processor named by ``config["model"]`` / ``config["processor"]``."""
    from padt.inference import DTYPES
    from padt.modeling import PaDTForConditionalGeneration

    spec, pixels = config["model"], dict(config.get("processor") or {})
    dtype = DTYPES[spec.get("dtype", "fp32")]
    if spec.get("tiny") is not None:
        from padt.testing import tiny_model, tiny_processor

        kwargs = dict(spec["tiny"] or {})
        seed = int(kwargs.pop("seed", config.get("seed", 42)))
        decoder_init = kwargs.pop("decoder_init", "reference")
        model = tiny_model(seed=seed, random_prototypes=False, **kwargs).to(dtype)
        if decoder_init == "torch":
            # PyTorch's default (Kaiming-uniform) init for the decoder's linear layers. At tiny widths the
            # reference's N(0, 0.02) leaves the decoder's output almost independent of its input, and it then
            # barely learns within a CPU budget.
            torch.manual_seed(seed)
            for module in model.vl_decoder.modules():
                if isinstance(module, nn.Linear):
                    module.reset_parameters()
        elif decoder_init != "reference":
            raise PaDTError(f"model.tiny.decoder_init must be reference or torch, got {decoder_init!r}")
        processor = PaDTProcessor(tiny_processor(**pixels), model.vocab_size)
        if spec.get("vision_from"):  # a pretrained vision component (padt.training.vision_pretrain)
            from padt.training.vision_pretrain import load_vision_from

            load_vision_from(model, spec["vision_from"])
    else:
        path = spec["path"]
        if not Path(path).is_dir():
            raise PaDTError(f"model.path {path!r} is not a folder; point it at a local checkpoint")
        model = PaDTForConditionalGeneration.from_pretrained(
            path, dtype=dtype, init_padt_modules=bool(spec.get("init_padt_modules")),
            attn_implementation=spec.get("attn_implementation", "sdpa"),
        )
        processor = PaDTProcessor.from_pretrained(path, model.vocab_size, **pixels)
    model.config.use_cache = False
    return model, processor


def component_of(name: str) -> str | None:
    """The component (``vision``, ``llm``, ``decoder``) a parameter or module name belongs to."""
    for component, prefixes in COMPONENT_PREFIXES.items():
        if name.startswith(prefixes):
            return component
    return None


def apply_components(model: nn.Module, components: Mapping[str, str], lora: Mapping[str, Any]) -> nn.Module:
    """Freeze, train or LoRA-adapt each component. Returns the model (a peft model if any is ``lora``)."""
    modes = {c: components.get(c, "train") for c in COMPONENTS}
    lora_targets = [
        name for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and modes.get(component_of(name) or "") == "lora"
    ]
    if lora_targets:
        from peft import LoraConfig, get_peft_model

        keep = [m for c, mode in modes.items() if mode == "train" for m in COMPONENT_MODULES[c]]
        peft_config = LoraConfig(
            r=int(lora.get("r", 16)), lora_alpha=int(lora.get("alpha", 32)),
            lora_dropout=float(lora.get("dropout", 0.05)), target_modules=lora_targets,
            modules_to_save=keep or None, bias="none",
        )
        model = get_peft_model(model, peft_config)
        return model
    for name, param in model.named_parameters():
        param.requires_grad_(modes.get(component_of(name) or "llm") == "train")
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total


def build_dataset(config: Mapping[str, Any], output_dir: Path) -> PaDTDataset:
    """All training records of ``config["data"]`` in one dataset (synthetic data generated on first use)."""
    data = config["data"]
    datasets: list[tuple[list[Record], Path | None]] = []
    for item in data.get("train") or []:
        path = Path(item["records"])
        if not path.is_file():
            raise PaDTError(f"training records not found: {path}; check data.train[].records")
        root = Path(item["image_root"]) if item.get("image_root") else path.parent
        datasets.append((read_records(path), root))
    if data.get("synthetic"):
        from accelerate import PartialState

        from padt.data.synthetic import generate_dataset

        spec = dict(data["synthetic"])
        folder = Path(spec.pop("out", output_dir / "data"))
        task, n, seed = spec.pop("task", "all"), int(spec.pop("n")), int(spec.pop("seed", 0))
        with PartialState().main_process_first():
            summary = generate_dataset(task, n, seed, folder, progress=PartialState().is_main_process, **spec)
        datasets.append((read_records(summary.records_path), folder))
    records: list[Record] = []
    for recs, root in datasets:
        for r in recs:
            # Image paths are resolved per record, so several sources with different roots can mix.
            if root is not None:
                r.image = [os.fspath(root / name) for name in r.images] if isinstance(r.image, list) \
                    else os.fspath(root / r.image)
            records.append(r)
    if not records:
        raise PaDTError("the training data holds no records")
    return PaDTDataset(records)


def training_arguments(config: Mapping[str, Any]) -> TrainingArguments:
    """``TrainingArguments`` from ``config["training"]`` with PaDT's defaults (reference §5.8 where they
    make sense on any machine)."""
    args = dict(config["training"])
    defaults: dict[str, Any] = {
        "learning_rate": 2e-5,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "logging_steps": 10,
        "save_steps": 100,
        "per_device_train_batch_size": 4,
        "remove_unused_columns": False,
        "dataloader_num_workers": 0,
        "report_to": ["tensorboard"] if importlib.util.find_spec("tensorboard") else [],
        "seed": int(config.get("seed", 42)),
        "data_seed": int(config.get("seed", 42)),
        # The decoder runs after the model's forward (padt_loss), so DDP's search for unused parameters at the
        # end of the forward would mark its parameters ready before their gradients exist.
        "ddp_find_unused_parameters": False,
    }
    for key, value in defaults.items():
        args.setdefault(key, value)
    for key, value in args.items():
        if key.endswith("_strategy") and value is False:  # YAML 1.1 reads `save_strategy: no` as false
            args[key] = "no"
    if importlib.util.find_spec("wandb") and "wandb" not in args["report_to"] and os.environ.get("WANDB_PROJECT"):
        args["report_to"] = [*args["report_to"], "wandb"]
    args["remove_unused_columns"] = False  # the collator needs the records
    try:
        return TrainingArguments(**args)
    except TypeError as error:
        match = re.search(r"unexpected keyword argument '(\w+)'", str(error))
        name = match.group(1) if match else str(error)
        raise PaDTError(f"training.{name} is not a transformers TrainingArguments field") from None
    except (ValueError, ImportError) as error:
        raise PaDTError(f"training arguments rejected by transformers: {str(error).splitlines()[0]}") from None


def build_trainer(config: Mapping[str, Any]) -> PaDTTrainer:
    """Model, data, collator and trainer for ``config`` (see :mod:`padt.training.config`)."""
    args = training_arguments(config)
    padt_cfg = config["padt"]
    model, processor = build_model_and_processor(config)
    options = StepOptions(
        vrts_per_object=int(padt_cfg["vrts_per_object"]), random_select=bool(padt_cfg["random_select"]),
        robust_loss=bool(padt_cfg["robust_loss"]), answer_format=padt_cfg["answer_format"],
    )
    weights = dict(DEFAULT_LOSS_WEIGHTS) | dict(padt_cfg.get("loss_weights") or {})
    unknown = sorted(set(weights) - set(LOSS_TERMS))
    if unknown:
        raise PaDTError(f"padt.loss_weights: unknown terms {unknown}; known: {list(LOSS_TERMS)}")
    components = dict(config["components"])
    if options.answer_format == "text":
        # Text coordinates need no decoder; it stays untouched (and out of the optimizer).
        weights.update(dict.fromkeys(DECODER_TERMS, 0.0))
        components["decoder"] = "freeze"
    model.config.padt_answer_format = options.answer_format
    criterion = PaDTCriterion(weights)
    model = apply_components(model, components, config.get("lora") or {})
    trainable, total = count_parameters(model)
    if args.process_index == 0:
        print(f"padt train: {trainable:,} of {total:,} parameters trainable "
              f"({', '.join(f'{c}={m}' for c, m in components.items())})")
    dataset = build_dataset(config, Path(args.output_dir))
    collator = PaDTCollator(processor, patches=padt_cfg["patches"],
                            with_masks=criterion.wants("loss_mask_dice", "loss_mask_focal"),
                            strict_patches=bool(padt_cfg.get("strict_patches")))
    return PaDTTrainer(
        model=model, args=args, train_dataset=dataset, data_collator=collator, padt_processor=processor,
        step_options=options, criterion=criterion, warmup_steps=int(padt_cfg["warmup_steps"]),
        sampling_seed=int(config.get("seed", 42)),
    )


def save_final(trainer: PaDTTrainer, output_dir: str | os.PathLike,
               generation: Mapping[str, Any] | None = None) -> Path:
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
            for key, value in generation.items():
                setattr(padt.generation_config, key, value)
            padt.generation_config._from_model_config = False  # else loading rebuilds it from the model config
        padt.save_pretrained(out, safe_serialization=True)
        trainer.padt_processor.save_pretrained(out)
    return out


def train(config: Mapping[str, Any]) -> Path:
    """Train as ``config`` says, resuming from the last checkpoint when asked (``resume: auto`` resumes when
    the output folder has one); returns the folder of the final model."""
    trainer = build_trainer(config)
    out = Path(trainer.args.output_dir)
    resume = config.get("resume", "auto")
    last = get_last_checkpoint(os.fspath(out)) if out.is_dir() else None
    if resume is True and last is None:
        raise PaDTError(f"resume: true but {out} holds no checkpoint-*; set resume: auto or false")
    checkpoint = last if resume in ("auto", True) else None
    if checkpoint and trainer.args.process_index == 0:
        print(f"padt train: resuming from {checkpoint}")
    result = trainer.train(resume_from_checkpoint=checkpoint)
    final = save_final(trainer, out, config.get("generation"))
    if trainer.args.process_index == 0:
        summary = {"global_step": trainer.state.global_step, "train_loss": result.training_loss,
                   "metrics": result.metrics}
        (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
        print(f"padt train: model written to {final}")
    return final
