"""The files a batch of generated (or reconstructed) brains is written as, shared by the PyTorch
sampler (trainer/stage2/sample.py) and the onnxruntime one (export/runtime/sample.py): numpy and pillow only, no torch.

    codes/NNN.png    code maps as 16-bit PNGs, indices scaled to fill 0..65535
    images/NNN.png   the decoded brains, 8-bit grayscale
    samples.npz      the code grids (uint16) and, for a conditional prior, the slice positions
    generated.png    the first FIGURE_COUNT code maps above their brains (common.figures.style.generated_grid);
                     the code maps there are coloured by the codes' decoded intensity, the PNGs stay raw indices
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from common.figures.generation import generated_grid
from common.figures.style import code_intensity

SAMPLES_FILE = "samples.npz"  # the marker of a samples folder: --force replaces only a folder that has it
FIGURE_COUNT = 32  # a figure of hundreds of brains would be tens of thousands of pixels tall


def save_code_map(grid: np.ndarray, num_codes: int, path: Path) -> None:
    scale = 65535 // max(1, num_codes - 1)
    Image.fromarray((grid.astype(np.uint32) * scale).astype(np.uint16)).save(path)


def save_image(image: np.ndarray, path: Path) -> None:
    """An image (H, W) in [0, 1] as an 8-bit grayscale PNG."""
    Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)).save(path)


def write_samples(
    out: Path,
    codes: np.ndarray,
    conditions: np.ndarray | None,
    images: np.ndarray,
    num_codes: int,
    decode: Callable[[np.ndarray], np.ndarray],
) -> Path:
    """Write the files above for codes (N, h, w), conditions (N,) or None and images (N, H, W) in
    [0, 1], `decode` being the decoder that made them (codes (B, h, w) -> images); returns the figure's path."""
    out = Path(out)
    (out / "codes").mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(parents=True, exist_ok=True)
    for i, (grid, image) in enumerate(zip(codes, images)):
        save_code_map(grid, num_codes, out / "codes" / f"{i:03d}.png")
        save_image(image, out / "images" / f"{i:03d}.png")
    np.savez(
        out / SAMPLES_FILE,
        codes=codes.astype(np.uint16),
        **({"conditions": conditions.astype(np.int16)} if conditions is not None else {}),
    )
    shown = slice(0, FIGURE_COUNT)
    titles = None if conditions is None else [f"slice {int(c)}" for c in conditions[shown]]
    code_values = code_intensity(decode, num_codes, codes.shape[1:])
    return generated_grid(
        codes[shown],
        images[shown],
        out / "generated.png",
        code_values,
        f"{len(codes)} prior samples (first {min(len(codes), FIGURE_COUNT)} shown)",
        titles=titles,
    )
