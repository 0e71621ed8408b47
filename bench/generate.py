"""Decode speed of PaDT generate vs stock Qwen2.5-VL generate on the same weights, side by side in one process.

    python bench/generate.py                                  # CPU, tiny config
    python bench/generate.py --device cuda --arch qwen2.5-vl-3b   # real Qwen2.5-VL-3B architecture, random bf16
    python bench/generate.py --device cuda --arch qwen3-vl-4b     # real Qwen3-VL-4B architecture, random bf16

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

from padt.generation import VRTStateRecorder
from padt.processing import PaDTProcessor
from padt.tiny import tiny_config, tiny_processor, tiny_tokenizer

ARCHS = ("tiny", "tiny-qwen3", "qwen2.5-vl-3b", "qwen3-vl-4b")


def build(arch: str, device: str, dtype: torch.dtype):
    """The PaDT model of ``arch`` (random weights) and the stock base model holding the same weights."""
    from padt.backbones import get_backbone
    from padt.backbones.sizes import padt_config
    from padt.modeling import padt_class_for

    backbone = "qwen3_vl" if "qwen3" in arch else "qwen2_5_vl"
    tokenizer = tiny_tokenizer(backbone)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in get_backbone(backbone).special_tokens}
    config = tiny_config(backbone=backbone) if arch.startswith("tiny") else padt_config(arch, ids)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    base = get_backbone(config.model_type)
    with torch.device(device):
        padt = padt_class_for(config.model_type)(config).to(dtype)
        with torch.no_grad():
            padt.vis_norm.weight.normal_(1.0, 0.1)
        stock = base.model_class(base.config_class.from_dict(config.to_dict())).to(dtype)
    stock.config._attn_implementation = "sdpa"
    missing, unexpected = stock.load_state_dict(padt.state_dict(), strict=False)
    assert not missing and all(k.startswith(("vis_", "vl_decoder")) for k in unexpected)
    return padt.eval(), stock.eval(), backbone


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
    parser.add_argument(
        "--arch", choices=ARCHS, default="tiny", help="tiny models or full-size random weights"
    )
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default=None)
    parser.add_argument("--batch-sizes", default="1,16")
    parser.add_argument("--caches", default="dynamic,static")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=448)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[
        args.dtype or ("fp32" if args.arch.startswith("tiny") else "bf16")
    ]
    padt, stock, backbone = build(args.arch, args.device, dtype)
    processor = PaDTProcessor(tiny_processor(backbone=backbone), padt.vocab_size)
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
        stock_inputs = {k: v for k, v in inputs.items() if k != "vrt_layout"}  # PaDT's own input
        for cache in args.caches.split(","):
            try:
                s = per_token(stock, stock_inputs, args.new_tokens, cache, False, args.repeats)
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
