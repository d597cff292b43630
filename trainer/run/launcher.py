"""Which launcher started this process and how many processes it asked for, so a run says when it got fewer; and
the launchers run for launch.sh, ending in their processes' exit code instead of a traceback of their own.

    python -m trainer.run.launcher torchrun ARGS...           (launch.sh on CPU processes)
    python -m trainer.run.launcher accelerate launch ARGS...  (launch.sh on GPUs)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def requested_processes(launcher_cmdline: list[str], env: dict[str, str]) -> int | None:
    """The --num_processes an `accelerate launch` parent asked for (None when not launched by it).
    With --cpu and no --multi_cpu, accelerate starts one process and exports no sign of N but its own
    command line, so that is where the trainer reads it."""
    if "ACCELERATE_USE_CPU" not in env or "launch" not in launcher_cmdline:
        return None
    for arg, following in zip(launcher_cmdline, launcher_cmdline[1:] + [""]):
        value = (
            arg.removeprefix("--num_processes=")
            if arg.startswith("--num_processes=")
            else (following if arg == "--num_processes" else None)
        )
        if value is not None:
            return int(value) if value.isdigit() else None
    return None


def process_report(num_processes: int, device: Any, requested: int | None) -> list[str]:
    """The lines a run starts with: how many processes on which device, and a warning when a launcher
    asked for more processes than started."""
    lines = [f"training on {num_processes} process{'es' if num_processes > 1 else ''}, device {device}"]
    if requested and requested > num_processes:
        lines.append(
            f"warning: --num_processes {requested} was asked for but {num_processes} process started "
            f"(`accelerate launch --cpu` starts one); for {requested} CPU processes use "
            f"`NUM_PROCESSES={requested} bash launch.sh stage1 ...` (torchrun)"
        )
    return lines


def _launcher_cmdline() -> list[str]:
    try:
        return Path(f"/proc/{os.getppid()}/cmdline").read_text().split("\0")
    except OSError:  # not Linux: no warning, the count is still printed
        return []


def run_launcher(argv: list[str]) -> int:
    """Run `torchrun ARGS...` or `accelerate launch ARGS...` (argv[0] says which) and return the exit code of the
    first process that failed, where the launcher would end in a traceback of its own: that process has printed
    its error already (a killed one cannot: this says which signal)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    try:
        if argv[0] == "torchrun":
            from torch.distributed.run import main

            main(argv[1:])
        else:
            from accelerate.commands.accelerate_cli import main

            sys.argv = argv
            main()
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        if failure.exitcode < 0:
            print(f"error: rank {rank} was killed by {failure.signal_name()}", file=sys.stderr)
            return 128 - failure.exitcode
        return failure.exitcode
    except subprocess.CalledProcessError as err:  # `accelerate launch` of one process
        return err.returncode
    return 0


if __name__ == "__main__":
    sys.exit(run_launcher(sys.argv[1:]))
