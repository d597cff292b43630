"""Re-read every shard and check it against the manifest: hashes, counts, decodability, metadata,
pixel statistics and subject separation. Returns a list of problems (empty means all good)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common.digest import file_sha256
from common.shard_format import decode_gray_png, decode_metadata, iter_shard, pixel_stats, read_manifest

DESCRIPTION = (
    "Checks sha256, sample counts, that every image decodes as 8-bit grayscale of the "
    "manifest's size, metadata, pixel statistics and that no subject is in two splits. "
    "Exit status 1 if anything is wrong."
)


def check_sample(
    sample: dict, split: str, size: int, has_masks: bool
) -> tuple[list[str], np.ndarray | None, str | None]:
    """Problems with one sample, its pixel histogram and its subject."""
    key = sample["__key__"]
    expected = {"png", "json"} | ({"seg.png"} if has_masks else set())
    found = {k for k in sample if not k.startswith("__")}
    if found != expected:
        return [f"{key}: entries {sorted(found)}, expected {sorted(expected)}"], None, None
    try:
        pixels = decode_gray_png(sample["png"])
        if has_masks:
            decode_gray_png(sample["seg.png"])
        meta = decode_metadata(sample["json"])
    except Exception as err:  # any decoding failure is a finding, not a crash
        return [f"{key}: cannot decode ({err})"], None, None
    if not isinstance(meta, dict):
        return [f"{key}: metadata is not a JSON object"], None, None
    problems = []
    if pixels.shape != (size, size):
        problems.append(f"{key}: image is {pixels.shape}, expected ({size}, {size})")
    if meta.get("split") != split:
        problems.append(f"{key}: metadata says split {meta.get('split')!r}, shard is '{split}'")
    if key != f"case_{meta.get('subject')}_slice_{meta.get('slice')}":
        problems.append(f"{key}: key does not match metadata subject/slice")
    return problems, np.bincount(pixels.ravel(), minlength=256), str(meta.get("subject"))


def verify_split(shard_dir: Path, split: str, entry: dict, size: int, progress: tqdm) -> tuple[list[str], set[str]]:
    problems: list[str] = []
    histogram = np.zeros(256, dtype=np.int64)
    subjects: set[str] = set()
    count = 0
    for shard in entry["shards"]:
        path = shard_dir / shard["name"]
        if not path.is_file():
            problems.append(f"{path}: shard missing")
            continue
        if file_sha256(path) != shard["sha256"]:
            problems.append(f"{path}: sha256 differs from the manifest (modified or corrupt)")
        in_shard = 0
        try:
            for sample in iter_shard(path):
                found, sample_hist, subject = check_sample(sample, split, size, entry["has_masks"])
                problems += [f"{path.name}: {p}" for p in found]
                if sample_hist is not None:
                    histogram += sample_hist
                    subjects.add(subject)
                in_shard += 1
                progress.update(1)
        except Exception as err:  # a truncated tar raises from the iterator
            problems.append(f"{path}: unreadable tar ({err})")
        if in_shard != shard["num_samples"]:
            problems.append(f"{path}: {in_shard} samples, manifest says {shard['num_samples']}")
        count += in_shard
    if count != entry["num_samples"]:
        problems.append(f"split '{split}': {count} samples, manifest says {entry['num_samples']}")
    if sorted(subjects) != sorted(entry["subjects"]):
        problems.append(f"split '{split}': subjects in shards differ from the manifest")
    if not problems and pixel_stats(histogram) != entry["pixel_stats"]:
        problems.append(f"split '{split}': pixel statistics differ from the manifest")
    return problems, subjects


def verify_shards(shard_dir: Path, show_progress: bool = True) -> list[str]:
    """Every problem found in the shards; a missing or broken manifest raises DataError (nothing to check against)."""
    manifest = read_manifest(shard_dir)
    splits = manifest["splits"]
    problems: list[str] = []
    owner: dict[str, str] = {}
    total = sum(e["num_samples"] for e in splits.values())
    with tqdm(total=total, unit="img", desc="verifying", disable=not show_progress) as progress:
        for split, entry in splits.items():
            found, subjects = verify_split(shard_dir, split, entry, manifest["image_size"], progress)
            problems += found
            for subject in sorted(subjects):
                if subject in owner:
                    problems.append(f"subject {subject} appears in '{owner[subject]}' and '{split}'")
                owner[subject] = split
    return problems


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("shard_dir", type=Path, help="folder written by `shard`")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    problems = verify_shards(args.shard_dir, show_progress=not args.quiet)
    if problems:
        print(f"verify: {len(problems)} problem(s) in {args.shard_dir}:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print(f"verify: {args.shard_dir} OK")
    return 0
