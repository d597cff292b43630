"""Reconstruction quality of a trained VQ-VAE on a split: SSIM, PSNR, codebook usage, figures.

    python -m trainer evaluate --checkpoint runs/oasis64 --split test --out runs/oasis64/eval_test

SSIM is torchmetrics' `structural_similarity_index_measure` with a Gaussian 11x11 window,
sigma 1.5, data_range 1.0, on images in [0, 1] (reconstructions clamped to [0, 1]): the usual
settings, so figures compare with other reports. PSNR uses data_range 1.0, per image.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from tqdm import tqdm

from trainer import figures
from trainer.checkpoint import list_checkpoints, load_checkpoint_config, load_weights
from trainer.config import VQVAEConfig, build
from trainer.data import SliceShards, epoch_batches
from trainer.quantizer import codebook_stats
from trainer.vqvae import VQVAE

SSIM_SETTINGS = {"gaussian_kernel": True, "kernel_size": 11, "sigma": 1.5, "data_range": 1.0}


@torch.no_grad()
def reconstruction_metrics(model: VQVAE, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(reconstructions in [0, 1], per-image SSIM, per-image PSNR, code indices) for a batch."""
    recon, quantized = model(images)
    recon = recon.float().clamp(0, 1)
    images = images.float()
    ssim = structural_similarity_index_measure(recon, images, reduction="none", **SSIM_SETTINGS)
    psnr = peak_signal_noise_ratio(recon, images, data_range=1.0, reduction="none", dim=(1, 2, 3))
    return recon, ssim, psnr, quantized.indices


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint folder, or a run folder (its newest checkpoint)."""
    if (path / "model.safetensors").is_file():
        return path
    found = list_checkpoints(path / "checkpoints")
    if not found:
        raise FileNotFoundError(f"{path}: neither a checkpoint folder nor a run folder with checkpoints/")
    return found[-1]


def load_vqvae(checkpoint: Path, device: str | torch.device = "cpu") -> tuple[VQVAE, VQVAEConfig]:
    """Rebuild the model from a checkpoint's own config and load its weights (safetensors)."""
    checkpoint = resolve_checkpoint(checkpoint)
    cfg = build(VQVAEConfig, load_checkpoint_config(checkpoint), "")
    model = VQVAE(cfg.model, cfg.quantizer)
    model.load_state_dict(load_weights(checkpoint))
    return model.to(device).eval(), cfg


def evaluate(checkpoint: Path, split: str, out: Path, shards: str | None = None, batch_size: int = 32,
             device: str = "cpu", show_progress: bool = True, log_wandb: bool = False) -> dict:
    """Evaluate on a whole split; writes per_image.csv, summary.json and figures to `out`
    (and, with `log_wandb`, logs the summary and figures as a wandb run of the config's project)."""
    model, cfg = load_vqvae(checkpoint, device)
    dataset = SliceShards(shards or cfg.data.shards, split)
    rows, counts = [], torch.zeros(cfg.quantizer.num_codes, dtype=torch.long)
    examples = None
    for batch in tqdm(epoch_batches(dataset, batch_size), total=-(-len(dataset) // batch_size),
                      desc=f"evaluate {split}", disable=not show_progress):
        recon, ssim, psnr, indices = reconstruction_metrics(model, batch.images.to(device))
        counts += torch.bincount(indices.flatten().cpu(), minlength=cfg.quantizer.num_codes)
        for key, meta, s, p in zip(batch.keys, batch.meta, ssim.tolist(), psnr.tolist()):
            rows.append({"key": key, "subject": meta["subject"], "slice": meta["slice"], "ssim": s, "psnr": p})
        if examples is None:
            examples = (batch.images[:8, 0].numpy(), recon[:8, 0].cpu().numpy(), ssim[:8].cpu().numpy(),
                        batch.keys[:8], indices[:8].cpu().numpy())
    ssim_all = np.array([r["ssim"] for r in rows])
    perplexity, used = codebook_stats(counts)
    summary = {
        "checkpoint": str(resolve_checkpoint(checkpoint)), "split": split, "images": len(rows),
        "ssim_mean": float(ssim_all.mean()), "ssim_median": float(np.median(ssim_all)),
        "ssim_min": float(ssim_all.min()), "psnr_mean": float(np.mean([r["psnr"] for r in rows])),
        "codebook_perplexity": float(perplexity), "codes_used": int(used), "num_codes": cfg.quantizer.num_codes,
        "grid": list(examples[4].shape[1:]), "ssim_settings": SSIM_SETTINGS,
    }
    out.mkdir(parents=True, exist_ok=True)
    with (out / "per_image.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")

    originals, recons, ssims, keys, codes = examples
    figures.reconstruction_grid(originals, recons, ssims, keys, out / "reconstructions.png")
    figures.code_maps(originals, codes, keys, out / "code_maps.png", cfg.quantizer.num_codes)
    figures.codebook_usage(counts.numpy(), out / "codebook_usage.png")
    metrics_file = Path(cfg.out_dir) / "metrics.jsonl"
    if metrics_file.is_file():
        history = [json.loads(line) for line in metrics_file.read_text().splitlines()]
        figures.loss_curves(history, out / "loss_curves.png")
    if log_wandb:
        log_to_wandb(summary, out, cfg.wandb.project, cfg.wandb.mode, f"evaluate-{split}", prefix=split)
    return summary


def log_to_wandb(summary: dict, out: Path, project: str, mode: str, name: str, prefix: str) -> None:
    """One wandb run holding a summary's numbers and every figure in `out`."""
    import wandb

    from trainer.training_run import wandb_mode

    run = wandb.init(project=project, dir=str(out), name=name, job_type=name.split("-")[0], mode=wandb_mode(mode),
                     config={"checkpoint": summary.get("checkpoint")})
    run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float))})
    run.log({f"{prefix}/{path.stem}": wandb.Image(str(path)) for path in sorted(out.glob("*.png"))})
    run.finish()
