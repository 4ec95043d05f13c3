"""Base-layer metrics of abstention and comparison: threshold curve and search, McNemar's exact test."""

from __future__ import annotations

from math import comb

import numpy as np
import pytest

from bm_ray.model.metrics import (
    abstained,
    mcnemar_exact_p,
    plot_threshold_curve,
    threshold_curve,
    threshold_for_accuracy,
)

# Two rows tie at 0.9 (one right, one wrong); the accuracy of the kept rows is not monotonic in the threshold.
SCORES = np.array([0.9, 0.9, 0.8, 0.7, 0.7, 0.6, 0.5])
CORRECT = np.array([True, False, True, True, True, False, True])


def test_threshold_curve_has_one_point_per_distinct_score() -> None:
    curve = threshold_curve(SCORES, CORRECT)
    assert curve["thresholds"] == [0.9, 0.8, 0.7, 0.6, 0.5]
    assert curve["coverage"] == pytest.approx([2 / 7, 3 / 7, 5 / 7, 6 / 7, 1.0])
    assert curve["accuracy"] == pytest.approx([1 / 2, 2 / 3, 4 / 5, 4 / 6, 5 / 7])
    # min_score = a threshold keeps exactly that point's rows
    for threshold, coverage in zip(curve["thresholds"], curve["coverage"], strict=True):
        assert (~abstained(SCORES, threshold)).sum() == round(coverage * len(SCORES))


@pytest.mark.parametrize(
    ("target", "threshold", "coverage", "accuracy"),
    [
        (0.8, 0.7, 5 / 7, 4 / 5),
        (0.7, 0.5, 1.0, 5 / 7),  # 0.6 falls short (4/6) but the smaller 0.5 reaches it: the smallest wins
        (0.5, 0.5, 1.0, 5 / 7),
        (0.6, 0.5, 1.0, 5 / 7),
    ],
)
def test_smallest_threshold_reaching_the_target(
    target: float, threshold: float, coverage: float, accuracy: float
) -> None:
    found = threshold_for_accuracy(threshold_curve(SCORES, CORRECT), target)
    assert found["threshold"] == threshold
    assert found["coverage"] == pytest.approx(coverage) and found["accuracy"] == pytest.approx(accuracy)


def test_unreachable_target_says_so_with_the_best_point() -> None:
    # Keeping only the first 0.9 row would be 100% accurate, but tied scores are kept together: no threshold
    # reaches 0.9; the best is 0.8 at threshold 0.7.
    found = threshold_for_accuracy(threshold_curve(SCORES, CORRECT), 0.9)
    assert found["threshold"] is None
    assert found["best_accuracy"] == pytest.approx(0.8) and found["best_threshold"] == 0.7
    assert found["best_coverage"] == pytest.approx(5 / 7)
    empty = threshold_for_accuracy(threshold_curve(np.array([]), np.array([], bool)), 0.5)
    assert empty["threshold"] is None and empty["best_accuracy"] is None


def test_abstained_marks_scores_below_min_score_only() -> None:
    assert abstained(SCORES, 0.7).tolist() == [False, False, False, False, False, True, True]
    assert not abstained(SCORES, None).any()


def test_threshold_curve_plot_is_written(tmp_path) -> None:
    curve = threshold_curve(SCORES, CORRECT)
    path = plot_threshold_curve(curve, tmp_path / "curve.png", marked=threshold_for_accuracy(curve, 0.8))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("b", "c", "p"),
    [
        (1, 6, 2 * (1 + 7) / 128),  # by hand: n = 7, k <= 1
        (6, 1, 0.125),
        (0, 5, 2 / 32),
        (3, 3, 1.0),  # 2 · 42/64 > 1: capped
        (0, 0, 1.0),  # no discordant pairs: no evidence either way
    ],
)
def test_mcnemar_exact_p_by_hand(b: int, c: int, p: float) -> None:
    assert mcnemar_exact_p(b, c) == pytest.approx(p, rel=1e-12)


def test_mcnemar_exact_p_matches_integer_arithmetic_for_many_pairs() -> None:
    b, c = 80, 120
    exact = 2 * sum(comb(b + c, k) for k in range(min(b, c) + 1)) / 2 ** (b + c)
    assert mcnemar_exact_p(b, c) == pytest.approx(exact, rel=1e-9)
    assert 0 < mcnemar_exact_p(40_000, 41_000) < 1e-3  # large counts stay finite
