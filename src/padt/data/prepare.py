"""``padt data prepare``: turn a public dataset into one PaDT records file, once.

The readers of :mod:`padt.data.readers` do the work (prompts, answers, RLE masks, foreground patch lists of
docs/method.md §9.3); this module picks one from ``--source``, writes its records with
:func:`padt.data.records.write_jsonl` and prints a summary: records, objects, images, and what the reader
skipped or changed (boxes clipped to their image), with its reasons.

- ``padt``: a PaDT file (``--input``), checked against the schema and rewritten as JSONL.
- ``refcoco``: ``--instances`` and ``--refs`` of RefCOCO/RefCOCO+/RefCOCOg, or ``--root`` with ``--dataset``
  (the refer toolkit's layout ``ROOT/DATASET/instances.json`` and ``refs(unc).p``, ``refs(umd).p`` for
  refcocog); ``--split``.
- ``coco``: a COCO-format ``--instances`` file as OVD prompts; ``--train`` draws the seeded training shuffles.
- ``jsonl``: the simple user format (``--input``, images under ``--image-root``).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from padt.commands import non_negative_int, positive_int, probability, writable_file
from padt.data.records import Record
from padt.errors import PaDTError

SOURCES = ("padt", "refcoco", "coco", "jsonl")
_COCO_OPTIONS = {"seed", "drop_rate", "max_instances_per_class", "max_classes", "max_image_side"}
# Options each source understands (``padt data prepare`` argument names).
SOURCE_OPTIONS: dict[str, set[str]] = {
    "padt": {"input"},
    "jsonl": {"input", "image_root", "no_patches"},
    "refcoco": {"instances", "refs", "root", "dataset", "split", "no_patches"},
    "coco": {"instances", "train", "no_patches", *_COCO_OPTIONS},
}
SOURCES_HELP = """\
sources:
  padt     --input FILE: a PaDT records file, checked and rewritten as JSONL
  refcoco  --instances instances.json --refs 'refs(unc).p' --split val, or --root DIR --dataset refcoco
           (DIR/refcoco/instances.json and refs(unc).p; refcocog uses refs(umd).p)
  coco     --instances instances_val2017.json: OVD prompts; --train for the seeded training shuffles
  jsonl    --input FILE [--image-root DIR]: the simple user format (padt.data.readers)
"""
REFCOCO_DATASETS = {"refcoco": "refs(unc).p", "refcoco+": "refs(unc).p", "refcocog": "refs(umd).p"}


@dataclass
class PrepareSummary:
    """What :func:`prepare` wrote, and what the reader skipped or changed (one line each)."""

    path: Path
    records: int
    objects: int
    images: int
    tasks: dict[str, int]
    changes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        tasks = ", ".join(f"{n} {t}" for t, n in sorted(self.tasks.items()))
        out = [
            f"{self.path}: {self.records} record(s) ({tasks or 'none'}), {self.objects} object(s), "
            f"{self.images} image(s)"
        ]
        out += [f"  note: {change}" for change in self.changes]
        return out


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _reader_warnings() -> Iterator[list[str]]:
    """The readers report what they skip or change as log warnings; collect them for the summary."""
    handler = _Collect()
    logger = logging.getLogger("padt.data.readers")
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)


def refcoco_files(root: str | os.PathLike, dataset: str) -> tuple[Path, Path]:
    """``(instances.json, refs file)`` of a dataset in the refer toolkit's folder layout."""
    if dataset not in REFCOCO_DATASETS:
        raise PaDTError(f"unknown dataset {dataset!r}; choose one of {', '.join(REFCOCO_DATASETS)}")
    folder = Path(root) / dataset
    return folder / "instances.json", folder / REFCOCO_DATASETS[dataset]


