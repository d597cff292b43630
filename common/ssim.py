"""SSIM in numpy, so the torch-free runtime (`python -m export reconstruct`) reports the number that
`trainer evaluate` reports with torchmetrics: Gaussian window 11, sigma 1.5, data range 1, K1 0.01,
K2 0.03, images padded by reflection (5 pixels) so that every pixel has a window, variances clamped
at 0, the mean over all pixels: torchmetrics' recipe, step by step (tests/test_ssim.py
compares the two).
"""

from __future__ import annotations

import numpy as np

KERNEL_SIZE, SIGMA, DATA_RANGE = 11, 1.5, 1.0


def _gaussian_window() -> np.ndarray:
    offsets = np.arange(KERNEL_SIZE, dtype=np.float64) - (KERNEL_SIZE - 1) / 2
    window = np.exp(-0.5 * (offsets / SIGMA) ** 2)
    return window / window.sum()


def _blur(images: np.ndarray) -> np.ndarray:
    """Separable Gaussian filter over the last two axes of reflection-padded images: (N, H, W) again."""
    window, pad = _gaussian_window(), KERNEL_SIZE // 2
    images = np.pad(images, ((0, 0), (pad, pad), (pad, pad)), mode="reflect")
    rows = sum(w * images[..., i : images.shape[-2] - KERNEL_SIZE + 1 + i, :] for i, w in enumerate(window))
    return sum(w * rows[..., i : images.shape[-1] - KERNEL_SIZE + 1 + i] for i, w in enumerate(window))


def ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image SSIM of two batches (N, H, W) with values in [0, 1] -> (N,) float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 3 or min(a.shape[1:]) < KERNEL_SIZE:
        raise ValueError(f"need two (N, H, W) batches of one shape, H and W >= {KERNEL_SIZE}; got {a.shape}, {b.shape}")
    c1, c2 = (0.01 * DATA_RANGE) ** 2, (0.03 * DATA_RANGE) ** 2
    mu_a, mu_b = _blur(a), _blur(b)
    var_a = np.maximum(_blur(a * a) - mu_a**2, 0)
    var_b = np.maximum(_blur(b * b) - mu_b**2, 0)
    cov = _blur(a * b) - mu_a * mu_b
    similarity = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return similarity.reshape(len(a), -1).mean(axis=1)
