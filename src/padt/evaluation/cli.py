"""``padt eval``: batched, resumable evaluation of a checkpoint on a dataset (:mod:`padt.evaluation.driver`).

Sharded over processes when started with ``accelerate launch`` or ``torchrun``::

    padt eval --model ckpt --data synthetic:task=rec,n=500,seed=123 --task rec --out runs/eval-rec
    accelerate launch -m padt.cli eval --model ckpt --data refcoco_val.json --image-root coco/train2014 \\
        --task rec --out runs/refcoco-val
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from padt.commands import positive_int
from padt.tasks import TASK_NAMES

DATA_HELP = """\
data (--data):
  a PaDT records file (.json/.jsonl, e.g. from 'padt data prepare'); image names are relative to
  --image-root (default: the file's folder), or
  synthetic:task=rec,n=500,seed=123[,{defaults}]
  scenes generated deterministically into OUT/data (task defaults to --task; res uses rec's scenes).

output (--out): eval.json (settings; a folder evaluated with other settings is refused),
predictions.jsonl (the per-query lines 'padt score' reads, plus the generated text; a rerun resumes),
metrics.json. Under accelerate/torchrun each process writes predictions.rank<r>.jsonl, merged at the end.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``padt eval``."""
    from padt.commands import add_decoding_arguments
    from padt.evaluation.driver import SYNTHETIC_KEYS
    from padt.inference import DTYPES

    defaults = ",".join(f"{k}={v}" for k, v in SYNTHETIC_KEYS.items() if k not in ("task", "n", "seed"))
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = DATA_HELP.format(defaults=defaults)
    parser.add_argument(
        "--model",
        default=None,
        help="checkpoint folder (model + processor files; default: the bundled model)",
    )
    parser.add_argument(
        "--data",
        required=True,
        help="records file, a folder holding records.jsonl, or synthetic:... spec (below)",
    )
    parser.add_argument("--task", required=True, choices=TASK_NAMES)
    parser.add_argument("--out", required=True, type=Path, help="output folder (below)")
    parser.add_argument("--image-root", type=Path, help="folder of the images (default: the records' folder)")
    parser.add_argument(
        "--batch-size", type=positive_int, default=8, help="queries per generate call (default 8)"
    )
    parser.add_argument("--max-new-tokens", type=positive_int, default=512)
    parser.add_argument("--limit", type=positive_int, help="evaluate the first N records only")
    parser.add_argument(
        "--protocol",
        choices=("padt", "paper"),
        default="padt",
        help="rec/res scoring: 'padt' per query index, 'paper' the reference's (keyed by image "
        "and echoed sentence, best of the objects)",
    )
    parser.add_argument(
        "--index-file",
        type=Path,
        help="rec/res: VLM-R1 rec_jsons_processed/<split>.json; scores the paper protocol over "
        "its keys (missing ones count 0)",
    )
    parser.add_argument(
        "--coco",
        type=Path,
        help="ovd: the official COCO annotation file; predictions are scored against its "
        "annotations (default: the ground truth rebuilt from the records)",
    )
    parser.add_argument(
        "--rebuilt-gt",
        action="store_true",
        help="ovd with --coco: score against the reference's ground truth rebuilt from the "
        "records (with the official image and category lists), as the paper did",
    )
    parser.add_argument("--masks", action="store_true", help="store predicted masks for rec/ovd/ric too")
    parser.add_argument("--no-meteor", action="store_true", help="ric: skip METEOR (slow Java process)")
    parser.add_argument(
        "--device",
        default=None,
        help="cpu, cuda, cuda:1 ... (default: cuda if available; each process's own GPU when distributed)",
    )
    parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPES])
    parser.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    add_decoding_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Evaluate, write the outputs and print the metrics JSON (main process)."""
    from padt.errors import PaDTError
    from padt.evaluation.driver import evaluate
    from padt.inference import default_model

    if args.no_progress:  # also transformers' own bars (loading the weights)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if args.coco is not None and args.task != "ovd":
        raise PaDTError(
            f"--coco is the COCO annotation file of --task ovd; leave it out for --task {args.task}"
        )
    if args.rebuilt_gt and args.coco is None:
        raise PaDTError("--rebuilt-gt chooses the ground truth scored with --coco; pass --coco FILE too")
    if args.model is None:
        args.model = str(default_model())
    if not Path(args.model).is_dir():
        raise PaDTError(f"model folder {args.model!r} does not exist; pass a checkpoint folder to --model")
    metrics = evaluate(
        args.model,
        args.data,
        args.task,
        args.out,
        image_root=args.image_root,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        limit=args.limit,
        protocol="paper" if args.index_file is not None else args.protocol,
        index_file=args.index_file,
        coco=args.coco,
        rebuilt_gt=args.rebuilt_gt,
        masks=True if args.masks else None,
        meteor=not args.no_meteor,
        device=args.device,
        dtype=args.dtype,
        progress=not args.no_progress,
        vrt_repeat_penalty=args.vrt_repeat_penalty,
        vrt_reuse_penalty=args.vrt_reuse_penalty,
        mask_box_weight=args.mask_box_weight,
        ovd_end_penalty=args.ovd_end_penalty,
        ovd_duplicate_iou=args.ovd_duplicate_iou,
        ovd_grammar=args.ovd_grammar,
    )
    if metrics is not None:
        print(json.dumps(metrics, indent=2))
    return 0
