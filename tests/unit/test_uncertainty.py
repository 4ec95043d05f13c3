"""The 95% intervals of bm_ray.model.uncertainty: Wilson against published values, the bootstrap against
resampling row indices by hand, its coverage on a synthetic case, its seed, and the edge cases."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from bm_ray.model.metrics import ConfusionMatrix, reliability_bins
from bm_ray.model.uncertainty import (
    RESAMPLES,
    accuracy_interval,
    bootstrap,
    compare_intervals,
    ece_interval,
    figure_text,
    macro_f1_interval,
    paired_difference_interval,
    scored_intervals,
    wilson_interval,
)

BINS = 15


@pytest.mark.parametrize(
    ("successes", "rows", "low", "high"),
    [  # Newcombe (1998), "Two-sided confidence intervals for the single proportion", method 3
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_matches_published_values(successes: int, rows: int, low: float, high: float) -> None:
    assert wilson_interval(successes, rows) == pytest.approx((low, high), abs=5e-5)


def test_wilson_edges_all_right_and_no_rows() -> None:
    low, high = wilson_interval(600, 600)
    assert high == 1.0 and low == pytest.approx(600 / (600 + 1.959963984540054**2))
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
    interval = accuracy_interval(0, 0)
    assert interval.method == "wilson" and math.isnan(interval.low) and interval.resamples is None


def synthetic(rows: int, seed: int, labels: int = 4, accuracy: float = 0.85) -> tuple[np.ndarray, ...]:
    """Rows of a classifier right with probability `accuracy`, its top score calibrated around it."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, labels, rows)
    right = rng.random(rows) < accuracy
    predicted = np.where(right, true, (true + rng.integers(1, labels, rows)) % labels)
    scores = np.clip(rng.normal(accuracy, 0.1, rows), 1 / labels, 1.0)
    return true, predicted, scores, right


def matrix_of(true: np.ndarray, predicted: np.ndarray, labels: int = 4) -> np.ndarray:
    matrix = ConfusionMatrix([str(i) for i in range(labels)])
    matrix.add_indices(true, predicted)
    return matrix.matrix


def macro_f1_of(true: np.ndarray, predicted: np.ndarray) -> float:
    """The macro-F1 ConfusionMatrix.report gives these rows."""
    matrix = ConfusionMatrix([str(i) for i in range(4)])
    matrix.add_indices(true, predicted)
    return matrix.report()["macro_f1"]


def test_bootstrap_matches_resampling_row_indices() -> None:
    """Drawing cell counts is the row bootstrap: the same spread as resampling indices by hand."""
    true, predicted, scores, right = synthetic(500, seed=3)
    matrix = matrix_of(true, predicted)
    rng = np.random.default_rng(7)
    by_hand_f1, by_hand_ece = [], []
    for _ in range(RESAMPLES):
        idx = rng.integers(0, len(true), len(true))
        by_hand_f1.append(macro_f1_of(true[idx], predicted[idx]))
        by_hand_ece.append(reliability_bins(scores[idx], right[idx], BINS)["ece"])
    for interval, values in (
        (macro_f1_interval(matrix), by_hand_f1),
        (ece_interval(scores, right, BINS), by_hand_ece),
    ):
        low, high = np.quantile(values, [0.025, 0.975])
        width = high - low
        assert interval.low == pytest.approx(low, abs=0.1 * width)
        assert interval.high == pytest.approx(high, abs=0.1 * width)


def test_intervals_cover_the_truth_about_95_percent_of_the_time() -> None:
    """200 samples of 400 rows from one population: each interval covers the population's figure in
    about 95% of them (binomial noise of 200 draws: ±3 points). Not ECE: a finite set's ECE is biased
    upwards, so its bootstrap interval is not meant to cover the population's."""
    population = synthetic(400_000, seed=0)
    truth_f1 = macro_f1_of(population[0], population[1])
    truth_accuracy = population[3].mean()
    covered = {"accuracy": 0, "macro_f1": 0}
    draws = 200
    for seed in range(1, draws + 1):
        true, predicted, _, right = synthetic(400, seed=seed)
        accuracy = accuracy_interval(int(right.sum()), len(right))
        macro = macro_f1_interval(matrix_of(true, predicted))
        covered["accuracy"] += accuracy.low <= truth_accuracy <= accuracy.high
        covered["macro_f1"] += macro.low <= truth_f1 <= macro.high
    for name, count in covered.items():
        assert 0.90 <= count / draws <= 0.99, (name, count)


