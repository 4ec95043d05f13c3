"""Calibration: scores that are probabilities, fitted on the validation split after model selection.

Two stages, both keeping every row's predicted label (so accuracy is unchanged):

1. **Temperature scaling** (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017):
   ``softmax(logits / T)``, one scalar that sharpens (T < 1) or flattens (T > 1) every window's
   probabilities, chosen to minimise the validation log-loss.
2. **Top-label beta calibration** (:class:`TopLabelMap`; Kull et al., "Beyond sigmoids", 2017, applied
   to the top score as in Gupta & Ramdas, "Top-label calibration", ICLR 2022): a monotone map of the
   top score ``s -> 1 / (1 + exp(-(a ln s - b ln(1 - s) + c)))`` fitted to whether the top label was
   right. One temperature scales every confidence alike; fine-tuned BERT is typically calibrated at
   the top and over-confident in the middle (held-out AG News rows scoring 0.67–0.87 were right 60%
   of the time at a mean score of 0.79), a shape only a map with a slope can fix. Measured on two
   held-out halves of the AG News development rows (README, "Calibrated scores"), fitted on ~600
   validation rows: ECE 0.025 → 0.0155 and 0.0215 → 0.0131 against the temperature alone. It is
   fitted from :data:`TOP_LABEL_MIN_ROWS` validation rows up.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bm_ray.model.metrics import reliability_bins
from bm_ray.model.uncertainty import ece_interval

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


ECE_FLOOR_DRAWS = 200
"""Simulated label sets behind :func:`ece_noise_floor`: its own sampling error is then ~1/14 of its spread."""


def ece_noise_floor(
    top_scores: np.ndarray, bins: int = ECE_BINS, draws: int = ECE_FLOOR_DRAWS, seed: int = 0
) -> dict[str, float]:
    """The ECE that a *perfectly* calibrated model with these top scores would show on this many rows.

    ECE is biased upwards on a finite set: every bin's accuracy is a sample, so |accuracy - confidence|
    is positive even when the scores are exact probabilities. This draws `draws` label sets in which
    each row is right with probability equal to its top score (calibration by construction) and
    returns the mean and standard deviation of their ECE: a measured ECE within about two standard
    deviations of `mean` is as calibrated as a set of this size can tell (3,000 AG News rows: ≈ 0.010).
    """
    scores = np.asarray(top_scores, dtype=np.float64)
    if not len(scores):
        return {"mean": float("nan"), "std": float("nan"), "draws": draws}
    rng = np.random.default_rng(seed)
    eces = [
        reliability_bins(scores, rng.random(len(scores)) < scores, bins=bins)["ece"] for _ in range(draws)
    ]
    return {"mean": float(np.mean(eces)), "std": float(np.std(eces)), "draws": draws}


TOP_LABEL_MIN_ROWS = 200
"""Fewest validation rows the top-label map is fitted on (three parameters; ~15 wrong rows at 93%
accuracy). Measured (README): fitted on 200-row subsets of a model's validation rows, the map beat
the temperature alone on held-out rows in 90% of 200 draws (median ECE 0.0195 vs 0.0276); on
another model's 299 easy validation rows it was neither better nor worse (0.029 vs 0.029)."""
SCORE_EPS = 1e-7
"""Scores are clipped to [SCORE_EPS, 1 - SCORE_EPS] before the top-label map's logit (the export bakes the same)."""
TIE_MARGIN = 1e-6
"""How far above a tie with the runner-up a softened top score stays (float32 resolves ~6e-8 at 0.5)."""


@dataclass(frozen=True)
class TopLabelMap:
    """Beta calibration of the top score: ``s' = 1 / (1 + exp(-(a ln s - b ln(1 - s) + c)))``.

    ``a, b ≥ 0`` make it monotone (a more confident row never ends up less confident than another);
    ``a = b = 1, c = 0`` is the identity. :meth:`apply` replaces each row's top probability by ``s'`` and
    rescales the other labels to share ``1 - s'`` in their old proportions, never so far that another
    label would overtake the top one: the predicted label is kept, and so is the order of rows by
    score wherever that floor does not bind (close calls the map would soften below their runner-up).
    """

    a: float
    b: float
    c: float

    def top_score(self, scores: np.ndarray) -> np.ndarray:
        """The calibrated value of top scores `scores` (float64)."""
        s = np.clip(np.asarray(scores, dtype=np.float64), SCORE_EPS, 1.0 - SCORE_EPS)
        z = self.a * np.log(s) - self.b * np.log1p(-s) + self.c
        return 1.0 / (1.0 + np.exp(-z))

    def apply(self, probs: np.ndarray) -> np.ndarray:
        """Probability rows with their top score calibrated (float32; rows still sum to 1)."""
        probs = np.asarray(probs, dtype=np.float64)
        if not len(probs):
            return probs.astype(np.float32)
        rows, top = np.arange(len(probs)), probs.argmax(axis=1)
        score = probs[rows, top]
        rest = 1.0 - score
        second = np.partition(probs, -2, axis=1)[:, -2] if probs.shape[1] > 1 else np.zeros(len(probs))
        # At second / (rest + second) the rescaled runner-up would tie the top label: stay just above.
        keeps_label = second / np.maximum(rest + second, 1e-12) + TIE_MARGIN
        new_score = np.maximum(self.top_score(score), keeps_label)
        empty = rest <= 1e-12  # the other labels had no mass: they share the new remainder equally
        out = probs * np.where(empty, 0.0, (1.0 - new_score) / np.maximum(rest, 1e-12))[:, None]
        out[empty] = ((1.0 - new_score[empty]) / max(probs.shape[1] - 1, 1))[:, None]
        out[rows, top] = new_score
        return out.astype(np.float32)

    def to_json(self) -> dict[str, Any]:
        """The form stored in labels.json (``top_label_calibration``)."""
        return {"method": "beta", "a": self.a, "b": self.b, "c": self.c}

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> TopLabelMap:
        """Read the labels.json form; `where` names the file in the error."""
        try:
            if data.get("method") != "beta":
                raise ValueError(f"method {data.get('method')!r} is not 'beta'")
            fitted = cls(a=float(data["a"]), b=float(data["b"]), c=float(data["c"]))
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            raise ValueError(
                f"{where}: top_label_calibration {data!r} is not a beta map "
                f'({{"method": "beta", "a": ..., "b": ..., "c": ...}}): {error}; retrain or remove the field'
            ) from None
        if not (fitted.a >= 0 and fitted.b >= 0 and math.isfinite(fitted.c)):
            raise ValueError(f"{where}: top_label_calibration needs a, b >= 0 and a finite c, got {data!r}")
        return fitted


