"""Reading a JSON file that a user may have damaged or replaced (torch-free): every error names the file.

json.loads' own messages ("Expecting value: line 1 column 1") and UnicodeDecodeError's do not say which
file, and a user facing one of several JSON files cannot tell which to fix.
"""

from __future__ import annotations

import json
from pathlib import Path


def read_json(path: Path):
    """The parsed contents of `path`; a missing, unreadable, non-UTF-8 or invalid file is a ValueError naming it."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not valid UTF-8 ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise ValueError(f"{path}: cannot read it ({err.strerror or err})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def read_json_object(path: Path) -> dict:
    """read_json for a file that must hold a JSON object."""
    value = read_json(path)
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value
