"""`python -m data_tools shard|verify|preview ...`: PNG folders -> WebDataset shards; see each `--help`."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from export.runtime.cli import missing_training_install
from export.runtime.cli_types import integer, number, positive_int
from export.runtime.output_dir import OutputError
from export.runtime.shard_format import IMAGE_SIZE, DataError

try:  # webdataset is in the training extra: a runtime-only install gets one line, not a traceback
    from data_tools.layout import SPLITS
    from data_tools.preview import preview_grid
    from data_tools.shard import shard_dataset
    from data_tools.verify import verify_shards
except ImportError as err:
    sys.exit(missing_training_install("python -m data_tools", err))


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
    print(f"manifest: {out / 'manifest.json'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_tools", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    shard = commands.add_parser(
        "shard",
        help="write the OASIS PNG layout as WebDataset shards + manifest",
        description="Shard a keras_png_slices_data folder (keras_png_slices_{train,validate,test}, optional "
        "keras_png_slices_seg_{split}) into {split}-NNNNNN.tar shards and manifest.json. "
        "Output is written to a temporary folder and renamed into place only if every file is good.",
    )
    shard.add_argument(
        "--src", type=Path, required=True, help="the keras_png_slices_data folder (or a folder containing it)"
    )
    shard.add_argument("--out", type=Path, required=True, help="output folder for shards and manifest.json")
    shard.add_argument(
        "--splits", default=",".join(SPLITS), help="comma-separated splits to shard (default: %(default)s)"
    )
    shard.add_argument(
        "--size",
        type=int,
        default=IMAGE_SIZE,
        help=f"side of the stored square images; others are resized. Only {IMAGE_SIZE} is supported "
        "end to end (models, codes and the ONNX runtime assume it) (default: %(default)s)",
    )
    shard.add_argument(
        "--samples-per-shard",
        type=positive_int,
        default=256,
        help="target samples per shard; shards of a split are made equal in size (default: %(default)s)",
    )
    shard.add_argument(
        "--max-shard-mb",
        type=number(low=1),
        default=50.0,
        help="hard cap on a shard's size in MiB, >= 1 (a slice takes well under 1 MiB) (default: %(default)s)",
    )
    max_workers = 4 * (os.cpu_count() or 1)
    shard.add_argument(
        "--workers",
        type=integer(1, max_workers),
        default=None,
        help=f"encoding processes, 1 to {max_workers} (4 per core) (default: all cores)",
    )
    shard.add_argument(
        "--force",
        action="store_true",
        help="replace an existing output folder written by `shard` (never any other folder)",
    )
    shard.add_argument("--quiet", action="store_true", help="no progress bar")

    verify = commands.add_parser(
        "verify",
        help="re-read every shard and check it against manifest.json",
        description="Checks sha256, sample counts, that every image decodes as 8-bit grayscale of the "
        "manifest's size, metadata, pixel statistics and that no subject is in two splits. "
        "Exit status 1 if anything is wrong.",
    )
    verify.add_argument("shard_dir", type=Path, help="folder written by `shard`")
    verify.add_argument("--quiet", action="store_true", help="no progress bar")

    preview = commands.add_parser(
        "preview",
        help="write a PNG contact sheet of samples decoded from the shards",
        description="Decodes the first --count samples of a split from its shards and writes them, "
        "with their keys, as one PNG: a quick look at what the shards hold.",
    )
    preview.add_argument("shard_dir", type=Path, help="folder written by `shard`")
    preview.add_argument("--out", type=Path, required=True, help="PNG file to write (outside the shard folder)")
    preview.add_argument("--split", default="train", help="split to show (default: %(default)s)")
    preview.add_argument("--count", type=positive_int, default=16, help="number of samples (default: %(default)s)")

    args = parser.parse_args(argv)
    try:
        if args.command == "shard":
            splits = tuple(s.strip() for s in args.splits.split(",") if s.strip())
            unknown = [s for s in splits if s not in SPLITS]
            if unknown or not splits:
                parser.error(f"--splits: unknown split(s) {unknown}; choose from {list(SPLITS)}")
            if args.size != IMAGE_SIZE:
                parser.error(
                    f"--size {args.size}: only {IMAGE_SIZE} is supported end to end (the models, the codes "
                    f"and the ONNX runtime assume {IMAGE_SIZE}x{IMAGE_SIZE}); other images are resized to it"
                )
            start = time.perf_counter()
            manifest = shard_dataset(
                args.src,
                args.out,
                splits=splits,
                size=args.size,
                samples_per_shard=args.samples_per_shard,
                max_shard_mb=args.max_shard_mb,
                workers=args.workers,
                force=args.force,
                show_progress=not args.quiet,
            )
            print_summary(manifest, args.out, time.perf_counter() - start)
        elif args.command == "preview":
            print(f"wrote {preview_grid(args.shard_dir, args.out, args.split, args.count)}")
        else:
            problems = verify_shards(args.shard_dir, show_progress=not args.quiet)
            if problems:
                print(f"verify: {len(problems)} problem(s) in {args.shard_dir}:", file=sys.stderr)
                for problem in problems:
                    print(f"  {problem}", file=sys.stderr)
                return 1
            print(f"verify: {args.shard_dir} OK")
    except (DataError, OutputError, OSError) as err:  # OSError: e.g. a full disk, named by its message
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
