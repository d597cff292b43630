"""Which launcher started this process and how many processes it asked for, so a run says when it got fewer."""

from __future__ import annotations

import os
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
