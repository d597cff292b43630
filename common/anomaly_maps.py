"""Anomaly maps: where a scan departs from the healthy brains a prior has learned (Pinaya et al. 2022, "Unsupervised
brain imaging 3D anomaly detection and segmentation with transformers"; MONAI's anomaly-detection tutorial).
Everything after the prior, in numpy, so `trainer anomaly` (torch) and `export anomaly` (onnxruntime) compute the
same maps: each brings only its models (`AnomalyModels`: encode, decode, and the prior's exact sampler).

Per slice:
1. The scan's codes, and their negative log-likelihood (nats) under the prior given the codes before them: the scan
   is fed teacher-forced as row 0 of the prior's sampling pass, so the NLL of a code comes out at the step that
   reaches it, in the same pass as the healing (one pass, for torch and onnxruntime alike).
2. Healing: the codes whose NLL is above a threshold are resampled from the prior in raster order, conditioned on the
   codes kept: rows 1..healings of the pass take the scan's code where its NLL is at or below the threshold (teacher
   forcing) and draw where it is above, by common/sampling_rule.py's rule and uniforms (`healing_randomness`).
   The mask is the scan's (Pinaya et al.): a code is resampled for what it is, not for what earlier healed codes
   make of it, so a healthy code is never touched.
3. The healings are decoded and averaged in image space: the mean healed brain (one healing is one guess at what is
   under a lesion; their mean is the expected healthy brain, and its noise shrinks as 1/sqrt(healings)).
4. The map: |scan - mean healed| where codes were resampled, then smoothed. Choices, and why:
   * the code mask is dilated by DILATION code: a lesion also perturbs its neighbours' codes (the encoder's receptive
     field spans several codes) and, through the decoder's, the pixels of the kept codes around a healed one;
   * upsampled by nearest neighbour (each code is an 8x8 block at 32x32): a hard window, so outside it the map is
     exactly 0 and the VQ-VAE's reconstruction error, which |scan - healed| holds everywhere, never shows;
   * then a Gaussian of SMOOTHING pixels: it removes pixel-level reconstruction noise inside the window and softens
     the window's blocky edges, and is far smaller than a lesion.
5. The slice score: the map's mean over the slice (intensity difference x area): 0 when nothing was resampled,
   and it grows with both how different and how large the departure is.

The threshold is a quantile of the per-code NLLs of the healthy VALIDATION split (never tuned on lesions): with
the default 0.99, a healthy code is resampled 1 time in 100. `export onnx` stores a table of QUANTILES in
model.json ("anomaly"), computed the way `trainer anomaly` computes it (trainer/stage2/healthy_nll.py), so the
runtime needs no data; `--quantile` chooses among them at run time.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from common.sampling_rule import check_sampling_options, draw, healing_randomness

QUANTILES = (0.9, 0.95, 0.98, 0.99, 0.995, 0.999)
DEFAULT_QUANTILE = 0.99
DEFAULT_HEALINGS = 4  # about 1 s a slice on one CPU core with the CPU transformer (docs/benchmarks.md)
THRESHOLD_SPLIT = "validate"
DILATION = 1  # codes
SMOOTHING = 2.0  # pixels: the Gaussian's sigma


def quantile_key(quantile: float) -> str:
    """How a quantile is named in the table: 0.99 -> "0.99"."""
    return f"{quantile:g}"


def code_nll(logits: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """-log softmax(logits)[code] per row, in nats: logits (B, K), codes (B,) -> (B,) float64."""
    logits = logits.astype(np.float64)
    top = logits.max(axis=-1)
    log_total = np.log(np.exp(logits - top[:, None]).sum(axis=-1)) + top
    return log_total - logits[np.arange(len(codes)), codes]


def threshold_record(nll: np.ndarray) -> dict:
    """model.json's "anomaly" entry: the QUANTILES of the healthy validation split's per-code NLLs (nats)."""
    values = np.quantile(np.asarray(nll, np.float64).ravel(), QUANTILES)
    return {
        "split": THRESHOLD_SPLIT,
        "codes": int(np.size(nll)),
        "nll_quantiles": {quantile_key(q): float(v) for q, v in zip(QUANTILES, values)},
    }


def threshold_of(record: dict | None, quantile: float, where: str) -> float:
    """The NLL threshold at `quantile` of a threshold record (`threshold_record`) read from `where`."""
    if record is None:
        raise ValueError(
            f"{where}: no anomaly thresholds (the healthy validation codes' NLL quantiles); re-export with "
            "`python -m export onnx` from a prior whose codes folder (prior.json's codes_dir) holds the validate split"
        )
    table = record.get("nll_quantiles") if isinstance(record, dict) else None
    value = table.get(quantile_key(quantile)) if isinstance(table, dict) else None
    if not isinstance(value, (int, float)) or not np.isfinite(value):
        known = ", ".join(table) if isinstance(table, dict) else "none"
        raise ValueError(f"{where}: no NLL threshold for --quantile {quantile:g} (has {known}); re-export the model")
    return float(value)


class Healing:
    """The rule of one healing pass over S slices of 1 + healings rows each (row 0 of a slice its scan, teacher-forced,
    then its healings), fed to a prior sampler as `choose`: it records each scan code's NLL and whether it is
    resampled, and picks every row's code (see the module docstring). `codes` (S, h, w) are the scans', `uniforms`
    (S, healings, h, w) the healings' (healing_randomness). The NLL is the prior's own (no temperature): the
    temperature and top_k shape only the draws."""

    def __init__(
        self,
        codes: np.ndarray,
        threshold: float,
        uniforms: np.ndarray,
        num_codes: int,
        temperature: float = 1.0,
        top_k: int = 0,
    ):
        check_sampling_options(temperature, top_k, num_codes)
        self.codes, self.threshold, self.uniforms = codes.astype(np.int64), threshold, uniforms
        self.temperature, self.top_k = temperature, top_k
        self.rows = 1 + uniforms.shape[1]
        self.nll = np.zeros(codes.shape, np.float32)
        self.mask = np.zeros(codes.shape, bool)

    @property
    def row_shape(self) -> tuple[int, int, int]:
        """The pass's (rows, h, w): what the sampler is asked for."""
        return (len(self.codes) * self.rows, *self.codes.shape[1:])

    def choose(self, t: int, logits: np.ndarray) -> np.ndarray:
        """The codes (rows,) of raster cell t from every row's logits (rows, K)."""
        i, j = divmod(t, self.codes.shape[2])
        logits = logits.reshape(len(self.codes), self.rows, -1)
        scan = self.codes[:, i, j]
        nll = code_nll(logits[:, 0], scan)
        resample = nll > self.threshold
        self.nll[:, i, j], self.mask[:, i, j] = nll, resample
        chosen = np.repeat(scan[:, None], self.rows, axis=1)
        if resample.any():
            drawn = draw(
                logits[resample, 1:].reshape(-1, logits.shape[-1]),
                self.uniforms[resample, :, i, j].reshape(-1),
                self.temperature,
                self.top_k,
            )
            chosen[resample, 1:] = drawn.reshape(-1, self.rows - 1)
        return chosen.reshape(-1)


