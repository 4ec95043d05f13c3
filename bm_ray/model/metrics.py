"""Classification metrics (accuracy, macro-F1, per-class P/R/F1, confusion matrix) and their plots."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


class ConfusionMatrix:
    """Streaming confusion matrix over a fixed label list (rows: true label, columns: predicted)."""

    def __init__(self, labels: Sequence[str]) -> None:
        self.labels = list(labels)
        self.index = {label: i for i, label in enumerate(self.labels)}
        self.matrix = np.zeros((len(self.labels), len(self.labels)), dtype=np.int64)

    def add(self, true_labels: Iterable[str], predicted_labels: Iterable[str]) -> None:
        """Count pairs; every true label must be in `labels` (callers reject unknown ones first)."""
        for true, predicted in zip(true_labels, predicted_labels, strict=True):
            self.matrix[self.index[true], self.index[predicted]] += 1

    def add_indices(self, true_ids: np.ndarray, predicted_ids: np.ndarray) -> None:
        """Count pairs given as label indices."""
        np.add.at(self.matrix, (np.asarray(true_ids), np.asarray(predicted_ids)), 1)

    @property
    def total(self) -> int:
        """Number of counted rows."""
        return int(self.matrix.sum())

    def report(self) -> dict[str, Any]:
        """Accuracy, macro-F1, per-class precision/recall/F1/support and the matrix itself."""
        matrix = self.matrix.astype(np.float64)
        true_pos, support, predicted = np.diag(matrix), matrix.sum(axis=1), matrix.sum(axis=0)
        precision, recall, f1 = class_scores(true_pos, support, predicted)
        total = matrix.sum()
        return {
            "accuracy": float(true_pos.sum() / total) if total else 0.0,
            "macro_f1": float(macro_f1(f1, support)),
            "per_class": {
                label: {
                    "precision": float(precision[i]),
                    "recall": float(recall[i]),
                    "f1": float(f1[i]),
                    "support": int(support[i]),
                }
                for i, label in enumerate(self.labels)
            },
            "confusion_matrix": {"labels": self.labels, "matrix": self.matrix.tolist()},
        }


def class_scores(
    true_pos: np.ndarray, support: np.ndarray, predicted: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class (precision, recall, F1) from true positives, rows of the class and rows predicted as it.

    Works on any leading axes (the last one is the class), so one confusion matrix and a stack of
    bootstrap resamples (:mod:`bm_ray.model.uncertainty`) share the definition; a class never predicted
    has precision 0, a class without rows recall 0, and F1 is 0 where both are.
    """
    true_pos, support, predicted = (np.asarray(x, dtype=np.float64) for x in (true_pos, support, predicted))
    zeros = np.zeros_like(true_pos)
    precision = np.divide(true_pos, predicted, out=zeros.copy(), where=predicted > 0)
    recall = np.divide(true_pos, support, out=zeros.copy(), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=zeros.copy(), where=denom > 0)
    return precision, recall, f1


def macro_f1(f1: np.ndarray, support: np.ndarray) -> np.ndarray:
    """Mean F1 over the classes that occur in the rows (support > 0), along the last axis (0 when none do)."""
    present = np.asarray(support) > 0
    return (np.asarray(f1) * present).sum(axis=-1) / np.maximum(present.sum(axis=-1), 1)


