"""`python -m trainer evaluate`: reconstruction quality of a trained VQ-VAE on a split: SSIM, PSNR,
codebook usage, figures.

    python -m trainer evaluate --checkpoint runs/oasis64 --split test --out runs/oasis64/eval_test

The SSIM and PSNR settings are trainer/stage1/image_metrics.py's (the ones validation uses during training).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from common.cli import (
    add_batch_size_argument,
    add_checkpoint_argument,
    add_device_argument,
    add_force_argument,
    add_quiet_argument,
)
from common.figures.reconstruction import ReconstructionExamples, code_maps, codebook_usage, reconstruction_grid
from common.figures.style import code_intensity
from common.figures.training import loss_curves
from common.output_dir import atomic_output_dir, check_output_dir
from trainer.run.checkpoint import CheckpointError, resolve_checkpoint
from trainer.run.metrics_file import read_metrics
from trainer.run.wandb_logging import log_to_wandb
from trainer.stage1.config import VQVAEConfig
from trainer.stage1.data import SliceShards, epoch_batches
from trainer.stage1.image_metrics import SSIM_SETTINGS, reconstruction_metrics
from trainer.stage1.load import load_vqvae, numpy_decoder
from trainer.stage1.quantizer import codebook_stats
from trainer.stage1.vqvae import VQVAE

SUMMARY = "summary.json"  # the marker of an evaluation folder: --force replaces only a folder that has it
KIND = "trainer evaluate"  # recorded in the folder: --force replaces only this command's own summary.json folders
DESCRIPTION = (
    "Reconstruct every image of a split; write per_image.csv, summary.json (mean, median, min SSIM, mean "
    "PSNR, codebook perplexity and codes used over the whole pass) and figures."
)


def evaluate(
    checkpoint: Path,
    split: str,
    out: Path,
    shards: str | None = None,
    batch_size: int = 32,
    device: str = "cpu",
    show_progress: bool = True,
    log_wandb: bool = False,
    force: bool = False,
) -> dict:
    """Evaluate on a whole split; writes per_image.csv, summary.json and figures to `out`, which appears
    whole or not at all (and, with `log_wandb`, logs the summary and figures as a wandb run of the config's
    project)."""
    out, checkpoint = Path(out), resolve_checkpoint(Path(checkpoint))
    check_output_dir(out, marker=SUMMARY, force=force, inputs=[checkpoint], kind=KIND)
    model, cfg = load_vqvae(checkpoint, device)
    shards = shards or cfg.data.shards
    check_output_dir(out, marker=SUMMARY, force=force, inputs=[checkpoint, Path(shards)], kind=KIND)
    dataset = SliceShards(shards, split)
    rows, counts = [], torch.zeros(cfg.quantizer.num_codes, dtype=torch.long)
    examples = ReconstructionExamples(len(dataset))
    for batch in tqdm(
        epoch_batches(dataset, batch_size),
        total=-(-len(dataset) // batch_size),
        desc=f"evaluate {split}",
        disable=not show_progress,
    ):
        recon, ssim, psnr, indices = reconstruction_metrics(model, batch.images.to(device))
        counts += torch.bincount(indices.flatten().cpu(), minlength=cfg.quantizer.num_codes)
        for i, (key, meta, s, p) in enumerate(zip(batch.keys, batch.meta, ssim.tolist(), psnr.tolist())):
            rows.append({"key": key, "subject": meta["subject"], "slice": meta["slice"], "ssim": s, "psnr": p})
            examples.add(key, batch.images[i, 0].numpy(), recon[i, 0].cpu().numpy(), indices[i].cpu().numpy(), s)
    ssim_all = np.array([r["ssim"] for r in rows])
    perplexity, used = codebook_stats(counts)
    summary = {
        "checkpoint": str(checkpoint),
        "split": split,
        "images": len(rows),
        "ssim_mean": float(ssim_all.mean()),
        "ssim_median": float(np.median(ssim_all)),
        "ssim_min": float(ssim_all.min()),
        "psnr_mean": float(np.mean([r["psnr"] for r in rows])),
        "codebook_perplexity": float(perplexity),
        "codes_used": int(used),
        "num_codes": cfg.quantizer.num_codes,
        "grid": list(indices.shape[1:]),
        "ssim_settings": SSIM_SETTINGS,
    }
    check_finite(summary, checkpoint)
    with atomic_output_dir(out, marker=SUMMARY, force=force, inputs=[checkpoint, Path(shards)], kind=KIND) as tmp:
        write_per_image_csv(tmp / "per_image.csv", rows)
        (tmp / SUMMARY).write_text(json.dumps(summary, indent=1) + "\n")
        write_figures(tmp, examples, counts, model, cfg, split)
    if log_wandb:
        log_to_wandb(summary, out, cfg.wandb.project, cfg.wandb.mode, f"evaluate-{split}", prefix=split)
    return summary


def check_finite(summary: dict, checkpoint: Path) -> None:
    """A NaN SSIM is no result: weights that are finite but huge (a diverged run) reconstruct NaN or Inf."""
    bad = {k: v for k, v in summary.items() if isinstance(v, float) and not math.isfinite(v)}
    if bad:
        raise CheckpointError(
            f"{checkpoint}: its reconstructions are not finite ({', '.join(f'{k} {v}' for k, v in bad.items())}); "
            "a diverged run's weights? Evaluate an earlier checkpoint (the last good one the stop named)"
        )


def write_per_image_csv(path: Path, rows: list[dict]) -> None:
    """One row per image (key, subject, slice, SSIM, PSNR), to find the slices behind a poor mean."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_figures(
    folder: Path, examples: ReconstructionExamples, counts: torch.Tensor, model: VQVAE, cfg: VQVAEConfig, split: str
) -> None:
    """reconstructions.png, code_maps.png and codebook_usage.png, and loss_curves.png when the run's
    metrics.jsonl is still beside it: what the numbers in summary.json look like."""
    keys, originals, recons, codes, ssims = examples.arrays()
    code_values = code_intensity(numpy_decoder(model), cfg.quantizer.num_codes, tuple(codes.shape[1:]))
    reconstruction_grid(
        originals,
        recons,
        ssims,
        keys,
        folder / "reconstructions.png",
        examples.title(f"VQ-VAE on the {split} split"),
        columns=4,
    )
    code_maps(
        originals,
        codes,
        keys,
        folder / "code_maps.png",
        code_values,
        examples.title(f"VQ-VAE codes of the {split} split"),
        columns=4,
    )
    codebook_usage(counts.numpy(), folder / "codebook_usage.png", f"{split} split")
    metrics_file = Path(cfg.out_dir) / "metrics.jsonl"
    if metrics_file.is_file():
        loss_curves(read_metrics(metrics_file)[0], folder / "loss_curves.png")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_checkpoint_argument(parser, "a VQ-VAE")
    parser.add_argument(
        "--split",
        default="test",
        choices=["train", "validate", "test"],
        help="split to evaluate (default: %(default)s)",
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for the CSV, summary and figures")
    parser.add_argument("--shards", help="shard folder (default: the one in the checkpoint's config)")
    add_batch_size_argument(parser, 32)
    add_device_argument(parser)
    parser.add_argument(
        "--wandb",
        action="store_true",
        help="also log the summary and figures to wandb (offline unless WANDB_API_KEY is set)",
    )
    add_quiet_argument(parser)
    add_force_argument(parser)


def run(args: argparse.Namespace) -> None:
    summary = evaluate(
        args.checkpoint,
        args.split,
        args.out,
        shards=args.shards,
        batch_size=args.batch_size,
        device=args.device,
        show_progress=not args.quiet,
        log_wandb=args.wandb,
        force=args.force,
    )
    print(json.dumps(summary, indent=1))
