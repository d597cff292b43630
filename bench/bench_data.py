"""Data-path throughput, side by side in one run (ratios matter; this machine is noisy).

    python bench/bench_data.py --src ../shared/oasis/keras_png_slices_data --json docs/bench_data.json

1. Shard writing (images/s): `data_tools shard` on one split with 1 process vs all cores.
2. Loading (images/s, one training process): our WebDataset loader vs a plain PNG-folder Dataset
   (PIL per file, torch DataLoader), each with 0 and 2 DataLoader workers, same batch size, same
   output (float tensors in [0, 1] of shape (B, 1, 256, 256)).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from data_tools.shard import shard_dataset
from trainer.data import SliceShards, epoch_batches


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, required=True, help="keras_png_slices_data folder (OASIS)")
    parser.add_argument("--split", default="train", help="split to measure (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="loader batch size (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_data_"))
    results: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
                     "split": args.split}
    try:
        for workers in (1, os.cpu_count()):
            out = work / f"shards_w{workers}"
            seconds, _ = timed(lambda: shard_dataset(args.src, out, splits=(args.split,), workers=workers,
                                                     show_progress=False)["splits"][args.split]["num_samples"])
            n = len(list((args.src / f"keras_png_slices_{args.split}").glob("*.png")))
            results[f"shard_images_per_s_{workers}proc"] = n / seconds
        shards = work / f"shards_w{os.cpu_count()}"
        for workers in (0, 2):
            ds = SliceShards(shards, args.split, shuffle=True)
            seconds, n = timed(lambda: sum(len(b) for b in epoch_batches(ds, args.batch_size, num_workers=workers)))
            results[f"load_shards_images_per_s_{workers}workers"] = n / seconds
            loader = DataLoader(PngFolder(args.src / f"keras_png_slices_{args.split}"), batch_size=args.batch_size,
                                shuffle=True, num_workers=workers)
            seconds, n = timed(lambda: sum(len(b) for b in loader))
            results[f"load_pngs_images_per_s_{workers}workers"] = n / seconds
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"machine: {results['machine']}; split: {args.split}")
    cores = os.cpu_count()
    print(f"shard writing: {results['shard_images_per_s_1proc']:.0f} img/s (1 process), "
          f"{results[f'shard_images_per_s_{cores}proc']:.0f} img/s ({cores} processes)")
    print(f"{'loading':<12}{'shards':>12}{'PNG folder':>12}{'ratio':>8}")
    for workers in (0, 2):
        ours = results[f"load_shards_images_per_s_{workers}workers"]
        base = results[f"load_pngs_images_per_s_{workers}workers"]
        results[f"load_ratio_{workers}workers"] = ours / base
        print(f"{workers} workers{'':<4}{ours:>12.0f}{base:>12.0f}{ours / base:>7.2f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
