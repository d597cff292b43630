"""Generation metrics: Fréchet distance against closed forms, nearest-neighbour SSIM, MS-SSIM diversity,
code histograms, encoder features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchmetrics.functional.image import (
    multiscale_structural_similarity_index_measure,
    structural_similarity_index_measure,
)

from trainer.stage1.config import ModelConfig, QuantizerConfig
from trainer.stage1.image_metrics import SSIM_SETTINGS
from trainer.stage1.realism import frechet_distance
from trainer.stage1.vqvae import VQVAE
from trainer.stage2.generation_metrics import (
    code_histogram_comparison,
    distinct_pairs,
    encoder_features,
    mean_pairwise_ms_ssim,
    nearest_ssim,
)


def blobs(n: int, seed: int = 0) -> torch.Tensor:
    """n smooth random images (n, 1, 256, 256) in [0, 1]: 8x8 noise upsampled."""
    noise = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    return F.interpolate(noise, size=256, mode="bicubic", align_corners=False).clamp(0, 1)


def exact_moments(mean: np.ndarray, variances: np.ndarray, rotation: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n samples whose sample mean is `mean` and sample covariance is R diag(variances) R^T, exactly."""
    z = np.random.default_rng(seed).standard_normal((n, len(mean)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T  # sample covariance I
    return mean + (z * np.sqrt(variances)) @ rotation.T


# ----- Fréchet distance


def test_frechet_distance_of_a_set_with_itself_is_zero():
    a = np.random.default_rng(0).standard_normal((200, 16))
    assert frechet_distance(a, a) < 1e-6


def test_frechet_distance_of_unit_gaussians_is_squared_mean_shift():
    rng = np.random.default_rng(1)
    shift = np.array([1.0, 0.5, 0.0, -1.0])
    a, b = rng.standard_normal((20000, 4)), rng.standard_normal((20000, 4)) + shift
    assert frechet_distance(a, b) == pytest.approx(np.sum(shift**2), abs=0.05)


@pytest.mark.parametrize("rotate", [False, True])
def test_frechet_distance_matches_closed_form_for_commuting_covariances(rotate: bool):
    rng = np.random.default_rng(2)
    rotation = np.linalg.qr(rng.standard_normal((5, 5)))[0] if rotate else np.eye(5)
    mu_a, mu_b = rng.standard_normal(5), rng.standard_normal(5)
    var_a, var_b = np.array([0.5, 1.0, 2.0, 4.0, 0.1]), np.array([3.0, 1.0, 0.2, 4.0, 0.9])
    a, b = exact_moments(mu_a, var_a, rotation, 300, 3), exact_moments(mu_b, var_b, rotation, 400, 4)
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_is_symmetric():
    rng = np.random.default_rng(5)
    a = rng.standard_normal((100, 6)) @ rng.standard_normal((6, 6))
    b = rng.standard_normal((150, 6)) @ rng.standard_normal((6, 6)) + 1
    assert frechet_distance(a, b) > 1
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-9)


def test_frechet_distance_rejects_bad_shapes():
    with pytest.raises(ValueError, match="same D"):
        frechet_distance(np.zeros((10, 3)), np.zeros((10, 4)))
    with pytest.raises(ValueError, match="at least 2 rows"):
        frechet_distance(np.zeros((1, 3)), np.zeros((10, 3)))


# ----- encoder features


def test_encoder_features_are_global_then_2x2_averages_of_the_encoder_output():
    torch.manual_seed(0)
    model = VQVAE(
        ModelConfig(downsample=4, channels=16, res_blocks=1, res_channels=8, code_dim=8),
        QuantizerConfig(num_codes=32, compile=False),
    ).eval()
    images = blobs(3)
    features = encoder_features(model, images, batch_size=2)
    with torch.no_grad():
        z = model.encoder(images).double()
    assert features.shape == (3, 8 * 5) and features.dtype == np.float64
    np.testing.assert_allclose(features[:, :8], z.mean(dim=(2, 3)).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(features[:, 8:], F.adaptive_avg_pool2d(z, 2).flatten(1).numpy(), rtol=1e-5, atol=1e-6)


# ----- nearest-neighbour SSIM


def test_nearest_ssim_finds_the_exact_copies():
    references = blobs(12)
    order = torch.randperm(12, generator=torch.Generator().manual_seed(0))[:5]
    ssim, index = nearest_ssim(references[order], references, shortlist=3, batch_size=4)
    np.testing.assert_allclose(ssim, 1.0, atol=1e-5)
    np.testing.assert_array_equal(index, order.numpy())


def test_nearest_ssim_with_a_full_shortlist_equals_exhaustive_search():
    references, queries = blobs(6), blobs(2, seed=1)
    ssim, index = nearest_ssim(queries, references, shortlist=6, batch_size=5)
    exhaustive = torch.stack(
        [
            structural_similarity_index_measure(q.expand_as(references), references, reduction="none", **SSIM_SETTINGS)
            for q in queries[:, None]
        ]
    )
    np.testing.assert_allclose(ssim, exhaustive.max(dim=1).values.numpy(), rtol=1e-5)
    np.testing.assert_array_equal(index, exhaustive.argmax(dim=1).numpy())
    assert (ssim < 0.99).all()


# ----- MS-SSIM diversity


def test_distinct_pairs_all_or_a_seeded_sample():
    i, j = distinct_pairs(4, max_pairs=10)
    assert sorted(zip(i.tolist(), j.tolist())) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    i, j = distinct_pairs(1000, max_pairs=50, seed=3)
    assert len(set(zip(i.tolist(), j.tolist()))) == 50 and (0 <= i).all() and (i < j).all() and (j < 1000).all()
    np.testing.assert_array_equal(distinct_pairs(1000, max_pairs=50, seed=3)[0], i)


def test_mean_pairwise_ms_ssim_is_one_for_copies_and_the_pair_mean_otherwise():
    a, b = blobs(2)
    assert mean_pairwise_ms_ssim(a.expand(4, 1, 256, 256)) == pytest.approx(1.0, abs=1e-5)
    different = multiscale_structural_similarity_index_measure(a[None], b[None], data_range=1.0).item()
    assert different < 0.9
    # pairs of [a, a, b]: (a, a), (a, b), (a, b)
    mixed = mean_pairwise_ms_ssim(torch.stack([a, a, b]), batch_size=2)
    assert mixed == pytest.approx((1 + 2 * different) / 3, abs=1e-5)


# ----- code histograms


def test_code_histograms_identical_disjoint_and_known():
    codes = np.random.default_rng(0).integers(0, 8, size=(5, 4, 4))
    same = code_histogram_comparison(codes, codes.copy(), 16)
    assert same["total_variation"] == 0 and same["jensen_shannon_bits"] == pytest.approx(0, abs=1e-12)
    assert same["counts_a"] == same["counts_b"] == np.bincount(codes.ravel(), minlength=16).tolist()
    assert same["codes_used_a"] == len(np.unique(codes))

    disjoint = code_histogram_comparison(codes, codes + 8, 16)
    assert disjoint["total_variation"] == pytest.approx(1) and disjoint["jensen_shannon_bits"] == pytest.approx(1)

    known = code_histogram_comparison(np.array([0, 0, 1, 1]), np.array([[0, 0], [0, 2]], dtype=np.uint16), 3)
    p, q = np.array([0.5, 0.5, 0]), np.array([0.75, 0, 0.25])
    m = (p + q) / 2
    js = 0.5 * (0.5 * np.log2(0.5 / m[0]) + 0.5 * np.log2(0.5 / m[1])) + 0.5 * (
        0.75 * np.log2(0.75 / m[0]) + 0.25 * np.log2(0.25 / m[2])
    )
    assert known["total_variation"] == pytest.approx(0.5)
    assert known["jensen_shannon_bits"] == pytest.approx(js)
    assert (known["codes_used_a"], known["codes_used_b"], known["counts_b"]) == (2, 2, [3, 0, 1])


def test_code_histograms_reject_out_of_range_codes():
    with pytest.raises(ValueError, match="code 16 is out of range"):
        code_histogram_comparison(np.array([0, 16]), np.array([1]), 16)
    with pytest.raises(ValueError, match="code -1 is out of range"):
        code_histogram_comparison(np.array([0]), np.array([-1, 3]), 16)
