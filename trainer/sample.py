"""Generate brains: sample code grids from the prior, decode them with the VQ-VAE.

    python -m trainer sample --checkpoint runs/prior_oasis32 --n 16 --seed 0 --out samples/

writes `codes/NNN.png` (code maps, indices scaled to 16-bit), `images/NNN.png` (decoded brains),
`generated.png` (each code map beside its brain) and `samples.npz` (the code grids and conditions).
The random numbers come from numpy (trainer/sampling_rule.py), so a seed gives the same brains on any
machine and in the onnxruntime sampler; `--naive` runs the slow reference sampler instead (for checks and timing).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from trainer.checkpoint import load_checkpoint_config, load_weights
from trainer.config import PriorConfig, build
from trainer.evaluate import load_vqvae, log_to_wandb, resolve_checkpoint
from trainer.pixelcnn import GatedPixelCNN, PriorShape, sample
from trainer.sample_files import write_samples
from trainer.sampling_rule import sampling_randomness
from trainer.vqvae import VQVAE

PRIOR_INFO = "prior.json"


def build_prior(cfg: PriorConfig, shape: PriorShape) -> GatedPixelCNN:
    m = cfg.model
    return GatedPixelCNN(shape, channels=m.channels, layers=m.layers, kernel=m.kernel,
                         first_kernel=m.first_kernel, head_channels=m.head_channels)


def load_prior(checkpoint: Path, device: str | torch.device = "cpu") -> tuple[GatedPixelCNN, PriorConfig, dict]:
    """The prior of a checkpoint (or a run folder's newest), its config and its prior.json (grid,
    K, conditions, and the VQ-VAE checkpoint whose codes it models)."""
    checkpoint = resolve_checkpoint(checkpoint)
    info_path = checkpoint / PRIOR_INFO
    if not info_path.is_file():
        raise FileNotFoundError(f"{info_path}: missing; is {checkpoint} a stage-2 (prior) checkpoint?")
    info = json.loads(info_path.read_text())
    cfg = build(PriorConfig, load_checkpoint_config(checkpoint), "")
    shape = PriorShape(info["num_codes"], info["height"], info["width"], info["num_conditions"])
    prior = build_prior(cfg, shape)
    prior.load_state_dict(load_weights(checkpoint))
    return prior.to(device).eval(), cfg, info


@torch.no_grad()
def generate(prior: GatedPixelCNN, vqvae: VQVAE, n: int, seed: int = 0, temperature: float = 1.0, top_k: int = 0,
             slice_index: int | None = None, batch_size: int = 16, naive: bool = False,
             show_progress: bool = True) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(codes (n, H, W), conditions (n,) or None, images (n, 256, 256) float in [0, 1])."""
    device = next(prior.parameters()).device
    shape = prior.shape
    uniforms, conditions = sampling_randomness(n, shape.height, shape.width, shape.num_conditions, seed, slice_index)
    uniforms = torch.from_numpy(uniforms)
    conditions = None if conditions is None else torch.from_numpy(conditions)
    codes, images = [], []
    rows = prior.shape.height * ((n + batch_size - 1) // batch_size)
    with tqdm(total=rows, desc="sample", unit="row", disable=not show_progress) as bar:
        for start in range(0, n, batch_size):
            part = slice(start, start + batch_size)
            cond = conditions[part].to(device) if conditions is not None else None
            grid = sample(prior, uniforms[part].to(device), cond, temperature, top_k, naive=naive, progress=bar)
            codes.append(grid.cpu())
            images.append(vqvae.decode(grid)[:, 0].float().cpu())
    return (torch.cat(codes).numpy(), None if conditions is None else conditions.numpy(),
            torch.cat(images).numpy())


def run_sampling(checkpoint: Path, out: Path, n: int = 16, seed: int = 0, temperature: float = 1.0, top_k: int = 0,
                 slice_index: int | None = None, batch_size: int = 16, device: str = "cpu", naive: bool = False,
                 vqvae_checkpoint: Path | None = None, log_wandb: bool = False, show_progress: bool = True) -> dict:
    prior, cfg, info = load_prior(checkpoint, device)
    vqvae, _ = load_vqvae(Path(vqvae_checkpoint or info["vqvae_checkpoint"]), device)
    started = time.perf_counter()
    codes, conditions, images = generate(prior, vqvae, n, seed, temperature, top_k, slice_index, batch_size,
                                         naive, show_progress)
    seconds = time.perf_counter() - started
    figure = write_samples(out, codes, conditions, images, prior.shape.num_codes)
    summary = {"n": n, "seed": seed, "temperature": temperature, "top_k": top_k, "slice": slice_index,
               "sampler": "naive" if naive else "fast", "seconds": seconds, "figure": str(figure)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    if log_wandb:
        log_to_wandb({**summary, "checkpoint": str(resolve_checkpoint(checkpoint))}, out, cfg.wandb.project,
                     cfg.wandb.mode, "sample", prefix="sample")
    return summary
