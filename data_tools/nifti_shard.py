"""`python -m data_tools shard --nifti SRC`: NIfTI volumes -> the same shards and manifest as the PNG layout.

Each volume is cut by common/nifti_volume.py (canonical RAS, per-volume intensity window, square 256x256 slices
oriented like the OASIS PNGs) into samples `case_<subject>_slice_<N>`. N is the prior's slice condition, which
has a fixed number of positions: by default (`--positions 32`) the kept span of slices is binned into 32
positions from inferior to superior, one slice per position, as OASIS has 32 slices per subject, so N = 16 is
mid-brain in both; `--positions 0` keeps every slice and N is its index. The slice's own index (canonical and in
the file's voxel grid), the affine, voxel spacing, original orientation and intensity window are in each
sample's json and, per volume, in the manifest's `nifti.volumes`.

Same guarantees as the PNG path: volumes are read in parallel, results written in input order (deterministic),
output built in a hidden folder and renamed on success, every bad file listed at once. Shards of a split are
equal in size when every volume gives `--positions` slices (the usual case); otherwise the last ones differ.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common.cli_types import integer
from common.errors import DataError
from common.limits import MAX_POSITIONS, MAX_SEED
from common.nifti_options import Slicing, add_slicing_arguments
from common.nifti_volume import (
    AXES,
    POSITIONS,
    Volume,
    Window,
    check_labels,
    label_slice,
    normalised_slice,
    positions,
    read_volume,
)
from common.output_dir import atomic_output_dir
from common.shard_format import FORMAT_VERSION, IMAGE_SIZE, MANIFEST, pixel_stats
from data_tools.layout import list_problems
from data_tools.nifti_sources import VolumeSource, assign_splits, find_volumes
from data_tools.shard_writer import EncodedSlice, ShardSetWriter, encode_png, shard_sizes, subject_order

SPLIT_RATIOS = (0.8, 0.1, 0.1)


@dataclass(frozen=True)
class VolumeJob:
    source: VolumeSource
    split: str
    slicing: Slicing
    positions: int
    root: Path | None  # source names are written relative to it when inside it


def source_name(path: Path, root: Path | None) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve())) if root else str(path)
    except ValueError:
        return str(path)


def volume_record(job: VolumeJob, volume: Volume, window: Window) -> dict:
    labels = job.source.labels
    return {
        "source": source_name(volume.path, job.root),
        "labels": source_name(labels, job.root) if labels else None,
        "subject": job.source.subject,
        "split": job.split,
        "shape": [int(n) for n in volume.image.shape],
        "squeezed_4d": volume.squeezed,
        "affine": [[float(v) for v in row] for row in volume.image.affine],
        "orientation": volume.orientation,
        "spacing": volume.spacing,
        "axis": job.slicing.axis,
        "normalisation": window.as_dict(),
    }


def encode_volume(job: VolumeJob) -> tuple[list[EncodedSlice], dict] | DataError:
    """Worker: read, check and cut one volume (errors are returned, so all get reported)."""
    try:
        volume = read_volume(job.source.path)
        labels = read_volume(job.source.labels, "label") if job.source.labels else None
        if labels is not None:
            check_labels(labels, volume)
        window, start, stop = job.slicing.plan(volume)
    except DataError as err:
        return err
    axis, record = AXES[job.slicing.axis], volume_record(job, volume, window)
    encoded, kept = [], {}
    for index, position in positions(start, stop, job.positions):
        pixels, geometry = normalised_slice(volume, window, axis, index)
        key = f"case_{job.source.subject}_slice_{position}"
        kept[key] = [index, volume.file_index(axis, index)]
        metadata = {
            **{k: record[k] for k in ("subject", "split", "source", "affine", "orientation", "spacing", "axis")},
            "slice": position,
            "mask_source": record["labels"],
            "original_size": [geometry.cols, geometry.rows],
            "slice_index": index,
            "source_slice_index": kept[key][1],
            "normalisation": record["normalisation"],
        }
        mask = label_slice(labels, axis, index, geometry) if labels is not None else None
        histogram = np.bincount(pixels.ravel(), minlength=256)
        encoded.append(
            EncodedSlice(key, encode_png(pixels), None if mask is None else encode_png(mask), metadata, histogram)
        )
    return encoded, {**record, "slices": kept}


class SplitStats:
    """One split's writer and running statistics, giving its manifest entry at the end."""

    def __init__(self, out: Path, split: str, volumes: int, positions: int, samples_per_shard: int, max_bytes: int):
        planned = shard_sizes(volumes * positions, samples_per_shard) if positions else [samples_per_shard]
        self.writer = ShardSetWriter(out, split, planned, max_bytes)
        self.histogram = np.zeros(256, dtype=np.int64)
        self.subjects: set[str] = set()
        self.count = 0
        self.has_masks = False

    def add(self, sample: EncodedSlice) -> None:
        self.writer.write(sample)
        self.histogram += sample.histogram
        self.subjects.add(sample.metadata["subject"])
        self.count += 1
        self.has_masks = sample.mask_png is not None

    def entry(self) -> dict:
        return {
            "num_samples": self.count,
            "num_subjects": len(self.subjects),
            "subjects": sorted(self.subjects, key=subject_order),
            "has_masks": self.has_masks,
            "resized": self.count,
            "pixel_stats": pixel_stats(self.histogram),
            "shards": self.writer.finish(),
        }


