"""The torch-free SSIM (common/ssim.py, used by `export reconstruct`) gives torchmetrics' number
(`trainer evaluate`'s) on real slices: the embedded demo brains and, where present, OASIS test slices."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchmetrics.functional.image import structural_similarity_index_measure

from common.ssim import ssim
from conftest import DEMO_SRC, OASIS_SRC
from trainer.stage1.image_metrics import SSIM_SETTINGS

OASIS_TEST = OASIS_SRC / "keras_png_slices_test"


def load(paths) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p), np.float32) / 255 for p in paths])


def degraded(images: np.ndarray) -> np.ndarray:
    """Blurred, darkened and noisy copies: a range of SSIMs well inside (0, 1), like reconstructions."""
    rng = np.random.default_rng(0)
    blurred = (images + np.roll(images, 1, -1) + np.roll(images, 1, -2) + np.roll(images, -1, -1)) / 4
    amount = np.linspace(0.01, 0.2, len(images))[:, None, None]
    return np.clip(blurred * 0.95 + rng.normal(0, 1, images.shape) * amount, 0, 1).astype(np.float32)


def torchmetrics_ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return structural_similarity_index_measure(
        torch.from_numpy(a)[:, None], torch.from_numpy(b)[:, None], reduction="none", **SSIM_SETTINGS
    ).numpy()


def check_against_torchmetrics(images: np.ndarray) -> None:
    noisy = degraded(images)
    ours, theirs = ssim(noisy, images), torchmetrics_ssim(noisy, images)
    assert theirs.min() < 0.6 and theirs.max() > 0.8  # the comparison spans good and bad reconstructions
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    np.testing.assert_allclose(ssim(images, images), 1.0, atol=1e-9)


def test_matches_torchmetrics_on_demo_brains():
    check_against_torchmetrics(load(sorted((DEMO_SRC / "keras_png_slices_test").glob("*.png"))[:8]))


@pytest.mark.skipif(not OASIS_TEST.is_dir(), reason=f"no OASIS slices at {OASIS_TEST}")
def test_matches_torchmetrics_on_oasis():
    check_against_torchmetrics(load(sorted(OASIS_TEST.glob("*.png"))[::50][:12]))


def test_rejects_mismatched_or_tiny_batches():
    with pytest.raises(ValueError):
        ssim(np.zeros((2, 32, 32)), np.zeros((2, 32, 31)))
    with pytest.raises(ValueError):
        ssim(np.zeros((1, 10, 10)), np.zeros((1, 10, 10)))
