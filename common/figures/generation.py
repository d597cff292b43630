"""Stage 2's figures: generated brains, their nearest training slices, code and structure histograms."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.figures.style import (
    code_colour_bar,
    draw_code_map,
    draw_image,
    pair_axes,
    saved_figure,
)


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
    with saved_figure(path) as fig:
        pairs = pair_axes(fig, len(indices), columns, title, ("sampled code map", "decoded slice"))
        for (top, bottom), grid, image, panel_title in zip(pairs, indices, images, titles, strict=True):
            shown = draw_code_map(top, grid, code_values)
            top.set_title(panel_title or "", fontsize=7)
            draw_image(bottom, image)
        code_colour_bar(fig, shown, [ax for pair in pairs for ax in pair])
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
    with saved_figure(path) as fig:
        pairs = pair_axes(fig, len(generated), columns, title, ("generated", "nearest training slice"))
        titles = titles if titles is not None else [None] * len(generated)
        for (top, bottom), image, match, score, above in zip(pairs, generated, nearest, ssim, titles, strict=True):
            draw_image(top, image, title=above)
            draw_image(bottom, match, caption=f"SSIM {float(score):.3f}")
    return path


def code_histograms(real: np.ndarray, generated: np.ndarray, path: Path, title: str) -> Path:
    """Code frequencies (K,) of real and generated code grids, codes ordered by real frequency."""
    path = Path(path)
    real, generated = np.asarray(real, np.float64), np.asarray(generated, np.float64)
    order = np.argsort(-real, kind="stable")
    with saved_figure(path, figsize=(7, 3.5)) as fig:
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
    """Structure metrics (trainer/stage2/structure_metrics.py, per slice) of real and generated slices side by side:
    the distribution of the mirror-IoU symmetry, and how many components the brain mask has."""
    path = Path(path)
    with saved_figure(path, figsize=(9, 3.5)) as fig:
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
