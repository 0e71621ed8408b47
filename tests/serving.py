"""Starting ``padt serve`` / ``padt app`` for real in tests: a subprocess on 127.0.0.1 and a free port, with the
network watch of ``tests/netguard`` (every attempt to reach another host is written to a log)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
START_TIMEOUT_S = 300  # a busy 2-core machine may take a minute to import torch and load the model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Process:
    proc: subprocess.Popen
    url: str
    log: Path
    net_log: Path

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def outside_connections(self) -> list[str]:
        return self.net_log.read_text().splitlines() if self.net_log.exists() else []

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@contextlib.contextmanager
def padt_process(
    command: str, args: list[str], tmp: Path, ready_path: str = "/health", env: dict[str, str] | None = None
) -> Iterator[Process]:
    """Run ``padt COMMAND ARGS --host 127.0.0.1 --port FREE`` until ``ready_path`` answers; stop it after."""
    import httpx

    port = free_port()
    log, net_log = tmp / f"{command}-{port}.log", tmp / f"{command}-{port}.net"
    full_env = dict(os.environ) | (env or {})
    full_env["PYTHONPATH"] = os.pathsep.join([str(HERE / "netguard"), full_env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    full_env["PADT_NET_LOG"] = str(net_log)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "padt.cli", command, *args, "--host", "127.0.0.1", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
        )
    process = Process(proc, f"http://127.0.0.1:{port}", log, net_log)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"padt {command} exited with {proc.returncode}:\n{process.log_tail()}")
            try:
                if httpx.get(process.url + ready_path, timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"padt {command} did not start in {START_TIMEOUT_S} s:\n{process.log_tail()}"
                )
            time.sleep(0.5)
        yield process
    finally:
        process.stop()


def scene_png(seed: int, **sizes) -> tuple[bytes, object]:
    """PNG bytes and the scene of a synthetic scene like the bundled model's training data."""
    from padt.data.synthetic import BUNDLED_SCENES, make_scene

    options = dataclasses.asdict(BUNDLED_SCENES) | sizes
    scene = make_scene(np.random.default_rng(seed), **options)
    buffer = io.BytesIO()
    scene.image.save(buffer, format="PNG")
    return buffer.getvalue(), scene


def assert_same_prediction(
    got: dict, want: dict, image_sizes: list[tuple[int, int]], where: str = ""
) -> None:
    """The same tokens and objects; boxes within 1e-4 of the image's longer side, scores within 1e-4, masks
    agreeing on at least 99.9% of pixels."""
    from padt.masks import decode_rle

    assert got["text"] == want["text"], f"{where}: different tokens:\n{got['text']}\n{want['text']}"
    assert len(got["objects"]) == len(want["objects"]), where
    for a, b in zip(got["objects"], want["objects"]):
        assert (a["label"], a["vrt_ids"], a["image"]) == (b["label"], b["vrt_ids"], b["image"]), where
        side = max(image_sizes[a["image"]])
        assert max(abs(x - y) for x, y in zip(a["box_xyxy"], b["box_xyxy"])) <= 1e-4 * side, where
        assert abs(a["score"] - b["score"]) <= 1e-4, where
        assert (a["mask_rle"] is None) == (b["mask_rle"] is None), where
        if a["mask_rle"] is not None:
            assert (decode_rle(a["mask_rle"]) == decode_rle(b["mask_rle"])).mean() >= 0.999, where
