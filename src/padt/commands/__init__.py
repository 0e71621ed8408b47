"""Command-line plumbing shared by the ``padt`` commands: argument types and options that several commands
take. Each command's own module exposes ``add_arguments(parser)`` and ``run(args) -> int`` (see
:mod:`padt.cli`)."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from padt.errors import PaDTError


def positive_int(text: str) -> int:
    """An ``argparse`` type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An ``argparse`` type: an integer of at least 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def port_number(text: str) -> int:
    """An ``argparse`` type: a TCP port, 1 to 65535."""
    value = non_negative_int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 1 to 65535, got {value}")
    return value


def positive_float(text: str) -> float:
    """An ``argparse`` type: a finite number above 0."""
    value = non_negative_float(text)
    if value == 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return value


def fraction(text: str) -> float:
    """An ``argparse`` type: a number in (0, 1]."""
    value = positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def non_negative_float(text: str) -> float:
    """An ``argparse`` type: a number >= 0 (``inf`` allowed, NaN not)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if math.isnan(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def probability(text: str) -> float:
    """An ``argparse`` type: a number in [0, 1]."""
    value = non_negative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    """``--vrt-repeat-penalty``, ``--vrt-reuse-penalty``, ``--ovd-end-penalty``, ``--ovd-duplicate-iou``,
    ``--ovd-grammar`` and ``--mask-box-weight`` (predict, eval)."""
    parser.add_argument(
        "--vrt-repeat-penalty",
        type=non_negative_float,
        default=None,
        metavar="P",
        help="lower the logits of the VRTs already in an object's run by P (0: plain greedy, inf: "
        "never repeat; default: the checkpoint's generation_config)",
    )
    parser.add_argument(
        "--vrt-reuse-penalty",
        type=non_negative_float,
        default=None,
        metavar="P",
        help="lower the logits of the VRTs of the answer's earlier objects by P (0: off, inf: never reuse a "
        "patch; default: the checkpoint's generation_config)",
    )
    parser.add_argument(
        "--ovd-end-penalty",
        type=non_negative_float,
        default=None,
        metavar="E",
        help="OVD: lower the tokens that end the answer after an object group by E, so it stops only when that is "
        "e^E times likelier than naming another kind (0: off; default: the checkpoint's generation_config)",
    )
    parser.add_argument(
        "--ovd-duplicate-iou",
        type=probability,
        default=None,
        metavar="T",
        help="OVD: mark each object whose box overlaps a higher-scored one's by IoU above T as a duplicate, left "
        "out of the detections (0: off; default: the checkpoint's generation_config)",
    )
    parser.add_argument(
        "--ovd-grammar",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="OVD: hold the answer to its format (only the prompt's class names, as many objects as each count "
        "says, an end within --max-new-tokens), so it always parses (default: the checkpoint's "
        "generation_config)",
    )
    parser.add_argument(
        "--mask-box-weight",
        type=probability,
        default=None,
        metavar="W",
        help="each box is (1 - W) x the box head's + W x its mask's tight box (0: the box head's, as the "
        "reference; default: the checkpoint's generation_config)",
    )


def writable_file(path: Path | None, what: str) -> Path | None:
    """Check, before any work, that ``path`` can be written: its folder is created if needed and must be
    writable, and the path must not be a folder. Returns the path."""
    if path is None:
        return None
    if path.is_dir():
        raise PaDTError(f"{what} {path} is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PaDTError(
            f"cannot create the folder of {what} {path}: {error.strerror}; choose another path"
        ) from None
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise PaDTError(f"{what} {path} cannot be written (permission denied); choose another path")
    return path


def writable_image_file(path: Path | None, what: str) -> Path | None:
    """:func:`writable_file` for an image: its extension must name a format PIL can write."""
    if path is None:
        return None
    from PIL import Image

    Image.init()
    if Image.registered_extensions().get(path.suffix.lower()) not in Image.SAVE:
        raise PaDTError(
            f"{what} {path}: cannot tell an image format from {path.suffix or 'a name without extension'!r}; "
            "end the name in .png, .jpg or .webp"
        )
    return writable_file(path, what)


def writable_folder(path: Path, what: str) -> Path:
    """Check, before any work, that folder ``path`` exists or can be created and is writable."""
    if path.exists() and not path.is_dir():
        raise PaDTError(f"{what} {path} exists and is not a folder; give a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PaDTError(f"cannot create {what} {path}: {error.strerror}; choose another folder") from None
    if not os.access(path, os.W_OK):
        raise PaDTError(f"{what} {path} cannot be written (permission denied); choose another folder")
    return path
