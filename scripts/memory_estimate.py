"""How much GPU memory PaDT fine-tuning needs per GPU, for Qwen2.5-VL-3B/7B and Qwen3-VL-2B/4B/8B.

Parameter counts are exact: each PaDT model (base + prototype transform + decoder, as ``padt init`` makes it) is
built on the meta device from the base's published architecture dimensions (:mod:`padt.backbones.sizes`; no
weights are loaded). Memory is then estimated per GPU for the two ready recipes:

- one GPU with LoRA (``configs/qwen3vl_*_lora.yaml``, ``configs/gpu_lora.yaml``): bf16 frozen base weights,
  LoRA adapters (r = 16 on every Linear of the language model) and the PaDT modules trained in fp32 with AdamW
  (weights + gradients + 2 moments = 16 bytes per trained parameter), activations with gradient checkpointing;
- 8 GPUs with DeepSpeed ZeRO-3 full fine-tuning (``configs/qwen3vl_*_zero3.yaml``, ``configs/zero3_8gpu.yaml``):
  bf16 weights and gradients and fp32 master weights and moments (16 bytes per parameter) sharded over 8 GPUs,
  plus activations.

Activations (gradient checkpointing): per sample, the hidden states kept at each layer boundary of the language
model (2 bytes x tokens x hidden x layers) and of the vision tower, one layer recomputed at a time (about 16 x
tokens x hidden bytes plus the MLP), and the fp32 logits of the completion tokens over text + VRT classes. The
workspace of CUDA kernels, fragmentation and the framework (1-3 GB) come on top. These are estimates from
formulas, not measurements: measure your own batch before a long run.

    python scripts/memory_estimate.py                   # batch 4 x 1k tokens (LoRA) and 16 x 1k (ZeRO-3)
    python scripts/memory_estimate.py --tokens 2048 --lora-batch 2
"""

from __future__ import annotations

import argparse

import torch


def counts(name: str) -> dict[str, int]:
    """Exact parameter counts of the PaDT model, by component, and of the LoRA adapters (r = 16)."""
    from padt.backbones.sizes import padt_config
    from padt.modeling import padt_class_for

    config = padt_config(name)
    with torch.device("meta"):
        model = padt_class_for(config.model_type)(config)
    out = {"vision": 0, "llm": 0, "decoder": 0}
    for param_name, param in model.named_parameters():
        out[model.component_of(param_name) or "llm"] += param.numel()
    lora = sum(
        16 * (m.in_features + m.out_features)
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and model.component_of(n) == "llm" and not n.startswith("lm_head")
    )
    return out | {"lora": lora, "total": sum(out.values())}


def activation_bytes(name: str, batch: int, tokens: int, image_tokens: int, completion: int) -> float:
    from padt.backbones.sizes import SIZES

    _, t, v = SIZES[name]
    merge = 4  # 2 x 2 patches per VRT
    hidden, inter, layers = t["hidden_size"], t["intermediate_size"], t["num_hidden_layers"]
    llm = 2 * tokens * hidden * layers + tokens * (16 * hidden + 6 * inter)
    patches = image_tokens * merge
    vit = 2 * patches * v["hidden_size"] * v["depth"] + patches * (
        16 * v["hidden_size"] + 4 * v["intermediate_size"]
    )
    logits = 4 * 2 * completion * (t["vocab_size"] + image_tokens)  # fp32 logits and their gradient
    return batch * (llm + vit + logits)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--tokens", type=int, default=1024, help="sequence length per sample (prompt + answer)"
    )
    parser.add_argument("--image-tokens", type=int, default=576, help="VRTs (merged image tokens) per sample")
    parser.add_argument("--completion", type=int, default=64, help="answer tokens per sample")
    parser.add_argument("--lora-batch", type=int, default=4)
    parser.add_argument("--zero3-batch", type=int, default=16)
    parser.add_argument("--gpus", type=int, default=8)
    args = parser.parse_args()
    gb = 1024**3
    print(
        f"| model | parameters (vision / LLM / PaDT) | LoRA, 1 GPU, batch {args.lora_batch} | "
        f"ZeRO-3 full, {args.gpus} GPUs, batch {args.zero3_batch} per GPU |"
    )
    print("|---|---|---:|---:|")
    from padt.backbones.sizes import SIZES

    for name in SIZES:
        c = counts(name)
        lora_mem = 2 * (c["vision"] + c["llm"]) + 16 * (c["decoder"] + c["lora"])
        lora_mem += activation_bytes(name, args.lora_batch, args.tokens, args.image_tokens, args.completion)
        zero3 = 16 * c["total"] / args.gpus
        zero3 += activation_bytes(name, args.zero3_batch, args.tokens, args.image_tokens, args.completion)
        print(
            f"| {name} | {c['total'] / 1e9:.2f} B ({c['vision'] / 1e9:.2f} / {c['llm'] / 1e9:.2f} / "
            f"{c['decoder'] / 1e6:.0f} M) | {lora_mem / gb:.0f} GB | {zero3 / gb:.0f} GB |"
        )


if __name__ == "__main__":
    main()
