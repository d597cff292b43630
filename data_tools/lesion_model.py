"""The synthetic lesion model: what `python -m data_tools lesions` paints into a slice, and where (numpy only).

The OASIS slices carry no lesion labels, so anomaly maps are scored on lesions of known extent painted into
healthy slices. The model was fixed before any detector was run on it, and is versioned (GENERATOR_VERSION, in
lesions.json): change anything here and the version changes, because scores on two versions do not compare.

  * where: inside the head (data_tools/morphology.py's head mask of the slice itself). The whole lesion, halo
    included, lies at least SCALP_MARGIN pixels inside the head's edge (past the scalp and skull), and its centre
    lies on tissue: the slice blurred by TISSUE_SIGMA is at least TISSUE_LEVEL there, so that a lesion is not
    centred in a ventricle or background. Lesions of one slice do not touch (their halos are kept apart).
  * how many: 1 to --max-lesions per lesion slice, uniformly.
  * size: radius r from MIN_RADIUS to MAX_RADIUS pixels, log-uniform (as many lesions of 2-4 pixels as of 15-30).
    When no place on the slice holds a lesion of radius r, r shrinks by SHRINK until one does; a lesion that does
    not fit at MIN_RADIUS is not drawn (a slice that cannot hold even one is left healthy by the command).
  * edge, one of two, equally often:
      smooth     an ellipse of semi-axes r and r * elongation (ELONGATION), at a uniform angle, blurred with a
                 Gaussian of sigma r / 4 (at least 0.5): a soft edge about r / 2 wide;
      irregular  a blob: the pixels where 1 - t^2 + roughness * t * noise > 0 (t = distance from the centre / r,
                 noise = white noise blurred with sigma r / 3, scaled to unit deviation, roughness in ROUGHNESS),
                 within t <= 2, its part joined to the centre, holes filled; anti-aliased with a blur of 0.5.
    Either gives a weight alpha in [0, 1] per pixel; weights below ALPHA_FLOOR are set to 0, as they could not
    change an 8-bit pixel, so every changed pixel lies in the lesion's support (alpha > 0).
  * intensity, relative to the tissue it replaces: local = the alpha-weighted mean of the slice over the support,
    and with a contrast c in CONTRAST,
      hyper   target = local + c * (1 - local)   (towards white),
      hypo    target = local * (1 - c)           (towards black),
    each equally often. Every pixel is shifted by alpha * (target - local), so the tissue's texture is kept, and
    clipped to [0, 1]. A hyper-intense lesion in grey matter is about as bright as white matter, one in white
    matter a little brighter: visible, yet not the brightest thing in the slice (on the OASIS validate and test
    splits no lesion pixel is brighter than the slice's brightest one, the scalp's fat).
  * label: the lesion's mask is alpha >= 0.5; lesions.json records each lesion's kind, edge, centre (row,
    column), radius, shape parameters, contrast, local and target intensities, mask area and the mean change
    of its masked pixels (after rounding to 8 bits).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from data_tools.morphology import depth_map, dilate, fill_holes, gaussian_blur, head_mask, reconstruct

GENERATOR_VERSION = 1
MIN_RADIUS, MAX_RADIUS = 2.0, 30.0  # pixels
ELONGATION = (0.5, 1.0)  # minor / major semi-axis of a smooth lesion
ROUGHNESS = (0.4, 0.8)  # how far an irregular lesion's edge strays from a circle
CONTRAST = (0.3, 0.6)  # the fraction of the way from the local tissue to white (hyper) or black (hypo)
SCALP_MARGIN = 12  # pixels between a lesion's support and the head's edge: the scalp and skull of an OASIS slice
TISSUE_SIGMA, TISSUE_LEVEL = 2.0, 0.2  # a centre's blurred intensity: above CSF and background
ALPHA_FLOOR = 1 / 510  # a weight that changes an 8-bit pixel by less than half a level
SHRINK = 0.7  # radius factor when no place holds a lesion
TRIES = 50  # centres tried per radius before shrinking
KINDS, EDGES = ("hyper", "hypo"), ("smooth", "irregular")


def half_size(radius: float) -> int:
    """Half the side of a lesion's square patch: holds either shape of this radius, halo included."""
    return math.ceil(2 * radius) + 3


@dataclass(frozen=True)
class Anatomy:
    """Where lesions may go on one slice."""

    head: np.ndarray  # (H, W) bool
    depth: np.ndarray  # (H, W) int: the head's chessboard depth (morphology.depth_map)
    tissue: np.ndarray  # (H, W) bool: a lesion may be centred here

    @classmethod
    def of(cls, image: np.ndarray) -> Anatomy:
        head = head_mask(image)
        tissue = head & (gaussian_blur(image / 255, TISSUE_SIGMA) >= TISSUE_LEVEL)
        return cls(head, depth_map(head), tissue)

    def centres(self, half: int) -> np.ndarray:
        """Flat indices of the pixels where a patch of half-size `half` lies SCALP_MARGIN inside the head."""
        return np.flatnonzero((self.depth > half + SCALP_MARGIN) & self.tissue)

    @property
    def can_hold_lesion(self) -> bool:
        """Whether the smallest lesion fits somewhere (a slice that is mostly scalp, or empty, cannot hold one)."""
        return len(self.centres(half_size(MIN_RADIUS))) > 0