def test_the_seed_makes_it_deterministic() -> None:
    true, predicted, scores, right = synthetic(300, seed=5)
    matrix = matrix_of(true, predicted)
    assert macro_f1_interval(matrix) == macro_f1_interval(matrix)
    assert ece_interval(scores, right, BINS) == ece_interval(scores, right, BINS)
    assert macro_f1_interval(matrix, seed=1) != macro_f1_interval(matrix, seed=0)
    interval = macro_f1_interval(matrix)
    assert (interval.method, interval.resamples, interval.seed) == ("bootstrap", RESAMPLES, 0)


def test_the_point_figure_sits_inside_its_interval() -> None:
    true, predicted, scores, right = synthetic(2000, seed=9)
    matrix = matrix_of(true, predicted)
    intervals = scored_intervals(matrix, scores, right, BINS)
    assert intervals.accuracy.low < right.mean() < intervals.accuracy.high
    assert intervals.macro_f1.low < macro_f1_of(true, predicted) < intervals.macro_f1.high
    ece = reliability_bins(scores, right, BINS)["ece"]
    assert intervals.ece.low < ece < intervals.ece.high
    assert intervals.confidence == 0.95


def test_no_rows_give_nan_intervals_and_all_right_a_point() -> None:
    empty = scored_intervals(np.zeros((3, 3), np.int64), np.zeros(0), np.zeros(0, bool), BINS)
    for interval in (empty.accuracy, empty.macro_f1, empty.ece):
        assert math.isnan(interval.low) and math.isnan(interval.high)
    assert len(bootstrap(np.zeros(4), lambda drawn: drawn[:, 0])) == 0
    perfect = scored_intervals(np.diag([50, 30, 20]), np.ones(100), np.ones(100, bool), BINS)
    assert (perfect.macro_f1.low, perfect.macro_f1.high) == (1.0, 1.0)
    assert (perfect.ece.low, perfect.ece.high) == (0.0, 0.0)  # every score 1.0 and right
    assert perfect.accuracy.high == 1.0 and perfect.accuracy.low == pytest.approx(0.963, abs=1e-3)


def test_paired_difference_and_compare_intervals() -> None:
    rng = np.random.default_rng(4)
    right_a = rng.random(3000) < 0.80
    right_b = right_a | (rng.random(3000) < 0.10)  # B right wherever A is, and on ~2% more rows
    difference = paired_difference_interval(right_a, right_b)
    delta = right_b.mean() - right_a.mean()
    assert difference.method == "paired_bootstrap" and 0 < difference.low < delta < difference.high
    # Pairing: B − A is far tighter than the two accuracies' own intervals would suggest.
    both = compare_intervals(right_a, right_b)
    assert difference.high - difference.low < 0.5 * (both.accuracy_a.high - both.accuracy_a.low)
    assert both.accuracy_difference == difference and both.accuracy_b.method == "wilson"
    same = paired_difference_interval(right_a, right_a)
    assert (same.low, same.high) == (0.0, 0.0)


def test_fast_on_100k_rows() -> None:
    true, predicted, scores, right = synthetic(100_000, seed=2, labels=20)
    started = time.perf_counter()
    scored_intervals(matrix_of(true, predicted, labels=20), scores, right, BINS)
    paired_difference_interval(right, ~right)
    assert time.perf_counter() - started < 5.0  # ~0.3 s alone; generous for 2 shared cores


def test_figure_text() -> None:
    interval = accuracy_interval(894, 1000)
    assert figure_text(0.894, interval) == "0.894 (95% CI 0.873–0.912)"
    assert figure_text(0.894, None) == "0.894" and figure_text(float("nan"), interval) == "n/a"
    assert figure_text(0.5, accuracy_interval(0, 0)) == "0.500 (95% CI n/a)"
    difference = paired_difference_interval(np.zeros(10, bool), np.ones(10, bool))
    assert figure_text(1.0, difference, 2, signed=True) == "+1.00 (95% CI +1.00–+1.00)"