def read_source(source: str, **options: object) -> Callable[[], list[Record]]:
    """A reader call for ``source`` with its options (the ``padt data prepare`` arguments by name)."""
    from padt.data import readers

    given = {k for k, v in options.items() if v not in (None, False)}
    extra = sorted(given - SOURCE_OPTIONS.get(source, set()))
    if source in SOURCE_OPTIONS and extra:
        shown = ", ".join("--" + k.replace("_", "-") for k in extra)
        raise PaDTError(f"{shown} do(es) not apply to --source {source}; leave it out")
    patches = not options.get("no_patches", False)
    if source in ("padt", "jsonl"):
        if options.get("input") is None:
            raise PaDTError(f"--source {source} needs --input FILE")
        path = Path(str(options["input"]))
        if source == "padt":
            return lambda: readers.read_padt(path)
        root = options.get("image_root")
        return lambda: readers.read_user_jsonl(path, image_root=root, with_patches=patches)  # type: ignore[arg-type]
    if source == "refcoco":
        instances, refs = options.get("instances"), options.get("refs")
        if options.get("root") is not None or options.get("dataset") is not None:
            if options.get("root") is None or options.get("dataset") is None:
                raise PaDTError(
                    "--root and --dataset go together (ROOT/DATASET/instances.json and refs(...).p)"
                )
            default_instances, default_refs = refcoco_files(str(options["root"]), str(options["dataset"]))
            instances, refs = instances or default_instances, refs or default_refs
        if instances is None or refs is None:
            raise PaDTError("--source refcoco needs --instances and --refs, or --root and --dataset")
        split = options.get("split")
        if not split:
            raise PaDTError(
                "--source refcoco needs --split (train, val, testA, testB; refcocog: train, val, test)"
            )
        return lambda: readers.read_refcoco(instances, refs, str(split), with_patches=patches)  # type: ignore[arg-type]
    if source == "coco":
        if options.get("instances") is None:
            raise PaDTError("--source coco needs --instances (a COCO-format instances_*.json)")
        kwargs = {k: options[k] for k in sorted(_COCO_OPTIONS) if options.get(k) is not None}
        return lambda: readers.read_coco_ovd(
            options["instances"],
            train=bool(options.get("train")),  # type: ignore[arg-type]
            with_patches=patches,
            **kwargs,
        )  # type: ignore[arg-type]
    raise PaDTError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")


def write_records(records: Sequence[Record], out: str | os.PathLike, *, progress: bool = True) -> int:
    """Write records as JSONL through a temporary file, so that an interrupted run leaves no partial file."""
    from tqdm import tqdm

    from padt.data.records import write_jsonl

    path = Path(out)
    tmp = path.with_name(path.name + ".tmp")
    n = write_jsonl(tqdm(records, desc=f"writing {path.name}", unit="record", disable=not progress), tmp)
    os.replace(tmp, path)
    return n


def prepare(
    source: str, out: str | os.PathLike, *, progress: bool = True, **options: object
) -> PrepareSummary:
    """Read ``source`` with its reader (:func:`read_source`) and write its records to ``out`` (JSONL)."""
    reader = read_source(source, **options)
    with _reader_warnings() as changes:
        records = reader()
    write_records(records, out, progress=progress)
    return PrepareSummary(
        path=Path(out),
        records=len(records),
        objects=sum(len(r.objects) for r in records),
        images=len({name for r in records for name in r.images}),
        tasks=dict(Counter(r.task for r in records)),
        changes=list(changes),
    )


# ----------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``padt data prepare``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = SOURCES_HELP
    parser.add_argument("--source", required=True, choices=SOURCES, help="dataset format (below)")
    parser.add_argument("--out", required=True, type=Path, help="records file to write (.jsonl)")
    parser.add_argument("--input", type=Path, help="padt/jsonl: the file to read")
    parser.add_argument(
        "--image-root", type=Path, help="jsonl: folder of the images (default: the file's folder)"
    )
    parser.add_argument("--instances", type=Path, help="refcoco/coco: the COCO-format instances json")
    parser.add_argument("--refs", type=Path, help="refcoco: refs(unc).p or refs(umd).p")
    parser.add_argument("--root", type=Path, help="refcoco: folder holding DATASET/instances.json and refs")
    parser.add_argument(
        "--dataset", choices=tuple(REFCOCO_DATASETS), help="refcoco: which dataset under --root"
    )
    parser.add_argument("--split", help="refcoco: train, val, testA, testB (refcocog: train, val, test)")
    parser.add_argument(
        "--train", action="store_true", help="coco: training prompts (seeded shuffles and drops)"
    )
    parser.add_argument(
        "--seed", type=non_negative_int, help="coco --train: seed of the shuffles (default 0)"
    )
    parser.add_argument(
        "--drop-rate",
        type=probability,
        help="coco --train: probability of dropping absent classes (default 0.5)",
    )
    parser.add_argument(
        "--max-instances-per-class",
        type=positive_int,
        help="coco: classes with more instances leave the prompt (default 50)",
    )
    parser.add_argument(
        "--max-classes", type=positive_int, help="coco: most classes per prompt (default 100)"
    )
    parser.add_argument("--max-image-side", type=positive_int, help="coco: skip larger images (default 1288)")
    parser.add_argument(
        "--no-patches",
        action="store_true",
        help="do not compute foreground patch lists (nor drop objects covering no patch)",
    )
    parser.add_argument("--no-progress", action="store_true", help="do not show a progress bar")


def run(args: argparse.Namespace) -> int:
    """Prepare and print the summary."""
    options = {
        k: v
        for k, v in vars(args).items()
        if k not in ("source", "out", "no_progress")
        and not k.startswith("_")
        and k not in ("command", "data_command")
    }
    writable_file(args.out, "--out")  # before reading a large dataset
    summary = prepare(args.source, args.out, progress=not args.no_progress, **options)
    print("\n".join(summary.lines()))
    return 0