def patch_grid(radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Row and column offsets from the centre of a lesion patch."""
    half = half_size(radius)
    return np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)


def smooth_shape(rng: np.random.Generator, radius: float) -> tuple[np.ndarray, dict]:
    """A blurred ellipse's weights and its parameters (see the module docstring)."""
    elongation, angle = rng.uniform(*ELONGATION), rng.uniform(0, math.pi)
    rows, cols = patch_grid(radius)
    along = cols * math.cos(angle) + rows * math.sin(angle)
    across = -cols * math.sin(angle) + rows * math.cos(angle)
    inside = (along / radius) ** 2 + (across / (radius * elongation)) ** 2 <= 1
    alpha = gaussian_blur(inside, max(0.5, radius / 4))
    return alpha, {"elongation": round(elongation, 4), "angle_deg": round(math.degrees(angle), 2)}


def irregular_shape(rng: np.random.Generator, radius: float) -> tuple[np.ndarray, dict]:
    """A thresholded noisy blob's weights and its roughness (see the module docstring)."""
    roughness = rng.uniform(*ROUGHNESS)
    rows, cols = patch_grid(radius)
    noise = gaussian_blur(rng.standard_normal(rows.shape), max(1.0, radius / 3))
    t = np.hypot(rows, cols) / radius
    blob = (1 - t**2 + roughness * t * noise / noise.std() > 0) & (t <= 2)
    centre = np.zeros_like(blob)
    centre[rows.shape[0] // 2, rows.shape[1] // 2] = True
    blob = fill_holes(reconstruct(centre, blob))
    return gaussian_blur(blob, 0.5), {"roughness": round(roughness, 4)}


def crop(alpha: np.ndarray) -> np.ndarray:
    """A centred patch cut down to the smallest centred square that holds its nonzero weights."""
    half = alpha.shape[0] // 2
    rows, cols = np.nonzero(alpha)
    reach = int(max(np.abs(rows - half).max(), np.abs(cols - half).max()))  # the support's chessboard extent
    return alpha[half - reach : half + reach + 1, half - reach : half + reach + 1]


def place(rng: np.random.Generator, anatomy: Anatomy, occupied: np.ndarray, support: np.ndarray) -> tuple | None:
    """A window (row slice, column slice) for a cropped patch whose `support` then lies SCALP_MARGIN inside the
    head and off `occupied`, tried at up to TRIES random centres; None if none was found."""
    half = support.shape[0] // 2
    centres = anatomy.centres(half)
    for index in rng.choice(centres, size=min(TRIES, len(centres)), replace=False):
        row, col = divmod(int(index), anatomy.head.shape[1])
        window = (slice(row - half, row + half + 1), slice(col - half, col + half + 1))
        if not (occupied[window] & support).any():
            return window
    return None


def insert(image: np.ndarray, alpha: np.ndarray, window: tuple, kind: str, contrast: float) -> dict:
    """Shift `image` (float, [0, 1], changed in place) by the lesion's weights towards its target intensity;
    returns the intensities recorded."""
    region = image[window]
    local = float((alpha * region).sum() / alpha.sum())
    target = local + contrast * (1 - local) if kind == "hyper" else local * (1 - contrast)
    image[window] = np.clip(region + alpha * (target - local), 0, 1)
    return {"local_intensity": round(local, 4), "target_intensity": round(target, 4)}


def draw_lesion(rng: np.random.Generator, anatomy: Anatomy, occupied: np.ndarray) -> tuple | None:
    """One lesion's (weights, window, record), shrunk until it fits; None when not even MIN_RADIUS fits."""
    radius = math.exp(rng.uniform(math.log(MIN_RADIUS), math.log(MAX_RADIUS)))
    kind, edge, contrast = str(rng.choice(KINDS)), str(rng.choice(EDGES)), rng.uniform(*CONTRAST)
    while True:
        alpha, shape = (smooth_shape if edge == "smooth" else irregular_shape)(rng, radius)
        alpha[alpha < ALPHA_FLOOR] = 0
        alpha = crop(alpha)
        window = place(rng, anatomy, occupied, alpha > 0)
        if window is not None:
            record = {"kind": kind, "edge": edge, "radius": round(radius, 3), "shape": shape}
            return alpha, window, record | {"contrast": round(contrast, 4)}
        if radius == MIN_RADIUS:
            return None
        radius = max(MIN_RADIUS, radius * SHRINK)


def paint_lesions(
    rng: np.random.Generator, image: np.ndarray, anatomy: Anatomy, max_lesions: int
) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """(lesion slice uint8, lesion mask bool, one record per lesion) for a uint8 slice: 1 to `max_lesions`
    lesions, as many as fit."""
    painted = image / 255
    occupied = np.zeros(image.shape, bool)  # lesion supports, grown by a pixel: lesions never touch
    drawn = []
    for _ in range(rng.integers(1, max_lesions + 1)):
        lesion = draw_lesion(rng, anatomy, occupied)
        if lesion is None:
            break
        alpha, window, record = lesion
        record |= insert(painted, alpha, window, record["kind"], record["contrast"])
        occupied[window] |= dilate(alpha > 0)
        drawn.append((alpha >= 0.5, window, record))
    out = np.round(painted * 255).astype(np.uint8)
    mask = np.zeros(image.shape, bool)
    for lesion_mask, window, record in drawn:
        mask[window] |= lesion_mask
        rows, cols = window
        change = out[window][lesion_mask].astype(np.int64) - image[window][lesion_mask]
        record |= {"centre": [rows.start + lesion_mask.shape[0] // 2, cols.start + lesion_mask.shape[1] // 2]}
        record |= {"area": int(lesion_mask.sum()), "mean_change": round(float(change.mean()) / 255, 4)}
    return out, mask, [record for _, _, record in drawn]
