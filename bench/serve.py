"""Throughput and latency of ``padt serve``: concurrent clients vs the same requests one at a time, side by side.

    python bench/serve.py                                     # bundled model on CPU, 64 requests, 16 clients
    python bench/serve.py --device cuda --arch 3b             # Qwen2.5-VL-3B architecture, random bf16 weights

The server runs in this process (uvicorn on 127.0.0.1, a free port) on one pipeline; clients are threads with
their own HTTP connections. Three runs of the same requests, one after the other:

1. ``sequential``: one client, one request at a time (every batch holds one request);
2. ``concurrent, no batching``: ``--clients`` clients, server with ``--max-batch-size 1`` (requests queue);
3. ``concurrent, batching``: ``--clients`` clients, server with ``--max-batch-size`` (dynamic batching).

Reported per run: requests/s, p50/p95 latency as the client sees it, mean batch size; and the throughput ratio of
each concurrent run to the sequential one. With the bundled model requests are synthetic scenes with REC, RES,
OVD and RIC prompts; with ``--arch 3b`` the random weights never end an answer, so every request decodes
exactly ``--max-new-tokens`` tokens.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import io
import json
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import torch
import uvicorn

from padt.data.synthetic import BUNDLED_SCENES, make_scene, sample_referring_expression
from padt.inference import PaDT, default_model
from padt.serve.api import BodyLimit, ServeSettings, create_app


def build_pipe(arch: str, device: str, dtype: str | None) -> PaDT:
    if arch == "bundled":
        return PaDT.from_pretrained(default_model(), device=device, dtype=dtype or "auto")
    from generate import build  # the same tiny / 3B models as the generation benchmark
    from padt.processing import PaDTProcessor
    from padt.tiny import tiny_processor

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[
        dtype or ("bf16" if arch == "3b" else "fp32")
    ]
    model, _ = build(arch, device, torch_dtype)
    return PaDT(model, PaDTProcessor(tiny_processor(), model.vocab_size))


def make_requests(n: int, max_new_tokens: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    requests = []
    for i in range(n):
        scene = make_scene(rng, **dataclasses.asdict(BUNDLED_SCENES))
        buffer = io.BytesIO()
        scene.image.save(buffer, format="PNG")
        task = ("rec", "ovd", "ric", "res")[i % 4]
        if task in ("rec", "res"):
            picked = sample_referring_expression(scene, rng)
            prompt = picked[1].text if picked else f"the {scene.objects[0].shape}"
        elif task == "ovd":
            prompt = ", ".join(sorted({o.shape for o in scene.objects}))
        else:
            prompt = ""
        requests.append(
            {
                "image": base64.b64encode(buffer.getvalue()).decode(),
                "task": task,
                "prompt": prompt,
                "max_new_tokens": max_new_tokens,
            }
        )
    return requests


class Server:
    """uvicorn with the padt app, in a thread of this process."""

    def __init__(self, pipe: PaDT, settings: ServeSettings) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        config = uvicorn.Config(
            BodyLimit(create_app(pipe, settings), settings.max_body_bytes),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(60)


def run_clients(url: str, requests: list[dict], clients: int) -> tuple[float, list[float], list[int]]:
    """``(seconds, latencies, batch sizes)`` of posting every request from ``clients`` threads."""
    local = threading.local()

    def post(body: dict) -> tuple[float, int]:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=url, timeout=600)
        start = time.perf_counter()
        response = local.client.post("/v1/predict", json=body)
        response.raise_for_status()
        return time.perf_counter() - start, response.json()["timing"]["batch_size"]

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(post, requests))
    return time.perf_counter() - start, [r[0] for r in results], [r[1] for r in results]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", choices=["bundled", "tiny", "3b"], default="bundled")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default=None)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    pipe = build_pipe(args.arch, args.device, args.dtype)
    requests = make_requests(args.requests, args.max_new_tokens)
    base = {
        "model_name": "bench",
        "max_wait_ms": args.max_wait_ms,
        "max_queue": args.requests + 1,
        "max_new_tokens": args.max_new_tokens,
        "request_timeout_s": 3600,
    }
    runs = [
        ("sequential", 1, 1),
        ("concurrent, no batching", args.clients, 1),
        ("concurrent, batching", args.clients, args.max_batch_size),
    ]
    device = (
        torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else f"cpu ({torch.get_num_threads()} threads)"
    )
    print(
        f"device {device}, arch {args.arch}, {pipe.model.dtype}, {args.requests} requests, "
        f"max {args.max_new_tokens} new tokens"
    )
    rows = []
    for name, clients, max_batch in runs:
        with Server(pipe, ServeSettings(max_batch_size=max_batch, **base)) as url:
            run_clients(url, requests[: max(2, clients // 4)], clients)  # warm-up
            seconds, latencies, sizes = run_clients(url, requests, clients)
        rows.append(
            {
                "run": name,
                "clients": clients,
                "max_batch_size": max_batch,
                "seconds": seconds,
                "requests_per_s": len(requests) / seconds,
                "p50_s": percentile(latencies, 50),
                "p95_s": percentile(latencies, 95),
                "mean_batch_size": statistics.mean(sizes),
            }
        )
    sequential = rows[0]["requests_per_s"]
    print(
        f"{'run':<26} {'clients':>7} {'max batch':>9} {'req/s':>7} {'x seq':>6} {'p50 s':>7} {'p95 s':>7} "
        f"{'mean batch':>10}"
    )
    for row in rows:
        row["throughput_vs_sequential"] = row["requests_per_s"] / sequential
        print(
            f"{row['run']:<26} {row['clients']:>7} {row['max_batch_size']:>9} {row['requests_per_s']:>7.2f} "
            f"{row['throughput_vs_sequential']:>6.2f} {row['p50_s']:>7.2f} {row['p95_s']:>7.2f} "
            f"{row['mean_batch_size']:>10.2f}"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "device": device,
                    "arch": args.arch,
                    "dtype": str(pipe.model.dtype),
                    "requests": args.requests,
                    "max_new_tokens": args.max_new_tokens,
                    "rows": rows,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
