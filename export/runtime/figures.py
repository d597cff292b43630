"""Figures for reports and W&B: reconstructions, loss curves, code maps, codebook usage, prior samples.

Plain numpy in, PNG out, so the trainer, the evaluation scripts and a notebook all draw the same
pictures. Every function writes one PNG (creating parent folders), closes its figure even when
drawing fails (long runs must not pile up open figures) and returns the path. Every figure says what
it shows without a README: a title naming the split or source, row labels, a colour bar on code maps;
those texts are also stored in the PNG's "Description" field (what a test or a file browser can read).

Code indices are arbitrary, so a code map is drawn in each code's mean decoded intensity
(`code_intensity`: the decoder's output for a grid filled with that one code) on a continuous
colormap: dark codes sit on background and CSF, bright ones on white matter, and the anatomy shows.
It is computed from the decoder when a figure is drawn (K decodes, seconds on a CPU) rather than stored,
so the PyTorch decoder and the ONNX one give it the same way and no file format changes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
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
    "code_intensity",
    "code_maps",
    "code_histograms",
    "codebook_usage",
    "generated_grid",
    "loss_curves",
    "nearest_neighbours",
    "perplexity",
    "reconstruction_grid",
    "ReconstructionExamples",
]

PANEL_INCHES = 2.0
DPI = 128  # 2 in x 128 dpi = 256 px: a 256x256 slice at about its native resolution
CODE_CMAP = "viridis"  # continuous and unlike the gray slices, for code maps
CODE_LABEL = "code's mean decoded intensity"
LOSS_KEYS = {"loss": "total", "recon_loss": "reconstruction", "commitment_loss": "commitment"}
VAL_KEYS = {
    "val_ssim": "validation SSIM",
    "val_psnr": "validation PSNR (dB)",
    "val_bits_per_code": "validation bits per code",
    "val_accuracy": "validation top-1 accuracy",
}


@contextmanager
def _figure(path: Path, **kwargs) -> Iterator[Figure]:
    """A constrained-layout figure that is saved to `path` on success and closed in every case."""
    fig = plt.figure(layout="constrained", **kwargs)
    try:
        yield fig
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI, metadata={"Description": "\n".join(figure_texts(fig))})
    finally:
        plt.close(fig)


def figure_texts(fig: Figure) -> list[str]:
    """Every title and axis label of a figure, in drawing order: what a reader can read on it."""
    texts = [fig.get_suptitle()]
    for ax in fig.axes:
        texts += [ax.get_title(), ax.get_ylabel(), ax.get_xlabel()]
    return [text for text in texts if text]


def _pair_axes(fig: Figure, n: int, columns: int, title: str, labels: tuple[str, str]) -> list[tuple[Axes, Axes]]:
    """n (top, bottom) panel pairs, `columns` pairs per row, each row of panels labelled on the left;
    sizes the figure to fit them."""
    if n < 1 or columns < 1:
        raise ValueError(f"need at least one image and one column, got n={n}, columns={columns}")
    cols, rows = min(n, columns), math.ceil(n / columns)
    fig.set_size_inches(cols * PANEL_INCHES + 0.6, 2 * rows * PANEL_INCHES + 0.4)
    fig.suptitle(title, fontsize=10)
    axes = fig.subplots(2 * rows, cols, squeeze=False)
    pairs = [(axes[2 * r, c], axes[2 * r + 1, c]) for r in range(rows) for c in range(cols)]
    for r in range(rows):
        for ax, label in zip(axes[2 * r : 2 * r + 2, 0], labels, strict=True):
            ax.set_ylabel(label, fontsize=9)
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


def code_intensity(
    decode: Callable[[np.ndarray], np.ndarray], num_codes: int, grid: tuple[int, int], batch_size: int = 32
) -> np.ndarray:
    """(K,) mean pixel of the image `decode` makes of a (h, w) grid filled with each code: a scalar
    that orders the codes by what they draw. `decode` maps codes (B, h, w) int64 to images (B, ..., H, W)."""
    values = []
    for start in range(0, num_codes, batch_size):
        codes = np.arange(start, min(start + batch_size, num_codes), dtype=np.int64)
        images = np.asarray(decode(np.broadcast_to(codes[:, None, None], (len(codes), *grid)).copy()))
        values.append(images.reshape(len(codes), -1).mean(axis=1))
    return np.concatenate(values).astype(np.float64)


def _code_map(ax: Axes, indices: np.ndarray, code_values: np.ndarray) -> plt.cm.ScalarMappable:
    """A code grid (h, w) drawn in its codes' values (`code_intensity`); returns the image for a colour bar."""
    shown = ax.imshow(
        np.asarray(code_values)[indices],
        cmap=CODE_CMAP,
        vmin=float(np.min(code_values)),
        vmax=float(np.max(code_values)),
        interpolation="nearest",
    )
    ax.set_xticks([])
    ax.set_yticks([])
    return shown


def _code_colour_bar(fig: Figure, shown: plt.cm.ScalarMappable, axes: list[Axes]) -> None:
    fig.colorbar(shown, ax=axes, shrink=0.6, pad=0.01).set_label(CODE_LABEL, fontsize=8)


def reconstruction_grid(
    originals: np.ndarray,
    reconstructions: np.ndarray,
    ssim: np.ndarray,
    keys: list[str],
    path: Path,
    title: str,
    columns: int = 8,
) -> Path:
    """Originals (keys as titles) above their reconstructions (SSIM as captions), (N, H, W) in [0, 1];
    `title` says which model and split."""
    path = Path(path)
    with _figure(path) as fig:
        pairs = _pair_axes(fig, len(originals), columns, title, ("original", "reconstruction"))
        for (top, bottom), image, recon, score, key in zip(pairs, originals, reconstructions, ssim, keys, strict=True):
            _image(top, image, title=key)
            _image(bottom, recon, caption=f"SSIM {float(score):.3f}")
    return path


