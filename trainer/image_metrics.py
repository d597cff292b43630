"""Reconstruction quality of a batch: SSIM and PSNR per image, with settings fixed in one place so that
validation during training, `evaluate` and the generation metrics all report comparable numbers.

SSIM is torchmetrics' `structural_similarity_index_measure` with a Gaussian 11x11 window,
sigma 1.5, data_range 1.0, on images in [0, 1] (reconstructions clamped to [0, 1]): the usual
settings, so figures compare with other reports. PSNR uses data_range 1.0, per image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

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


def reconstruction_loss(recon: Tensor, images: Tensor, ssim_weight: float = 0.0) -> Tensor:
    """Stage 1's training loss: MSE + ssim_weight * (1 - SSIM), in float32 whatever autocast says. SSIM takes
    the unclamped output (clamping would stop the gradient of out-of-range pixels) with the settings above."""
    recon, images = recon.float(), images.float()
    loss = F.mse_loss(recon, images)
    if ssim_weight:
        loss = loss + ssim_weight * (1 - structural_similarity_index_measure(recon, images, **SSIM_SETTINGS))
    return loss
