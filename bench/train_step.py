"""Cost of one PaDT training step vs a plain causal-LM step of stock Qwen2.5-VL, side by side in one process.

    python bench/train_step.py                                # CPU, tiny config
    python bench/train_step.py --device cuda --arch qwen2.5-vl-3b   # real Qwen2.5-VL-3B architecture, random bf16

Both models hold the same weights (PaDT's state dict loaded into ``Qwen2_5_VLForConditionalGeneration``) and
see the same batch of synthetic scenes (one image + prompt each) and the same completions:

- PaDT: :func:`padt.training.padt_loss` as the trainer runs it: fresh VRT draws, completion tokenisation, one
  forward, the robust token loss and the decoder's box/score/mask losses, then backward.
- stock: the same prompt + completion with every VRT id replaced by a text id, ``labels`` = the completion
  ids (the prompt and padding are -100), one forward + backward. Both keep logits for the completion only.
- PaDT, token loss only (``tok ms``): the PaDT step without the decoder, to show the decoder's share.

Step time is forward + backward (no optimizer step), the median of ``--repeats`` steps after one warm-up step.
Memory: ``saved MB`` is the size of the tensors autograd saved for backward during the forward (unique
storages other than the weights, counted with ``saved_tensors_hooks``: the activation memory of the step, on
any device). On CUDA,
``peak MB`` is ``torch.cuda.max_memory_allocated`` during the step minus what was allocated before it
(weights and gradients of the previous step freed). On CPU no allocator peak is measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate import ARCHS, build  # the same models as the generation benchmark
from padt.data.records import read_records
from padt.data.synthetic import generate_dataset
from padt.losses import PaDTCriterion
from padt.processing import PaDTProcessor
from padt.tiny import tiny_processor
from padt.training.batch import (
    PaDTCollator,
    PaDTDataset,
    StepOptions,
    build_completions,
    padt_loss,
)


class SavedTensors:
    """Bytes of the distinct storages autograd saves for backward while active, the model's weights excluded."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.storages: dict[int, int] = {}

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self.weights:
            self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    @property
    def megabytes(self) -> float:
        return sum(self.storages.values()) / 2**20

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda tensor: tensor)


def stock_inputs(padt, processor, batch, rng_seed: int, text_id: int) -> dict:
    """The stock model's inputs: prompt + the PaDT completion with VRT ids replaced by ``text_id``."""
    inputs, extra = batch["inputs"], batch["targets"]
    texts, _ = build_completions(extra, np.random.default_rng(rng_seed), StepOptions())
    completion = processor.encode_completions(texts, add_eos=False, layout=extra.layout)
    device = inputs["input_ids"].device
    comp = completion["input_ids"].to(device)
    comp = comp.masked_fill(comp >= padt.vocab_size, text_id)
    comp_mask = completion["attention_mask"].to(device)
    input_ids = torch.cat([inputs["input_ids"], comp], dim=1)
    keep = comp.shape[1] + 1
    labels = input_ids[:, -keep:].clone()  # logits of the last prompt position onwards; HF shifts by one
    labels[:, 0] = -100
    labels[:, 1:] = labels[:, 1:].masked_fill(comp_mask == 0, -100)
    return {
        "input_ids": input_ids,
        "attention_mask": torch.cat([inputs["attention_mask"], comp_mask], dim=1),
        "pixel_values": inputs["pixel_values"].to(padt.dtype),
        "image_grid_thw": inputs["image_grid_thw"],
        "labels": labels,
        "logits_to_keep": keep,
        "use_cache": False,
    }


def timed_step(model, step, device: str) -> tuple[float, float, float]:
    """``(seconds, saved MB, peak MB or nan)`` of one forward + backward."""
    cuda = device.startswith("cuda")
    saved = SavedTensors(model)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    start = time.perf_counter()
    with saved.hooks():
        loss = step()
    loss.backward()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() - before) / 2**20 if cuda else float("nan")
    return seconds, saved.megabytes, peak


