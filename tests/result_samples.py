"""Job result documents as the jobs write them (summary.json, metrics.json, compare.json, results.json),
key for key and in the jobs' key order, for the tests of the result models and of the CLI without Ray."""

from __future__ import annotations

from typing import Any

MANIFEST = [
    {"path": "/data/news.jsonl", "name": "news.jsonl", "size": 1234, "mtime": "2024-05-01T10:00:00+00:00"},
    {"path": "s3://bucket/more.jsonl", "name": "more.jsonl", "size": 99, "mtime": None},
]
LONG_TEXT = {
    "long_text": "window",
    "window_stride": None,
    "max_windows": 8,
    "window_aggregation": "confidence",
    "max_batch_tokens": 16384,
}
LEAKAGE = {"val_rows": 100, "exact": 7, "near": 5, "fraction": 0.12, "method": "MinHash (128 permutations)"}
NEAR_DUPLICATES = {
    "clusters": 3,
    "rows_in_clusters": 7,
    "exact_pairs": 2,
    "near_pairs": 4,
    "threshold": 0.8,
    "method": "MinHash (128 permutations)",
}


def accounting(labels: dict[str, int]) -> dict[str, Any]:
    """What :func:`bm_ray.output.commit.summarize` adds up from the commit records."""
    return {
        "rows_read": 12,
        "rows_ok": 10,
        "rows_rejected": 2,
        "rejected_by_reason": {"empty_text": 1, "too_long": 1},
        "blank_lines": 1,
        "label_counts": labels,
        "rows_truncated": 0,
        "rows_utf8_repaired": 1,
        "units": 2,
        "commits": 3,
    }


def corpus_pass() -> dict[str, Any]:
    """What :func:`bm_ray.output.driver.commit_corpus` adds to the accounting."""
    return {
        "format": "jsonl",
        "inputs": ["/data/news.jsonl", "s3://bucket/more.jsonl"],
        "files": 2,
        "ignored_files": ["README.TXT"],
        "ignored_files_count": 1,
        "rows_resumed": 0,
        "inputs_manifest": MANIFEST,
    }


def ingest_summary(near_duplicates: bool = False) -> dict[str, Any]:
    summary = {**accounting({"sport": 6, "tech": 4}), **corpus_pass(), "elapsed_s": 1.234}
    if near_duplicates:
        summary["near_duplicates"] = NEAR_DUPLICATES
    return summary


def classify_summary(min_score: float | None = None) -> dict[str, Any]:
    summary = accounting({"Sports": 7, "World": 3})
    if min_score is not None:
        summary["rows_abstained"] = 2
    summary["rows_classified"] = 10
    summary.update(corpus_pass())
    summary.update(
        elapsed_s=2.5,
        rows_this_run=10,
        rows_per_s=4.0,
        padding_waste=1.1234,
        real_tokens=800,
        long_text=LONG_TEXT,
        min_score=min_score,
        windows=11,
        rows_windows_capped=0,
        model={"name": "news", "version": "0123456789abcdef-20240501T100000Z", "path": "models/news"},
        precision="auto",
        actors={"min": 1, "max": 2, "cpus_per_actor": 1},
        batch_size=32,
        output="out/classify",
    )
    return summary


def bootstrap(low: float, high: float) -> dict[str, Any]:
    """A bootstrap interval as :mod:`bm_ray.model.uncertainty` writes it."""
    return {"low": low, "high": high, "method": "bootstrap", "resamples": 1000, "seed": 0}


def wilson(low: float, high: float) -> dict[str, Any]:
    """A Wilson interval as :mod:`bm_ray.model.uncertainty` writes it."""
    return {"low": low, "high": high, "method": "wilson"}


