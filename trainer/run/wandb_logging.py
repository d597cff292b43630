"""wandb for every command: offline by default, one line per run, summaries of one-shot commands."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any


def wandb_mode(mode: str) -> str:
    """'auto' goes online only when an API key is set, so a fresh machine never waits on a login."""
    if mode != "auto":
        return mode
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def quiet_wandb() -> None:
    """wandb prints some 30 lines per run (history sparklines, sync hints) that bury the project's own
    results; silence it unless the user set WANDB_SILENT (e.g. WANDB_SILENT=false for all of it)."""
    os.environ.setdefault("WANDB_SILENT", "true")


def wandb_location(run: Any) -> str:
    """The one line wandb output is kept to: where the run is (a folder to `wandb sync`, or its URL)."""
    if run.settings.mode == "offline" or not run.url:
        folder = Path(run.dir).parent
        return f"wandb: offline run in {folder} (upload it with: wandb sync {folder})"
    return f"wandb: run at {run.url}"


def log_to_wandb(summary: dict, out: Path, project: str, mode: str, name: str, prefix: str) -> None:
    """One wandb run holding a summary's numbers and every figure in `out`."""
    import wandb

    quiet_wandb()
    run = wandb.init(
        project=project,
        dir=str(out),
        name=name,
        job_type=name.split("-")[0],
        mode=wandb_mode(mode),
        config={"checkpoint": summary.get("checkpoint")},
    )
    run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float))})
    run.log({f"{prefix}/{path.stem}": wandb.Image(str(path)) for path in sorted(out.glob("*.png"))})
    location = wandb_location(run)
    run.finish()
    print(location, file=sys.stderr)  # stderr: a command's stdout stays its result (JSON, a table)
