"""Read the history rows of an offline wandb run (its run-*.wandb file), with no network.

The file is wandb's transaction log: a 7-byte header, then LevelDB-style log records (32 KiB
blocks; each record: crc32, length, type; FULL=1, FIRST=2, MIDDLE=3, LAST=4) holding protobuf
`Record`s. This wandb version ships no Python reader, so tests use this one.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

from google.protobuf.message import DecodeError
from wandb.proto import wandb_internal_pb2

BLOCK = 32768


def records(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a wandb run file"
    out, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        if kind == 0 and length == 0:  # zero padding up to the block end
            pos += left - 7
            continue
        pending += data[pos : pos + length]
        pos += length
        if kind in (1, 4):
            out.append(pending)
            pending = b""
    return out


def parsed(run_file: Path) -> list:
    out = []
    for raw in records(run_file):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        out.append(record)
    return out


def history(run_dir: Path, timeout: float = 60.0) -> list[dict]:
    """Every history row (what wandb.log / accelerator.log recorded) of the single offline run.

    wandb's service writes the file in the background and may still be flushing when `finish()`
    has returned on a loaded machine, so this waits for the run's final `exit` record."""
    (run_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = parsed(run_file)
            if any(r.WhichOneof("record_type") == "exit" for r in found):
                break
        except (DecodeError, AssertionError):  # caught mid-write: a record (or the header) is incomplete
            pass
        assert time.monotonic() < deadline, f"{run_file}: no complete run (exit record) after {timeout} s"
        time.sleep(0.5)
    return [
        {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
        for r in found
        if r.WhichOneof("record_type") == "history"
    ]