def measure(model, step, device: str, repeats: int) -> tuple[float, float, float]:
    results = []
    for _ in range(repeats + 1):  # the first is a warm-up
        model.zero_grad(set_to_none=True)
        results.append(timed_step(model, step, device))
    model.zero_grad(set_to_none=True)
    runs = results[1:]
    return (statistics.median(r[0] for r in runs), max(r[1] for r in runs), max(r[2] for r in runs))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--arch", choices=ARCHS, default="tiny")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default=None)
    parser.add_argument("--batch-sizes", default="1,4")
    parser.add_argument(
        "--image-size", type=int, default=None, help="scene side in px (default 224 tiny, 448 full size)"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--gradient-checkpointing", action="store_true", help="on for both models")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[
        args.dtype or ("fp32" if args.arch.startswith("tiny") else "bf16")
    ]
    size = args.image_size or (224 if args.arch.startswith("tiny") else 448)
    padt, stock, backbone = build(args.arch, args.device, dtype)
    padt.train()
    stock.train()
    if args.gradient_checkpointing:
        for model in (padt, stock):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    processor = PaDTProcessor(tiny_processor(backbone=backbone), padt.vocab_size)
    text_id = processor.tokenizer.convert_tokens_to_ids("a")

    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    folder = Path(tempfile.mkdtemp(prefix="padt-bench-"))
    # REC and OVD scenes (one and several objects); RIC records are text + objects like OVD.
    summary = generate_dataset(
        "all", max(batch_sizes), 0, folder, min_size=size, max_size=size, progress=False
    )
    records = read_records(summary.records_path)
    for record in records:
        record.image = str(folder / record.image)
    dataset = PaDTDataset(records)
    collator = PaDTCollator(processor, patches="recompute")

    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(
        f"device {args.device} ({name}), arch {args.arch}, {dtype}, image {size}px, threads "
        f"{torch.get_num_threads()}, gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}"
    )
    print(
        f"{'batch':>5} {'objs':>4} {'stock ms':>9} {'padt ms':>8} {'tok ms':>7} {'time x':>6} {'stock saved MB':>14} "
        f"{'padt saved MB':>13} {'saved x':>7} {'stock peak MB':>13} {'padt peak MB':>12} {'peak x':>6}"
    )
    rows = []
    for batch_size in batch_sizes:
        inputs = collator([dataset[i] for i in range(batch_size)])
        inputs["inputs"] = {
            k: (v.to(args.device) if torch.is_tensor(v) else v) for k, v in inputs["inputs"].items()
        }
        plain = stock_inputs(padt, processor, inputs, 0, text_id)

        def padt_step(inputs=inputs):
            return padt_loss(padt, processor, inputs, np.random.default_rng(0))["loss"]

        def token_step(inputs=inputs):
            criterion = PaDTCriterion({"loss_token": 1.0})
            return padt_loss(padt, processor, inputs, np.random.default_rng(0), criterion=criterion)["loss"]

        def stock_step(plain=plain):
            return stock(**plain).loss

        s_time, s_saved, s_peak = measure(stock, stock_step, args.device, args.repeats)
        p_time, p_saved, p_peak = measure(padt, padt_step, args.device, args.repeats)
        t_time = measure(padt, token_step, args.device, args.repeats)[0]
        objects = sum(len(o) for o in inputs["targets"].objects)
        row = {
            "batch": batch_size,
            "objects": objects,
            "completion_tokens": plain["logits_to_keep"] - 1,
            "stock_ms": 1e3 * s_time,
            "padt_ms": 1e3 * p_time,
            "time_ratio": p_time / s_time,
            "padt_token_loss_only_ms": 1e3 * t_time,
            "stock_saved_mb": s_saved,
            "padt_saved_mb": p_saved,
            "saved_ratio": p_saved / s_saved,
            "stock_peak_mb": s_peak,
            "padt_peak_mb": p_peak,
            "peak_ratio": p_peak / s_peak,
        }
        rows.append(row)
        print(
            f"{batch_size:>5} {objects:>4} {1e3 * s_time:>9.1f} {1e3 * p_time:>8.1f} {1e3 * t_time:>7.1f} "
            f"{p_time / s_time:>6.2f} "
            f"{s_saved:>14.1f} {p_saved:>13.1f} {p_saved / s_saved:>7.2f} {s_peak:>13.1f} {p_peak:>12.1f} "
            f"{p_peak / s_peak:>6.2f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "device": args.device,
                    "device_name": name,
                    "arch": args.arch,
                    "dtype": str(dtype),
                    "image_size": size,
                    "threads": torch.get_num_threads(),
                    "gradient_checkpointing": args.gradient_checkpointing,
                    "rows": rows,
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
