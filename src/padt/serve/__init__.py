"""``padt serve``: an HTTP API over a PaDT model, with dynamic batching (needs ``pip install 'padt[serve]'``).

    padt serve                                   # the bundled model on http://127.0.0.1:8000
    padt serve --model PATH --host 0.0.0.0 --port 8000 --api-key "$KEY" --max-batch-size 16

Endpoints, limits and error codes: :mod:`padt.serve.api`. One process serves one model on one device; run one
replica per GPU (``CUDA_VISIBLE_DEVICES=i padt serve --port 800i``) behind any HTTP load balancer.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from padt.commands import non_negative_float, port_number, positive_float, positive_int
from padt.errors import PaDTError

#: Environment variable read for the API key when ``--api-key`` is not given.
API_KEY_ENV = "PADT_API_KEY"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="checkpoint folder (default: the bundled model)")
    parser.add_argument(
        "--model-name",
        default=None,
        help="the model id in /v1/models and chat requests (default: the folder name; "
        "padt-bundled for the bundled model)",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument(
        "--max-side", type=positive_int, default=None, help="cap the longer image side (px) first"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: every interface)")
    parser.add_argument("--port", type=port_number, default=8000)
    parser.add_argument(
        "--api-key",
        default=None,
        help=f"require 'Authorization: Bearer KEY' on /v1/* (default: ${API_KEY_ENV} if set)",
    )
    batching = parser.add_argument_group("batching")
    batching.add_argument(
        "--max-batch-size", type=positive_int, default=8, help="most requests in one generate call"
    )
    batching.add_argument(
        "--max-wait-ms",
        type=non_negative_float,
        default=10.0,
        help="how long the oldest waiting request waits for others to join its batch",
    )
    batching.add_argument(
        "--max-queue",
        type=positive_int,
        default=64,
        help="most requests waiting; beyond it: 503 with Retry-After",
    )
    limits = parser.add_argument_group("limits")
    limits.add_argument(
        "--request-timeout", type=positive_float, default=120.0, help="seconds per request (504 after)"
    )
    limits.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=512,
        help="default and upper limit of a request's max_new_tokens",
    )
    limits.add_argument(
        "--max-images", type=positive_int, default=4, help="most images per request (413 beyond)"
    )
    limits.add_argument(
        "--max-image-bytes", type=positive_int, default=10 * 2**20, help="most bytes per image (413 beyond)"
    )
    limits.add_argument(
        "--max-image-pixels",
        type=positive_int,
        default=40_000_000,
        help="most pixels (width x height) per image (413 beyond)",
    )
    parser.add_argument("--no-warmup", action="store_true", help="skip the warm-up prediction at start")


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from padt.serve.api import BodyLimit, ServeSettings, create_app
        from padt.serve.images import ImageLimits
    except ModuleNotFoundError as error:
        raise PaDTError(
            f"padt serve needs {error.name}; install it with: pip install 'padt[serve]'"
        ) from None
    from padt.inference import PaDT, default_model

    for name in (
        "max_batch_size",
        "max_queue",
        "max_new_tokens",
        "max_images",
        "max_image_bytes",
        "max_image_pixels",
    ):
        if getattr(args, name) < 1:
            raise PaDTError(f"--{name.replace('_', '-')} must be at least 1")
    if args.max_wait_ms < 0 or args.request_timeout <= 0:
        raise PaDTError("--max-wait-ms must be >= 0 and --request-timeout > 0")
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    path = Path(args.model) if args.model else default_model()
    name = args.model_name or ("padt-bundled" if args.model is None else path.resolve().name)
    pipe = PaDT.from_pretrained(path, device=args.device, dtype=args.dtype, max_side=args.max_side)
    if not args.no_warmup:
        _warm_up(pipe)
    settings = ServeSettings(
        model_name=name,
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        request_timeout_s=args.request_timeout,
        max_new_tokens=args.max_new_tokens,
        max_images=args.max_images,
        limits=ImageLimits(max_bytes=args.max_image_bytes, max_pixels=args.max_image_pixels),
        api_key=api_key,
    )
    app = create_app(pipe, settings)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    device = next(pipe.model.parameters()).device
    print(
        f"padt serve: model {name!r} ({path}) on {device}, {pipe.model.dtype}; "
        f"batches of up to {args.max_batch_size}, API key {'required' if api_key else 'off'}",
        flush=True,
    )
    config = uvicorn.Config(
        BodyLimit(app, settings.max_body_bytes),
        host=args.host,
        port=args.port,
        log_level="info",
        timeout_graceful_shutdown=int(args.request_timeout) + 5,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    server.run()
    return 0


def _warm_up(pipe) -> None:
    """One short prediction, so the first request does not pay for lazy initialisation."""
    from PIL import Image

    pipe([Image.new("RGB", (56, 56), (128, 128, 128))], ["warm up"], max_new_tokens=2)
