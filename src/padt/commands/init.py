"""``padt init``: turn a plain Qwen2.5-VL or Qwen3-VL checkpoint into a PaDT checkpoint, ready for ``padt train``.

The base model's weights, tokenizer, image processor, chat template and generation config are kept; PaDT's
modules (``vis_norm``, ``vis_proj``, ``vl_decoder`` and, when asked, ``image_position`` and
``prototype_position``) are created and initialised as the reference initialises them before training
(``vis_norm`` zero, so every prototype starts at 0, or at the small random position term when it is asked).
On inputs without VRTs the result computes exactly the base model's text logits.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from padt.commands import positive_int, writable_folder
from padt.errors import PaDTError

DTYPE_NAMES = ("fp32", "bf16", "fp16")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--base", type=Path, required=True, help="folder of a plain Qwen2.5-VL or Qwen3-VL checkpoint"
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for the PaDT checkpoint")
    parser.add_argument(
        "--decoder-size",
        type=positive_int,
        default=None,
        metavar="N",
        help="width of the PaDT decoder's MLP (default: the vision tower's, as the reference; the decoder's width "
        "and heads always equal the vision tower's)",
    )
    parser.add_argument(
        "--ordering",
        choices=("reference", "raster"),
        default=None,
        help="decoder input order (default: the base's: reference for Qwen2.5-VL, raster for Qwen3-VL)",
    )
    parser.add_argument(
        "--image-position-code", action="store_true", help="add the learned (x, y) code to the image features"
    )
    parser.add_argument(
        "--prototype-position-code",
        action="store_true",
        help="add a randomly initialised (x, y) term to the VRT prototypes",
    )
    parser.add_argument(
        "--prototype-position-init-std",
        type=float,
        default=None,
        metavar="STD",
        help="std of that term's random init (default: padt.config.PROTOTYPE_POSITION_INIT_STD)",
    )
    parser.add_argument(
        "--vrt-deepstack",
        action="store_true",
        help="Qwen3-VL: a VRT fed back as input also gets the DeepStack features of its patch (docs/method.md "
        "§13; off: its prototype alone)",
    )
    parser.add_argument(
        "--answer-format",
        choices=("vrt", "text"),
        default="vrt",
        help="vrt (PaDT) or text coordinates (baseline)",
    )
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default="fp32", help="dtype of the saved weights")


def init_from_base(
    base: str | Path,
    *,
    decoder_size: int | None = None,
    ordering: str | None = None,
    image_position_code: bool = False,
    prototype_position_code: bool = False,
    prototype_position_init_std: float | None = None,
    answer_format: str = "vrt",
    dtype: str = "fp32",
    vrt_deepstack: bool = False,
) -> tuple[Any, Any]:
    """A PaDT model and processor made from a plain base checkpoint folder (see the module docstring)."""
    from padt.inference import DTYPES
    from padt.modeling import padt_class_for
    from padt.processing import PaDTProcessor

    base = Path(base)
    config_file = base / "config.json"
    if not config_file.is_file():
        raise PaDTError(
            f"{base} has no config.json; point --base at a Qwen2.5-VL or Qwen3-VL checkpoint folder"
        )
    try:
        raw = json.loads(config_file.read_text())
    except ValueError:
        raise PaDTError(f"{config_file} is not valid JSON; restore the checkpoint's config.json") from None
    if raw.get("vl_decoder") is not None:
        raise PaDTError(f"{base} is already a PaDT checkpoint (its config has vl_decoder); train it directly")
    cls = padt_class_for(str(raw.get("model_type")))
    extra: dict[str, Any] = {}
    if vrt_deepstack:
        if not hasattr(cls.config_class(), "vrt_deepstack"):
            raise PaDTError(
                f"--vrt-deepstack is for Qwen3-VL bases; {base} is a {raw.get('model_type')} model"
            )
        extra["vrt_deepstack"] = True
    if prototype_position_init_std is not None:
        if not prototype_position_code:
            raise PaDTError("--prototype-position-init-std needs --prototype-position-code")
        extra["prototype_position_init_std"] = prototype_position_init_std
    decoder: dict[str, Any] = {}
    if decoder_size is not None:
        decoder["intermediate_size"] = decoder_size
    if ordering is not None:
        decoder["ordering"] = ordering
    config = cls.config_class.from_dict(
        raw
        | {
            "vl_decoder": decoder,
            "image_position_code": image_position_code,
            "prototype_position_code": prototype_position_code,
            "padt_answer_format": answer_format,
        }
        | extra
    )
    model = cls.from_pretrained(base, config=config, init_padt_modules=True, dtype=DTYPES[dtype])
    processor = PaDTProcessor.from_pretrained(base, model.vocab_size)
    return model, processor


def run(args: argparse.Namespace) -> int:
    if args.out.resolve() == args.base.resolve():
        raise PaDTError("--out must differ from --base; the base checkpoint is not modified")
    if args.out.is_dir() and any(args.out.iterdir()):
        raise PaDTError(f"{args.out} is not empty; choose a new folder for the PaDT checkpoint")
    writable_folder(args.out, "--out")
    model, processor = init_from_base(
        args.base,
        decoder_size=args.decoder_size,
        ordering=args.ordering,
        image_position_code=args.image_position_code,
        prototype_position_code=args.prototype_position_code,
        prototype_position_init_std=args.prototype_position_init_std,
        answer_format=args.answer_format,
        dtype=args.dtype,
        vrt_deepstack=args.vrt_deepstack,
    )
    model.save_pretrained(args.out)
    processor.save_pretrained(args.out)
    added = sum(p.numel() for n, p in model.named_parameters() if model.component_of(n) == "decoder")
    print(
        f"PaDT ({model.config.model_type}) written to {args.out}: {added:,} new parameters (decoder and prototype "
        f"transform), decoder ordering {model.config.decoder_config.ordering}; train it with padt train "
        f"model.path={args.out}"
    )
    return 0
