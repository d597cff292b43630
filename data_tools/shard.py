"""Write the PNG layout as WebDataset shards plus a manifest, deterministically and atomically.

Each sample `case_001_slice_7` holds:
    png       the slice, 8-bit grayscale PNG, size x size (resized bilinearly if it was not)
    seg.png   the segmentation mask, when the split has one (resized with nearest neighbour)
    json      {"subject", "slice", "split", "source", "mask_source", "original_size"}

Colour policy: a colour-typed PNG whose channels are all equal (gray saved as RGB) is converted
losslessly; a real colour image, an image with transparency, or a 16-bit PNG (by its header's bit
depth, whatever mode Pillow opens it in) is refused.

Output is built in a hidden sibling folder and renamed into place at the end (export.runtime.output_dir),
so a failure or an interrupt never leaves a half-written shard set behind, and --force replaces only
an earlier shard folder, never the input.
"""

from __future__ import annotations

import io
import json
import math
import os
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from data_tools.layout import SPLITS, SliceFile, find_layout_root, list_problems, scan_layout, split_folders
from export.runtime.digest import file_sha256
from export.runtime.output_dir import atomic_output_dir
from export.runtime.png_header import check_png_header
from export.runtime.shard_format import FORMAT_VERSION, IMAGE_SIZE, MANIFEST, DataError, sample_record

TAR_MTIME = 0.0  # fixed tar header time: same input -> byte-identical shards


@dataclass
class EncodedSlice:
    key: str
    png: bytes
    mask_png: bytes | None
    metadata: dict
    histogram: np.ndarray  # 256 pixel counts of the stored image


def read_gray8(path: Path, size: int, is_mask: bool = False) -> tuple[np.ndarray, tuple[int, int]]:
    """Read a PNG as a (size, size) uint8 array; returns it with the original (width, height)."""
    try:
        check_png_header(path)
        with Image.open(path) as img:
            if img.format != "PNG":
                raise DataError(f"{path}: not a PNG file (found {img.format})")
            img.load()
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image file") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:  # PIL: truncated/corrupt
        raise DataError(f"{path}: unreadable or truncated PNG ({err})") from None
    original_size = img.size
    if img.mode != "L":
        rgba = np.asarray(img.convert("RGBA"))
        if (rgba[..., 3] != 255).any():
            raise DataError(f"{path}: image has transparency; expected 8-bit grayscale")
        if not ((rgba[..., 0] == rgba[..., 1]).all() and (rgba[..., 1] == rgba[..., 2]).all()):
            raise DataError(f"{path}: colour image ({img.mode}); expected 8-bit grayscale")
        img = Image.fromarray(rgba[..., 0])
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.NEAREST if is_mask else Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8), original_size


def encode_png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def encode_slice(job: tuple[SliceFile, int]) -> EncodedSlice | DataError:
    """Worker: read, check and re-encode one slice (errors are returned, so all get reported)."""
    item, size = job
    try:
        pixels, original_size = read_gray8(item.image, size)
        mask_png = None
        if item.mask is not None:
            mask, _ = read_gray8(item.mask, size, is_mask=True)
            mask_png = encode_png(mask)
    except DataError as err:
        return err
    metadata = {
        "subject": item.subject,
        "slice": item.slice_index,
        "split": item.split,
        "source": item.image.name,
        "mask_source": item.mask.name if item.mask else None,
        "original_size": list(original_size),
    }
    histogram = np.bincount(pixels.ravel(), minlength=256)
    return EncodedSlice(item.key, encode_png(pixels), mask_png, metadata, histogram)


def pixel_stats(histogram: np.ndarray) -> dict:
    """Statistics in the loader's units ([0, 1]); exact, since they come from integer counts."""
    values = np.arange(256) / 255.0
    total = int(histogram.sum())
    mean = float((histogram * values).sum() / total)
    var = float((histogram * (values - mean) ** 2).sum() / total)
    nonzero = np.flatnonzero(histogram)
    return {
        "mean": round(mean, 8),
        "std": round(math.sqrt(var), 8),
        "min": int(nonzero[0]),
        "max": int(nonzero[-1]),
        "histogram": [int(c) for c in histogram],
    }


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
        size = sum(len(v) for k, v in record.items() if k != "__key__") + 512 * len(record)  # + tar headers
        if self.tar is not None:
            planned = self.planned_sizes[min(len(self.finished), len(self.planned_sizes) - 1)]
            if self.count >= planned or self.bytes + size > self.max_shard_bytes:
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


def write_split(
    slices: list[SliceFile],
    out_dir: Path,
    pool: Pool,
    size: int,
    samples_per_shard: int,
    max_shard_bytes: int,
    progress: tqdm,
    errors: list[str],
) -> dict | None:
    """Encode one split in parallel (order preserved) and write its shards; returns its manifest entry.
    Bad files are added to `errors`; once there is one, files are still read (to report every bad one
    in one run) but nothing more is written, and None is returned."""
    split = slices[0].split
    writer = ShardSetWriter(out_dir, split, shard_sizes(len(slices), samples_per_shard), max_shard_bytes)
    histogram = np.zeros(256, dtype=np.int64)
    resized = 0
    jobs = ((item, size) for item in slices)
    for result in pool.imap(encode_slice, jobs, chunksize=8):
        progress.update(1)
        if isinstance(result, DataError):
            errors.append(str(result))
            continue
        if errors:  # keep reading to report every bad file, but stop writing
            continue
        writer.write(result)
        histogram += result.histogram
        resized += list(result.metadata["original_size"]) != [size, size]
    if errors:
        return None
    return {
        "num_samples": len(slices),
        "num_subjects": len({s.subject for s in slices}),
        "subjects": sorted({s.subject for s in slices}, key=lambda s: (int(s), s)),
        "has_masks": slices[0].mask is not None,
        "resized": resized,
        "pixel_stats": pixel_stats(histogram),
        "shards": writer.finish(),
    }


def shard_dataset(
    src: Path,
    out: Path,
    *,
    splits: tuple[str, ...] = SPLITS,
    size: int = IMAGE_SIZE,
    samples_per_shard: int = 256,
    max_shard_mb: float = 50.0,
    workers: int | None = None,
    force: bool = False,
    show_progress: bool = True,
) -> dict:
    """Shard the PNG layout at `src` into `out`; returns the manifest (also written to out)."""
    root = find_layout_root(src)
    inputs = [folder for split in SPLITS for folder in split_folders(root, split)]  # all: --out must spare each
    with atomic_output_dir(out, marker=MANIFEST, force=force, inputs=inputs) as tmp:
        by_split = scan_layout(src, splits)
        total = sum(len(v) for v in by_split.values())
        manifest = {"format_version": FORMAT_VERSION, "image_size": size, "entries": ["png", "json"], "splits": {}}
        errors: list[str] = []
        with (
            Pool(min(workers or os.cpu_count(), total)) as pool,
            tqdm(total=total, unit="img", desc="sharding", disable=not show_progress) as progress,
        ):
            for split, slices in by_split.items():
                manifest["splits"][split] = write_split(
                    slices, tmp, pool, size, samples_per_shard, int(max_shard_mb * 2**20), progress, errors
                )
        if errors:
            raise DataError(list_problems(f"{len(errors)} bad file(s)", errors))
        if any(s["has_masks"] for s in manifest["splits"].values()):
            manifest["entries"].append("seg.png")
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest
