"""The look every figure shares, and the conventions every figure follows.

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

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

PANEL_INCHES = 2.0
DPI = 128  # 2 in x 128 dpi = 256 px: a 256x256 slice at about its native resolution
CODE_CMAP = "viridis"  # continuous and unlike the gray slices, for code maps
CODE_LABEL = "code's mean decoded intensity"


@contextmanager
def saved_figure(path: Path, **kwargs) -> Iterator[Figure]:
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


def pair_axes(fig: Figure, n: int, columns: int, title: str, labels: tuple[str, str]) -> list[tuple[Axes, Axes]]:
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


def draw_image(ax: Axes, image: np.ndarray, title: str | None = None, caption: str | None = None) -> None:
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


def draw_code_map(ax: Axes, indices: np.ndarray, code_values: np.ndarray) -> plt.cm.ScalarMappable:
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


def code_colour_bar(fig: Figure, shown: plt.cm.ScalarMappable, axes: list[Axes]) -> None:
    fig.colorbar(shown, ax=axes, shrink=0.6, pad=0.01).set_label(CODE_LABEL, fontsize=8)
