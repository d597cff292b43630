"""Tests for common/figures/: every figure lands as a readable PNG sized by its layout, loss curves
cope with partial rows, and the perplexity in the codebook title is exact."""

import math

import numpy as np
import pytest
from PIL import Image

from common.code_usage import perplexity
from common.figures.generation import generated_grid
from common.figures.reconstruction import ReconstructionExamples, code_maps, codebook_usage, reconstruction_grid
from common.figures.style import code_intensity
from common.figures.training import loss_curves

RNG = np.random.default_rng(0)
K = 32
CODE_VALUES = np.linspace(0, 1, K)


def slices(n: int, size: int = 64) -> np.ndarray:
    """n noisy discs in [0, 1]: brain-ish enough to show up in a figure."""
    y, x = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    disc = (x**2 / 0.6 + y**2 / 0.8 < 1).astype(np.float32)
    return np.clip(disc * 0.7 + RNG.uniform(0, 0.3, (n, size, size)), 0, 1).astype(np.float32)


def codes(n: int, size: int = 16) -> np.ndarray:
    return RNG.integers(0, K, (n, size, size))


def keys(n: int) -> list[str]:
    return [f"case_{400 + i}_slice_{i}" for i in range(n)]


def open_png(path) -> Image.Image:
    """The PNG at path, checked to be a real, non-blank image."""
    image = Image.open(path)
    image.load()
    assert image.format == "PNG"
    assert np.unique(np.asarray(image.convert("L"))).size > 2, "figure is blank"
    return image


def texts(path) -> list[str]:
    """The titles and axis labels drawn on a figure (common/figures/style.py stores them in the PNG's Description)."""
    return Image.open(path).text["Description"].splitlines()


def draw_grid(kind: str, n: int, columns: int, path):
    if kind == "reconstruction":
        images = slices(n)
        return reconstruction_grid(images, images * 0.9, RNG.uniform(0.8, 1, n), keys(n), path, "VQ-VAE, test", columns)
    if kind == "code_maps":
        return code_maps(slices(n), codes(n), keys(n), path, CODE_VALUES, "codes, test", columns=columns)
    return generated_grid(codes(n), slices(n), path, CODE_VALUES, "prior samples", columns=columns)


@pytest.mark.parametrize("kind", ["reconstruction", "code_maps", "generated"])
def test_grids_grow_with_columns_and_rows(kind, tmp_path):
    wide = open_png(draw_grid(kind, 8, 8, tmp_path / "nested" / "wide.png"))  # parent folder is created
    narrow = open_png(draw_grid(kind, 8, 4, tmp_path / "narrow.png"))  # 2 rows of pairs
    few = open_png(draw_grid(kind, 3, 8, tmp_path / "few.png"))  # only as wide as it needs
    assert wide.width > 1.8 * narrow.width and narrow.height > 1.8 * wide.height
    assert few.width < 0.5 * wide.width
    assert wide.width >= 8 * 150 and wide.height >= 2 * 150  # panels large enough to see anatomy


@pytest.mark.parametrize(
    "kind, title, rows",
    [
        ("reconstruction", "VQ-VAE, test", ["original", "reconstruction"]),
        ("code_maps", "codes, test", ["original", "code map"]),
        ("generated", "prior samples", ["sampled code map", "decoded slice"]),
    ],
)
def test_grids_say_what_they_show(kind, title, rows, tmp_path):
    drawn = texts(draw_grid(kind, 6, 4, tmp_path / "grid.png"))  # 2 rows of panel pairs
    assert drawn[0] == title
    for label in rows:
        assert drawn.count(label) == 2  # each row of pairs is labelled
    assert ("code's mean decoded intensity" in drawn) == (kind != "reconstruction")  # colour bar
    if kind != "generated":
        assert set(keys(6)) <= set(drawn)


