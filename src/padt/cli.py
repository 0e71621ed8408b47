"""``padt`` command line: a thin layer over the library.

Each subcommand lives in the module that implements it; that module exposes
``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported only when their command runs, so
``padt --help`` stays fast.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys

from padt.errors import PaDTError

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("padt.commands.init", "turn a plain Qwen2.5-VL or Qwen3-VL checkpoint into a PaDT checkpoint"),
    "predict": ("padt.commands.predict", "ground a prompt in images: text, boxes, masks and scores"),
    "demo": ("padt.demo", "run REC, RES, OVD and RIC on fresh synthetic scenes with the bundled model"),
    "train": ("padt.training.cli", "fine-tune PaDT from a YAML config (works under accelerate/torchrun)"),
    "eval": ("padt.evaluation.cli", "batched, resumable evaluation of a model on a dataset"),
    "score": ("padt.evaluation.score", "score predictions made elsewhere against ground truth"),
    "data": ("padt.data.cli", "prepare datasets and generate synthetic scenes"),
    "app": ("padt.app", "web demo (Gradio): drop an image, see boxes, masks and the answer"),
    "serve": ("padt.serve", "HTTP API with dynamic batching and OpenAI-compatible chat completions"),
}


_WRITE_ERRORS = {
    errno.ENOSPC: "free some disk space and rerun (finished work is kept and resumed)",
    errno.EDQUOT: "free some of your disk quota and rerun (finished work is kept and resumed)",
    errno.EROFS: "the file system is read-only; choose another output folder",
    errno.EACCES: "choose an output folder you may write to",
    errno.EPERM: "choose an output folder you may write to",
}


class CLIError(PaDTError):
    """A command-line problem the user can fix."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="padt", description="Patch-as-Decodable-Token (PaDT) for Qwen2.5-VL."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if name in _requested_commands():
            _load(module).add_arguments(p)
    return parser


def _requested_commands() -> set[str]:
    return {a for a in sys.argv[1:] if a in COMMANDS}


def _load(module: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            raise CLIError(f"this command is not available in this build ({module} is missing)") from exc
        raise


def main(argv: list[str] | None = None) -> int:
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    try:
        parser = build_parser()
        args = parser.parse_args()
        if not getattr(args, "command", None):
            parser.print_help()
            return 0
        return int(_load(args._module).run(args) or 0)
    except PaDTError as exc:
        print(f"padt: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # Disk full, read-only or forbidden paths met while writing: say which and what to do, not a traceback.
        if exc.errno not in _WRITE_ERRORS:
            raise
        where = f" {exc.filename}" if exc.filename else ""
        print(
            f"padt: error: cannot write{where}: {exc.strerror}; {_WRITE_ERRORS[exc.errno]}", file=sys.stderr
        )
        return 2
    except KeyboardInterrupt:
        print("padt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
