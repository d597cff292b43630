"""Brains from a prior with PyTorch: sample code grids with the prior's exact fast sampler, decode them
with the VQ-VAE. The random numbers come from the shared sampling rule (common/sampling_rule.py),
so a seed gives the same brains here, in `python -m trainer sample`, during training, in
`evaluate-prior` and in the onnxruntime sampler.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from common.sampling_rule import sampling_randomness
from trainer.stage1.vqvae import VQVAE
from trainer.stage2 import pixelcnn, transformer_prior
from trainer.stage2.pixelcnn import GatedPixelCNN
from trainer.stage2.transformer_prior import TransformerPrior


def sampler_for(prior: GatedPixelCNN | TransformerPrior):
    """The prior kind's exact sampler: both take the same arguments and follow the same rule."""
    return transformer_prior.sample if isinstance(prior, TransformerPrior) else pixelcnn.sample


@torch.no_grad()
def generate(
    prior: GatedPixelCNN | TransformerPrior,
    vqvae: VQVAE,
    n: int,
    seed: int = 0,
    temperature: float = 1.0,
    top_k: int = 0,
    slice_index: int | None = None,
    batch_size: int = 16,
    naive: bool = False,
    show_progress: bool = True,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(codes (n, H, W), conditions (n,) or None, images (n, 256, 256) float in [0, 1])."""
    device = next(prior.parameters()).device
    shape = prior.shape
    sample = sampler_for(prior)
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
    return (torch.cat(codes).numpy(), None if conditions is None else conditions.numpy(), torch.cat(images).numpy())
