"""`python -m trainer evaluate`: reconstruction quality of a trained VQ-VAE on a split: SSIM, PSNR,
codebook usage, figures, and how real its reconstructions look.

    python -m trainer evaluate --checkpoint runs/oasis64 --split test --out runs/oasis64/eval_test

The SSIM and PSNR settings are trainer/stage1/image_metrics.py's (the ones validation uses during training).
The realism test (trainer/stage1/realism.py) asks whether a classifier can tell the reconstructions from real
training slices, and, as the baseline, the split's real slices from the same training slices: SSIM scores each
reconstruction against its original, and cannot say whether blur gives the reconstructions away as a set.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from dataclasses import dataclass
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
from trainer.stage1.realism import (
    DEFAULT_OPTIONS,
    TURNED_OFF,
    RealismOptions,
    add_realism_arguments,
    as_uint8,
    realism_options,
    realism_report,
    train_reference,
)
from trainer.stage1.vqvae import VQVAE

SUMMARY = "summary.json"  # the marker of an evaluation folder: --force replaces only a folder that has it
KIND = "trainer evaluate"  # recorded in the folder: --force replaces only this command's own summary.json folders
DESCRIPTION = (
    "Reconstruct every image of a split; write per_image.csv, summary.json (mean, median, min SSIM, mean "
    "PSNR, codebook perplexity and codes used over the whole pass, and the realism test: held-out accuracy of a "
    "classifier telling the reconstructions from real training slices, 0.5 = indistinguishable, beside real "
    "against real) and figures."
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
    realism: RealismOptions | None = DEFAULT_OPTIONS,
) -> dict:
    """Evaluate on a whole split; writes per_image.csv, summary.json and figures to `out`, which appears
    whole or not at all (and, with `log_wandb`, logs the summary and figures as a wandb run of the config's
    project). `realism` None: no realism test."""
    out, checkpoint = Path(out), resolve_checkpoint(Path(checkpoint))
    check_output_dir(out, marker=SUMMARY, force=force, inputs=[checkpoint], kind=KIND)
    model, cfg = load_vqvae(checkpoint, device)
    shards = shards or cfg.data.shards
    check_output_dir(out, marker=SUMMARY, force=force, inputs=[checkpoint, Path(shards)], kind=KIND)
    keep = realism is not None and split != "train"  # the realism test needs every image, and train is its reference
    passed = reconstruct_split(
        model, SliceShards(shards, split), cfg.quantizer.num_codes, batch_size, device, keep, show_progress
    )
    ssim_all = np.array([r["ssim"] for r in passed.rows])
    perplexity, used = codebook_stats(passed.counts)
    summary = {
        "checkpoint": str(checkpoint),
        "split": split,
        "images": len(passed.rows),
        "ssim_mean": float(ssim_all.mean()),
        "ssim_median": float(np.median(ssim_all)),
        "ssim_min": float(ssim_all.min()),
        "psnr_mean": float(np.mean([r["psnr"] for r in passed.rows])),
        "codebook_perplexity": float(perplexity),
        "codes_used": int(used),
        "num_codes": cfg.quantizer.num_codes,
        "grid": passed.grid,
        "ssim_settings": SSIM_SETTINGS,
    }
    check_finite(summary, checkpoint)
    summary["realism"] = split_realism(passed, shards, split, realism, device, show_progress)
    with atomic_output_dir(out, marker=SUMMARY, force=force, inputs=[checkpoint, Path(shards)], kind=KIND) as tmp:
        write_per_image_csv(tmp / "per_image.csv", passed.rows)
        (tmp / SUMMARY).write_text(json.dumps(summary, indent=1) + "\n")
        write_figures(tmp, passed.examples, passed.counts, model, cfg, split)
    if log_wandb:
        log_to_wandb(summary, out, cfg.wandb.project, cfg.wandb.mode, f"evaluate-{split}", prefix=split)
    return summary


@dataclass
class SplitPass:
    """One pass of the VQ-VAE over a split: per-image rows, code counts, the figures' examples, the code grid,
    and (when kept, for the realism test) every original and reconstruction as uint8 (N, H, W)."""

    rows: list[dict]
    counts: torch.Tensor
    examples: ReconstructionExamples
    grid: list[int]
    originals: list[np.ndarray]
    reconstructions: list[np.ndarray]


def reconstruct_split(
    model: VQVAE,
    dataset: SliceShards,
    num_codes: int,
    batch_size: int,
    device: str,
    keep_images: bool,
    show_progress: bool,
) -> SplitPass:
    """Reconstruct every slice of the split and measure each."""
    passed = SplitPass([], torch.zeros(num_codes, dtype=torch.long), ReconstructionExamples(len(dataset)), [], [], [])
    for batch in tqdm(
        epoch_batches(dataset, batch_size),
        total=-(-len(dataset) // batch_size),
        desc=f"evaluate {dataset.split}",
        disable=not show_progress,
    ):
        recon, ssim, psnr, indices = reconstruction_metrics(model, batch.images.to(device))
        passed.counts += torch.bincount(indices.flatten().cpu(), minlength=num_codes)
        for i, (key, meta, s, p) in enumerate(zip(batch.keys, batch.meta, ssim.tolist(), psnr.tolist())):
            passed.rows.append({"key": key, "subject": meta["subject"], "slice": meta["slice"], "ssim": s, "psnr": p})
            passed.examples.add(key, batch.images[i, 0].numpy(), recon[i, 0].cpu().numpy(), indices[i].cpu().numpy(), s)
        if keep_images:
            passed.originals.append(as_uint8(batch.images[:, 0]))
            passed.reconstructions.append(as_uint8(recon[:, 0]))
        passed.grid = list(indices.shape[1:])
    return passed


def split_realism(
    passed: SplitPass, shards: str, split: str, options: RealismOptions | None, device: str, show_progress: bool
) -> dict:
    """summary.json's `realism`: the reconstructions against as many whole real training subjects as the split
    holds, and the split's real slices against the same ones (the real-vs-real baseline: about 0.5)."""
    if options is None:
        return dict(TURNED_OFF)
    if split == "train":
        return {"skipped": "the train split is the real reference: evaluate another split"}
    subjects = [row["subject"] for row in passed.rows]
    train, train_subjects = train_reference(shards, len(set(subjects)), options.seed)
    real, recons = np.concatenate(passed.originals), np.concatenate(passed.reconstructions)
    comparisons = {
        "reconstructions_vs_train": (recons, subjects, train, train_subjects),
        "real_vs_train": (real, subjects, train, train_subjects),
    }
    reference = {"split": "train", "subjects": len(set(train_subjects)), "images": len(train)}
    return {"reference": reference, **realism_report(comparisons, options, device, show_progress)}


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
    add_realism_arguments(parser, "the reconstructions against real training slices")
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
        realism=realism_options(args),
    )
    print(json.dumps(summary, indent=1))
