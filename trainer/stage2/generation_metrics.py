"""How real, how novel and how diverse generated brain slices are, with no downloaded weights.

- Fréchet distance (as in FID; `frechet_distance` in trainer/stage1/realism.py) between Gaussians fitted to
  features of real and generated images: it compares whole distributions, so it sees both poor samples and
  missing variety. The features here are the frozen stage-1 encoder's, trained on brain MRI, instead of
  ImageNet Inception features; pooled, they cannot see blur or fine texture (the realism test can).
- Nearest-neighbour SSIM of each image to the training set: generated images much closer to the
  training set than real test images are would mean the prior memorises rather than generalises.
- Mean pairwise MS-SSIM within a set: diversity (lower = more diverse); a collapsed sampler scores
  near 1, and the value for real images is the target.
- Code histograms: the prior only ever emits code indices, so comparing how often it uses each
  code with how often the encoder does on real images is a direct, cheap check of stage 2.

Images are float tensors (N, 1, 256, 256) in [0, 1].
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

from trainer.stage1.image_metrics import ssim_per_image


@torch.no_grad()
def encoder_features(vqvae: nn.Module, images: Tensor, batch_size: int = 32) -> np.ndarray:
    """Features for the Fréchet distance: (N, D * 5) float64, from the frozen VQ-VAE encoder.

    The encoder's pre-quantization output (N, D, h, w) is pooled to its global average (D values)
    followed by its 2x2 average pool (D * 4 values, channel-major). The encoder was trained on brain
    MRI, so its features describe this domain (ImageNet Inception features do not) and need no
    download; the pooling keeps the dimension small next to the few hundred images compared, so
    the covariances can be estimated.
    """
    device = next(vqvae.parameters()).device
    features = []
    for start in range(0, len(images), batch_size):
        z = vqvae.encoder(images[start : start + batch_size].to(device)).float()
        features.append(torch.cat([z.mean(dim=(2, 3)), F.adaptive_avg_pool2d(z, 2).flatten(1)], dim=1).cpu())
    return torch.cat(features).double().numpy()


def nearest_ssim(
    queries: Tensor, references: Tensor, shortlist: int = 16, thumbnail: int = 32, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """For each query, the SSIM to its most similar reference and that reference's index.

    Full-resolution SSIM against thousands of references is too slow on a CPU, so the `shortlist`
    references nearest in L2 between `thumbnail` x `thumbnail` area-downsampled copies are found
    first, and SSIM (evaluate's settings) is computed against those only.
    """

    def thumbnails(images: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(images.float(), thumbnail).flatten(1)

    device = queries.device
    candidates = torch.cdist(thumbnails(queries), thumbnails(references).to(device))
    candidates = candidates.topk(min(shortlist, len(references)), dim=1, largest=False).indices.cpu()  # (Q, k)
    query_index = torch.arange(len(queries)).repeat_interleave(candidates.shape[1])
    reference_index = candidates.flatten()
    ssim = []
    for start in range(0, len(query_index), batch_size):
        q, r = query_index[start : start + batch_size], reference_index[start : start + batch_size]
        ssim.append(ssim_per_image(queries[q].float(), references[r].to(device).float()).cpu())
    best_ssim, best = torch.cat(ssim).view_as(candidates).max(dim=1)
    return best_ssim.double().numpy(), candidates.gather(1, best[:, None])[:, 0].numpy()


def distinct_pairs(n: int, max_pairs: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j), i < j < n: all of them if there are at most `max_pairs`, else `max_pairs`
    distinct ones drawn uniformly with a seeded generator (without listing all n^2 / 2 pairs)."""
    total = n * (n - 1) // 2
    ks = range(total) if total <= max_pairs else np.random.default_rng(seed).choice(total, max_pairs, replace=False)
    # pair number k = j (j - 1) / 2 + i enumerates (i, j) by j, then i
    j = np.array([(1 + math.isqrt(1 + 8 * int(k))) // 2 for k in ks], dtype=np.int64)
    i = np.array(ks, dtype=np.int64) - j * (j - 1) // 2
    return i, j


def mean_pairwise_ms_ssim(images: Tensor, max_pairs: int = 500, seed: int = 0, batch_size: int = 32) -> float:
    """Diversity: mean MS-SSIM over distinct pairs of images (see `distinct_pairs`); lower = more diverse.

    torchmetrics' defaults: 5 scales, Gaussian 11x11 window (sides must exceed 160 pixels), and
    negative contrast-structure terms clipped to 0 ("relu"), so a very dissimilar pair scores 0.
    """
    if len(images) < 2:
        raise ValueError(f"need at least 2 images for pairwise MS-SSIM, got {len(images)}")
    i, j = (torch.from_numpy(index) for index in distinct_pairs(len(images), max_pairs, seed))
    scores = [
        multiscale_structural_similarity_index_measure(
            images[i[s : s + batch_size]].float(),
            images[j[s : s + batch_size]].float(),
            data_range=1.0,
            reduction="none",
        )
        for s in range(0, len(i), batch_size)
    ]
    return torch.cat(scores).mean().item()


def code_counts(codes: np.ndarray, num_codes: int) -> np.ndarray:
    """How often each code index in [0, num_codes) occurs in an integer array of any shape."""
    codes = np.asarray(codes).ravel()
    if not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"codes must be integers, got dtype {codes.dtype}")
    if codes.size == 0:
        raise ValueError("no codes to count")
    if codes.min() < 0 or codes.max() >= num_codes:
        bad = codes.min() if codes.min() < 0 else codes.max()
        raise ValueError(f"code {bad} is out of range [0, {num_codes})")
    return np.bincount(codes.astype(np.int64), minlength=num_codes)


def code_histogram_comparison(codes_a: np.ndarray, codes_b: np.ndarray, num_codes: int) -> dict:
    """Codes used by each set, total variation and Jensen-Shannon divergence (bits) between the
    two code frequency distributions, and the counts (lists of length num_codes)."""
    counts_a, counts_b = code_counts(codes_a, num_codes), code_counts(codes_b, num_codes)
    p, q = counts_a / counts_a.sum(), counts_b / counts_b.sum()
    m = (p + q) / 2

    def kl_bits(x: np.ndarray) -> float:  # KL(x || m); 0 log 0 = 0, and m > 0 wherever x > 0
        nonzero = x > 0
        return float(np.sum(x[nonzero] * np.log2(x[nonzero] / m[nonzero])))

    return {
        "codes_used_a": int((counts_a > 0).sum()),
        "codes_used_b": int((counts_b > 0).sum()),
        "total_variation": float(0.5 * np.abs(p - q).sum()),
        "jensen_shannon_bits": 0.5 * kl_bits(p) + 0.5 * kl_bits(q),
        "counts_a": counts_a.tolist(),
        "counts_b": counts_b.tolist(),
    }