def plot_confusion_matrix(report: dict[str, Any], path: str | Path, title: str = "Confusion matrix") -> Path:
    """Write a confusion-matrix heat map (counts, row-normalised colour) as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = report["confusion_matrix"]["labels"]
    matrix = np.asarray(report["confusion_matrix"]["matrix"])
    norm = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.9 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title} (accuracy {report['accuracy']:.3f}, macro-F1 {report['macro_f1']:.3f})")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", color="white" if norm[i, j] > 0.5 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_training_curves(history: list[dict[str, Any]], path: str | Path) -> Path:
    """Write loss and accuracy/macro-F1 per epoch (train and validation) as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (loss_ax, score_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        loss_ax.plot(epochs, [h[key] for h in history], marker="o", label=label)
    loss_ax.set_title("loss")
    for key, label in (
        ("train_accuracy", "train accuracy"),
        ("val_accuracy", "val accuracy"),
        ("val_macro_f1", "val macro-F1"),
    ):
        score_ax.plot(epochs, [h[key] for h in history], marker="o", label=label)
    score_ax.set_title("scores")
    for ax in (loss_ax, score_ax):
        ax.set_xlabel("epoch")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def risk_coverage(scores: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Selective-prediction curve: (coverage, risk) when only the most confident rows are kept.

    Point k keeps the k+1 rows with the highest top score; its risk is their error rate. The area
    under it (the mean risk) is the usual single-number summary (AURC, lower is better).
    """
    order = np.argsort(-np.asarray(scores), kind="stable")
    errors = np.cumsum(~np.asarray(correct, dtype=bool)[order])
    kept = np.arange(1, len(order) + 1)
    return kept / max(len(order), 1), errors / kept


def reliability_bins(scores: np.ndarray, correct: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """Reliability diagram data: equal-width confidence bins with their count, mean confidence and accuracy.

    Also the expected calibration error (ECE: count-weighted mean |accuracy - confidence|).
    """
    scores = np.asarray(scores, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    which = confidence_bin(scores, bins)
    count = np.bincount(which, minlength=bins)
    conf = np.bincount(which, weights=scores, minlength=bins)
    hits = np.bincount(which, weights=correct, minlength=bins)
    safe = np.maximum(count, 1)
    return {
        "edges": np.linspace(0.0, 1.0, bins + 1).tolist(),
        "count": count.tolist(),
        "confidence": (conf / safe).tolist(),
        "accuracy": (hits / safe).tolist(),
        "ece": float(binned_ece(hits, conf, count.sum())),
    }


def confidence_bin(scores: np.ndarray, bins: int) -> np.ndarray:
    """The equal-width bin (0 .. bins - 1) of each top score in [0, 1] (1.0 falls in the last bin)."""
    return np.clip((np.asarray(scores, dtype=np.float64) * bins).astype(np.int64), 0, bins - 1)


def binned_ece(hits: np.ndarray, confidence_sum: np.ndarray, rows: Any) -> np.ndarray:
    """ECE from per-bin sums along the last axis: Σ |right rows − summed confidence| / rows.

    That is the count-weighted mean |accuracy − mean confidence| of the bins, written on sums so that a
    stack of bootstrap resamples (:mod:`bm_ray.model.uncertainty`) computes it the same way.
    """
    return np.abs(np.asarray(hits) - np.asarray(confidence_sum)).sum(axis=-1) / np.maximum(rows, 1)


def abstained(scores: np.ndarray, min_score: float | None) -> np.ndarray:
    """Where a prediction abstains: its top score is below `min_score` (nowhere when None).

    The one definition of abstention: classify, evaluate, compare and the endpoint all call it, and a
    threshold found by :func:`threshold_for_accuracy` keeps exactly the rows it reports when passed back.
    Compared in float64: float32 scores (Parquet, the engine) and Python floats (JSON) give the same answer.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if min_score is None:
        return np.zeros(scores.shape, dtype=bool)
    return scores < min_score


def threshold_curve(scores: np.ndarray, correct: np.ndarray) -> dict[str, list[float]]:
    """Accuracy vs coverage for every threshold: one point per distinct top score, highest first.

    Point i keeps the rows with score >= ``thresholds[i]`` (what ``min_score = thresholds[i]`` answers):
    ``coverage`` is their share of all rows, ``accuracy`` their accuracy (1 - the risk of
    :func:`risk_coverage` at the last row of that score; tied scores are kept or abstained together).
    """
    scores = np.asarray(scores, dtype=np.float64)
    coverage, risk = risk_coverage(scores, correct)
    ordered = np.sort(scores)[::-1]
    last_of_tie = np.flatnonzero(np.append(ordered[1:] != ordered[:-1], len(ordered) > 0))
    return {
        "thresholds": ordered[last_of_tie].tolist(),
        "coverage": coverage[last_of_tie].tolist(),
        "accuracy": (1.0 - risk[last_of_tie]).tolist(),
    }


def threshold_for_accuracy(curve: dict[str, list[float]], target: float) -> dict[str, Any]:
    """The smallest threshold of a :func:`threshold_curve` whose kept rows reach `target` accuracy.

    The smallest such threshold keeps the most rows. Returns ``target``, ``threshold``, ``coverage``
    and ``accuracy`` of that point, or ``threshold: None`` with the best accuracy any threshold reaches
    (``best_accuracy`` at ``best_threshold`` and its coverage) when none does, or when there are no rows.
    """
    accuracy = np.asarray(curve["accuracy"])
    reached = np.flatnonzero(accuracy >= target)
    if len(reached):
        i = int(reached[-1])  # thresholds fall along the curve: the last point reaching it is the smallest
        return {
            "target": target,
            "threshold": curve["thresholds"][i],
            "coverage": curve["coverage"][i],
            "accuracy": curve["accuracy"][i],
        }
    best = int(np.argmax(accuracy)) if len(accuracy) else None
    return {
        "target": target,
        "threshold": None,
        "best_accuracy": None if best is None else curve["accuracy"][best],
        "best_threshold": None if best is None else curve["thresholds"][best],
        "best_coverage": None if best is None else curve["coverage"][best],
    }


def plot_threshold_curve(
    curve: dict[str, list[float]],
    path: str | Path,
    title: str = "Accuracy vs coverage",
    marked: dict[str, Any] | None = None,
) -> Path:
    """Write a :func:`threshold_curve` as PNG (accuracy over coverage), marking a chosen threshold if given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.plot(curve["coverage"], curve["accuracy"], drawstyle="steps-post", label="kept rows")
    if marked is not None and marked.get("threshold") is not None:
        ax.axhline(marked["target"], color="grey", linestyle=":", label=f"target {marked['target']:g}")
        ax.plot(
            [marked["coverage"]],
            [marked["accuracy"]],
            "o",
            color="tab:red",
            label=f"min_score {marked['threshold']:.4f}: coverage {marked['coverage']:.1%}",
        )
    ax.set_xlabel("coverage (rows with top score >= threshold)")
    ax.set_ylabel("accuracy of the kept rows")
    ax.set_xlim(0, 1.0)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def mcnemar_exact_p(only_a_correct: int, only_b_correct: int) -> float:
    """McNemar's exact test: two-sided binomial p-value of the discordant pairs b, c (1.0 when b + c = 0).

    p = min(1, 2 · Σ_{k <= min(b, c)} C(b + c, k) / 2^(b + c)); the terms are summed in log space
    (log C(n, k+1) = log C(n, k) + log((n - k) / (k + 1))), so millions of discordant rows do not overflow.
    """
    n, low = only_a_correct + only_b_correct, min(only_a_correct, only_b_correct)
    if n == 0:
        return 1.0
    k = np.arange(low, dtype=np.float64)
    log_terms = np.concatenate([[0.0], np.cumsum(np.log((n - k) / (k + 1)))]) - n * np.log(2.0)
    top = log_terms.max()
    return float(min(1.0, 2.0 * np.exp(top) * np.exp(log_terms - top).sum()))