def scored(nan: bool = False, intervals: bool = True) -> dict[str, Any]:
    """What :func:`bm_ray.jobs.scoring.evaluate_batches` returns (`nan`: of zero rows; `intervals`:
    False for a document of a bm-ray that wrote none)."""

    def value(number: float) -> float:
        return float("nan") if nan else number

    block = {
        "confidence": 0.95,
        "accuracy": wilson(value(0.3006), value(0.9544)),
        "macro_f1": bootstrap(value(0.2), value(1.0)),
        "ece": bootstrap(value(0.15), value(0.575)),
    }
    return {
        "accuracy": 0.75,
        "macro_f1": 0.7,
        "per_class": {
            "Sports": {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2},
            "World": {"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 2},
        },
        "confusion_matrix": {"labels": ["Sports", "World"], "matrix": [[1, 1], [0, 2]]},
        "rows_evaluated": 4,
        "rows_rejected": 1,
        "rejected_by_reason": {"unknown_label": 1},
        "unknown_labels": {"Weather": 1},
        "log_loss": float("nan") if nan else 0.52,
        "ece": float("nan") if nan else 0.1,
        "ece_bins": 15,
        "ece_floor": float("nan") if nan else 0.2,
        "ece_floor_std": float("nan") if nan else 0.05,
        **({"intervals": block} if intervals else {}),
        "windows": 5,
        "rows_windows_capped": 0,
    }


def evaluate_metrics(
    target: bool = False, leakage: bool = False, nan: bool = False, intervals: bool = True
) -> dict[str, Any]:
    metrics = scored(nan, intervals)
    if intervals and not nan:  # some rows answered: their accuracy's interval
        metrics["intervals"]["accuracy_answered"] = wilson(0.3006, 0.9544)
    metrics.update(min_score=None, rows_abstained=0, coverage=1.0, accuracy_answered=None if nan else 0.75)
    if target:
        metrics["target_accuracy"] = {
            "target": 0.99,
            "threshold": None,
            "best_accuracy": None,
            "best_threshold": None,
            "best_coverage": None,
        }
    metrics.update(
        model={
            "name": "news",
            "version": "0123456789abcdef-20240501T100000Z",
            "path": "models/news",
            "temperature": 1.25,
            "top_label_calibration": {"method": "beta", "a": 1.0, "b": 0.5, "c": -0.1},
        },
        data=["/data/test.jsonl"],
        long_text=LONG_TEXT,
        elapsed_s=3.21,
    )
    if leakage:
        metrics["leakage"] = LEAKAGE
    return metrics


def compare_doc(labelled: bool = True, promotion: bool = False, intervals: bool = True) -> dict[str, Any]:
    model = {"name": "news", "version": "v1", "path": "models/a"}
    doc: dict[str, Any] = {
        "models": {"a": model, "b": {**model, "version": "v2", "path": "models/b"}},
        "rows": 9,
        "rows_agree": 2,
        "rows_flipped": 7,
        "agreement": 2 / 9,
        "flip_matrix": {"labels": ["x", "y"], "matrix": [[1, 6], [1, 1]]},
        "label_counts": {"x": {"a": 7, "b": 2}, "y": {"a": 2, "b": 7}},
    }
    if labelled:
        doc.update(rows_labelled=8, accuracy_a=0.25, accuracy_b=0.875)
        if intervals:
            doc["accuracy_difference"] = 0.625
        doc.update(only_a_correct=1, only_b_correct=6, mcnemar_p=0.125)
        if intervals:
            doc["intervals"] = {
                "confidence": 0.95,
                "accuracy_a": wilson(0.0715, 0.5907),
                "accuracy_b": wilson(0.5291, 0.9776),
                "accuracy_difference": {**bootstrap(0.125, 1.0), "method": "paired_bootstrap"},
            }
    if promotion:
        doc["promotion"] = {
            "alias": "champion",
            "promoted": False,
            "reason": "B is more accurate but not significantly: McNemar p = 0.125 >= 0.05",
            "registered_model": "news",
            "registered_version": "2",
        }
    leg = {"rows_read": 10, "rows_rejected": 1, "rows_resumed": 0}
    doc.update(
        legs={"a": {"output": "out/a", **leg}, "b": {"output": "out/b", **leg}},
        elapsed_s=4.5,
        output="out",
    )
    return doc


def train_metrics(
    refit: bool = False,
    val_data: bool = False,
    calibrate: bool = True,
    mlflow: bool = False,
    intervals: bool = True,
) -> dict[str, Any]:
    metrics = scored(intervals=intervals)
    ece = {"ece_interval": bootstrap(0.05, 0.3)} if intervals else {}
    counts = {
        "rows_read": 120,
        "rows_ok": 118,
        "rows_rejected": 2,
        "rejected_by_reason": {"missing_label": 2},
    }
    data: dict[str, Any] = {"train_data": counts}
    if val_data:
        data["val_data"] = {
            **counts,
            "rows_read": 30,
            "rows_ok": 30,
            "rows_rejected": 0,
            "rejected_by_reason": {},
        }
    else:
        data["duplicates"] = NEAR_DUPLICATES
    data.update(
        labels={"1": 60, "2": 58},
        background_rows=0,
        boilerplate_rows=0,
        train_rows=100,
        val_rows=18,
        max_length=128,
    )
    calibration = {
        "temperature": 1.3,
        "top_label_calibration": None,
        "rows": 18,
        "ece_bins": 15,
        "before": {"ece": 0.2, "log_loss": 0.7, **ece},
        "after_temperature": {"ece": 0.1, "log_loss": 0.6, **ece},
        "after": {"ece": 0.1, "log_loss": 0.6, **ece},
        "note": "top-label map not fitted: 18 validation rows, it needs 200",
    }
    epoch = {
        "epoch": 1,
        "train_loss": 0.9,
        "val_accuracy": 0.7,
        "val_macro_f1": 0.65,
        "recovered_after_epochs": [],
    }
    metrics.update(
        calibration=calibration if calibrate else None,
        epochs=[epoch, {**epoch, "epoch": 2}],
        best_epoch=2,
        recovered_after_epochs=[],
        leakage=LEAKAGE,
        data=data,
        spec={"data": {"input": ["/data/train.jsonl"]}, "output": "models/news", "epochs": 2},
        elapsed_s=61.5,
    )
    if refit:
        metrics["refit"] = {
            "rows": 118,
            "epochs": 2,
            "train_s": 30.1,
            "note": "the model directory holds the refit weights",
        }
    if mlflow:
        metrics["mlflow_run_id"] = "0123456789abcdef0123456789abcdef"
    return metrics


def tune_doc(mlflow: bool = False) -> dict[str, Any]:
    best = {"learning_rate": 5e-05, "epochs_run": 2, "val_macro_f1": 0.8, "error": ""}
    return {
        "trials": [
            best,
            {"learning_rate": 0.0001, "epochs_run": 1, "val_macro_f1": float("nan"), "error": "boom"},
        ],
        "best": best,
        "metric": "val_macro_f1",
        "split": "grouped",
        "leakage": LEAKAGE,
        "elapsed_s": 120.4,
        **({"mlflow_run_id": "fedcba9876543210fedcba9876543210"} if mlflow else {}),
    }
