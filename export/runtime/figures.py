"""Figures for reports and W&B: reconstructions, loss curves, code maps, codebook usage, prior samples.

Plain numpy in, PNG out, so the trainer, the evaluation scripts and a notebook all draw the same
pictures. Every function writes one PNG (creating parent folders), closes its figure even when
drawing fails (long runs must not pile up open figures) and returns the path.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: training nodes have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from export.runtime.code_usage import perplexity  # noqa: E402  (part of this module's interface)

__all__ = [
    "code_maps",
    "code_histograms",
    "codebook_usage",
    "generated_grid",
    "loss_curves",
    "nearest_neighbours",
    "perplexity",
    "reconstruction_grid",
]

PANEL_INCHES = 2.0
DPI = 128  # 2 in x 128 dpi = 256 px: a 256x256 slice at about its native resolution
CODE_CMAP = "nipy_spectral"  # many distinct hues, for code maps
LOSS_KEYS = {"loss": "total", "recon_loss": "reconstruction", "commitment_loss": "commitment"}
VAL_KEYS = {"val_ssim": "validation SSIM", "val_psnr": "validation PSNR (dB)",
            "val_bits_per_code": "validation bits per code", "val_accuracy": "validation top-1 accuracy"}


@contextmanager
def _figure(path: Path, **kwargs) -> Iterator[Figure]:
    """A constrained-layout figure that is saved to `path` on success and closed in every case."""
    fig = plt.figure(layout="constrained", **kwargs)
    try:
        yield fig
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)


def _pair_axes(fig: Figure, n: int, columns: int) -> list[tuple[Axes, Axes]]:
    """n (top, bottom) panel pairs, `columns` pairs per row; sizes the figure to fit them."""
    if n < 1 or columns < 1:
        raise ValueError(f"need at least one image and one column, got n={n}, columns={columns}")
    cols, rows = min(n, columns), math.ceil(n / columns)
    fig.set_size_inches(cols * PANEL_INCHES, 2 * rows * PANEL_INCHES)
    axes = fig.subplots(2 * rows, cols, squeeze=False)
    pairs = [(axes[2 * r, c], axes[2 * r + 1, c]) for r in range(rows) for c in range(cols)]
    for top, bottom in pairs[n:]:  # empty slots at the end of the last row
        top.set_visible(False)
        bottom.set_visible(False)
    return pairs[:n]


def _image(ax: Axes, image: np.ndarray, title: str | None = None, caption: str | None = None) -> None:
    """One gray (H, W) or RGB (H, W, 3) panel without ticks; title above, caption below if given."""
    ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7)
    if caption:
        ax.set_xlabel(caption, fontsize=9)


@functools.cache
def _code_colors(num_codes: int) -> np.ndarray:
    """(K, 3) RGB per code: CODE_CMAP hues in a fixed shuffled order, so codes whose (meaningless)
    indices are close still look different, and a code has the same colour in every figure."""
    hues = np.random.default_rng(0).permutation(num_codes) / max(num_codes - 1, 1)
    return plt.get_cmap(CODE_CMAP)(hues)[:, :3]


def _code_map(ax: Axes, indices: np.ndarray, num_codes: int) -> None:
    """A code grid (h, w) drawn in its codes' colours."""
    _image(ax, _code_colors(num_codes)[indices])


def reconstruction_grid(originals: np.ndarray, reconstructions: np.ndarray, ssim: np.ndarray,
                        keys: list[str], path: Path, columns: int = 8) -> Path:
    """Originals (keys as titles) above their reconstructions (SSIM as captions), (N, H, W) in [0, 1]."""
    path = Path(path)
    with _figure(path) as fig:
        pairs = _pair_axes(fig, len(originals), columns)
        for (top, bottom), image, recon, score, key in zip(pairs, originals, reconstructions, ssim, keys,
                                                          strict=True):
            _image(top, image, title=key)
            _image(bottom, recon, caption=f"SSIM {float(score):.3f}")
    return path


def code_maps(images: np.ndarray, indices: np.ndarray, keys: list[str], path: Path, num_codes: int,
              columns: int = 8) -> Path:
    """Images (N, H, W) in [0, 1] above their code grids (N, h, w): which codes cover which anatomy."""
    path = Path(path)
    with _figure(path) as fig:
        pairs = _pair_axes(fig, len(images), columns)
        for (top, bottom), image, grid, key in zip(pairs, images, indices, keys, strict=True):
            _image(top, image, title=key)
            _code_map(bottom, grid, num_codes)
    return path


def generated_grid(indices: np.ndarray, images: np.ndarray, path: Path, num_codes: int,
                   columns: int = 8, titles: list[str] | None = None) -> Path:
    """Prior samples: code grids (N, h, w) above the slices (N, H, W) the decoder makes of them."""
    path = Path(path)
    titles = titles or [None] * len(indices)
    with _figure(path) as fig:
        pairs = _pair_axes(fig, len(indices), columns)
        for (top, bottom), grid, image, title in zip(pairs, indices, images, titles, strict=True):
            _code_map(top, grid, num_codes)
            top.set_title(title or "", fontsize=7)
            _image(bottom, image)
    return path


