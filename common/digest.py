"""sha256 of a file, the one fingerprint the project records: shards in the manifest, checkpoints in
codes.json and prior.json, ONNX files in model.json. Read in blocks, so a large checkpoint or
shard never sits in memory whole."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
