"""Copy a trained model into the package as the bundled default, with bfloat16 weights (half the size).

    padt train --config configs/bundled.yaml
    python scripts/export_bundled.py runs/bundled/final

``padt predict``, ``padt demo`` and ``padt eval`` load it (in float32 on a CPU) when no ``--model`` is given.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from padt.inference import BUNDLED_MODEL
from padt.modeling import PaDTForConditionalGeneration
from padt.processing import PaDTProcessor


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path, help="folder written by padt train (the final model)")
    parser.add_argument("--out", type=Path, default=BUNDLED_MODEL)
    args = parser.parse_args()
    model = PaDTForConditionalGeneration.from_pretrained(args.run, dtype=torch.bfloat16)
    processor = PaDTProcessor.from_pretrained(args.run, model.vocab_size)
    if args.out.exists():
        shutil.rmtree(args.out)
    model.save_pretrained(args.out)
    processor.save_pretrained(args.out)
    size = sum(f.stat().st_size for f in args.out.iterdir()) / 2**20
    print(f"bundled model written to {args.out} ({size:.1f} MiB)")


if __name__ == "__main__":
    main()
