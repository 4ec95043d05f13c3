"""Scoring a predictor on labelled rows: metrics, the per-row prediction log and the report files.

Below the jobs: training's final validation (:mod:`bm_ray.jobs.train.job`) and `bm-ray evaluate`
(:mod:`bm_ray.jobs.evaluate`) score rows the same way through these functions.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from bm_ray.layout import CURVE_FILE, METRICS_FILE, PREDICTIONS_FILE
from bm_ray.model.calibration import ECE_BINS, ece_noise_floor
from bm_ray.model.engine import Predictor
from bm_ray.model.metrics import (
    ConfusionMatrix,
    abstained,
    plot_confusion_matrix,
    plot_threshold_curve,
    reliability_bins,
    threshold_curve,
    threshold_for_accuracy,
)
from bm_ray.model.uncertainty import accuracy_interval, scored_intervals
from bm_ray.results import Interval, ScoredMetrics

UNKNOWN_LABEL = "unknown_label"
MISSING_LABEL = "missing_label"
TEXT_SNIPPET_CHARS = 500
"""Characters of each text kept in predictions.parquet: enough to eyeball an example in the report."""
CURVE_PLOT = "risk_coverage.png"


class PredictionLog:
    """Per-row predictions of an evaluation (id, true label, predicted label, top score, windows, text snippet).

    Written as predictions.parquet beside metrics.json: the report's risk–coverage curve, reliability
    diagram and example lists are computed from it alone. With `min_score`, rows below it are marked
    ``abstained`` (a column only then: without a threshold nothing is thresholded).
    """

    def __init__(self, min_score: float | None = None) -> None:
        names = ("id", "label", "predicted", "score", "windows", "text")
        self.columns: dict[str, list[Any]] = {k: [] for k in names}
        self.min_score = min_score

    def add(
        self,
        ids: list[str],
        labels: list[str],
        predicted: list[str],
        scores: Any,
        windows: Any,
        texts: list[str],
    ) -> None:
        """Append one batch of evaluated rows (`windows`: windows each text was read as)."""
        for name, values in zip(self.columns, (ids, labels, predicted, scores, windows, texts), strict=True):
            self.columns[name].extend(values)

    def write(self, path: str | Path) -> Path:
        """Write the rows as Parquet (texts cut to :data:`TEXT_SNIPPET_CHARS`)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = dict(self.columns, text=[t[:TEXT_SNIPPET_CHARS] for t in self.columns["text"]])
        if self.min_score is not None:
            columns["abstained"] = abstained(np.asarray(self.columns["score"]), self.min_score).tolist()
        types = {"score": pa.float32(), "windows": pa.int32(), "abstained": pa.bool_()}
        schema = pa.schema([(k, types.get(k, pa.string())) for k in columns])
        pq.write_table(pa.table(columns, schema=schema), path)
        return Path(path)

    def _answered(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(top scores, whether each row was predicted right, whether it was answered) of the logged rows."""
        scores = np.asarray(self.columns["score"], dtype=np.float64)
        correct = np.asarray(self.columns["label"], dtype=object) == np.asarray(
            self.columns["predicted"], dtype=object
        )
        return scores, correct, ~abstained(scores, self.min_score)

    def answered_interval(self) -> Interval | None:
        """The Wilson interval of ``accuracy_answered`` (None when no row was answered)."""
        _, correct, answered = self._answered()
        return (
            accuracy_interval(int(correct[answered].sum()), int(answered.sum())) if answered.any() else None
        )

    def selective(self, target_accuracy: float | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """(report entries, curve) of selective prediction over the logged rows.

        Entries: ``min_score``, ``rows_abstained``, ``coverage`` (share of rows answered),
        ``accuracy_answered`` (None when every row abstained) and, given `target_accuracy`,
        ``target_accuracy`` (:func:`~bm_ray.model.metrics.threshold_for_accuracy`). The curve is
        :func:`~bm_ray.model.metrics.threshold_curve` plus ``rows`` and that target entry.
        """
        scores, correct, answered = self._answered()
        curve: dict[str, Any] = {"rows": len(scores), **threshold_curve(scores, correct)}
        entries: dict[str, Any] = {
            "min_score": self.min_score,
            "rows_abstained": int((~answered).sum()),
            "coverage": float(answered.mean()) if len(scores) else 0.0,
            "accuracy_answered": float(correct[answered].mean()) if answered.any() else None,
        }
        if target_accuracy is not None:
            entries["target_accuracy"] = curve["target_accuracy"] = threshold_for_accuracy(
                curve, target_accuracy
            )
        return entries, curve


def evaluate_batches(predictor: Predictor, batches: Any, log: PredictionLog | None = None) -> dict[str, Any]:
    """Evaluate `(texts, labels, ids)` batches; rows whose label the model does not know are counted, not fatal.

    Returns the metrics report plus `rows_evaluated`, `rows_rejected`, `rejected_by_reason`,
    `unknown_labels` (label → count), `log_loss`, `ece` (15 equal-width bins of the top score),
    `ece_floor` / `ece_floor_std` (the ECE perfectly calibrated scores would show on this many rows:
    :func:`bm_ray.model.calibration.ece_noise_floor`), `intervals` (95% intervals of accuracy,
    macro-F1 and ECE: :func:`bm_ray.model.uncertainty.scored_intervals`),
    `windows` (read in all) and `rows_windows_capped` (texts longer than `max_windows` windows).
    Rows may be labelled with the model's label names or with the raw values it was trained on
    (``--label-names``); both count as that name. Every evaluated row goes into `log` when given.
    """
    matrix = ConfusionMatrix(predictor.labels)
    to_name = predictor.info.label_lookup()
    unknown: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    log_loss_sum = 0.0
    top_scores: list[np.ndarray] = []
    hits: list[np.ndarray] = []
    windows_total = capped_total = 0
    for texts, raw_labels, ids in batches:
        labels = [to_name.get(label, label) if label is not None else None for label in raw_labels]
        keep = [i for i, label in enumerate(labels) if label in matrix.index]
        for label in labels:
            if label is None:
                rejected[MISSING_LABEL] += 1
            elif label not in matrix.index:
                rejected[UNKNOWN_LABEL] += 1
                unknown[label] += 1
        if not keep:
            continue
        scored = predictor.score_texts([texts[i] for i in keep])
        probs = scored.probs
        windows_total += int(scored.windows.sum())
        capped_total += int(scored.capped.sum())
        true_ids = np.asarray([matrix.index[labels[i]] for i in keep])
        top = probs.argmax(axis=1)
        matrix.add_indices(true_ids, top)
        top_scores.append(probs.max(axis=1))
        hits.append(top == true_ids)
        if log is not None:
            kept_texts = [texts[i] for i in keep]
            names = [predictor.labels[k] for k in top]
            kept_ids, kept_labels = [ids[i] for i in keep], [labels[i] for i in keep]
            log.add(kept_ids, kept_labels, names, probs.max(axis=1), scored.windows, kept_texts)
        log_loss_sum += float(-np.log(np.clip(probs[np.arange(len(keep)), true_ids], 1e-12, 1.0)).sum())
    report = matrix.report()
    all_top = np.concatenate(top_scores) if top_scores else np.zeros(0)
    all_hits = np.concatenate(hits) if hits else np.zeros(0, dtype=bool)
    floor = ece_noise_floor(all_top)
    report.update(
        rows_evaluated=matrix.total,
        rows_rejected=sum(rejected.values()),
        rejected_by_reason=dict(rejected),
        unknown_labels=dict(unknown),
        log_loss=log_loss_sum / matrix.total if matrix.total else float("nan"),
        ece=reliability_bins(all_top, all_hits, bins=ECE_BINS)["ece"] if top_scores else float("nan"),
        ece_bins=ECE_BINS,
        ece_floor=floor["mean"],
        ece_floor_std=floor["std"],
        intervals=scored_intervals(matrix.matrix, all_top, all_hits, ECE_BINS),
        windows=windows_total,
        rows_windows_capped=capped_total,
    )
    return report


def corpus_batches(ds: Any, ingest_rejects: Counter[str], batch_size: int = 1024) -> Any:
    """Yield (texts, labels, ids) of the ok rows of a corpus dataset in one streaming pass.

    Reject rows (blank lines excepted: they are not rows) are counted into `ingest_rejects` by reason.
    """
    for batch in ds.iter_batches(batch_size=batch_size, batch_format="pyarrow"):
        reasons = batch.column("reason").to_pylist()
        ingest_rejects.update(r for r in reasons if r is not None and r != "blank_line")
        ok = [i for i, reason in enumerate(reasons) if reason is None]
        texts, labels = batch.column("text").to_pylist(), batch.column("label").to_pylist()
        ids = batch.column("id").to_pylist()
        yield [texts[i] for i in ok], [labels[i] for i in ok], [ids[i] for i in ok]


def write_report(
    result: ScoredMetrics,
    output: str | Path,
    title: str,
    log: PredictionLog | None = None,
    curve: dict[str, Any] | None = None,
) -> Path:
    """Write metrics.json (`result`: a train or evaluate result), confusion_matrix.png, (given `log`)
    predictions.parquet and (given `curve`, a :meth:`PredictionLog.selective` curve) risk_coverage.json
    + .png into `output`."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    report = result.model_dump()
    (out / METRICS_FILE).write_text(json.dumps(report, indent=2), encoding="utf-8")
    if log is not None:
        log.write(out / PREDICTIONS_FILE)
    plot_confusion_matrix(report, out / "confusion_matrix.png", title=title)
    if curve is not None:
        (out / CURVE_FILE).write_text(json.dumps(curve), encoding="utf-8")
        plot_threshold_curve(
            curve,
            out / CURVE_PLOT,
            title=f"{title}: accuracy vs coverage",
            marked=curve.get("target_accuracy"),
        )
    return out