def fit_top_label_map(top_scores: np.ndarray, correct: np.ndarray) -> TopLabelMap | None:
    """The :class:`TopLabelMap` maximising the likelihood of `correct` (was the top label right) given
    the top scores: logistic regression on ``[ln s, -ln(1 - s), 1]`` by Newton's method, refitted
    without a feature whose weight comes out negative (Kull et al.'s procedure, so the map stays
    monotone). A tiny ridge towards the identity keeps it finite when every row is right. None when
    both slopes drop out: the scores say nothing about correctness, and a constant map would erase
    the ranking of rows that abstention and the risk–coverage curve rest on."""
    s = np.clip(np.asarray(top_scores, dtype=np.float64), SCORE_EPS, 1.0 - SCORE_EPS)
    y = np.asarray(correct, dtype=np.float64)
    features = np.stack([np.log(s), -np.log1p(-s), np.ones_like(s)], axis=1)
    identity = np.array([1.0, 1.0, 0.0])
    keep = [0, 1, 2]  # feature columns in the fit; 0 (a) and 1 (b) leave when their weight is negative
    while True:
        weights = _logistic_fit(features[:, keep], y, identity[keep])
        negative = [(w, k) for k, w in zip(keep, weights, strict=True) if k < 2 and w < 0]
        if not negative:
            break
        keep.remove(min(negative)[1])
    if keep == [2]:
        return None
    fitted = dict.fromkeys(range(3), 0.0) | dict(zip(keep, weights.tolist(), strict=True))
    return TopLabelMap(a=fitted[0], b=fitted[1], c=fitted[2])


def _logistic_fit(features: np.ndarray, y: np.ndarray, prior: np.ndarray, ridge: float = 1e-3) -> np.ndarray:
    """Weights minimising the logistic loss of `y` plus ``ridge * |w - prior|²`` (Newton with step halving)."""

    def loss(w: np.ndarray) -> float:
        z = features @ w
        return float(np.sum(np.logaddexp(0.0, z) - y * z) + ridge * np.sum((w - prior) ** 2))

    weights = prior.copy()
    current = loss(weights)
    for _ in range(100):
        q = 1.0 / (1.0 + np.exp(-(features @ weights)))
        gradient = features.T @ (q - y) + 2 * ridge * (weights - prior)
        hessian = (features * (q * (1 - q))[:, None]).T @ features + 2 * ridge * np.eye(len(weights))
        step = np.linalg.solve(hessian, gradient)
        for _ in range(30):  # halve until the loss does not rise
            candidate = weights - step
            if loss(candidate) <= current:
                break
            step = step / 2
        else:
            break
        weights, previous, current = candidate, current, loss(candidate)
        if previous - current < 1e-12 * max(1.0, abs(previous)):
            break
    return weights


def calibration_report(
    logits: np.ndarray,
    label_ids: np.ndarray,
    temperature: float,
    combine: Callable[[np.ndarray], np.ndarray] | None = None,
    top_label: TopLabelMap | None = None,
) -> dict[str, object]:
    """ECE (with its 95% bootstrap interval) and log-loss of the rows before (T = 1, no map), after
    scaling by `temperature`, and after the `top_label` map too (`logits`, `label_ids` and `combine` as
    in :func:`fit_temperature`); ``after`` is what the model answers with."""

    def measured(t: float, mapping: TopLabelMap | None = None) -> dict[str, Any]:
        probs = temperature_softmax(logits, t)
        probs = probs if combine is None else combine(probs)
        probs = probs if mapping is None else mapping.apply(probs)
        return {
            "ece": expected_calibration_error(probs, label_ids),
            "log_loss": negative_log_likelihood(probs, label_ids),
            "ece_interval": ece_interval(
                probs.max(axis=1), probs.argmax(axis=1) == np.asarray(label_ids), ECE_BINS
            ),
        }

    after_temperature = measured(temperature)
    return {
        "temperature": temperature,
        "top_label_calibration": None if top_label is None else top_label.to_json(),
        "rows": len(label_ids),
        "ece_bins": ECE_BINS,
        "before": measured(1.0),
        "after_temperature": after_temperature,
        "after": after_temperature if top_label is None else measured(temperature, top_label),
    }
