"""How well an anomaly map finds lesions: slice AUROC, pixel average precision and Dice (numpy only, exact).

    auroc              slices: P(a lesion slice scores above a healthy one), ties counting one half (the
                       Mann-Whitney statistic from ranks, ties given their average rank)
    ranked_counts      the true and false positives at every distinct score, from one sort: what the pixel
                       metrics below all read, so 36 M pixels (544 slices of 256 x 256) are sorted once
    average_precision  pixels: the area under the precision-recall steps, exactly as scikit-learn's
                       average_precision_score (sum over thresholds of the recall gained times the precision)
    best_dice          pixels: the largest Dice over every threshold, and that threshold (Baur et al. 2021,
                       Medical Image Analysis 69:101952, "best possible Dice": an upper bound, the threshold
                       chosen on the very pixels it is scored on)
    dice_at            pixels: the Dice at a given threshold, e.g. the one best_dice found on a validation set

A threshold t marks every pixel scoring >= t; pixels of equal score are always marked together, so ties are
never split in anyone's favour. Scores must be finite (NaN would sort anywhere).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def checked(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores and labels flattened; they must have the same size and the scores be finite."""
    scores, labels = np.asarray(scores).ravel(), np.asarray(labels, dtype=bool).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.size} scores for {labels.size} labels")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite (no NaN or inf)")
    return scores, labels


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of `values` in increasing order, tied values sharing the mean of the ranks they span."""
    order = np.argsort(values)  # any order within a run of ties: they share one rank
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(values)]  # exclusive: a run of ties holds ranks starts + 1 .. ends
    ranks = np.empty(len(values))
    ranks[order] = np.repeat((starts + 1 + ends) / 2, ends - starts)
    return ranks


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of `scores` (higher = more likely positive) for boolean `labels`."""
    scores, labels = checked(scores, labels)
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        raise ValueError("AUROC needs both positive and negative examples")
    rank_sum = average_ranks(scores)[labels].sum()
    return float((rank_sum - positives * (positives + 1) / 2) / (positives * negatives))


@dataclass(frozen=True)
class RankedCounts:
    """Counts at each distinct score, highest first: marking every pixel >= thresholds[i] gives
    true_positives[i] and false_positives[i]; `positives` is the number of positive pixels."""

    thresholds: np.ndarray
    true_positives: np.ndarray
    false_positives: np.ndarray
    positives: int


def ranked_counts(scores: np.ndarray, labels: np.ndarray) -> RankedCounts:
    """One sort of the scores, cumulative counts read at the last of each run of equal scores (so the order within
    a run, which the sort does not fix, changes nothing)."""
    scores, labels = checked(scores, labels)
    order = np.argsort(scores)[::-1]
    ordered = scores[order]
    last = np.r_[np.flatnonzero(ordered[1:] != ordered[:-1]), len(ordered) - 1]
    true_positives = np.cumsum(labels[order], dtype=np.int64)[last]
    return RankedCounts(ordered[last], true_positives, last + 1 - true_positives, int(labels.sum()))


def average_precision(counts: RankedCounts) -> float:
    """Sum over thresholds (highest first) of (recall gained) x precision: scikit-learn's definition, with no
    interpolation."""
    if counts.positives == 0:
        raise ValueError("average precision needs at least one positive example")
    precision = counts.true_positives / (counts.true_positives + counts.false_positives)
    found = np.diff(counts.true_positives, prepend=0)  # positives gained at each threshold: recall gained x P
    return float((found * precision).sum() / counts.positives)  # one division: a perfect map gives exactly 1


def best_dice(counts: RankedCounts) -> tuple[float, float]:
    """(the largest Dice over all thresholds, the highest threshold that reaches it)."""
    if counts.positives == 0:
        raise ValueError("Dice needs at least one positive example")
    dice = 2 * counts.true_positives / (counts.true_positives + counts.false_positives + counts.positives)
    best = int(np.argmax(dice))
    return float(dice[best]), float(counts.thresholds[best])


def dice_at(scores: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    """Dice of the pixels scoring >= `threshold` against the labels (1.0 when both are empty)."""
    scores, labels = checked(scores, labels)
    marked = scores >= threshold
    total = int(marked.sum()) + int(labels.sum())
    return 1.0 if total == 0 else 2 * int((marked & labels).sum()) / total
