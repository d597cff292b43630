"""The command line every `python -m PACKAGE COMMAND` shares: how commands are found, the options
several commands take (defined once, here), and how a user's mistake is reported.

A command is a module with `DESCRIPTION` (its `--help` text), `add_arguments(parser)` and `run(args)` (which
may return an exit code other than 0, as `data_tools verify` does for a bad shard set); the package's
`__main__` lists the commands with a one-line help each. Only the module of the command asked for is imported,
so `python -m export sample` never imports the torch that `python -m export onnx` needs. Torch-free, so the
runtime's commands can use it; the training side's commands use it too.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import signal
import sys
from pathlib import Path

from common.cli_types import integer, non_negative_int, positive_float
from common.errors import DataError
from common.limits import MAX_BATCH, MAX_CODES, MAX_SAMPLES, MAX_SEED
from common.output_dir import OutputError
from common.sampling_rule import SAMPLING_TEMPERATURE

# A user's mistake: exit 2 with one line naming the file and the problem, never a traceback.
# (Config, checkpoint and model-folder errors are ValueErrors; an OSError, e.g. a full disk or a folder
# that cannot be written, is reported by its message, which names the path.)
USER_ERRORS = (DataError, OutputError, OSError, ValueError)
TRAINING_INSTALL = "pip install torch==2.13.0 -e '.[train]'"


def missing_training_install(what: str, err: ImportError) -> int:
    """One line for a runtime-only install (`pip install .`) asked to train or shard: what to install,
    instead of a ModuleNotFoundError traceback. Returns the exit code, 2."""
    print(f"error: {what} needs the training extra ({err}); install it: {TRAINING_INSTALL}", file=sys.stderr)
    return 2


def run_command_line(
    prog: str, description: str, commands: dict[str, tuple[str, str]], argv: list[str] | None = None
) -> int:
    """Parse `argv` for one of `commands` ({name: (module, one-line help)}), run it; returns the exit code.
    Ctrl-C is one line and exit 130 (128 + SIGINT, as a shell reports it), never a traceback: outputs appear
    whole or not at all (common/output_dir.py, checkpoints), so what the line says is kept is all there is."""
    started: list[str] = []  # the command, once known, and what its module says an interrupt keeps
    forked_workers_ignore_interrupts()
    try:
        return parse_and_run(prog, description, commands, argv, started)
    except KeyboardInterrupt:
        name = f"`{prog} {started[0]}`" if started else f"`{prog}`"
        kept = started[1] if len(started) > 1 else INTERRUPT_KEEPS
        print(f"error: {name} interrupted (Ctrl-C); {kept}", file=sys.stderr)
        return 130


@functools.cache  # once per process
def forked_workers_ignore_interrupts() -> None:
    """A terminal's Ctrl-C reaches every process of the group: forked workers (the shard pool, DataLoader workers)
    would each print a KeyboardInterrupt traceback. They ignore it; the command's process stops them and says
    one line. (Processes started with exec, e.g. by accelerate launch, keep the default.)"""
    if hasattr(os, "register_at_fork"):  # not on Windows, where workers are spawned, not forked
        os.register_at_fork(after_in_child=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))


# What an interrupt leaves, unless the command's module says otherwise (`INTERRUPT_KEEPS`, e.g. a training run).
INTERRUPT_KEEPS = "nothing partial was written, and an earlier output is kept as it was"


def parse_and_run(
    prog: str, description: str, commands: dict[str, tuple[str, str]], argv: list[str] | None, started: list[str]
) -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_line) in commands.items():
        subparsers.add_parser(name, help=help_line, add_help=False)
    chosen = parser.parse_known_args(argv)[0].command
    started.append(chosen)
    try:
        module = importlib.import_module(commands[chosen][0])
    except ImportError as err:  # e.g. `onnx` on a runtime-only install: no torch, onnx or onnxscript
        return missing_training_install(f"`{prog} {chosen}`", err)
    started.append(getattr(module, "INTERRUPT_KEEPS", INTERRUPT_KEEPS))
    command = subparsers.choices[chosen]
    command.description = module.DESCRIPTION
    command.add_argument("-h", "--help", action="help", help="show this help message and exit")
    module.add_arguments(command)
    try:
        args = parser.parse_args(argv)  # a bad option: argparse names it and exits 2
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else 2
    try:
        return module.run(args) or 0
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def add_checkpoint_argument(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--checkpoint",
        type=Path,
        required=True,
        help=f"{what} checkpoint folder (step_NNNNNNN) or a run folder (its newest checkpoint)",
    )


def add_vqvae_argument(parser: argparse.ArgumentParser) -> None:
    """--vqvae of the commands that take a prior: the VQ-VAE must make the prior's codes (trainer/stage2/load.py)."""
    parser.add_argument(
        "--vqvae",
        type=Path,
        default=None,
        help="VQ-VAE checkpoint to decode with (default: the one recorded in the prior's prior.json); it must make "
        "the codes the prior was trained on: the same weights, or its decoder trained further alone "
        "(init.decoder_only in the stage-1 config)",
    )


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: %(default)s)")


def add_force_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace --out if this command wrote it (never a folder it did not write, nor an input)",
    )


def add_quiet_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def add_batch_size_argument(parser: argparse.ArgumentParser, default: int, what: str = "images per batch") -> None:
    parser.add_argument(
        "--batch-size",
        type=integer(1, MAX_BATCH),
        default=default,
        help=f"{what}, 1 to {MAX_BATCH} (default: %(default)s)",
    )


def add_sampling_arguments(
    parser: argparse.ArgumentParser, n: int = 16, slice_option: bool = True, min_n: int = 1, why_min: str = ""
) -> None:
    """The sampling options of `trainer sample`, `export sample` and `trainer evaluate-prior` (which needs
    `min_n` 2: its diversity and Frechet metrics compare pairs of brains)."""
    parser.add_argument(
        "--n",
        type=integer(min_n, MAX_SAMPLES),
        default=n,
        help=f"number of brains, {min_n} to {MAX_SAMPLES}{why_min} (default: %(default)s)",
    )
    add_draw_arguments(parser, "brains")
    if slice_option:
        parser.add_argument(
            "--slice",
            type=non_negative_int,
            default=None,
            help="slice position to generate (0..31 on OASIS) if the prior is conditional; "
            "default: a random position per sample",
        )


def add_draw_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """How the prior draws (--seed, --temperature, --top-k): the samplers' options, and the anomaly commands' for
    the codes they resample; the same seed gives the same `what` in torch and in onnxruntime."""
    parser.add_argument(
        "--seed",
        type=integer(0, MAX_SEED),
        default=0,
        help=f"random seed, 0 to {MAX_SEED}; the same seed gives the same {what}, in either sampler "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--temperature",
        type=positive_float,
        default=SAMPLING_TEMPERATURE,
        help="divide the logits by this (finite, > 0); < 1 is more conservative, near 0 greedy (default: %(default)s)",
    )
    parser.add_argument(
        "--top-k",
        type=integer(0, MAX_CODES),
        default=0,
        help="sample only among the k most likely codes per cell; 0 = all (default: %(default)s)",
    )
