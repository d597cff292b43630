"""Binary morphology and a Gaussian blur in plain numpy, and the head mask that synthetic lesions are placed in.

numpy only (no scipy), like the rest of the torch-free lower layers: every operation is a few shifted array
operations, 8-connected (a 3x3 square), and exact, so the same image gives the same mask on any machine.
Pixels beyond the image border count as outside every mask.

The head mask of a slice: pixels above HEAD_THRESHOLD, holes filled (ventricles, the dark CSF and bone between
scalp and brain), then the component holding the pixel deepest inside the filled mask. That is the head: on a
slice it is the largest component by far, and finding it needs one flood fill instead of a labelling of every
speck. The threshold is a fixed 0.1 of full scale, as trainer/stage2/structure_metrics.py's foreground: OASIS
slices have a background of 0 with a speckled halo up to ~20/255 around the head, and tissue and scalp above it.
"""

from __future__ import annotations

import numpy as np

HEAD_THRESHOLD = 25  # of 255: 0.1 of full scale; see the module docstring


def dilate(mask: np.ndarray) -> np.ndarray:
    """One 8-connected dilation step (by a 3x3 square, as two 1D steps)."""
    rows = mask.copy()
    rows[1:] |= mask[:-1]
    rows[:-1] |= mask[1:]
    out = rows.copy()
    out[:, 1:] |= rows[:, :-1]
    out[:, :-1] |= rows[:, 1:]
    return out


def erode(mask: np.ndarray) -> np.ndarray:
    """One 8-connected erosion step; a pixel on the image border is eroded (outside counts as empty)."""
    return ~dilate(~np.pad(mask, 1))[1:-1, 1:-1]


def reconstruct(seed: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """The pixels of `allowed` 8-connected to a pixel of `seed` inside it (dilation within `allowed` until it
    stops growing): a flood fill, as many steps as the region is long."""
    region = seed & allowed
    while True:
        grown = dilate(region) & allowed
        if np.array_equal(grown, region):
            return region
        region = grown


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """`mask` with every empty region that does not reach the image border filled."""
    outside = ~mask
    border = np.zeros_like(mask)
    border[[0, -1], :] = border[:, [0, -1]] = True
    return ~reconstruct(border, outside)


def depth_map(mask: np.ndarray) -> np.ndarray:
    """(H, W) int32: for a pixel of `mask`, d such that the square of half-side d - 1 around it lies inside the
    mask (the chessboard distance to the nearest pixel outside it); 0 outside."""
    out = np.zeros(mask.shape, np.int32)
    current = mask.copy()
    while current.any():
        out += current
        current = erode(current)
    return out


def head_mask(image: np.ndarray) -> np.ndarray:
    """(H, W) bool head mask of a uint8 slice (see the module docstring); empty for an empty slice."""
    filled = fill_holes(image > HEAD_THRESHOLD)
    deepest = depth_map(filled)
    if not deepest.any():
        return filled
    seed = np.zeros_like(filled)
    seed[np.unravel_index(np.argmax(deepest), deepest.shape)] = True
    return reconstruct(seed, filled)


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """`image` (H, W) convolved with a Gaussian of `sigma` pixels, truncated at 3 sigma, zero beyond the border."""
    radius = int(np.ceil(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    height, width = image.shape
    padded = np.pad(np.asarray(image, np.float64), radius)
    rows = sum(w * padded[i : i + height] for i, w in enumerate(taps))
    return sum(w * rows[:, i : i + width] for i, w in enumerate(taps))
