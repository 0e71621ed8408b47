"""``padt serve`` and ``padt app`` on bad options: refused at start, before the model loads or a port opens.
(Bad requests to a running server are in test_serve.py: 4xx answers, never a crash.)"""

from __future__ import annotations

import pytest

from badinput import Case, check_all, make_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"))


CASES = [
    *(
        Case(f"{command}-{name}", [command, *args], [fragment], one_line=False)
        for command in ("serve", "app")
        for name, args, fragment in [
            ("port-0", ["--port", "0"], "argument --port: a port is 1 to 65535, got 0"),
            ("port-too-large", ["--port", "70000"], "argument --port: a port is 1 to 65535, got 70000"),
            ("max-side-0", ["--max-side", "0"], "argument --max-side: must be at least 1, got 0"),
            ("max-new-tokens-0", ["--max-new-tokens", "0"], "argument --max-new-tokens: must be at least 1"),
        ]
    ),
    *(
        Case(f"serve-{name}", ["serve", *args], [fragment], one_line=False)
        for name, args, fragment in [
            ("max-batch-size-0", ["--max-batch-size", "0"], "argument --max-batch-size: must be at least 1"),
            ("max-queue-0", ["--max-queue", "0"], "argument --max-queue: must be at least 1"),
            ("max-wait-negative", ["--max-wait-ms", "-1"], "argument --max-wait-ms"),
            ("request-timeout-0", ["--request-timeout", "0"], "argument --request-timeout"),
            ("max-images-0", ["--max-images", "0"], "argument --max-images: must be at least 1"),
            (
                "max-image-bytes-0",
                ["--max-image-bytes", "0"],
                "argument --max-image-bytes: must be at least 1",
            ),
        ]
    ),
    *(
        Case(f"{command}-{name}", [command, "--model", f"{{w}}/{model}", "--port", "1"], [fragment])
        for command in ("serve", "app")
        for name, model, fragment in [
            ("model-missing", "nope", "does not exist"),
            ("weights-cut-short", "m_cut", "model.safetensors is empty or cut short"),
            ("config-missing", "m_nocfg", "no config.json in"),
        ]
    ),
    Case("serve-device-cuda-without-gpu", ["serve", "--device", "cuda", "--port", "1"], ["no CUDA"]),
    Case(
        "demo-scenes-0",
        ["demo", "--scenes", "0"],
        ["argument --scenes: must be at least 1, got 0"],
        one_line=False,
    ),
    Case("demo-out-is-a-file", ["demo", "--out", "{w}/afile"], ["exists and is not a folder"]),
    Case("demo-weights-empty", ["demo", "--model", "{w}/m_zero", "--out", "{tmp}/d"], ["(0 bytes)"]),
    Case(
        "init-base-missing",
        ["init", "--base", "{w}/nope", "--out", "{tmp}/i"],
        ["has no config.json", "--base"],
    ),
    Case(
        "init-base-already-padt",
        ["init", "--base", "{w}/m_cut", "--out", "{tmp}/i"],
        ["already a PaDT checkpoint", "train it directly"],
    ),
    Case("init-other-architecture", ["init", "--base", "{w}/m_llama", "--out", "{tmp}/i"], ["llama"]),
]


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_refuses(case, tmp_path, world):
    check_all(case, tmp_path, world)
