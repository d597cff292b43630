"""The anomaly maps' pictures (common/anomaly_maps.py): a map in colour, the map over its scan, and a figure of the
first slices, one column each, rows scan / healed / map / overlay.

A map is drawn on a fixed scale, 0 to MAP_RANGE (a quarter of the intensity range: a lesion that differs from the
healed brain by that much or more saturates), never per slice: scaled to its own maximum, the faint map of a healthy
slice would look as alarming as a lesion's.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image

from common.figures.style import PANEL_INCHES, draw_image, saved_figure

MAP_RANGE = 0.25
MAP_CMAP = "hot"
MAP_LABEL = "|scan - healed| where codes were resampled"
ROWS = ("scan", "healed", "anomaly map", "map over the scan")


def map_colours(anomaly: np.ndarray) -> np.ndarray:
    """(H, W, 3) float RGB of a map (H, W) on the fixed scale."""
    return matplotlib.colormaps[MAP_CMAP](np.clip(anomaly / MAP_RANGE, 0, 1))[..., :3]


def overlay(scan: np.ndarray, anomaly: np.ndarray) -> np.ndarray:
    """(H, W, 3) float RGB: the map's colours over the gray scan, as opaque as the map is strong."""
    alpha = np.clip(anomaly / MAP_RANGE, 0, 1)[..., None]
    gray = np.repeat(np.clip(scan, 0, 1)[..., None], 3, axis=-1)
    return np.clip((1 - alpha) * gray + alpha * map_colours(anomaly), 0, 1)


def save_rgb(image: np.ndarray, path: Path) -> None:
    """An (H, W, 3) image in [0, 1] as an 8-bit RGB PNG."""
    Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)).save(path)


def anomaly_grid(
    scans: np.ndarray,
    healed: np.ndarray,
    maps: np.ndarray,
    names: list[str],
    scores: np.ndarray,
    path: Path,
    title: str,
) -> Path:
    """One column per slice (N, H, W each), rows scan / healed / map / overlay, each column titled with its name and
    captioned with its score, a colour bar for the maps."""
    path = Path(path)
    with saved_figure(path) as fig:
        fig.set_size_inches(len(scans) * PANEL_INCHES + 1.0, len(ROWS) * PANEL_INCHES + 0.6)
        fig.suptitle(title, fontsize=10)
        axes = fig.subplots(len(ROWS), len(scans), squeeze=False)
        for column, (scan, heal, anomaly, name, score) in enumerate(zip(scans, healed, maps, names, scores)):
            draw_image(axes[0, column], scan, title=name)
            draw_image(axes[1, column], heal)
            shown = axes[2, column].imshow(anomaly, cmap=MAP_CMAP, vmin=0, vmax=MAP_RANGE, interpolation="nearest")
            axes[2, column].set_xticks([])
            axes[2, column].set_yticks([])
            draw_image(axes[3, column], overlay(scan, anomaly), caption=f"score {float(score):.4f}")
        for ax, label in zip(axes[:, 0], ROWS):
            ax.set_ylabel(label, fontsize=9)
        fig.colorbar(shown, ax=list(axes[2:].ravel()), shrink=0.8, pad=0.01).set_label(MAP_LABEL, fontsize=8)
    return path
