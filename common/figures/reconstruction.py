"""Stage 1's figures: reconstructions beside their inputs, latent code maps, codebook usage."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.code_usage import perplexity
from common.figures.style import (
    code_colour_bar,
    draw_code_map,
    draw_image,
    pair_axes,
    saved_figure,
)


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
    with saved_figure(path) as fig:
        pairs = pair_axes(fig, len(originals), columns, title, ("original", "reconstruction"))
        for (top, bottom), image, recon, score, key in zip(pairs, originals, reconstructions, ssim, keys, strict=True):
            draw_image(top, image, title=key)
            draw_image(bottom, recon, caption=f"SSIM {float(score):.3f}")
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
    with saved_figure(path) as fig:
        pairs = pair_axes(fig, len(images), columns, title, ("original", "code map"))
        for (top, bottom), image, grid, key in zip(pairs, images, indices, keys, strict=True):
            draw_image(top, image, title=key)
            shown = draw_code_map(bottom, grid, code_values)
        code_colour_bar(fig, shown, [ax for pair in pairs for ax in pair])
    return path


def codebook_usage(counts: np.ndarray, path: Path, source: str) -> Path:
    """Counts per code (K,) over an evaluation pass, sorted descending: how skewed usage is."""
    path = Path(path)
    counts = np.asarray(counts)
    used = int((counts > 0).sum())
    with saved_figure(path, figsize=(7, 3.5)) as fig:
        ax = fig.subplots()
        ax.bar(np.arange(len(counts)), np.sort(counts)[::-1], width=1.0)
        ax.set_yscale("log")
        ax.set_xlim(-0.5, len(counts) - 0.5)
        ax.set_xlabel("code rank (most used first)")
        ax.set_ylabel("count")
        ax.set_title(f"{source}: {used} of {len(counts)} codes used, perplexity {perplexity(counts):.1f}")
    return path