def dilate(mask: np.ndarray, steps: int = DILATION) -> np.ndarray:
    """A boolean (h, w) mask grown by `steps` cells in the 8 directions."""
    height, width = mask.shape
    for _ in range(steps):
        padded = np.pad(mask, 1)
        mask = np.any([padded[di : di + height, dj : dj + width] for di in range(3) for dj in range(3)], axis=0)
    return mask


@functools.cache
def gaussian_matrix(size: int, sigma: float) -> np.ndarray:
    """(size, size) rows of a Gaussian of `sigma` pixels, each summing to 1 (renormalised at the edges)."""
    offsets = np.arange(size)[:, None] - np.arange(size)[None, :]
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    return (kernel / kernel.sum(axis=1, keepdims=True)).astype(np.float32)


def smooth(image: np.ndarray, sigma: float = SMOOTHING) -> np.ndarray:
    """A (size, size) image blurred by a Gaussian of `sigma` pixels (separable: two matrix products)."""
    kernel = gaussian_matrix(image.shape[-1], sigma)
    return kernel @ image @ kernel.T


def resample_window(mask: np.ndarray, size: int) -> np.ndarray:
    """(size, size) float32: 1 on the pixels of the resampled codes, dilated, 0 elsewhere (nearest upsampling)."""
    factor = size // mask.shape[1]
    return np.kron(dilate(mask), np.ones((factor, factor), np.float32)).astype(np.float32)


