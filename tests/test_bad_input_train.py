"""``padt train`` on bad input and faults: config mistakes are one line before anything heavy starts; a run
killed while saving resumes from its last complete checkpoint; rerunning a finished run does nothing."""

from __future__ import annotations

import hashlib
import json

import pytest

from badinput import Case, check, run_cli
from padt.data.synthetic import generate_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    """A tiny model on eight synthetic scenes, saving every 2 steps."""
    folder = tmp_path_factory.mktemp("train")
    records = generate_dataset("all", 8, 1, folder / "scenes", min_size=112, max_size=112, progress=False)
    path = folder / "tiny.yaml"
    path.write_text(
        "model: {tiny: {hidden_size: 32}}\n"
        "processor: {max_pixels: 12544}\n"
        f"data: {{train: [{{records: '{records.records_path}'}}]}}\n"
        "padt: {patches: recompute, warmup_steps: 2}\n"
        "training: {output_dir: run, per_device_train_batch_size: 2, learning_rate: 1.0e-3, max_steps: 6,\n"
        "           save_strategy: steps, save_steps: 2, logging_steps: 1, report_to: [], disable_tqdm: true}\n"
    )
    return path


def tr(*more: str) -> list[str]:
    return ["train", "--config", "{cfg}", *more]


CASES = [
    Case("config-missing", ["train", "--config", "{tmp}/nope.yaml"], ["config file not found", "--config"]),
    Case(
        "config-not-yaml",
        ["train", "--config", "{tmp}/bad.yaml"],
        ["bad.yaml: not valid YAML"],
        files={"bad.yaml": "training:\n  max_steps: [1\n"},
    ),
    Case(
        "extends-missing",
        ["train", "--config", "{tmp}/child.yaml"],
        ["gone.yaml"],
        files={"child.yaml": "extends: gone.yaml\n"},
    ),
    Case("typo-padt", tr("padt.robust_los=true"), ["unknown key 'padt.robust_los'", "'padt.robust_loss'"]),
    Case("typo-model", tr("model.foo=1"), ["unknown key 'model.foo'"]),
    Case("typo-data", tr("data.foo=1"), ["unknown key 'data.foo'"]),
    Case("typo-lora", tr("lora.rr=4"), ["unknown key 'lora.rr'", "'lora.r'"]),
    Case("typo-processor", tr("processor.max_pixel=100"), ["'processor.max_pixels'"]),
    Case(
        "typo-synthetic", tr("data.synthetic.nn=5"), ["unknown key 'data.synthetic.nn'", "'data.synthetic.n'"]
    ),
    Case("typo-training", tr("training.max_step=4"), ["training.max_step", "'training.max_steps'"]),
    Case(
        "max-steps-not-a-number",
        tr("training.max_steps=abc"),
        ["training.max_steps", "valid integer", "'abc'"],
    ),
    Case("learning-rate-negative", tr("training.learning_rate=-1"), ["training.learning_rate must be > 0"]),
    Case("warmup-negative", tr("training.warmup_steps=-3"), ["training.warmup_steps must be >= 0"]),
    Case("robust-loss-not-a-bool", tr("padt.robust_loss=maybe"), ["padt.robust_loss", "valid boolean"]),
    Case("override-without-equals", tr("nokey"), ["cannot read override 'nokey'", "section.key=value"]),
    Case("output-dir-is-a-file", tr("--output-dir", "{cfg}"), ["exists and is not a folder"]),
    Case(
        "max-steps-zero",
        tr("--max-steps", "0"),
        ["argument --max-steps: must be at least 1, got 0"],
        one_line=False,
    ),
]


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_train_refuses(case, tmp_path, config):
    check(case, tmp_path, cfg=str(config))


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_killed_while_saving_resumes_from_the_last_complete_checkpoint(tmp_path, config):
    argv = ["train", "--config", str(config)]
    killed = run_cli(argv, cwd=tmp_path, killed_in_save=2, timeout=300)  # dies writing checkpoint-4
    assert killed.code == -9, killed.stderr[-2000:]
    torn = tmp_path / "run" / "checkpoint-4"
    assert torn.is_dir() and not (torn / "trainer_state.json").exists()

    resumed = run_cli(argv, cwd=tmp_path, timeout=300)
    assert resumed.code == 0, resumed.stderr[-2000:]
    assert "skipping checkpoint-4, an interrupted save" in resumed.stdout
    assert "resuming from" in resumed.stdout and "checkpoint-2" in resumed.stdout
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["global_step"] == 6
    # The loss of the summary covers the whole run, not only the resumed part.
    logged = json.loads((tmp_path / "run" / "checkpoint-6" / "trainer_state.json").read_text())["log_history"]
    losses = [e["loss"] for e in logged if "loss" in e]
    assert len(losses) == 6 and summary["train_loss"] == pytest.approx(sum(losses) / 6, rel=1e-6)
    assert (torn / "trainer_state.json").is_file()  # rewritten whole by the resumed run


def test_rerunning_a_finished_run_does_nothing(tmp_path, config):
    argv = ["train", "--config", str(config), "--max-steps", "2"]
    first = run_cli(argv, cwd=tmp_path, timeout=300)
    assert first.code == 0, first.stderr[-2000:]
    weights = tmp_path / "run" / "model.safetensors"
    before = _digest(weights), sorted(p.name for p in (tmp_path / "run").iterdir())
    again = run_cli(argv, cwd=tmp_path, timeout=300)
    assert again.code == 0 and "already holds the finished run (step 2); nothing to do" in again.stdout
    assert (_digest(weights), sorted(p.name for p in (tmp_path / "run").iterdir())) == before
    assert json.loads((tmp_path / "run" / "train_summary.json").read_text())["global_step"] == 2
    # Asking for more steps trains on from where it stopped.
    more = run_cli(["train", "--config", str(config), "--max-steps", "4"], cwd=tmp_path, timeout=300)
    assert more.code == 0 and "resuming from" in more.stdout
    assert json.loads((tmp_path / "run" / "train_summary.json").read_text())["global_step"] == 4
