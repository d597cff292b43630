"""Writing samples into a split's shards: shared by `shard` on the PNG layout and on NIfTI volumes.

Deterministic: tar headers carry a fixed time, samples are written in input order, so the same input gives
byte-identical shards.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

from common.digest import file_sha256
from common.shard_format import sample_record
from data_tools.shard_sizes import closed_shard_bytes, record_bytes

TAR_MTIME = 0.0  # fixed tar header time: same input -> byte-identical shards


@dataclass
class EncodedSlice:
    key: str
    png: bytes
    mask_png: bytes | None
    metadata: dict
    histogram: np.ndarray  # 256 pixel counts of the stored image


def encode_png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def shard_sizes(num_samples: int, samples_per_shard: int) -> list[int]:
    """Split evenly (sizes differ by at most one), so DataLoader workers get equal work."""
    num_shards = max(1, math.ceil(num_samples / samples_per_shard))
    base, extra = divmod(num_samples, num_shards)
    return [base + (i < extra) for i in range(num_shards)]


class ShardSetWriter:
    """Writes one split's samples into `{split}-000000.tar`, ... closing a shard at its planned
    count, or earlier if the next sample would push it past `max_shard_bytes`."""

    def __init__(self, out_dir: Path, split: str, planned_sizes: list[int], max_shard_bytes: int):
        self.out_dir, self.split = out_dir, split
        self.planned_sizes, self.max_shard_bytes = planned_sizes, max_shard_bytes
        self.finished: list[dict] = []
        self.tar: wds.TarWriter | None = None
        self.path: Path | None = None
        self.count = self.bytes = 0

    def write(self, encoded: EncodedSlice) -> None:
        record = sample_record(encoded.key, encoded.png, encoded.metadata, encoded.mask_png)
        size = record_bytes(record, TAR_MTIME)
        if self.tar is not None:
            planned = self.planned_sizes[min(len(self.finished), len(self.planned_sizes) - 1)]
            if self.count >= planned or closed_shard_bytes(self.bytes + size) > self.max_shard_bytes:
                self._close()
        if self.tar is None:
            self.path = self.out_dir / f"{self.split}-{len(self.finished):06d}.tar"
            self.tar = wds.TarWriter(str(self.path), encoder=False, mtime=TAR_MTIME)
            self.count = self.bytes = 0
        self.tar.write(record)
        self.count += 1
        self.bytes += size

    def _close(self) -> None:
        self.tar.close()
        self.tar = None
        self.finished.append(
            {
                "name": self.path.name,
                "num_samples": self.count,
                "bytes": self.path.stat().st_size,
                "sha256": file_sha256(self.path),
            }
        )

    def finish(self) -> list[dict]:
        if self.tar is not None:
            self._close()
        return self.finished


def subject_order(subject: str) -> tuple:
    """OASIS subjects are numbers ("0901" sorts as 901); NIfTI subjects may be any id: numbers first, then text."""
    return (0, int(subject), subject) if subject.isdigit() else (1, 0, subject)