def nearest_neighbours(generated: np.ndarray, nearest: np.ndarray, ssim: np.ndarray, path: Path,
                       columns: int = 8, titles: list[str] | None = None) -> Path:
    """Generated slices (N, H, W) above their most similar training slices (SSIM as captions): a
    memorisation check one can see. `titles` label the generated slices (default "generated")."""
    path = Path(path)
    titles = ["generated"] * len(generated) if titles is None else titles
    with _figure(path) as fig:
        pairs = _pair_axes(fig, len(generated), columns)
        for (top, bottom), image, match, score, title in zip(pairs, generated, nearest, ssim, titles, strict=True):
            _image(top, image, title=title)
            _image(bottom, match, caption=f"nearest train, SSIM {float(score):.3f}")
    return path


def code_histograms(real: np.ndarray, generated: np.ndarray, path: Path) -> Path:
    """Code frequencies (K,) of real and generated code grids, codes ordered by real frequency."""
    path = Path(path)
    real, generated = np.asarray(real, np.float64), np.asarray(generated, np.float64)
    order = np.argsort(-real, kind="stable")
    with _figure(path, figsize=(7, 3.5)) as fig:
        ax = fig.subplots()
        for counts, label in ((real, "real (encoder)"), (generated, "generated (prior)")):
            ax.plot(np.arange(len(counts)), counts[order] / max(counts.sum(), 1.0), label=label, lw=1)
        ax.set_yscale("log")
        ax.set_xlabel("code (most used in real grids first)")
        ax.set_ylabel("frequency")
        ax.legend()
    return path


def structure_histograms(real: dict[str, np.ndarray], generated: dict[str, np.ndarray], path: Path) -> Path:
    """Structure metrics (trainer/structure_metrics.py, per slice) of real and generated slices side by side:
    the distribution of the mirror-IoU symmetry, and how many components the brain mask has."""
    path = Path(path)
    with _figure(path, figsize=(9, 3.5)) as fig:
        symmetry, components = fig.subplots(1, 2)
        bins = np.linspace(0.0, 1.0, 21)
        for metrics, label in ((real, "real"), (generated, "generated")):
            values = np.asarray(metrics["symmetry"], np.float64)
            symmetry.hist(values, bins=bins, weights=np.full(len(values), 1.0 / max(len(values), 1)),
                          histtype="step", lw=1.5, label=f"{label} (n = {len(values)})")
        symmetry.set_xlabel("symmetry (mirror IoU of the brain mask)")
        symmetry.set_ylabel("share of slices")
        symmetry.legend(loc="upper left")
        counts = [np.minimum(np.asarray(m["components"]), 3) for m in (real, generated)]
        share = [[float((c == k).mean()) if len(c) else 0.0 for k in range(4)] for c in counts]
        for offset, values, label in ((-0.2, share[0], "real"), (0.2, share[1], "generated")):
            components.bar(np.arange(4) + offset, values, width=0.4, label=label)
        components.set_xticks(range(4), ["0 (empty)", "1", "2", "3+"])
        components.set_xlabel("connected components of the brain mask")
        components.set_ylabel("share of slices")
        components.legend()
    return path


def _series(history: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the rows that logged `key`; other rows are skipped."""
    rows = [row for row in history if row.get(key) is not None]
    return [row["step"] for row in rows], [float(row[key]) for row in rows]


def loss_curves(history: list[dict], path: Path) -> Path:
    """Training losses on one log axis (they differ by orders of magnitude), then one panel per
    validation metric that was logged, all sharing the step axis."""
    path = Path(path)
    val_keys = [key for key in VAL_KEYS if any(row.get(key) is not None for row in history)]
    with _figure(path, figsize=(7, 3 * (1 + len(val_keys)))) as fig:
        axes = fig.subplots(1 + len(val_keys), 1, sharex=True, squeeze=False)[:, 0]
        for key, label in LOSS_KEYS.items():
            steps, values = _series(history, key)
            if steps:
                axes[0].plot(steps, values, label=label)
        axes[0].set_yscale("log")
        axes[0].set_ylabel("training loss")
        if axes[0].get_lines():
            axes[0].legend()
        for ax, key in zip(axes[1:], val_keys, strict=True):
            ax.plot(*_series(history, key), marker="o")
            ax.set_ylabel(VAL_KEYS[key])
        for ax in axes:
            ax.grid(alpha=0.3)
        axes[-1].set_xlabel("step")
    return path


def codebook_usage(counts: np.ndarray, path: Path) -> Path:
    """Counts per code (K,) over an evaluation pass, sorted descending: how skewed usage is."""
    path = Path(path)
    counts = np.asarray(counts)
    used = int((counts > 0).sum())
    with _figure(path, figsize=(7, 3.5)) as fig:
        ax = fig.subplots()
        ax.bar(np.arange(len(counts)), np.sort(counts)[::-1], width=1.0)
        ax.set_yscale("log")
        ax.set_xlim(-0.5, len(counts) - 0.5)
        ax.set_xlabel("code rank (most used first)")
        ax.set_ylabel("count")
        ax.set_title(f"{used} of {len(counts)} codes used, perplexity {perplexity(counts):.1f}")
    return path
