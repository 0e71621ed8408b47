"""Run the ``padt`` command line on bad input, bounded in time, and check how it fails.

Each case runs :func:`padt.cli.main` in a child process forked from a server that has already imported padt,
torch and transformers, so a case costs a fork rather than a fresh interpreter, and a hang (a C loop holding
the GIL included) is killed at its time limit and fails its test instead of stalling the run.

A :class:`Case` is one row of a table: the arguments, the exit code expected, fragments the error must contain,
and optionally files to create first. ``{tmp}`` in arguments and file names is the test's temporary folder.
"""

from __future__ import annotations

import dataclasses
import io
import json
import multiprocessing
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

#: What the fork server imports once, so that cases start fast.
PRELOAD = ["padt.cli", "padt.inference", "padt.evaluation.cli", "padt.evaluation.score", "padt.training.cli"]

_CONTEXT: Any = None


def _context() -> Any:
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = multiprocessing.get_context("forkserver")
        _CONTEXT.set_forkserver_preload(PRELOAD)
    return _CONTEXT


@dataclasses.dataclass
class Result:
    code: int | None  # None: killed at the time limit
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("padt: error:")]


def _child(argv: list[str], cwd: str, env: dict[str, str], out_path: str, err_path: str) -> None:
    # Both Python's and C's output go to the files (fd-level), so nothing is lost and nothing reaches the
    # test runner's terminal.
    out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(out, 1)
    os.dup2(err, 2)
    sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", closefd=False), write_through=True)
    sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", closefd=False), write_through=True)
    os.chdir(cwd)
    os.environ.update(env)
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch

    torch.set_num_threads(1)
    from padt.cli import main

    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code if isinstance(exc.code, int) else 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _child_killed_in_save(save: int, *args: Any) -> None:
    """:func:`_child`, killed (SIGKILL, as by the OOM killer or ``kill -9``) half-way through writing the weights
    of its ``save``-th checkpoint: the folder then holds config files and a cut-short ``model.safetensors``."""
    import signal

    import transformers.modeling_utils as modeling_utils

    real = modeling_utils.safe_save_file
    calls = 0

    def dying(tensors: Any, filename: str, metadata: Any = None) -> None:
        nonlocal calls
        calls += 1
        real(tensors, filename, metadata=metadata)
        if calls == save:
            os.truncate(filename, os.path.getsize(filename) // 2)
            os.kill(os.getpid(), signal.SIGKILL)

    modeling_utils.safe_save_file = dying
    _child(*args)


def run_cli(
    argv: Sequence[str],
    *,
    cwd: Path,
    timeout: float = 120,
    env: dict[str, str] | None = None,
    killed_in_save: int | None = None,
) -> Result:
    """``padt ARGV`` in a forked child; killed after ``timeout`` seconds (``code`` is then ``None``). With
    ``killed_in_save=k`` the child kills itself while writing the k-th checkpoint's weights."""
    out_path, err_path = cwd / ".padt-stdout", cwd / ".padt-stderr"
    args: tuple = (list(argv), str(cwd), env or {}, str(out_path), str(err_path))
    target: Callable[..., None] = _child
    if killed_in_save is not None:
        target, args = _child_killed_in_save, (killed_in_save, *args)
    proc = _context().Process(target=target, args=args)
    proc.start()
    proc.join(timeout)
    code: int | None = proc.exitcode
    if proc.is_alive():
        proc.kill()
        proc.join()
        code = None
    result = Result(code, out_path.read_text(errors="replace"), err_path.read_text(errors="replace"))
    out_path.unlink()
    err_path.unlink()
    return result


@dataclasses.dataclass
class Case:
    """One bad input: ``argv`` (``{tmp}`` and the fixture names in ``{...}`` are filled in), the exit code and the
    message fragments expected. ``files`` maps a name to its text, bytes or a function writing it."""

    id: str
    argv: list[str]
    fragments: list[str]
    code: int = 2
    files: dict[str, str | bytes | Callable[[Path], Any]] = dataclasses.field(default_factory=dict)
    timeout: float = 120
    one_line: bool = True  # the error is exactly one "padt: error:" line (argparse's usage errors are not)

    def param(self, *marks: Any) -> Any:
        return pytest.param(self, id=self.id, marks=marks)


def write_files(case: Case, tmp: Path) -> None:
    for name, content in case.files.items():
        path = tmp / name.format(tmp=tmp)
        path.parent.mkdir(parents=True, exist_ok=True)
        if callable(content):
            content(path)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


def check(case: Case, tmp: Path, **names: str) -> Result:
    """Run ``case`` in ``tmp`` and assert: it ends in time, with the expected code, without a traceback, and
    (for padt's own errors) with one error line holding every fragment."""
    write_files(case, tmp)
    argv = [a.format(tmp=tmp, **names) for a in case.argv]
    result = run_cli(argv, cwd=tmp, timeout=case.timeout)
    shown = f"padt {' '.join(argv)}\n--- stderr ---\n{result.stderr[-3000:]}"
    assert result.code is not None, f"hung for {case.timeout} s: {shown}"
    assert result.code == case.code, f"exit {result.code}, expected {case.code}: {shown}"
    assert "Traceback" not in result.stderr, shown
    if case.one_line:
        assert len(result.error_lines) == 1, shown
        message = result.error_lines[0]
    else:
        message = result.stderr
    for fragment in case.fragments:
        assert fragment in message, f"{fragment!r} not in the error: {shown}"
    return result


def jsonl(*rows: Any) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def check_all(case: Case, tmp: Path, world: Path) -> Result:
    """:func:`check` with ``{w}`` naming the shared :func:`make_world` folder."""
    return check(case, tmp, w=str(world))


def make_world(folder: Path) -> Path:
    """Inputs the bad-input tables share, written once per module: good and broken images, damaged copies of the
    bundled model, a small RES dataset and damaged versions of it, and prediction files."""
    import shutil

    from PIL import Image

    from padt.data.synthetic import generate_dataset
    from padt.inference import BUNDLED_MODEL

    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 48), "red").save(folder / "ok.png")
    Image.new("RGB", (64, 48), "blue").save(folder / "other.png")
    (folder / "bad.png").write_bytes(b"not an image")
    (folder / "cut.png").write_bytes((folder / "ok.png").read_bytes()[:60])
    Image.new("1", (10000, 9500)).save(folder / "huge.png")  # 95 MP, tiny on disk
    (folder / "afile").write_text("{}")

    def model_copy(name: str, damage: Callable[[Path], Any]) -> None:
        target = folder / name
        shutil.copytree(BUNDLED_MODEL, target)
        damage(target)

    model_copy(
        "m_cut", lambda m: os.truncate(m / "model.safetensors", (m / "model.safetensors").stat().st_size // 2)
    )
    model_copy("m_zero", lambda m: (m / "model.safetensors").write_bytes(b""))
    model_copy("m_noweights", lambda m: (m / "model.safetensors").unlink())
    model_copy("m_badcfg", lambda m: (m / "config.json").write_text('{"model_type": '))
    model_copy("m_nocfg", lambda m: (m / "config.json").unlink())
    model_copy("m_notok", lambda m: [p.unlink() for p in m.glob("tokenizer*")])
    model_copy(
        "m_llama",
        lambda m: (m / "config.json").write_text(
            json.dumps({**json.loads((m / "config.json").read_text()), "model_type": "llama"})
        ),
    )

    generate_dataset("res", 3, 1, folder / "res", progress=False)
    records = [json.loads(line) for line in (folder / "res" / "records.jsonl").read_text().splitlines()]
    first = records[0]
    height, width = first["objects"][0]["rle"]["size"]

    def variant(name: str, change: Callable[[dict], Any], *, extra: str = "") -> None:
        record = json.loads(json.dumps(first))
        change(record)
        (folder / "res" / name).write_text(json.dumps(record) + "\n" + extra)

    variant("garbage_rle.jsonl", lambda r: r["objects"][0]["rle"].update(counts="!!!garbage###"))
    variant("wrong_size_rle.jsonl", lambda r: r["objects"][0]["rle"].update(size=[5, 5]))
    variant("inverted_box.jsonl", lambda r: r["objects"][0].update(bbox=[0.5, 0.5, 0.2, 0.2]))
    variant("missing_image.jsonl", lambda r: r.update(image="gone.png"))
    variant("torn.jsonl", lambda r: None, extra='{"id": 9, "image": ')
    (folder / "res" / "empty.jsonl").write_text("")

    good = {"bbox": [10, 10, 40, 40], "score": 0.9, "mask": first["objects"][0]["rle"]}

    def preds(name: str, **change: Any) -> None:
        line = {"index": 0, "width": width, "height": height, "objects": [{**good, **change}]}
        (folder / name).write_text(json.dumps(line) + "\n")

    preds("p_good.jsonl")
    preds("p_garbage_rle.jsonl", mask={"size": [height, width], "counts": "!!!garbage###"})
    preds("p_wrong_size_rle.jsonl", mask={**good["mask"], "size": [3, 3]})
    preds("p_nan_box.jsonl", bbox=[float("nan"), 1, 2, 3])
    preds("p_inf_box.jsonl", bbox=[1, 1, 2, float("inf")])
    preds("p_inverted_box.jsonl", bbox=[40, 40, 10, 10])
    preds("p_text_box.jsonl", bbox="10 10 40 40")
    preds("p_nan_score.jsonl", score=float("nan"))
    preds("p_no_mask.jsonl", mask=None)
    (folder / "p_empty.jsonl").write_text("")
    (folder / "p_not_json.jsonl").write_text('{"index": 0, oops\n')
    (folder / "p_bad_index.jsonl").write_text(json.dumps({"index": 7, "objects": [good]}) + "\n")

    coco = {"images": [{"id": 1, "file_name": "ok.png", "width": 64, "height": 48}], "annotations": []}
    coco["categories"] = [{"id": 1, "name": "dog"}]
    (folder / "coco_no_annotations.json").write_text(json.dumps(coco))
    coco_ann = {
        **coco,
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 9, 9], "area": 81, "iscrowd": 0}
        ],
    }
    (folder / "coco.json").write_text(json.dumps(coco_ann))
    result = {"image_id": 1, "category_id": 1, "bbox": [1, 1, 9, 9], "score": 0.5}
    (folder / "c_good.json").write_text(json.dumps([result]))
    (folder / "c_unknown_image.json").write_text(json.dumps([{**result, "image_id": 9}]))
    (folder / "c_nan_score.json").write_text(json.dumps([{**result, "score": float("nan")}]))
    (folder / "c_negative_size.json").write_text(json.dumps([{**result, "bbox": [1, 1, -3, 9]}]))
    (folder / "c_empty.json").write_text("[]")
    return folder
