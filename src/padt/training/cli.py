"""``padt train --config FILE.yaml [section.key=value ...]``.

Runs the same way alone and under ``accelerate launch`` / ``torchrun`` (several processes: transformers
reads the launcher's environment). See :mod:`padt.training.config` for the file format, :mod:`padt.training.stages`
for recipes in stages (a config with ``stages:``), and ``configs/`` for ready configs.
"""

from __future__ import annotations

import argparse

from padt.commands import positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config (see configs/); every key can be overridden after it")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="section.key=value",
        help="overrides, e.g. training.max_steps=100 padt.robust_loss=false",
    )
    parser.add_argument("--output-dir", help="shortcut for training.output_dir=...")
    parser.add_argument("--max-steps", type=positive_int, help="shortcut for training.max_steps=...")
    parser.add_argument("--no-resume", action="store_true", help="start afresh even if checkpoints exist")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def run(args: argparse.Namespace) -> int:
    from padt.training.config import load_config

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"training.output_dir={args.output_dir}")
    if args.max_steps is not None:
        overrides.append(f"training.max_steps={args.max_steps}")
    if args.no_resume:
        overrides.append("resume=false")
    from padt.training.stages import is_stage_list, run_stages

    if args.config and is_stage_list(args.config):  # a recipe in stages (padt.training.stages)
        run_stages(args.config, overrides, print_config=args.print_config)
        return 0
    config = load_config(args.config, overrides)
    if args.print_config:
        print(config.to_yaml())
        return 0
    from padt.training.trainer import train

    train(config)
    return 0
