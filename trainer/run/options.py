"""The command-line options every training command shares (--config, --set, --resume, --quiet)."""

from __future__ import annotations

import argparse
from pathlib import Path

from common.cli import add_quiet_argument

# What Ctrl-C leaves of a training run (common/cli.py prints it): checkpoints are written whole or not at all.
TRAINING_INTERRUPT_KEEPS = "the checkpoints written so far are kept; --resume continues from the newest"


def add_training_arguments(parser: argparse.ArgumentParser, configs: str) -> None:
    """The options of both training commands: the config, overrides, resuming, quiet."""
    parser.add_argument("--config", type=Path, required=True, help=f"YAML config (see {configs})")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value, e.g. --set train.max_steps=200 (repeatable)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest checkpoint in out_dir/checkpoints (model, optimizer, "
        "scheduler, RNG, step and, in stage 1, the EMA codebook)",
    )
    add_quiet_argument(parser)