def test_code_intensity_orders_codes_by_what_they_decode_to():
    brightness = RNG.uniform(0, 1, K)  # a "decoder" that paints code k at brightness[k]
    calls = []

    def decode(grids):
        calls.append(grids.shape)
        return brightness[grids][:, None].repeat(2, axis=-1)

    values = code_intensity(decode, K, (4, 3), batch_size=10)
    np.testing.assert_allclose(values, brightness)
    assert calls == [(10, 4, 3)] * 3 + [(2, 4, 3)]


def test_reconstruction_examples_spread_and_worst():
    examples = ReconstructionExamples(total=100, spread=4, worst=2)
    ssim = np.linspace(0.9, 0.5, 100)
    ssim[[17, 66]] = [0.1, 0.2]  # the two worst; 66 is also a spread position: shown once, as worst
    for i, s in enumerate(ssim):
        examples.add(f"k{i}", np.full((8, 8), i / 100), np.zeros((8, 8)), np.zeros((2, 2), int), s)
    names, originals, _, _, scores = examples.arrays()
    assert names == ["k0", "k33", "k99", "worst: k17", "worst: k66"]
    np.testing.assert_allclose(scores[-2:], [0.1, 0.2])
    np.testing.assert_allclose(originals[:, 0, 0], [0, 0.33, 0.99, 0.17, 0.66])
    assert examples.title("VQ-VAE") == "VQ-VAE: 3 slices spread over the inputs, then the 2 worst by SSIM"


def test_reconstruction_grid_rejects_mismatched_inputs(tmp_path):
    images = slices(4)
    with pytest.raises(ValueError):
        reconstruction_grid(images, images, np.ones(3), keys(4), tmp_path / "bad.png", "bad")
    with pytest.raises(ValueError):
        reconstruction_grid(images[:0], images[:0], np.ones(0), [], tmp_path / "empty.png", "empty")
    assert not (tmp_path / "bad.png").exists()


def train_rows(steps) -> list[dict]:
    return [{"step": s, "loss": 1 / s, "recon_loss": 0.8 / s, "commitment_loss": 0.01 / s} for s in steps]


def test_loss_curves_with_and_without_validation(tmp_path):
    train_only = open_png(loss_curves(train_rows(range(1, 200, 10)), tmp_path / "train.png"))

    history = train_rows(range(1, 200, 10))
    history[3].pop("commitment_loss")  # a row that did not log every loss
    history[4]["recon_loss"] = None
    history += [
        {"step": 50, "val_ssim": 0.7, "val_psnr": 24.0},
        {"step": 100, "val_ssim": 0.8},
        {"step": 150, "val_ssim": 0.85, "val_psnr": 27.5},
    ]
    with_val = open_png(loss_curves(history, tmp_path / "val.png"))

    assert with_val.width == train_only.width
    assert with_val.height > 2 * train_only.height  # loss panel plus SSIM and PSNR panels


@pytest.mark.filterwarnings("error")  # an empty log axis and no legend entries must not warn either
def test_loss_curves_with_nothing_logged_yet(tmp_path):
    open_png(loss_curves([{"step": 0}], tmp_path / "empty.png"))


def test_perplexity_exact():
    assert perplexity(np.full(K, 7)) == pytest.approx(K, rel=1e-12)
    assert perplexity(np.eye(K)[5] * 1000) == 1.0
    assert perplexity(np.zeros(K)) == 1.0
    assert perplexity([1, 1, 0, 0]) == pytest.approx(2.0, rel=1e-12)
    assert perplexity([1, 3]) == pytest.approx(math.exp(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75))))


def test_codebook_usage(tmp_path):
    counts = np.zeros(512, dtype=np.int64)
    counts[:300] = RNG.zipf(1.5, 300)
    path = codebook_usage(counts, tmp_path / "usage.png", "test split")
    assert path == tmp_path / "usage.png"
    open_png(path)
    assert texts(path)[0].startswith("test split: 300 of 512 codes used")


def test_code_maps_reject_codes_outside_the_codebook(tmp_path):
    with pytest.raises(IndexError):
        code_maps(slices(2), codes(2), keys(2), tmp_path / "codes.png", CODE_VALUES[: K // 2], "codes")
