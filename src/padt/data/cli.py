"""``padt data``: dataset commands.

``padt data`` has its own subcommands, registered in :data:`DATA_COMMANDS`. Each entry names a function that
adds the subcommand's arguments and a function that runs it; a runner imports its heavy modules itself, so
``padt data --help`` stays fast.

- ``padt data synthetic``: write a synthetic grounding dataset (:mod:`padt.data.synthetic`).
- ``padt data prepare``: turn a public dataset into a records file (:mod:`padt.data.prepare`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from padt.commands import non_negative_int, positive_int


def _add_synthetic(parser: argparse.ArgumentParser) -> None:
    from padt.data.synthetic import DEFAULT_SCENES, MAX_OBJECTS, MAX_SIDE, MIN_SIDE, TASK_CHOICES

    parser.add_argument(
        "--task",
        required=True,
        choices=TASK_CHOICES,
        help="rec, res (the same records as rec), ovd, ric, or all (scenes cycle over rec, ovd, ric)",
    )
    parser.add_argument("--n", type=positive_int, required=True, help="number of scenes (images) to write")
    parser.add_argument(
        "--seed", type=non_negative_int, default=0, help="random seed; same arguments give the same bytes"
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output folder for the PNG images and records.jsonl; an interrupted run resumes",
    )
    parser.add_argument(
        "--min-size",
        type=positive_int,
        default=DEFAULT_SCENES.min_size,
        help=f"smallest image side in pixels (at least {MIN_SIDE}; default %(default)s)",
    )
    parser.add_argument(
        "--max-size",
        type=positive_int,
        default=DEFAULT_SCENES.max_size,
        help=f"largest image side in pixels (at most {MAX_SIDE}; default %(default)s)",
    )
    parser.add_argument(
        "--max-objects",
        type=positive_int,
        default=DEFAULT_SCENES.max_objects,
        help=f"most objects per scene (1 to {MAX_OBJECTS}; default %(default)s)",
    )
    parser.add_argument(
        "--refs-per-scene",
        type=positive_int,
        default=1,
        help="rec/res: referring expressions per scene, each about a different object (default 1)",
    )
    parser.add_argument(
        "--form-weights",
        type=_form_weights,
        default=None,
        metavar="FORM=W,...",
        help="rec/res: how often each expression form is drawn, e.g. extreme=0.5,relation=0.35 (forms: "
        "attribute, extreme, relation; default attribute=0.4,extreme=0.3,relation=0.3)",
    )
    parser.add_argument(
        "--absent-rate",
        type=_share,
        default=0.0,
        metavar="P",
        help="ovd: the share of records whose class list holds only kinds the scene does not have, answered "
        "'No objects from the list are present in the image.' (0 to 1; default 0)",
    )
    parser.add_argument("--no-progress", action="store_true", help="do not show a progress bar")


def _form_weights(text: str) -> dict[str, float]:
    """``attribute=0.2,extreme=0.5`` as a dict, checked by :func:`padt.data.synthetic.check_form_weights`."""
    from padt.data.synthetic import check_form_weights
    from padt.errors import PaDTError

    weights: dict[str, float] = {}
    for item in text.split(","):
        name, _, value = item.partition("=")  # no '=': value "" is not a number either
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r} is not FORM=WEIGHT (e.g. extreme=0.5)") from None
    try:
        check_form_weights(weights)
    except PaDTError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return weights


def _share(text: str) -> float:
    """A number from 0 to 1, checked by :func:`padt.data.synthetic.check_absent_rate`."""
    from padt.data.synthetic import check_absent_rate
    from padt.errors import PaDTError

    try:
        return check_absent_rate(float(text))
    except (ValueError, PaDTError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a share from 0 to 1 (e.g. 0.2)") from None


def _run_synthetic(args: argparse.Namespace) -> int:
    from padt.commands import writable_folder
    from padt.data.synthetic import generate_dataset

    writable_folder(args.out, "--out")
    summary = generate_dataset(
        args.task,
        args.n,
        args.seed,
        args.out,
        min_size=args.min_size,
        max_size=args.max_size,
        max_objects=args.max_objects,
        refs_per_scene=args.refs_per_scene,
        form_weights=args.form_weights,
        absent_rate=args.absent_rate,
        progress=not args.no_progress,
    )
    skipped = summary.scenes - summary.new_scenes
    print(
        f"{summary.records_path}: {summary.new_scenes} new scene(s), {summary.new_records} new record(s)"
        + (f"; {skipped} already present" if skipped else "")
    )
    return 0


def _add_prepare(parser: argparse.ArgumentParser) -> None:
    from padt.data.prepare import add_arguments

    add_arguments(parser)


def _run_prepare(args: argparse.Namespace) -> int:
    from padt.data.prepare import run

    return run(args)


# subcommand -> (one-line help, add its arguments, run it). Further dataset commands register here.
DATA_COMMANDS: dict[
    str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
] = {
    "synthetic": (
        "generate a synthetic grounding dataset (shapes with exact masks) for rec/res/ovd/ric",
        _add_synthetic,
        _run_synthetic,
    ),
    "prepare": (
        "turn a PaDT, RefCOCO, COCO or user JSONL dataset into a records file (prompts, masks, patches)",
        _add_prepare,
        _run_prepare,
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``padt data`` subcommands to ``parser``."""
    sub = parser.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    for name, (help_text, add, run_command) in DATA_COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add(p)
        p.set_defaults(_data_run=run_command)


def run(args: argparse.Namespace) -> int:
    """Run the chosen ``padt data`` subcommand."""
    return int(args._data_run(args) or 0)
