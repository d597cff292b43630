"""`python -m trainer sample`: generate brains: sample code grids from the prior, decode them with the VQ-VAE.

    python -m trainer sample --checkpoint runs/prior_oasis32 --n 16 --seed 0 --out samples/

writes `codes/NNN.png` (code maps, indices scaled to 16-bit), `images/NNN.png` (decoded brains),
`generated.png` (each code map beside its brain) and `samples.npz` (the code grids and conditions).
The random numbers come from numpy (common/sampling_rule.py), so a seed gives the same brains on any
machine and in the onnxruntime sampler; `--naive` runs the slow reference sampler instead (for checks and timing).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common.cli import (
    add_batch_size_argument,
    add_checkpoint_argument,
    add_device_argument,
    add_force_argument,
    add_quiet_argument,
    add_sampling_arguments,
    add_vqvae_argument,
)
from common.output_dir import atomic_output_dir, check_output_dir
from common.sample_files import SAMPLES_FILE, write_samples
from trainer.run.checkpoint import resolve_checkpoint
from trainer.run.wandb_logging import log_to_wandb
from trainer.stage1.load import numpy_decoder
from trainer.stage2.generate import generate
from trainer.stage2.load import load_paired_vqvae, load_prior

KIND = "trainer sample"  # recorded in the folder: --force replaces only this command's own samples folders
DESCRIPTION = (
    "Sample code grids with the exact fast sampler (or --naive), decode them with the VQ-VAE the prior was "
    "trained on, and write code maps, images, samples.npz and a side-by-side figure."
)


def run_sampling(
    checkpoint: Path,
    out: Path,
    n: int = 16,
    seed: int = 0,
    temperature: float = 1.0,
    top_k: int = 0,
    slice_index: int | None = None,
    batch_size: int = 16,
    device: str = "cpu",
    naive: bool = False,
    vqvae_checkpoint: Path | None = None,
    log_wandb: bool = False,
    show_progress: bool = True,
    force: bool = False,
) -> dict:
    """Sample, decode and write the files into `out`, which appears whole or not at all."""
    out = Path(out)
    checkpoint = resolve_checkpoint(Path(checkpoint))
    check_output_dir(out, marker=SAMPLES_FILE, force=force, inputs=[checkpoint], kind=KIND)
    prior, cfg, info = load_prior(checkpoint, device)
    vqvae, _, vqvae_path, _ = load_paired_vqvae(info, vqvae_checkpoint, device)
    started = time.perf_counter()
    codes, conditions, images = generate(
        prior, vqvae, n, seed, temperature, top_k, slice_index, batch_size, naive, show_progress
    )
    seconds = time.perf_counter() - started
    with atomic_output_dir(out, marker=SAMPLES_FILE, force=force, inputs=[checkpoint, vqvae_path], kind=KIND) as tmp:
        figure = write_samples(tmp, codes, conditions, images, prior.shape.num_codes, numpy_decoder(vqvae))
        summary = {
            "n": n,
            "seed": seed,
            "temperature": temperature,
            "top_k": top_k,
            "slice": slice_index,
            "sampler": "naive" if naive else "fast",
            "seconds": seconds,
            "figure": str(out / figure.name),
        }
        (tmp / "summary.json").write_text(json.dumps(summary, indent=1))
    if log_wandb:
        log_to_wandb(
            {**summary, "checkpoint": str(checkpoint)},
            out,
            cfg.wandb.project,
            cfg.wandb.mode,
            "sample",
            prefix="sample",
        )
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_checkpoint_argument(parser, "prior")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    add_sampling_arguments(parser)
    add_batch_size_argument(parser, 16, "grids sampled together")
    add_quiet_argument(parser)
    add_device_argument(parser)
    parser.add_argument(
        "--naive",
        action="store_true",
        help="run the whole network for every cell (slow reference; gives the same samples)",
    )
    add_vqvae_argument(parser)
    parser.add_argument("--wandb", action="store_true", help="also log the figure to wandb (offline without a key)")
    add_force_argument(parser)


def run(args: argparse.Namespace) -> None:
    summary = run_sampling(
        args.checkpoint,
        args.out,
        n=args.n,
        seed=args.seed,
        temperature=args.temperature,
        top_k=args.top_k,
        slice_index=args.slice,
        batch_size=args.batch_size,
        device=args.device,
        naive=args.naive,
        vqvae_checkpoint=args.vqvae,
        log_wandb=args.wandb,
        show_progress=not args.quiet,
        force=args.force,
    )
    print(f"{summary['n']} brains in {summary['seconds']:.1f} s -> {args.out} (figure: {summary['figure']})")