class ReconstructionExamples:
    """The slices a reconstruction figure shows, chosen while a split streams past: `spread` at evenly
    spaced positions of the input order (shards hold a split subject by subject, slice by slice, so these
    span subjects and levels) and the `worst` by SSIM, which typical slices would hide."""

    def __init__(self, total: int, spread: int = 6, worst: int = 2):
        self.positions = set(np.linspace(0, max(total - 1, 0), min(spread, total)).round().astype(int).tolist())
        self.n_worst, self.seen = worst, 0
        self.spread: list[tuple] = []  # (position, example)
        self.worst: list[tuple] = []  # (ssim, position, example), lowest first

    def add(self, key: str, original: np.ndarray, reconstruction: np.ndarray, codes: np.ndarray, ssim: float) -> None:
        example = (key, np.array(original), np.array(reconstruction), np.array(codes), float(ssim))
        if self.seen in self.positions:
            self.spread.append((self.seen, example))
        if self.n_worst and (len(self.worst) < self.n_worst or ssim < self.worst[-1][0]):
            self.worst = sorted(self.worst + [(float(ssim), self.seen, example)], key=lambda w: w[:2])[: self.n_worst]
        self.seen += 1

    def _typical(self) -> list[tuple]:
        """The spread examples that are not also among the worst (those are shown once, as worst)."""
        worst = {position for _, position, _ in self.worst}
        return [example for position, example in self.spread if position not in worst]

    def title(self, what: str) -> str:
        worst = f", then the {len(self.worst)} worst by SSIM" if self.worst else ""
        return f"{what}: {len(self._typical())} slices spread over the inputs{worst}"

    def arrays(self) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(keys, originals, reconstructions, codes, SSIMs), the worst last and marked in their keys."""
        examples = self._typical() + [(f"worst: {key}", *rest) for _, _, (key, *rest) in self.worst]
        keys, originals, recons, codes, ssim = zip(*examples)
        return list(keys), np.stack(originals), np.stack(recons), np.stack(codes), np.asarray(ssim)


def code_maps(
    images: np.ndarray,
    indices: np.ndarray,
    keys: list[str],
    path: Path,
    code_values: np.ndarray,
    title: str,
    columns: int = 8,
) -> Path:
    """Images (N, H, W) in [0, 1] above their code grids (N, h, w) coloured by `code_values` (K,):
    which codes cover which anatomy."""
    path = Path(path)
    with _figure(path) as fig:
        pairs = _pair_axes(fig, len(images), columns, title, ("original", "code map"))
        for (top, bottom), image, grid, key in zip(pairs, images, indices, keys, strict=True):
            _image(top, image, title=key)
            shown = _code_map(bottom, grid, code_values)
        _code_colour_bar(fig, shown, [ax for pair in pairs for ax in pair])
    return path


def generated_grid(
    indices: np.ndarray,
    images: np.ndarray,
    path: Path,
    code_values: np.ndarray,
    title: str,
    columns: int = 8,
    titles: list[str] | None = None,
) -> Path:
    """Prior samples: code grids (N, h, w), coloured by `code_values` (K,), above the slices (N, H, W)
    the decoder makes of them."""
    path = Path(path)
    titles = titles or [None] * len(indices)
    with _figure(path) as fig:
        pairs = _pair_axes(fig, len(indices), columns, title, ("sampled code map", "decoded slice"))
        for (top, bottom), grid, image, panel_title in zip(pairs, indices, images, titles, strict=True):
            shown = _code_map(top, grid, code_values)
            top.set_title(panel_title or "", fontsize=7)
            _image(bottom, image)
        _code_colour_bar(fig, shown, [ax for pair in pairs for ax in pair])
    return path


def nearest_neighbours(
    generated: np.ndarray,
    nearest: np.ndarray,
    ssim: np.ndarray,
    path: Path,
    title: str,
    columns: int = 8,
    titles: list[str] | None = None,
) -> Path:
    """Generated slices (N, H, W) above their most similar training slices (SSIM as captions): a
    memorisation check one can see. `titles` label the generated slices (default "generated")."""
    path = Path(path)
    titles = ["generated"] * len(generated) if titles is None else titles
    with _figure(path) as fig:
        pairs = _pair_axes(fig, len(generated), columns, title, ("generated", "nearest training slice"))
        titles = titles if titles is not None else [None] * len(generated)
        for (top, bottom), image, match, score, above in zip(pairs, generated, nearest, ssim, titles, strict=True):
            _image(top, image, title=above)
            _image(bottom, match, caption=f"SSIM {float(score):.3f}")
    return path


def code_histograms(real: np.ndarray, generated: np.ndarray, path: Path, title: str) -> Path:
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
        ax.set_title(title, fontsize=10)
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
            symmetry.hist(
                values,
                bins=bins,
                weights=np.full(len(values), 1.0 / max(len(values), 1)),
                histtype="step",
                lw=1.5,
                label=f"{label} (n = {len(values)})",
            )
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


def codebook_usage(counts: np.ndarray, path: Path, source: str) -> Path:
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
        ax.set_title(f"{source}: {used} of {len(counts)} codes used, perplexity {perplexity(counts):.1f}")
    return path
