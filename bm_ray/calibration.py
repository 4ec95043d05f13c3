"""Temperature scaling: one scalar that turns a classifier's over- (or under-) confident logits into
calibrated probabilities, fitted on held-out rows (Guo et al., "On Calibration of Modern Neural
Networks", ICML 2017).

``softmax(logits / T)`` keeps every row's ranking of labels (so accuracy is unchanged) and only
sharpens (T < 1) or flattens (T > 1) the probabilities. ``T`` is chosen to minimise the negative
log-likelihood of the true labels on the validation split, after model selection.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from bm_ray.metrics import reliability_bins

MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 20.0
"""The search interval: wide enough for any real model, bounded so a degenerate set cannot run away."""
SEARCH_STEPS = 60
"""Golden-section steps over log T: the interval shrinks by 0.618 each, to ~1e-12 of its width."""


def temperature_softmax(logits: np.ndarray, temperature: float | None = None) -> np.ndarray:
    """Row-wise ``softmax(logits / temperature)`` in float32 (``None`` means 1: plain softmax)."""
    scaled = np.asarray(logits, dtype=np.float64) / (temperature or 1.0)
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


def negative_log_likelihood(probs: np.ndarray, label_ids: np.ndarray) -> float:
    """Mean ``-log p(true label)`` (the log-loss), with probabilities clipped at 1e-12."""
    label_ids = np.asarray(label_ids, dtype=np.int64)
    if not len(label_ids):
        return float("nan")
    picked = np.asarray(probs, dtype=np.float64)[np.arange(len(label_ids)), label_ids]
    return float(-np.log(np.clip(picked, 1e-12, 1.0)).mean())


def fit_temperature(
    logits: np.ndarray,
    label_ids: np.ndarray,
    combine: Callable[[np.ndarray], np.ndarray] | None = None,
) -> float:
    """The temperature T in [MIN_TEMPERATURE, MAX_TEMPERATURE] minimising the log-loss of the rows.

    `logits` are one row per scored unit; `combine` (optional) maps the tempered probabilities of
    those units to one probability row per labelled row (e.g. the engine's window aggregation, so T
    is fitted for exactly the probabilities the engine answers with); `label_ids` index the labels
    of the combined rows. Golden-section search over log T (the loss is smooth and, without
    `combine`, convex in 1/T); no labelled rows returns 1.0 (no change).
    """
    label_ids = np.asarray(label_ids, dtype=np.int64)
    if not len(label_ids):
        return 1.0
    logits = np.asarray(logits, dtype=np.float64)

    def loss(log_t: float) -> float:
        probs = temperature_softmax(logits, math.exp(log_t))
        return negative_log_likelihood(probs if combine is None else combine(probs), label_ids)

    low, high = math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)
    ratio = (math.sqrt(5) - 1) / 2
    left, right = high - ratio * (high - low), low + ratio * (high - low)
    loss_left, loss_right = loss(left), loss(right)
    for _ in range(SEARCH_STEPS):
        if loss_left <= loss_right:
            high, right, loss_right = right, left, loss_left
            left = high - ratio * (high - low)
            loss_left = loss(left)
        else:
            low, left, loss_left = left, right, loss_right
            right = low + ratio * (high - low)
            loss_right = loss(right)
    return float(math.exp((low + high) / 2))


ECE_BINS = 15
"""Equal-width bins of the top score for the expected calibration error everywhere in bm-ray."""


def expected_calibration_error(probs: np.ndarray, label_ids: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of probability rows against the true label ids (top score in `bins` equal-width bins)."""
    probs = np.asarray(probs)
    if not len(probs):
        return float("nan")
    correct = probs.argmax(axis=1) == np.asarray(label_ids)
    return float(reliability_bins(probs.max(axis=1), correct, bins=bins)["ece"])


def calibration_report(
    logits: np.ndarray,
    label_ids: np.ndarray,
    temperature: float,
    combine: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict[str, object]:
    """ECE and log-loss of the rows before (T = 1) and after scaling by `temperature`
    (`logits`, `label_ids` and `combine` as in :func:`fit_temperature`)."""

    def measured(t: float) -> dict[str, float]:
        probs = temperature_softmax(logits, t)
        probs = probs if combine is None else combine(probs)
        return {
            "ece": expected_calibration_error(probs, label_ids),
            "log_loss": negative_log_likelihood(probs, label_ids),
        }

    return {
        "temperature": temperature,
        "rows": len(label_ids),
        "ece_bins": ECE_BINS,
        "before": measured(1.0),
        "after": measured(temperature),
    }
