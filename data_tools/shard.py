"""Write the PNG layout as WebDataset shards plus a manifest, deterministically and atomically.

Each sample `case_001_slice_7` holds:
    png       the slice, 8-bit grayscale PNG, size x size (resized bilinearly if it was not)
    seg.png   the segmentation mask, when the split has one (resized with nearest neighbour)
    json      {"subject", "slice", "split", "source", "mask_source", "original_size"}

Colour policy: a colour-typed PNG whose channels are all equal (gray saved as RGB) is converted
losslessly; a real colour image, an image with transparency, or a 16-bit PNG (by its header's bit
depth, whatever mode Pillow opens it in) is refused.

Output is built in a hidden sibling folder and renamed into place at the end (common.output_dir),
so a failure or an interrupt never leaves a half-written shard set behind, and --force replaces only
an earlier shard folder, never the input.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from common.cli_types import integer, number, positive_int
from common.errors import DataError
from common.limits import usable_cores
from common.nifti_options import Slicing
from common.output_dir import atomic_output_dir
from common.png_header import check_png_header
from common.shard_format import FORMAT_VERSION, IMAGE_SIZE, MANIFEST, pixel_stats
from data_tools.layout import SPLITS, SliceFile, find_layout_root, list_problems, scan_layout, split_folders
from data_tools.nifti_shard import add_nifti_arguments, shard_volumes
from data_tools.shard_writer import EncodedSlice, ShardSetWriter, encode_png, shard_sizes, subject_order

DESCRIPTION = (
    "Shard a keras_png_slices_data folder (keras_png_slices_{train,validate,test}, optional "
    "keras_png_slices_seg_{split}), or NIfTI volumes (--nifti SRC), into {split}-NNNNNN.tar shards and "
    "manifest.json. Output is written to a temporary folder and renamed into place only if every file is good."
)


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
        "subjects": sorted({s.subject for s in slices}, key=subject_order),
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


def split_list(text: str) -> tuple[str, ...]:
    """--splits: comma-separated names of known splits."""
    splits = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits:
        raise argparse.ArgumentTypeError(f"unknown split(s) {unknown}; choose from {list(SPLITS)}")
    return splits


def image_size(text: str) -> int:
    """--size: only IMAGE_SIZE works end to end; the option exists to say so."""
    if text != str(IMAGE_SIZE):
        raise argparse.ArgumentTypeError(
            f"--size {text}: only {IMAGE_SIZE} is supported end to end (the models, the codes "
            f"and the ONNX runtime assume {IMAGE_SIZE}x{IMAGE_SIZE}); other images are resized to it"
        )
    return IMAGE_SIZE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--src", type=Path, help="the keras_png_slices_data folder (or a folder containing it)")
    source.add_argument(
        "--nifti",
        metavar="SRC",
        help="instead of --src: NIfTI volumes, as a folder (searched recursively for .nii/.nii.gz), a glob, "
        "or a CSV/TSV with a path column and optional subject, split and labels columns",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder for shards and manifest.json")
    parser.add_argument(
        "--splits",
        type=split_list,
        default=SPLITS,
        help=f"comma-separated splits to shard (default: {','.join(SPLITS)})",
    )
    parser.add_argument(
        "--size",
        type=image_size,
        default=IMAGE_SIZE,
        help=f"side of the stored square images; others are resized. Only {IMAGE_SIZE} is supported "
        "end to end (models, codes and the ONNX runtime assume it) (default: %(default)s)",
    )
    parser.add_argument(
        "--samples-per-shard",
        type=positive_int,
        default=256,
        help="target samples per shard; shards of a split are made equal in size (default: %(default)s)",
    )
    parser.add_argument(
        "--max-shard-mb",
        type=number(low=1),
        default=50.0,
        help="hard cap on a shard's size in MiB, >= 1 (a slice takes well under 1 MiB) (default: %(default)s)",
    )
    max_workers = 4 * usable_cores()
    parser.add_argument(
        "--workers",
        type=integer(1, max_workers),
        default=None,
        help=f"encoding processes, 1 to {max_workers} (4 per core) (default: all cores)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace an existing output folder written by `shard` (never any other folder)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_nifti_arguments(parser.add_argument_group("NIfTI volumes (--nifti)"))


def print_summary(manifest: dict, out: Path, seconds: float) -> None:
    total = sum(e["num_samples"] for e in manifest["splits"].values())
    print(f"\nwrote {out} in {seconds:.1f} s ({total / seconds:.0f} images/s)")
    print(
        f"{'split':<10}{'samples':>9}{'subjects':>10}{'shards':>8}{'MiB':>8}{'resized':>9}{'mean':>8}{'std':>8}  masks"
    )
    for split, e in manifest["splits"].items():
        mib = sum(s["bytes"] for s in e["shards"]) / 2**20
        stats = e["pixel_stats"]
        print(
            f"{split:<10}{e['num_samples']:>9}{e['num_subjects']:>10}{len(e['shards']):>8}{mib:>8.1f}"
            f"{e['resized']:>9}{stats['mean']:>8.3f}{stats['std']:>8.3f}  {'yes' if e['has_masks'] else 'no'}"
        )
    print(f"manifest: {out / MANIFEST}")


def run(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    writing = {
        "samples_per_shard": args.samples_per_shard,
        "max_shard_mb": args.max_shard_mb,
        "workers": args.workers,
        "force": args.force,
        "show_progress": not args.quiet,
    }
    if args.nifti is not None:
        slicing = Slicing.from_args(args)
        options = {"count": args.positions, "ratios": args.split_ratios, "seed": args.seed}
        manifest = shard_volumes(args.nifti, args.out, slicing=slicing, **options, **writing)
    else:
        manifest = shard_dataset(args.src, args.out, splits=args.splits, size=args.size, **writing)
    print_summary(manifest, args.out, time.perf_counter() - start)
    for volume in manifest.get("nifti", {}).get("volumes", []):
        if volume["squeezed_4d"]:
            print(f"note: {volume['source']} is 4D with one volume; read as 3D")
