"""The sections of a report and its three page kinds: corpus outputs (ingest, classify), model outputs
(train, evaluate) and compare outputs; :func:`render_report` picks the kind of an output directory.

Sections whose data a job did not write (abstention, calibration temperature, leakage, a manifest)
are left out rather than shown empty.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from bm_ray.layout import COMPARE_FILE, JOB_FILE, LABELS_FILE, METRICS_FILE, PREDICTIONS_DIR, SUMMARY_FILE
from bm_ray.model.calibration import ECE_BINS, ece_noise_floor
from bm_ray.model.metrics import reliability_bins, risk_coverage
from bm_ray.model.uncertainty import CONFIDENCE, interval_text, method_text
from bm_ray.report.charts import COLORS, bar_chart, heatmap, histogram, line_chart, reliability_chart, thin
from bm_ray.report.html import esc, fmt, generic, page, section, snippet, stats, table
from bm_ray.report.outputs import (
    OutputDir,
    ReportError,
    correctness,
    detect_kind,
    load_predictions,
    reject_examples,
)
from bm_ray.results import CompareIntervals, MetricIntervals

EXAMPLES_PER_REASON = 3
EXAMPLES_LISTED = 10
LABELS_CHARTED = 25
CONFIDENCE_BINS = 20


# ------------------------------------------------------------------------------------ shared sections


def interval_details(
    block: type[MetricIntervals] | type[CompareIntervals], data: dict[str, Any], names: dict[str, str]
) -> tuple[dict[str, str], str]:
    """(tile key → "95% CI low–high", a note naming each interval's method) of an output's ``intervals``
    for the figures in `names` (key → name); nothing for an output written before bm-ray had intervals."""
    if not isinstance(data.get("intervals"), dict):
        return {}, ""
    parsed = block.model_validate(data["intervals"])
    shown = {key: getattr(parsed, key) for key in names if getattr(parsed, key, None) is not None}
    signed = {"accuracy_difference"}  # a difference reads with its sign
    details = {key: interval_text(interval, 4, key in signed) for key, interval in shown.items()}
    methods = "; ".join(f"{names[key]}: {method_text(interval)}" for key, interval in shown.items())
    return details, f"{CONFIDENCE:.0%} intervals under the figures ({methods})." if methods else ""


def label_section(counts: dict[str, int], title: str, note: str = "") -> tuple[str, str, str]:
    """Label distribution: the largest labels as bars, the rest summed."""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    items = [(str(k), float(v)) for k, v in ranked[:LABELS_CHARTED]]
    rest = ranked[LABELS_CHARTED:]
    if rest:
        items.append((f"({len(rest):,} other labels)", float(sum(v for _, v in rest))))
    total = sum(counts.values()) or 1
    body = bar_chart("labels", items, title) if items else '<p class="note">no labels</p>'
    body += table(
        ["label", "rows", "share"], [(k, v, f"{v / total:.1%}") for k, v in ranked[:LABELS_CHARTED]]
    )
    return section("labels", title, body, note)


def rejects_section(out: OutputDir, by_reason: dict[str, int], note: str = "") -> tuple[str, str, str]:
    """Rejects by reason (bars) and a few escaped examples of each."""
    if not by_reason:
        return section("rejects", "Rejects", '<p class="ok">no rows rejected</p>', note)
    items = sorted(((r, float(n)) for r, n in by_reason.items()), key=lambda kv: -kv[1])
    body = bar_chart("rejects", items, "rejected rows by reason", COLORS[3])
    examples = reject_examples(out, by_reason, EXAMPLES_PER_REASON)
    for reason, count in items:
        rows = examples.get(reason) or []
        body += f'<h3>{esc(reason)} <span class="note">({fmt(int(count))} {"row" if count == 1 else "rows"})</span></h3>'
        if rows:
            body += table(
                ["id", "source", "raw (snippet)"],
                [(r.get("id"), r.get("source"), snippet(r.get("raw") or "")) for r in rows],
                "examples",
            )
        else:
            body += '<p class="note">no example rows stored in this output</p>'
    return section("rejects", "Rejects", body, note)


def model_section(model: dict[str, Any]) -> tuple[str, str, str]:
    """The model that ran (name, version, path, base model, temperature, … whatever was recorded)."""
    return section("model", "Model", generic(model))


def details_section(name: str, data: Any) -> tuple[str, str, str]:
    """A file's JSON, collapsed."""
    text = json.dumps(data, indent=2, sort_keys=True, default=str)
    return section(
        "raw", "Raw data", f"<details><summary>{esc(name)}</summary><pre>{esc(text)}</pre></details>"
    )


# -------------------------------------------------------------------------------------- corpus reports


def confidence_section(out: OutputDir, summary: dict[str, Any]) -> tuple[str, str, str] | None:
    """Histogram of the top score of every prediction (streamed), plus the abstained count if recorded."""
    dataset = out.dataset(PREDICTIONS_DIR)
    if dataset is None or "score" not in dataset.schema.names:
        return None
    edges = np.linspace(0.0, 1.0, CONFIDENCE_BINS + 1)
    counts = np.zeros(CONFIDENCE_BINS, dtype=np.int64)
    abstained = 0
    columns = ["score", *(["abstained"] if "abstained" in dataset.schema.names else [])]
    for batch in dataset.to_batches(columns=columns):
        scores = batch.column("score").to_numpy(zero_copy_only=False)
        counts += np.histogram(np.clip(scores, 0.0, 1.0), bins=edges)[0]
        if "abstained" in columns:
            abstained += sum(bool(a) for a in batch.column("abstained").to_pylist())
    chart = histogram(
        "confidence", edges.tolist(), counts.tolist(), "top score", "confidence of the predictions"
    )
    tiles = [("rows_abstained", "abstained", summary.get("rows_abstained"))]
    if "rows_abstained" not in summary and "abstained" in columns:
        tiles = [("rows_abstained", "abstained", abstained)]
    low = int(counts[: CONFIDENCE_BINS // 2].sum())
    note = f"{low:,} predictions have a top score below 0.5."
    return section("confidence", "Confidence", stats(tiles) + chart, note)


def throughput_section(out: OutputDir) -> tuple[str, str, str] | None:
    """Rows committed over time, from the commit records' times."""
    points = out.commit_times()
    if len(points) < 2 or points[-1][0] - points[0][0] < 1.0:
        return None
    start = points[0][0]
    times = np.asarray([t - start for t, _ in points])
    rows = np.cumsum([n for _, n in points])
    xs, ys = thin(times, rows.astype(np.float64))
    rate = (rows[-1] - rows[0]) / (times[-1] or 1)
    chart = line_chart(
        "throughput",
        [("rows committed", xs, ys)],
        "seconds since the first commit",
        "rows",
        "rows committed over time",
    )
    note = (
        f"{len(points):,} commits; {rate:,.1f} rows/s between the first and the last commit "
        "(times are the commit records' modification times)."
    )
    return section("throughput", "Throughput", chart, note)


def input_section(summary: dict[str, Any], job: dict[str, Any] | None) -> tuple[str, str, str]:
    """What was read: the manifest when recorded, else the inputs, format and file counts."""
    manifest = summary.get("manifest") or (job or {}).get("manifest")
    keys = ("format", "inputs", "files", "ignored_files", "ignored_files_count", "rows_resumed")
    body = generic({k: summary[k] for k in keys if k in summary})
    if manifest:
        body += "<h3>Manifest</h3>" + generic(manifest)
    return section("input", "Input", body)


def corpus_report(out: OutputDir, kind: str) -> str:
    """ingest / classify: accounting, labels, confidence, throughput, rejects, model, input."""
    summary = out.json(SUMMARY_FILE)
    if not isinstance(summary, dict):
        raise ReportError(f"{out.output}: no {SUMMARY_FILE}; the {kind} job did not finish (rerun it)")
    job = out.json(JOB_FILE)
    ok_key = "rows_classified" if kind == "classify" else "rows_ok"
    read, ok, rejected = (
        summary["rows_read"],
        summary.get(ok_key, summary["rows_ok"]),
        summary["rows_rejected"],
    )
    balanced = read == ok + rejected
    check = (
        f'<p class="{"ok" if balanced else "bad"}" data-key="accounting">rows read {read:,} '
        f"{'=' if balanced else '≠'} {'classified' if kind == 'classify' else 'ok'} {ok:,} + rejected {rejected:,}</p>"
    )
    tiles = stats(
        [
            ("rows_read", "rows read", read),
            (ok_key, "classified" if kind == "classify" else "ok", ok),
            ("rows_rejected", "rejected", rejected),
            ("rows_abstained", "abstained", summary.get("rows_abstained")),
            ("blank_lines", "blank lines (not rows)", summary.get("blank_lines")),
            ("rows_truncated", "truncated", summary.get("rows_truncated")),
            ("rows_utf8_repaired", "UTF-8 repaired", summary.get("rows_utf8_repaired")),
            ("elapsed_s", "seconds", summary.get("elapsed_s")),
            ("rows_per_s", "rows/s", summary.get("rows_per_s")),
        ]
    )
    sections = [section("overview", "Rows", tiles + check)]
    if isinstance(summary.get("model"), dict):
        sections.append(model_section(summary["model"]))
    sections.append(
        label_section(
            summary.get("label_counts") or {}, "Predicted labels" if kind == "classify" else "Labels"
        )
    )
    sections.extend(s for s in (confidence_section(out, summary), throughput_section(out)) if s is not None)
    sections.append(rejects_section(out, summary.get("rejected_by_reason") or {}))
    sections.append(input_section(summary, job))
    sections.append(details_section(SUMMARY_FILE, summary))
    return page(f"bm-ray {kind} report", out.output, sections)


# --------------------------------------------------------------------------------------- model reports


def selective_sections(rows: pa.Table) -> Iterator[tuple[str, str, str]]:
    """Risk–coverage curve, reliability diagram and the example lists of per-row predictions."""
    scores, correct = correctness(rows)
    coverage, risk = risk_coverage(scores, correct)
    xs, ys = thin(coverage, risk)
    chart = line_chart(
        "risk_coverage",
        [("risk", xs, ys)],
        "coverage (most confident rows kept)",
        "error rate",
        "risk–coverage curve",
        ylim=(0.0, max(max(ys, default=0.0) * 1.1, 0.05)),
        percent_y=True,
    )
    aurc = float(risk.mean()) if len(risk) else float("nan")
    yield section(
        "risk",
        "Risk–coverage",
        chart,
        "Error rate of the rows kept when only the most confident ones are kept; a curve that falls to the "
        f"left means the scores rank the errors last. Area under the curve (AURC) {aurc:.4f}, lower is better.",
    )
    bins = reliability_bins(scores, correct, bins=ECE_BINS)
    floor = ece_noise_floor(scores)
    chart = reliability_chart("reliability", bins, "reliability diagram")
    yield section(
        "calibration",
        "Calibration",
        stats(
            [
                ("ece", "expected calibration error", bins["ece"]),
                ("ece_floor", "ECE of perfect scores at this size", floor["mean"]),
            ]
        )
        + chart,
        "Bars on the diagonal mean the scores are calibrated probabilities; bars below it mean over-confidence. "
        f"ECE is biased upwards on a finite set: perfectly calibrated scores would measure about "
        f"{floor['mean']:.4f} ± {floor['std']:.4f} on these {len(scores):,} rows, so only the excess over "
        "that is miscalibration.",
    )
    order = np.argsort(scores, kind="stable")
    by_confidence = order[::-1]
    headers = ["id", "true", "predicted", "score", "text"]

    def listed(index: np.ndarray) -> str:
        picked = rows.take(pa.array(index[:EXAMPLES_LISTED], pa.int64())).to_pylist()
        if not picked:
            return '<p class="note">none</p>'
        cells = [(r["id"], r["label"], r["predicted"], float(r["score"]), snippet(r["text"])) for r in picked]
        return table(headers, cells, "examples")

    wrong = by_confidence[~correct[by_confidence]]
    body = "<h3>Lowest confidence</h3>" + listed(order) + "<h3>Most confidently wrong</h3>" + listed(wrong)
    yield section("examples", "Examples", body)


def model_report(out: OutputDir, kind: str) -> str:
    """train / evaluate: scores, curves, confusion matrix, per-class table, selective prediction, leakage."""
    metrics = out.json(METRICS_FILE)
    if not isinstance(metrics, dict):
        raise ReportError(f"{out.output}: no {METRICS_FILE}; the {kind} job did not finish (rerun it)")
    rows = load_predictions(out)
    bins = None
    if rows is not None and rows.num_rows:
        bins = reliability_bins(*correctness(rows), bins=ECE_BINS)
    epochs = metrics.get("epochs") or []
    intervals, intervals_note = interval_details(
        MetricIntervals, metrics, {"accuracy": "accuracy", "macro_f1": "macro-F1", "ece": "ECE"}
    )
    tiles = stats(
        [
            ("accuracy", "accuracy", metrics.get("accuracy")),
            ("macro_f1", "macro-F1", metrics.get("macro_f1")),
            ("rows_evaluated", "rows evaluated", metrics.get("rows_evaluated")),
            ("rows_rejected", "rows rejected", metrics.get("rows_rejected")),
            ("log_loss", "log loss", metrics.get("log_loss")),
            ("ece", "calibration error (ECE)", bins and bins["ece"]),
            ("best_epoch", "best epoch", metrics.get("best_epoch") if epochs else None),
            ("elapsed_s", "seconds", metrics.get("elapsed_s")),
        ],
        intervals,
    )
    where = "the validation rows" if kind == "train" else f"{', '.join(metrics.get('data') or [])}"
    sections = [section("overview", "Scores", tiles, f"Measured on {where}. {intervals_note}".strip())]
    model = out.json(LABELS_FILE) if kind == "train" else metrics.get("model")
    if isinstance(model, dict):
        sections.append(model_section(model))
    if epochs:
        xs = [e["epoch"] for e in epochs]
        loss = line_chart(
            "loss",
            [
                ("train loss", xs, [e["train_loss"] for e in epochs]),
                ("validation loss", xs, [e["val_loss"] for e in epochs]),
            ],
            "epoch",
            "loss",
            "loss per epoch",
        )
        keys = (
            ("train_accuracy", "train accuracy"),
            ("val_accuracy", "validation accuracy"),
            ("val_macro_f1", "validation macro-F1"),
        )
        scores = line_chart(
            "scores",
            [(name, xs, [e[key] for e in epochs]) for key, name in keys],
            "epoch",
            "score",
            "scores per epoch",
        )
        sections.append(section("epochs", "Training curves", f'<div class="charts">{loss}{scores}</div>'))
    matrix = metrics.get("confusion_matrix")
    if matrix:
        sections.append(
            section(
                "confusion",
                "Confusion matrix",
                heatmap("confusion", matrix["labels"], matrix["matrix"], "confusion matrix"),
                "Rows: true label; columns: predicted; colour: share of the row.",
            )
        )
    per_class = metrics.get("per_class") or {}
    if per_class:
        body = table(
            ["label", "precision", "recall", "F1", "support"],
            [(k, v["precision"], v["recall"], v["f1"], v["support"]) for k, v in per_class.items()],
            "per-class",
        )
        body += bar_chart(
            "f1", [(k, float(v["f1"])) for k, v in per_class.items()], "F1 per class", COLORS[2]
        )
        sections.append(section("classes", "Per class", body))
    if rows is not None and rows.num_rows:
        sections.extend(selective_sections(rows))
    if metrics.get("leakage") is not None:
        sections.append(section("leakage", "Leakage", generic(metrics["leakage"])))
    data = metrics.get("data")
    if kind == "train" and isinstance(data, dict) and isinstance(data.get("labels"), dict):
        sections.append(
            label_section(
                data["labels"],
                "Training labels",
                f"{data.get('train_rows', 0):,} training rows, {data.get('val_rows', 0):,} validation rows.",
            )
        )
    # evaluate: every rejected row; train: the rejects of the training and the validation data
    by_reason = Counter(metrics.get("rejected_by_reason") or {})
    for part in ("train_data", "val_data"):
        by_reason.update(
            ((data if isinstance(data, dict) else {}).get(part) or {}).get("rejected_by_reason") or {}
        )
    sections.append(rejects_section(out, dict(by_reason)))
    sections.append(details_section(METRICS_FILE, metrics))
    return page(f"bm-ray {kind} report", out.output, sections)


# ------------------------------------------------------------------------------------- compare report


def compare_report(out: OutputDir) -> str:
    """compare: agreement and the other numbers as tiles, a flip matrix if recorded, everything else as tables."""
    data = out.json(COMPARE_FILE)
    if not isinstance(data, dict):
        raise ReportError(f"{out.output}: no {COMPARE_FILE}")
    numbers = [
        (k, k.replace("_", " "), v)
        for k, v in data.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    ]
    intervals, note = interval_details(
        CompareIntervals,
        data,
        {"accuracy_a": "accuracy A", "accuracy_b": "accuracy B", "accuracy_difference": "B − A"},
    )
    sections = [section("overview", "Agreement", stats(numbers, intervals), note)]
    flips = data.get("flip_matrix")
    if isinstance(flips, dict) and "labels" in flips and "matrix" in flips:
        sections.append(
            section(
                "flips",
                "Flip matrix",
                heatmap("flips", flips["labels"], flips["matrix"], "flip matrix"),
                "Rows: label of the first model; columns: label of the second.",
            )
        )
    rest = {k: v for k, v in data.items() if k != "flip_matrix" and not isinstance(v, int | float)}
    if rest:
        sections.append(section("details", "Details", generic(rest)))
    return page("bm-ray compare report", out.output, sections)


# ------------------------------------------------------------------------------------------ page kind


def render_report(output: str) -> str:
    """The report of a job output directory as an HTML string (see :func:`build_report`)."""
    out = OutputDir(output)
    kind = detect_kind(out)
    if kind in ("ingest", "classify"):
        return corpus_report(out, kind)
    if kind == "compare":
        return compare_report(out)
    return model_report(out, kind)
