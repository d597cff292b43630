"""The metrics log every training run appends to (metrics.jsonl), read back for figures and resuming."""

from __future__ import annotations

import json
from pathlib import Path


def read_metrics(path: Path) -> tuple[list[dict], bool]:
    """The rows of a metrics.jsonl and whether its last line was torn (a crash mid-write leaves one:
    it is dropped). A bad line elsewhere is an error naming the file and the line."""
    try:
        lines = path.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not valid UTF-8 ({err.reason} at byte {err.start})") from None
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                raise ValueError("not a metrics row")
        except ValueError as err:
            if number == len(lines):
                return rows, True
            raise ValueError(f"{path}: line {number} is not a metrics row ({err})") from None
        rows.append(row)
    return rows, False
