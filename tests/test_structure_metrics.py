"""Structure metrics on synthetic shapes (discs, blobs, rings, half-discs) and on real OASIS slices."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import OASIS_SRC
from trainer.stage2.structure_metrics import structure_metrics, summarize, unit_images

SIZE = 128


def disc(centre: tuple[float, float], radius: float, size: int = SIZE) -> np.ndarray:
    rows, columns = np.mgrid[:size, :size]
    return ((rows - centre[0]) ** 2 + (columns - centre[1]) ** 2 <= radius**2).astype(np.float32)


def test_a_disc_is_one_symmetric_component_wherever_it_is():
    images = np.stack([disc((64, 64), 40), disc((50, 80), 30) * 0.6])  # off-centre and dimmer: still whole
    metrics = structure_metrics(images)
    assert metrics["single_component"].all() and list(metrics["components"]) == [1, 1]
    assert metrics["symmetry"].min() > 0.97
    assert not metrics["touches_edge"].any()
    np.testing.assert_allclose(metrics["area"][0], np.pi * 40**2 / SIZE**2, rtol=0.02)


def test_two_blobs_are_two_components_and_specks_are_ignored():
    two = np.maximum(disc((40, 40), 15), disc((90, 90), 15))
    speck = disc((64, 64), 40)
    speck[5:7, 5:7] = 1.0  # 4 pixels: below the minimum area
    metrics = structure_metrics(np.stack([two, speck]))
    assert list(metrics["components"]) == [2, 1]
    assert list(metrics["single_component"]) == [False, True]


def test_holes_are_filled_and_faint_background_is_not_foreground():
    ring = disc((64, 64), 40) - disc((64, 64), 30)  # a closed skull line with a dark inside
    noisy = ring + 0.05 * np.random.default_rng(0).random((SIZE, SIZE), dtype=np.float32)  # halo below 0.1
    metrics = structure_metrics(np.stack([ring, noisy]))
    np.testing.assert_allclose(metrics["area"], np.pi * 40**2 / SIZE**2, rtol=0.02)
    assert metrics["single_component"].all() and metrics["symmetry"].min() > 0.97


def test_half_discs_are_asymmetric_across_the_mirror_axis_only():
    half = disc((64, 70), 40)
    half[64:] = 0  # top half: the mirror flips rows (axis 0)
    left = disc((64, 70), 40)
    left[:, 70:] = 0  # left half: symmetric top to bottom
    metrics = structure_metrics(np.stack([half, left]))
    assert metrics["symmetry"][0] < 0.7 and metrics["symmetry"][1] > 0.97
    assert structure_metrics(left[None], axis=1)["symmetry"][0] < 0.7


def test_a_head_that_runs_off_the_image_touches_the_edge():
    metrics = structure_metrics(disc((64, 110), 40)[None])
    assert metrics["touches_edge"][0] and metrics["single_component"][0]


def test_uint8_and_float_agree_and_empty_images_count_as_broken():
    images = np.stack([disc((64, 64), 40) * 0.8, np.zeros((SIZE, SIZE), np.float32)])
    as_uint8 = (images * 255).round().astype(np.uint8)
    floats, ints = structure_metrics(images[:, None]), structure_metrics(as_uint8)
    for key in floats:
        np.testing.assert_array_equal(floats[key], ints[key])
    assert floats["components"][1] == 0 and floats["symmetry"][1] == 0.0
    summary = summarize(floats)
    assert summary["n"] == 2 and summary["single_component_share"] == 0.5 and summary["empty_share"] == 0.5
    assert sum(summary["symmetry_histogram"]["counts"]) == 2 and summary["symmetry_histogram"]["counts"][0] == 1
    with pytest.raises(ValueError, match="shape"):
        unit_images(np.zeros((2, 3, 8, 8)))
    with pytest.raises(ValueError, match="no images"):
        summarize(structure_metrics(np.zeros((0, 8, 8), np.float32)))


@pytest.mark.skipif(not OASIS_SRC.is_dir(), reason=f"real OASIS data not found at {OASIS_SRC}")
def test_real_oasis_slices_are_whole_symmetric_heads():
    paths = sorted((OASIS_SRC / "keras_png_slices_test").glob("*.png"))[::17]
    summary = summarize(structure_metrics(np.stack([np.asarray(Image.open(p)) for p in paths])))
    assert summary["n"] == 32
    assert summary["single_component_share"] == 1.0 and summary["touches_edge_share"] == 0.0
    assert summary["symmetry_median"] > 0.95
