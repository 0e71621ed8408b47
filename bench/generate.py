"""Decode speed of PaDT generate vs stock Qwen2.5-VL generate on the same weights, side by side in one process.

    python bench/generate.py                                  # CPU, tiny config
    python bench/generate.py --device cuda --arch 3b          # real Qwen2.5-VL-3B architecture, random bf16 weights

For each batch size and cache kind, both models generate the same prompt (one image + text) with a fixed number
of new tokens (eos suppressed). Decode time per token = (t(N tokens) - t(1 token)) / (N - 1), which removes the
prefill; each timing is the median of ``--repeats`` runs. Prints a table and the PaDT/stock ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
from PIL import Image
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from padt.generation import VRTStateRecorder
from padt.modeling import PaDTForConditionalGeneration
from padt.processing import PaDTProcessor
from padt.tiny import tiny_config, tiny_processor, tiny_tokenizer

QWEN25_VL_3B = {
    "text_config": {
        "vocab_size": 151936,
        "hidden_size": 2048,
        "intermediate_size": 11008,
        "num_hidden_layers": 36,
        "num_attention_heads": 16,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128000,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1000000.0},
    },
    "vision_config": {
        "depth": 32,
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "out_hidden_size": 2048,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
    },
    "tie_word_embeddings": True,
}


def build(arch: str, device: str, dtype: torch.dtype):
    tokenizer = tiny_tokenizer()
    ids = {
        t: tokenizer.convert_tokens_to_ids(t)
        for t in (
            "<|image_pad|>",
            "<|video_pad|>",
            "<|vision_start|>",
            "<|vision_end|>",
            "<|im_end|>",
            "<|endoftext|>",
        )
    }
    if arch == "tiny":
        config = tiny_config()
    else:
        spec = json.loads(json.dumps(QWEN25_VL_3B))
        spec["text_config"].update(
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        )
        config = Qwen2_5_VLConfig(
            **spec,
            image_token_id=ids["<|image_pad|>"],
            video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"],
            vision_end_token_id=ids["<|vision_end|>"],
        )
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        padt = PaDTForConditionalGeneration(config).to(dtype)
        with torch.no_grad():
            padt.vis_norm.weight.normal_(1.0, 0.1)
        stock = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig.from_dict(config.to_dict())).to(dtype)
    stock.config._attn_implementation = "sdpa"
    missing, unexpected = stock.load_state_dict(padt.state_dict(), strict=False)
    assert not missing and all(k.startswith(("vis_", "vl_decoder")) for k in unexpected)
    return padt.eval(), stock.eval()


def timed_generate(model, inputs, new_tokens: int, cache: str, padt: bool) -> float:
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    if cache == "static":
        kwargs["cache_implementation"] = "static"
    if padt:
        kwargs["vrt_recorder"] = VRTStateRecorder(model.vocab_size, inputs["input_ids"].shape[1])
    if inputs["input_ids"].is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(**inputs, **kwargs)
    if inputs["input_ids"].is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def per_token(model, inputs, new_tokens: int, cache: str, padt: bool, repeats: int) -> float:
    timed_generate(model, inputs, new_tokens, cache, padt)  # warm-up (and compilation for static caches)
    full = statistics.median(timed_generate(model, inputs, new_tokens, cache, padt) for _ in range(repeats))
    one = statistics.median(timed_generate(model, inputs, 1, cache, padt) for _ in range(repeats))
    return (full - one) / (new_tokens - 1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--arch", choices=["tiny", "3b"], default="tiny")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default=None)
    parser.add_argument("--batch-sizes", default="1,16")
    parser.add_argument("--caches", default="dynamic,static")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=448)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[
        args.dtype or ("bf16" if args.arch == "3b" else "fp32")
    ]
    padt, stock = build(args.arch, args.device, dtype)
    processor = PaDTProcessor(tiny_processor(), padt.vocab_size)
    image = Image.fromarray(
        np.random.default_rng(0).integers(0, 255, (args.image_size, args.image_size, 3), dtype=np.uint8)
    )
    rows = []
    print(
        f"device {args.device} ({torch.cuda.get_device_name() if args.device.startswith('cuda') else 'cpu'}), "
        f"arch {args.arch}, {dtype}, {args.new_tokens} new tokens, image {args.image_size}px"
    )
    print(
        f"{'batch':>5} {'cache':>8} {'stock ms/tok':>13} {'padt ms/tok':>12} {'stock tok/s':>12} "
        f"{'padt tok/s':>11} {'ratio':>6}"
    )
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        batch = processor(["Please describe this image."] * batch_size, [image] * batch_size)
        inputs = {k: v.to(args.device) for k, v in batch.inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        for cache in args.caches.split(","):
            try:
                s = per_token(stock, inputs, args.new_tokens, cache, False, args.repeats)
                p = per_token(padt, inputs, args.new_tokens, cache, True, args.repeats)
            except Exception as exc:  # report the cell, keep measuring the others
                print(f"{batch_size:>5} {cache:>8} failed: {type(exc).__name__}: {exc}"[:300])
                continue
            row = {
                "batch": batch_size,
                "cache": cache,
                "stock_ms_per_token": 1e3 * s,
                "padt_ms_per_token": 1e3 * p,
                "stock_tokens_per_s": batch_size / s,
                "padt_tokens_per_s": batch_size / p,
                "ratio": p / s,
            }
            rows.append(row)
            print(
                f"{batch_size:>5} {cache:>8} {1e3 * s:>13.2f} {1e3 * p:>12.2f} {batch_size / s:>12.1f} "
                f"{batch_size / p:>11.1f} {p / s:>6.2f}"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"device": args.device, "arch": args.arch, "dtype": str(dtype), "rows": rows}, f, indent=2
            )


if __name__ == "__main__":
    main()
