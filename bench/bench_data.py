"""Data-path throughput, side by side in one run (ratios matter; this machine is noisy).

    python bench/bench_data.py --src ../shared/oasis/keras_png_slices_data --json docs/bench_data.json
    python bench/bench_data.py --src ../shared/oasis/keras_png_slices_data --shards data/oasis_shards  # skip 1.

1. Shard writing (images/s): `data_tools shard` on one split with 1 process vs all cores.
2. Loading one epoch (images/s, one training process), same batch size, same output (float tensors
   in [0, 1] of shape (B, 1, 256, 256)), each with 0 and 2 DataLoader workers: the split decoded
   once into memory (`SlicesInMemory`; the one-off decoding is timed apart), our shard stream, and
   a plain PNG-folder Dataset (PIL per file, torch DataLoader).
3. Where a streamed sample's time goes (CPU microseconds per sample, best of 5 over one shard):
   parsing the tar with `tarfile` vs our parser (`iter_shard`), and decoding the PNG.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from common.shard_format import decode_gray_png, iter_shard
from data_tools.shard import shard_dataset
from trainer.stage1.data import SliceShards, SlicesInMemory, epoch_batches


class PngFolder(Dataset):
    """The baseline: read each PNG file directly, as the seed's keras loader did."""

    def __init__(self, folder: Path):
        self.files = sorted(folder.glob("*.png"))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.asarray(Image.open(self.files[i]), dtype=np.float32) / 255.0)[None]


def timed(fn) -> tuple[float, int]:
    start = time.perf_counter()
    count = fn()
    return time.perf_counter() - start, count


def cpu_us_per_sample(fn, samples: int, repeats: int = 5) -> float:
    """Best of `repeats` CPU times (less disturbed than wall time on a shared machine)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best / samples * 1e6


def tarfile_members(path: Path) -> list[bytes]:
    """What iter_shard did before: the standard library's tarfile."""
    with tarfile.open(path) as tar:
        return [tar.extractfile(m).read() for m in tar if m.isfile()]


def write_shards(src: Path, work: Path, split: str, results: dict) -> Path:
    for workers in (1, os.cpu_count()):
        out = work / f"shards_w{workers}"
        seconds, _ = timed(
            lambda out=out, workers=workers: shard_dataset(
                src, out, splits=(split,), workers=workers, show_progress=False
            )["splits"][split]["num_samples"]
        )
        n = len(list((src / f"keras_png_slices_{split}").glob("*.png")))
        results[f"shard_images_per_s_{workers}proc"] = n / seconds
    return work / f"shards_w{os.cpu_count()}"


def count(batches) -> int:
    return sum(len(b) for b in batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, required=True, help="keras_png_slices_data folder (OASIS)")
    parser.add_argument("--shards", type=Path, help="existing shards of --src: skip measuring shard writing")
    parser.add_argument("--split", default="train", help="split to measure (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="loader batch size (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_data_"))
    results: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "split": args.split,
        "load_average_1min_before": os.getloadavg()[0],
    }
    try:
        shards = args.shards or write_shards(args.src, work, args.split, results)
        for workers in (0, 2):
            ds = SliceShards(shards, args.split, shuffle=True)
            seconds, memory = timed(lambda ds=ds, workers=workers: SlicesInMemory(ds, num_workers=workers))
            results[f"memory_decode_images_per_s_{workers}workers"] = len(ds) / seconds
            seconds, n = timed(lambda memory=memory: count(epoch_batches(memory, args.batch_size)))
            results[f"load_memory_images_per_s_{workers}workers"] = n / seconds
            seconds, n = timed(
                lambda ds=ds, workers=workers: count(epoch_batches(ds, args.batch_size, num_workers=workers))
            )
            results[f"load_shards_images_per_s_{workers}workers"] = n / seconds
            loader = DataLoader(
                PngFolder(args.src / f"keras_png_slices_{args.split}"),
                batch_size=args.batch_size,
                shuffle=True,
                num_workers=workers,
            )
            seconds, n = timed(lambda loader=loader: count(loader))
            results[f"load_pngs_images_per_s_{workers}workers"] = n / seconds
        shard = next(iter(sorted(shards.glob(f"{args.split}-*.tar"))))
        samples = list(iter_shard(shard))
        results["tarfile_parse_us_per_sample"] = cpu_us_per_sample(lambda: tarfile_members(shard), len(samples))
        results["our_parse_us_per_sample"] = cpu_us_per_sample(lambda: list(iter_shard(shard)), len(samples))
        results["png_decode_us_per_sample"] = cpu_us_per_sample(
            lambda: [decode_gray_png(s["png"]) for s in samples], len(samples)
        )
        results["load_average_1min_after"] = os.getloadavg()[0]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"machine: {results['machine']}; split: {args.split}; 1-min load average "
        f"{results['load_average_1min_before']:.1f} before, {results['load_average_1min_after']:.1f} after"
    )
    cores = os.cpu_count()
    if "shard_images_per_s_1proc" in results:
        print(
            f"shard writing: {results['shard_images_per_s_1proc']:.0f} img/s (1 process), "
            f"{results[f'shard_images_per_s_{cores}proc']:.0f} img/s ({cores} processes)"
        )
    print(
        f"{'loading, images/s':<20}{'in memory':>11}{'shards':>9}{'PNG folder':>12}"
        f"{'memory/PNG':>12}{'shards/PNG':>12}{'decode once':>13}"
    )
    for workers in (0, 2):
        memory, ours, base, once = (
            results[f"{what}_images_per_s_{workers}workers"]
            for what in ("load_memory", "load_shards", "load_pngs", "memory_decode")
        )
        results[f"load_ratio_{workers}workers"] = ours / base
        results[f"memory_ratio_{workers}workers"] = memory / base
        print(
            f"{workers} workers{'':<11}{memory:>11.0f}{ours:>9.0f}{base:>12.0f}{memory / base:>11.1f}x"
            f"{ours / base:>11.2f}x{once:>13.0f}"
        )
    print(
        f"CPU us per sample: tar parsing {results['tarfile_parse_us_per_sample']:.0f} (tarfile) vs "
        f"{results['our_parse_us_per_sample']:.0f} (ours); PNG decoding {results['png_decode_us_per_sample']:.0f}"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
