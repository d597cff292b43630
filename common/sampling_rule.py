"""The sampling rule both samplers follow, in numpy only, so the onnxruntime sampler (export/) can use
it without torch and give the same brains as the PyTorch sampler for the same seed.

Every random number a sample uses is drawn up front from numpy's PCG64 seeded with (seed, sample
number): first its slice condition (when the prior is conditional and no slice was asked for), then
one uniform number per cell. So sample i of a seed is the same whatever the number of samples or
the batch size. A cell's code is then a deterministic function of its logits and its number (inverse CDF of
softmax(logits / temperature) over the top_k codes); `trainer.stage2.prior_contract.draw` is the same rule in torch.

The draw works in log space and is exact at every finite temperature > 0: each row's logits are shifted by
their maximum before dividing by the temperature, so the most likely code's log-probability (up to the row's
constant) is exactly 0 and the others are <= 0, however large the quotient. Dividing the logits first made
them inf at a temperature like 1e-310 and every code K - 1. As the temperature goes to 0 the draw becomes
greedy: codes short of the maximum overflow to -inf, and a tie at the maximum is split by the cell's uniform
number, as top_k = 1 splits it; as it grows the draw becomes uniform over the top_k codes.
"""

from __future__ import annotations

import math

import numpy as np

from common.limits import MAX_SAMPLES

# The default temperature of the samplers and of the anomaly commands' healing, chosen by the realism test
# (docs/benchmarks.md, "The prior's steps"): on OASIS a classifier told 544 generated brains from the VQ-VAE's
# reconstructions of real ones at 0.550 with T = 1.0 and 0.585 with T = 0.9 for the CPU transformer prior of 2,000
# steps, whose T = 1.0 brains also sit further from the training slices. (For the under-trained prior of 1,000 steps
# 0.9 had won: 0.749 against 0.824.)
SAMPLING_TEMPERATURE = 1.0


def check_sampling_options(temperature: float, top_k: int, num_codes: int) -> None:
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    if not 0 <= top_k <= num_codes:
        raise ValueError(f"top_k must be in 0..{num_codes} (0: no truncation), got {top_k}")


def sampling_randomness(
    n: int, height: int, width: int, num_conditions: int, seed: int, slice_index: int | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """(uniforms float32 (n, height, width) in [0, 1), conditions int64 (n,) or None).

    A conditional prior asked for no particular slice gets slices drawn uniformly, which samples
    the marginal p(codes) because OASIS holds the same number of slices at every position."""
    if not 1 <= n <= MAX_SAMPLES:  # the uniforms alone would not fit in memory far beyond
        raise ValueError(f"n must be 1 to {MAX_SAMPLES}, got {n}")
    if num_conditions and slice_index is not None and not 0 <= slice_index < num_conditions:
        raise ValueError(f"slice must be in 0..{num_conditions - 1}, got {slice_index}")
    if not num_conditions and slice_index is not None:
        raise ValueError("this prior was trained without slice conditioning; do not ask for a slice")
    uniforms = np.empty((n, height, width), dtype=np.float32)
    conditions = np.full(n, -1 if slice_index is None else slice_index, dtype=np.int64)
    for i in range(n):  # one generator per sample: sample i of a seed is the same whatever n is
        rng = np.random.default_rng((seed, i))
        if num_conditions and slice_index is None:
            conditions[i] = rng.integers(0, num_conditions)
        uniforms[i] = rng.random((height, width), dtype=np.float32)
    return uniforms, (conditions if num_conditions else None)


def healing_randomness(number: int, healings: int, height: int, width: int, seed: int) -> np.ndarray:
    """(healings, height, width) float32 uniforms in [0, 1) for the healings of slice `number` (its place among a
    run's inputs) in `trainer anomaly` and `export anomaly`: numpy's PCG64 seeded with (seed, number), as a sample's
    are, drawn up front. Healing k of a slice is the same whatever the number of healings or the batch size."""
    return np.random.default_rng((seed, number)).random((healings, height, width), dtype=np.float32)


def draw(logits: np.ndarray, uniforms: np.ndarray, temperature: float = 1.0, top_k: int = 0) -> np.ndarray:
    """Codes (B,) for logits (B, K) and one uniform number per row: see the module docstring."""
    scaled = tempered_log_weights(logits.astype(np.float64), temperature, top_k)
    probs = np.exp(scaled)  # the most likely code's is exactly 1
    cdf = np.cumsum(probs / probs.sum(axis=-1, keepdims=True), axis=-1)
    targets = uniforms.astype(np.float64) * cdf[:, -1]
    codes = np.array([np.searchsorted(row, t, side="right") for row, t in zip(cdf, targets)])
    return np.minimum(codes, logits.shape[-1] - 1)


def tempered_log_weights(logits: np.ndarray, temperature: float, top_k: int) -> np.ndarray:
    """(logits - row maximum) / temperature over the top_k codes, -inf elsewhere: log softmax(logits /
    temperature) up to each row's constant, every entry <= 0 and the largest exactly 0 at any temperature."""
    if top_k:
        kth = np.sort(logits, axis=-1)[:, -top_k][:, None]
        logits = np.where(logits < kth, -np.inf, logits)
    with np.errstate(over="ignore"):  # a quotient past the largest double is -inf: probability 0, as in the limit
        return (logits - logits.max(axis=-1, keepdims=True)) / temperature
