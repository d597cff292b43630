"""common/detection_metrics.py on cases worked out by hand (ties included), against scikit-learn where it is
installed, and on the two maps whose scores are known: a perfect one and a random one."""

from __future__ import annotations

import time

import numpy as np
import pytest

from common.detection_metrics import (
    auroc,
    average_precision,
    average_ranks,
    best_dice,
    dice_at,
    ranked_counts,
)


def pixel_metrics(scores, labels) -> tuple[float, float, float]:
    counts = ranked_counts(np.array(scores, dtype=float), np.array(labels, dtype=bool))
    return (average_precision(counts), *best_dice(counts))


def test_average_ranks_share_the_mean_rank_of_a_tie():
    assert average_ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
    assert average_ranks(np.array([5.0, 5.0, 5.0])).tolist() == [2.0, 2.0, 2.0]


@pytest.mark.parametrize(
    "scores, labels, expected_auroc, expected_ap, expected_dice, expected_threshold",
    [
        # scikit-learn's documented example: precision 1 at recall 1/2, then 2/3 at recall 1 -> 5/6
        ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], 3 / 4, 5 / 6, 2 * 2 / (3 + 2), 0.35),
        # a tie of one positive and one negative at the top: both are marked together, precision 1/2 throughout
        ([1, 1, 0, 0], [1, 0, 1, 0], 1 / 2, 1 / 2, 2 * 2 / (4 + 2), 0.0),
        # a three-way tie: thresholds 0.9 (1 of 1), 0.5 (2 of 4), 0.1 (3 of 5)
        ([0.9, 0.5, 0.5, 0.5, 0.1], [1, 1, 0, 0, 1], 3 / 6, (1 + 1 / 2 + 3 / 5) / 3, 2 * 3 / (5 + 3), 0.1),
        # perfect: every positive above every negative
        ([0.2, 0.9, 0.1, 0.7], [0, 1, 0, 1], 1.0, 1.0, 1.0, 0.7),
    ],
)
def test_hand_computed_cases(scores, labels, expected_auroc, expected_ap, expected_dice, expected_threshold):
    assert auroc(np.array(scores, float), np.array(labels, bool)) == pytest.approx(expected_auroc, abs=1e-12)
    ap, dice, threshold = pixel_metrics(scores, labels)
    assert ap == pytest.approx(expected_ap, abs=1e-12)
    assert dice == pytest.approx(expected_dice, abs=1e-12)
    assert threshold == expected_threshold


def test_a_constant_map_scores_the_prevalence_and_chance():
    labels = np.zeros(1000, bool)
    labels[:37] = True
    scores = np.full(1000, 0.25)
    assert auroc(scores, labels) == 0.5
    ap, dice, threshold = pixel_metrics(scores, labels)
    assert ap == pytest.approx(0.037, abs=1e-12)
    assert dice == pytest.approx(2 * 37 / (1000 + 37), abs=1e-12) and threshold == 0.25


def test_a_random_map_has_average_precision_near_the_prevalence():
    rng = np.random.default_rng(0)
    labels = rng.random(400_000) < 0.05
    ap, _, _ = pixel_metrics(rng.random(400_000), labels)
    assert abs(ap - labels.mean()) < 0.003
    assert abs(auroc(rng.random(400_000), labels) - 0.5) < 0.01


def test_a_perfect_map_of_images_scores_one():
    rng = np.random.default_rng(1)
    masks = rng.random((4, 32, 32)) < 0.1
    maps = np.where(masks, rng.uniform(0.6, 1, masks.shape), rng.uniform(0, 0.5, masks.shape)).astype(np.float32)
    assert pixel_metrics(maps, masks)[:2] == (1.0, 1.0)
    assert dice_at(maps, masks, 0.55) == 1.0


def test_dice_at_a_threshold_marks_scores_at_or_above_it():
    scores, labels = np.array([0.2, 0.6, 0.6, 0.9]), np.array([0, 1, 0, 1], bool)
    assert dice_at(scores, labels, 0.6) == pytest.approx(2 * 2 / (3 + 2))
    assert dice_at(scores, labels, 0.95) == 0.0
    assert dice_at(scores, labels, 0.0) == pytest.approx(2 * 2 / (4 + 2))
    assert dice_at(np.zeros(3), np.zeros(3, bool), 1.0) == 1.0  # nothing marked, nothing to find


def test_matches_scikit_learn_with_many_ties():
    metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn is not installed (not a dependency)")
    rng = np.random.default_rng(2)
    labels = rng.random(50_000) < 0.1
    scores = np.round(rng.random(50_000) + 0.3 * labels, 2)  # 131 distinct values: ties everywhere
    assert average_precision(ranked_counts(scores, labels)) == pytest.approx(
        metrics.average_precision_score(labels, scores), abs=1e-12
    )
    assert auroc(scores, labels) == pytest.approx(metrics.roc_auc_score(labels, scores), abs=1e-12)


def test_millions_of_pixels_take_seconds_not_minutes():
    """One sort, then linear passes: 2 M pixels take about 1 s on the reference CPU (the 13 M head pixels of an
    OASIS lesion set about 5 s); a quadratic step would take hours."""
    rng = np.random.default_rng(3)
    labels = rng.random(2_000_000) < 0.01
    scores = rng.random(2_000_000).astype(np.float32)
    start = time.perf_counter()
    counts = ranked_counts(scores, labels)
    average_precision(counts), best_dice(counts)
    assert time.perf_counter() - start < 30


@pytest.mark.parametrize(
    "scores, labels, message",
    [
        ([0.1, np.nan], [0, 1], "finite"),
        ([0.1, np.inf], [0, 1], "finite"),
        ([0.1, 0.2, 0.3], [0, 1], "3 scores for 2 labels"),
    ],
)
def test_bad_inputs_are_refused(scores, labels, message):
    with pytest.raises(ValueError, match=message):
        auroc(np.array(scores), np.array(labels, bool))
    with pytest.raises(ValueError, match=message):
        ranked_counts(np.array(scores), np.array(labels, bool))


def test_one_class_is_refused_where_a_metric_needs_both():
    with pytest.raises(ValueError, match="both positive and negative"):
        auroc(np.array([0.1, 0.2]), np.array([True, True]))
    counts = ranked_counts(np.array([0.1, 0.2]), np.array([False, False]))
    with pytest.raises(ValueError, match="at least one positive"):
        average_precision(counts)
    with pytest.raises(ValueError, match="at least one positive"):
        best_dice(counts)
