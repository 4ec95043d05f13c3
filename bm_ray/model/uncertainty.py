"""95% intervals of every reported accuracy, macro-F1 and ECE: one Wilson interval, one bootstrap.

- **Accuracy**: the Wilson score interval of a proportion (Wilson 1927; Newcombe 1998's method 3). It
  stays inside [0, 1] and keeps its coverage near 95% at the small sizes and extreme accuracies a
  600-row validation set at 0.95 has, where the normal ("Wald") interval does not.
- **Macro-F1, ECE, a paired accuracy difference**: a seeded percentile bootstrap over rows
  (:func:`bootstrap`), :data:`RESAMPLES` resamples of as many rows as were scored, drawn with
  replacement; the interval is the 2.5th and 97.5th percentile of the statistic over the resamples.

The resampling is done once, here, for every statistic: each of them depends on the rows only through
the cell each row falls in (a confusion-matrix cell for macro-F1, right/wrong of both models for a
paired difference, confidence bin and right/wrong for ECE). Resampling n rows with replacement draws
cell counts that are exactly Multinomial(n, counts / n), so the bootstrap draws those counts (cost:
resamples × occupied cells, whatever the row count) instead of n row indices per resample (1,000 ×
100,000 rows took 10 s; this takes well under one).

ECE needs, besides the counts, the summed confidence of the resampled rows of each bin: its cells split
every bin into :data:`ECE_SCORE_CELLS` equal slices, and a resampled row adds its slice's mean score.
That moves a resample's ECE by at most one slice width (1/300 with 15 bins) and typically by
~ sqrt(rows in a bin) · width / (√12 · rows), under 1e-4 on 600 rows: far inside the interval.

The percentile bootstrap of ECE inherits ECE's upward bias on finite sets (see
:func:`bm_ray.model.calibration.ece_noise_floor`): its interval says how much the figure moves with
the rows drawn, not how far the scores are from calibrated.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import numpy as np

from bm_ray.model.metrics import binned_ece, class_scores, confidence_bin, macro_f1
from bm_ray.results import CompareIntervals, Interval, MetricIntervals

CONFIDENCE = 0.95
"""The level of every interval bm-ray reports."""
Z = 1.959963984540054
"""The two-sided 95% quantile of the standard normal (Wilson's z)."""
RESAMPLES = 1000
"""Bootstrap resamples: the percentiles' own Monte Carlo error is then ~4% of the interval's half-width."""
SEED = 0
"""Seed of the bootstrap: a rerun on the same rows reports the same interval."""
ECE_SCORE_CELLS = 20
"""Slices of each confidence bin whose mean score a resampled row adds to its bin's confidence sum."""
CHUNK_CELLS = 1 << 22
"""Resample × cell counts drawn at a time (32 MiB of int64), so thousands of labels do not exhaust memory."""

Statistic = Callable[[np.ndarray], np.ndarray]
"""Maps a (resamples, cells) array of resampled cell counts to one value per resample."""


def wilson_interval(successes: int, rows: int, z: float = Z) -> tuple[float, float]:
    """The Wilson score interval of `successes` out of `rows` (NaN, NaN for no rows).

    centre ± half-width, with centre = (p + z²/2n) / (1 + z²/n) and
    half-width = z / (1 + z²/n) · sqrt(p(1 − p)/n + z²/4n²).
    """
    if rows <= 0:
        return math.nan, math.nan
    p = successes / rows
    scale = 1 + z * z / rows
    centre = (p + z * z / (2 * rows)) / scale
    half = z / scale * math.sqrt(p * (1 - p) / rows + z * z / (4 * rows * rows))
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap(
    counts: np.ndarray, statistic: Statistic, resamples: int = RESAMPLES, seed: int = SEED
) -> np.ndarray:
    """The statistic of `resamples` bootstrap resamples of the rows whose cell counts are `counts`.

    A resample draws as many rows as there are, with replacement: its cell counts are drawn as
    Multinomial(rows, counts / rows), which is exactly how row indices drawn uniformly fall into the
    cells. `statistic` gets the counts of a chunk of resamples, (chunk, cells), and returns one value
    per resample. Empty cells are passed on as zero columns (no draw needed); no rows gives no values.
    """
    counts = np.asarray(counts, dtype=np.int64).ravel()
    rows = int(counts.sum())
    if rows == 0:
        return np.zeros(0)
    rng = np.random.default_rng(seed)
    occupied = np.flatnonzero(counts)
    chunk = max(1, CHUNK_CELLS // len(counts))
    values = []
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        drawn = np.zeros((size, len(counts)), dtype=np.int64)
        drawn[:, occupied] = rng.multinomial(rows, counts[occupied] / rows, size=size)
        values.append(np.asarray(statistic(drawn), dtype=np.float64))
    return np.concatenate(values)


def percentile_interval(values: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The central `confidence` range of bootstrap values (NaN, NaN when there are none)."""
    values = np.asarray(values, dtype=np.float64)
    if not len(values):
        return math.nan, math.nan
    tail = (1 - confidence) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return float(low), float(high)


def _bootstrap_interval(
    counts: np.ndarray,
    statistic: Statistic,
    method: Literal["bootstrap", "paired_bootstrap"],
    resamples: int,
    seed: int,
) -> Interval:
    """The percentile interval of :func:`bootstrap`'s values, with how it was drawn."""
    low, high = percentile_interval(bootstrap(counts, statistic, resamples, seed))
    return Interval(low=low, high=high, method=method, resamples=resamples, seed=seed)


def _sum_by(drawn: np.ndarray, keys: np.ndarray, size: int) -> np.ndarray:
    """Per resample, the drawn counts summed by `keys` (one key in 0 .. size - 1 per cell): (chunk, size)."""
    chunk = len(drawn)
    flat = (np.arange(chunk)[:, None] * size + keys[None, :]).ravel()
    return np.bincount(flat, weights=drawn.ravel(), minlength=chunk * size).reshape(chunk, size)


def accuracy_interval(correct: int, rows: int) -> Interval:
    """The Wilson interval of an accuracy of `correct` right out of `rows` rows."""
    low, high = wilson_interval(correct, rows)
    return Interval(low=low, high=high, method="wilson")


def macro_f1_interval(matrix: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED) -> Interval:
    """Bootstrap interval of the macro-F1 (:func:`~bm_ray.model.metrics.macro_f1`) of a confusion matrix
    (rows: true label, columns: predicted), each resample's over the classes it holds rows of."""
    matrix = np.asarray(matrix, dtype=np.int64)
    labels = len(matrix)
    true, predicted = np.divmod(np.arange(labels * labels), labels)
    diagonal = true == predicted

    def statistic(drawn: np.ndarray) -> np.ndarray:
        support, answered = _sum_by(drawn, true, labels), _sum_by(drawn, predicted, labels)
        true_pos = _sum_by(drawn[:, diagonal], true[diagonal], labels)
        return macro_f1(class_scores(true_pos, support, answered)[2], support)

    return _bootstrap_interval(matrix.ravel(), statistic, "bootstrap", resamples, seed)


def ece_interval(
    top_scores: np.ndarray, correct: np.ndarray, bins: int, resamples: int = RESAMPLES, seed: int = SEED
) -> Interval:
    """Bootstrap interval of the ECE (:func:`~bm_ray.model.metrics.reliability_bins`, `bins` bins) of
    rows with these top scores, right where `correct`."""
    scores = np.asarray(top_scores, dtype=np.float64)
    right = np.asarray(correct, dtype=bool)
    which = confidence_bin(scores, bins)
    # The slice within the row's own bin (not a finer binning of the score: rounding could move a row
    # near a bin edge into the neighbouring bin, and the resampled ECE would not be the reported one's).
    within = np.clip(((scores * bins - which) * ECE_SCORE_CELLS).astype(np.int64), 0, ECE_SCORE_CELLS - 1)
    cell = (which * ECE_SCORE_CELLS + within) * 2 + right
    cells = bins * ECE_SCORE_CELLS * 2
    counts = np.bincount(cell, minlength=cells)
    mean_score = np.bincount(cell, weights=scores, minlength=cells) / np.maximum(counts, 1)
    cell_bin, cell_right = np.arange(cells) // (ECE_SCORE_CELLS * 2), np.arange(cells) % 2 == 1
    rows = len(scores)

    def statistic(drawn: np.ndarray) -> np.ndarray:
        hits = _sum_by(drawn[:, cell_right], cell_bin[cell_right], bins)
        confidence_sum = _sum_by(drawn * mean_score, cell_bin, bins)
        return binned_ece(hits, confidence_sum, rows)

    return _bootstrap_interval(counts, statistic, "bootstrap", resamples, seed)


def paired_difference_interval(
    right_a: np.ndarray, right_b: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED
) -> Interval:
    """Bootstrap interval of accuracy B − accuracy A on the same rows, the rows resampled in pairs (each
    resample keeps both models' answers to a row together, so what they share cancels out)."""
    right_a, right_b = np.asarray(right_a, dtype=bool), np.asarray(right_b, dtype=bool)
    counts = np.bincount(right_a * 2 + right_b, minlength=4)  # cells: neither, only B, only A, both
    rows = len(right_a)

    def statistic(drawn: np.ndarray) -> np.ndarray:
        return (drawn[:, 1] - drawn[:, 2]) / rows

    return _bootstrap_interval(counts, statistic, "paired_bootstrap", resamples, seed)


def scored_intervals(
    matrix: np.ndarray, top_scores: np.ndarray, correct: np.ndarray, bins: int
) -> MetricIntervals:
    """The intervals of a scored set of rows: accuracy (Wilson) and macro-F1 from its confusion matrix,
    ECE (bootstrap, `bins` bins) from its rows' top scores and correctness."""
    matrix = np.asarray(matrix, dtype=np.int64)
    return MetricIntervals(
        confidence=CONFIDENCE,
        accuracy=accuracy_interval(int(np.trace(matrix)), int(matrix.sum())),
        macro_f1=macro_f1_interval(matrix),
        ece=ece_interval(top_scores, correct, bins),
    )


def compare_intervals(right_a: np.ndarray, right_b: np.ndarray) -> CompareIntervals:
    """Intervals of a compare on labelled rows: each model's accuracy (Wilson) and B − A (paired bootstrap)."""
    rows = len(right_a)
    return CompareIntervals(
        confidence=CONFIDENCE,
        accuracy_a=accuracy_interval(int(np.sum(right_a)), rows),
        accuracy_b=accuracy_interval(int(np.sum(right_b)), rows),
        accuracy_difference=paired_difference_interval(right_a, right_b),
    )


def interval_text(interval: Interval | None, digits: int = 3, signed: bool = False) -> str:
    """ "95% CI 0.887–0.901" (empty when there is no interval, "95% CI n/a" when it is NaN)."""
    if interval is None:
        return ""
    if math.isnan(interval.low) or math.isnan(interval.high):
        return f"{CONFIDENCE:.0%} CI n/a"
    spec = f"{'+' if signed else ''}.{digits}f"
    return f"{CONFIDENCE:.0%} CI {interval.low:{spec}}–{interval.high:{spec}}"


def figure_text(value: float | None, interval: Interval | None, digits: int = 3, signed: bool = False) -> str:
    """A figure with its interval, as every summary prints it: "0.894 (95% CI 0.887–0.901)"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    shown = f"{value:{'+' if signed else ''}.{digits}f}"
    ci = interval_text(interval, digits, signed)
    return f"{shown} ({ci})" if ci else shown


def method_text(interval: Interval) -> str:
    """How an interval was computed, in words (for reports and the model card)."""
    if interval.method == "wilson":
        return "Wilson score interval"
    paired = "paired " if interval.method == "paired_bootstrap" else ""
    return f"{paired}percentile bootstrap over rows, {interval.resamples:,} resamples, seed {interval.seed}"