def anomaly_map(scan: np.ndarray, healed: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(size, size) float32: |scan - healed| in the window of the resampled codes `mask` (h, w), smoothed."""
    return smooth(np.abs(scan - healed) * resample_window(mask, scan.shape[-1])).astype(np.float32)


class AnomalyModels(Protocol):
    """What a side brings: the VQ-VAE and the prior's exact sampler, on numpy arrays."""

    num_codes: int
    height: int  # of the code grid: the sampler reports progress by grid rows

    def encode(self, images: np.ndarray) -> np.ndarray:
        """Images (B, 1, S, S) float32 in [0, 1] -> codes (B, h, w) int64."""

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Codes (B, h, w) int64 -> images (B, 1, S, S) float32."""

    def sample(
        self, shape: tuple[int, int, int], conditions: np.ndarray | None, choose: Callable, progress
    ) -> np.ndarray:
        """Codes (B, h, w) int64 of shape `shape` in raster order, each cell's picked by `choose(t, logits (B, K))`."""


@dataclass(frozen=True)
class HealingOptions:
    threshold: float  # nats
    healings: int = DEFAULT_HEALINGS
    seed: int = 0
    temperature: float = 1.0
    top_k: int = 0


def slice_maps(
    models: AnomalyModels,
    pixels: np.ndarray,
    conditions: np.ndarray | None,
    numbers: list[int],
    options: HealingOptions,
    progress=None,
) -> dict[str, np.ndarray]:
    """The maps of S slices, pixels (S, size, size) uint8 with their conditions (S,) or None and their numbers among
    the run's inputs (which choose their healings' uniforms): scan, recon, healed, anomaly (S, size, size) float32,
    nll (S, h, w) float32, resample_mask (S, h, w) bool, score (S,) float32, and the codes (S, h, w) and
    healed_codes (S, healings, h, w) int64."""
    scan = pixels.astype(np.float32) / 255
    codes = models.encode(scan[:, None]).astype(np.int64)
    slices, height, width = codes.shape
    uniforms = np.stack([healing_randomness(n, options.healings, height, width, options.seed) for n in numbers])
    healing = Healing(codes, options.threshold, uniforms, models.num_codes, options.temperature, options.top_k)
    rows = None if conditions is None else np.repeat(conditions, healing.rows)
    grids = models.sample(healing.row_shape, rows, healing.choose, progress)
    healed_codes = grids.reshape(slices, healing.rows, height, width)[:, 1:]
    images = models.decode(np.concatenate([codes, healed_codes.reshape(-1, height, width)]))[:, 0]
    size = images.shape[-1]
    recon, healed = images[:slices], images[slices:].reshape(slices, options.healings, size, size).mean(axis=1)
    anomaly = np.stack([anomaly_map(*parts) for parts in zip(scan, healed, healing.mask)])
    return {
        "scan": scan,
        "recon": recon.astype(np.float32),
        "healed": healed.astype(np.float32),
        "anomaly": anomaly,
        "nll": healing.nll,
        "resample_mask": healing.mask,
        "score": anomaly.mean(axis=(1, 2)).astype(np.float32),
        "codes": codes,
        "healed_codes": healed_codes,
    }
