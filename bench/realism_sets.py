"""The image sets that docs/benchmarks.md's realism comparisons feed to bench/bench_realism.py, written from the
shards (and a VQ-VAE) as .npz files of `images` (N, 256, 256) uint8 and `keys` (`case_XXX`, each slice's subject,
so bench_realism keeps a subject's slices in one fold):

- real_train.npz: `--subjects` whole subjects of the train split drawn with `--seed`, the reference that
  `trainer evaluate` and `evaluate-prior` draw (trainer/stage1/realism.py's train_reference);
- real_SPLIT.npz: every slice of `--split` (the real-vs-real baseline);
- recon_SPLIT.npz, given `--checkpoint`: that VQ-VAE's reconstructions of the same slices, as 8-bit pixels.

    python bench/realism_sets.py --shards /tmp/oasis/shards --checkpoint /tmp/oasis/vqvae32 --out /work/runs/sets

The sets are made from the data: keep them outside the repository. Bad input is exit 2 with one line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common.errors import DataError  # noqa: E402
from trainer.stage1.data import read_split  # noqa: E402
from trainer.stage1.load import load_vqvae  # noqa: E402
from trainer.stage1.realism import as_uint8, train_reference  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", type=Path, required=True, help="a `data_tools shard` folder")
    p.add_argument("--out", type=Path, required=True, help="folder for the .npz files (created; files replaced)")
    p.add_argument("--checkpoint", type=Path, help="a VQ-VAE run or checkpoint: also write its reconstructions")
    p.add_argument("--split", default="test", help="the split compared with the train subjects (default: test)")
    p.add_argument("--subjects", type=int, default=17, help="train subjects in real_train.npz (default: 17)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train subjects' draw (default: 0)")
    args = p.parse_args(argv)
    if args.subjects < 1:
        p.error("--subjects must be >= 1")
    if args.out.exists() and not args.out.is_dir():
        p.error(f"--out {args.out}: not a folder")
    if args.split == "train":
        p.error("--split: the train split is the reference; choose another")
    return args


def case_keys(subjects: list[str]) -> np.ndarray:
    """`case_XXX` per slice: the name bench_realism groups OASIS subjects by."""
    return np.array([s if str(s).startswith("case_") else f"case_{s}" for s in subjects])


@torch.no_grad()
def reconstruct(model: torch.nn.Module, pixels: torch.Tensor, batch_size: int = 32) -> np.ndarray:
    """uint8 (N, H, W) reconstructions of uint8 (N, 1, H, W) slices."""
    batches = [model(pixels[i : i + batch_size].float() / 255)[0][:, 0] for i in range(0, len(pixels), batch_size)]
    return np.concatenate([as_uint8(batch) for batch in batches])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        model = load_vqvae(args.checkpoint)[0].eval() if args.checkpoint else None  # a bad checkpoint fails first
        train, owners = train_reference(args.shards, args.subjects, args.seed)
        if len(set(owners)) < args.subjects:
            raise ValueError(f"{args.shards}: --subjects {args.subjects}, but the train split has {len(set(owners))}")
        pixels, subjects = read_split(args.shards, args.split)
        recons = reconstruct(model, pixels) if model is not None else None
        args.out.mkdir(parents=True, exist_ok=True)
        np.savez(args.out / "real_train.npz", images=train, keys=case_keys(owners))
        np.savez(args.out / f"real_{args.split}.npz", images=pixels[:, 0].numpy(), keys=case_keys(subjects))
        if recons is not None:
            np.savez(args.out / f"recon_{args.split}.npz", images=recons, keys=case_keys(subjects))
    except (DataError, OSError, ValueError, KeyError) as err:  # an unwritable --out is an OSError too
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.out}: {len(train)} train slices of {len(set(owners))} subjects, {len(pixels)} {args.split} slices")
    return 0


if __name__ == "__main__":
    sys.exit(main())