def plan_jobs(src: str, slicing: Slicing, count: int, ratios: tuple[float, ...], seed: int) -> list[VolumeJob]:
    sources = find_volumes(src)
    with_labels = [s for s in sources if s.labels]
    if with_labels and len(with_labels) != len(sources):
        missing = [s.row for s in sources if not s.labels]
        raise DataError(list_problems("some volumes have a label volume and these do not (all or none)", missing))
    path = Path(src)
    root = path if path.is_dir() else path.parent if path.is_file() else None
    by_split = assign_splits(sources, ratios, seed)
    return [VolumeJob(s, split, slicing, count, root) for split, found in by_split.items() for s in found]


def shard_volumes(
    src: str,
    out: Path,
    *,
    slicing: Slicing | None = None,
    count: int = POSITIONS,
    ratios: tuple[float, ...] = SPLIT_RATIOS,
    seed: int = 0,
    samples_per_shard: int = 256,
    max_shard_mb: float = 50.0,
    workers: int | None = None,
    force: bool = False,
    show_progress: bool = True,
) -> dict:
    """Shard the NIfTI volumes SRC names into `out`; returns the manifest (also written to out)."""
    slicing = slicing or Slicing()
    jobs = plan_jobs(src, slicing, count, ratios, seed)
    inputs = [Path(src)] if Path(src).exists() else []
    with atomic_output_dir(out, marker=MANIFEST, force=force, inputs=inputs) as tmp:
        splits, volumes, errors = {}, [], []
        with (
            Pool(min(workers or os.cpu_count(), len(jobs))) as pool,
            tqdm(total=len(jobs), unit="vol", desc="sharding", disable=not show_progress) as progress,
        ):
            for job, result in zip(jobs, pool.imap(encode_volume, jobs)):
                progress.update(1)
                if isinstance(result, DataError):
                    errors.append(str(result))
                if errors:  # keep reading to report every bad file, but stop writing
                    continue
                if job.split not in splits:
                    in_split = sum(j.split == job.split for j in jobs)
                    max_bytes = int(max_shard_mb * 2**20)
                    splits[job.split] = SplitStats(tmp, job.split, in_split, count, samples_per_shard, max_bytes)
                for sample in result[0]:
                    splits[job.split].add(sample)
                volumes.append(result[1])
        if errors:
            raise DataError(list_problems(f"{len(errors)} bad file(s)", errors))
        manifest = manifest_of(splits, volumes, slicing, count, seed, ratios)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def manifest_of(splits: dict, volumes: list, slicing: Slicing, count: int, seed: int, ratios) -> dict:
    entries = {split: stats.entry() for split, stats in splits.items()}
    options = {**vars(slicing), "positions": count, "seed": seed, "split_ratios": list(ratios)}
    return {
        "format_version": FORMAT_VERSION,
        "image_size": IMAGE_SIZE,
        "entries": ["png", "json"] + (["seg.png"] if any(e["has_masks"] for e in entries.values()) else []),
        "splits": entries,
        "nifti": {"options": options, "volumes": volumes},
    }


def split_ratios(text: str) -> tuple[float, float, float]:
    """--split-ratios TRAIN,VALIDATE,TEST: three non-negative numbers, train's positive."""
    try:
        ratios = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not three numbers TRAIN,VALIDATE,TEST") from None
    if len(ratios) != 3 or not all(np.isfinite(r) and r >= 0 for r in ratios) or ratios[0] <= 0:
        raise argparse.ArgumentTypeError(f"need three numbers >= 0 with TRAIN > 0, got {text}")
    return ratios


def add_nifti_arguments(parser) -> None:
    add_slicing_arguments(parser)
    parser.add_argument(
        "--positions",
        type=integer(0, MAX_POSITIONS),
        default=POSITIONS,
        help=f"slices per volume, 0 to {MAX_POSITIONS}, binned over the kept span like the 32 per OASIS subject: the "
        "N of the key and the prior's condition; 0 keeps every slice, N its index (default: %(default)s)",
    )
    parser.add_argument(
        "--split-ratios",
        type=split_ratios,
        default=SPLIT_RATIOS,
        help="train,validate,test shares of the subjects without a split column "
        f"(default: {','.join(map(str, SPLIT_RATIOS))})",
    )
    parser.add_argument(
        "--seed",
        type=integer(0, MAX_SEED),
        default=0,
        help=f"seed of the subject split, 0 to {MAX_SEED} (default: %(default)s)",
    )
