"""`report.html`: one self-contained page per job output, built from the output directory alone.

Every job (ingest, classify, train, evaluate) calls :func:`try_build_report` at its end, and
``bm-ray report DIR`` rebuilds it. No model and no Ray: only the files the job left behind
(``summary.json``, ``_commits/``, ``rejects/``, ``predictions/``, ``metrics.json``, ``labels.json``,
``predictions.parquet``, ``compare.json``). It imports only the base layer (the commit-record
layout of :mod:`bm_ray.output.commit`, the model-file name, :mod:`bm_ray.model.metrics`), which is what lets every job
call it: it sits beside the base layer, not above the jobs as the design sketch drew it. Charts are inline SVG drawn here, the CSS is inline and
the page has no script at all (its Content-Security-Policy forbids scripts and remote loads), so it
opens from disk, offline, anywhere.

Corpus text, ids, labels and reject snippets are untrusted: every value goes through :func:`esc`
(HTML escaping, quotes included) before it reaches the page, in text and in attributes alike.
Sections whose data a job did not write (abstention, calibration temperature, leakage, a manifest)
are left out rather than shown empty.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import logging
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from bm_ray import storage
from bm_ray.model.calibration import ECE_BINS, ece_noise_floor
from bm_ray.model.metrics import reliability_bins, risk_coverage
from bm_ray.model.registry import LABELS_FILE
from bm_ray.output import commit

logger = logging.getLogger(__name__)

REPORT_FILE = "report.html"
PREDICTIONS_DIR = "predictions"
"""Prediction tables of `bm-ray classify` (under the output directory)."""
PREDICTIONS_FILE = "predictions.parquet"
"""Per-row predictions of `bm-ray evaluate` and of training's validation (id, label, predicted, score, text)."""
METRICS_FILE = "metrics.json"
COMPARE_FILE = "compare.json"
KINDS = ("ingest", "classify", "train", "evaluate", "compare")

EXAMPLES_PER_REASON = 3
EXAMPLES_LISTED = 10
LABELS_CHARTED = 25
CONFIDENCE_BINS = 20
CURVE_POINTS = 200
"""Risk–coverage and throughput curves are drawn with at most this many points."""

COLORS = ("#2563eb", "#f59e0b", "#16a34a", "#dc2626", "#7c3aed", "#0891b2", "#db2777", "#65a30d")
CHART_WIDTH = 640


class ReportError(ValueError):
    """The directory is not a bm-ray job output; the message says what was expected."""


def esc(value: Any) -> str:
    """HTML-escape any value (quotes too, so it is safe in attributes)."""
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    """A number for people: thousands separators for integers, 4 significant digits for floats."""
    if isinstance(value, bool) or value is None:
        return esc(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:,.4g}" if abs(value) < 1e6 else f"{value:,.0f}"
    return esc(value)


# ----------------------------------------------------------------------------------- reading an output


class OutputDir:
    """Read-only view of a job output directory (a local path or a pyarrow-filesystem URI)."""

    def __init__(self, output: str) -> None:
        self.output = output
        self.fs, self.root = storage.resolve_uri(output)

    def path(self, name: str) -> str:
        """Full path of `name` under the output."""
        return f"{self.root.rstrip('/')}/{name}"

    def kind_of(self, name: str) -> pafs.FileType:
        """File, Directory or NotFound."""
        return self.fs.get_file_info(self.path(name)).type

    def json(self, name: str) -> Any:
        """Parsed JSON file, or None when absent."""
        if self.kind_of(name) != pafs.FileType.File:
            return None
        with self.fs.open_input_stream(self.path(name)) as stream:
            return json.loads(stream.read().decode("utf-8"))

    def dataset(self, name: str) -> pads.Dataset | None:
        """Parquet dataset of a file or a directory (hidden and temporary files ignored), or None."""
        if self.kind_of(name) == pafs.FileType.NotFound:
            return None
        dataset = pads.dataset(self.path(name), filesystem=self.fs, format="parquet")
        return dataset if dataset.files else None

    def commit_times(self) -> list[tuple[float, int]]:
        """(commit time, rows committed) of every commit record, oldest first.

        The time is the record file's modification time: the record is written last and moved into
        place, so its mtime is the moment the run was committed.
        """
        selector = pafs.FileSelector(self.path(commit.COMMITS_DIR), allow_not_found=True)
        points = []
        for info in self.fs.get_file_info(selector):
            if info.type == pafs.FileType.File and info.base_name.endswith(".json"):
                if info.base_name.startswith(".") or info.mtime is None:
                    continue
                with self.fs.open_input_stream(info.path) as stream:
                    record = json.loads(stream.read().decode("utf-8"))
                points.append((info.mtime.timestamp(), int(record["rows_committed"])))
        return sorted(points)


def detect_kind(out: OutputDir) -> str:
    """Which job wrote the output: from `_job.json`, else from the files it holds."""
    job = out.json(commit.JOB_FILE)
    if isinstance(job, dict) and job.get("kind") in KINDS:
        return str(job["kind"])
    if out.kind_of(COMPARE_FILE) == pafs.FileType.File:
        return "compare"
    metrics = out.json(METRICS_FILE)
    if isinstance(metrics, dict):
        return "train" if "epochs" in metrics else "evaluate"
    if out.kind_of(commit.SUMMARY_FILE) == pafs.FileType.File:
        return "classify" if out.kind_of(PREDICTIONS_DIR) == pafs.FileType.Directory else "ingest"
    raise ReportError(
        f"{out.output}: not a bm-ray job output (no {commit.JOB_FILE}, {commit.SUMMARY_FILE}, {METRICS_FILE} "
        f"or {COMPARE_FILE}); give the --output directory of ingest, classify, train or evaluate"
    )


def reject_examples(out: OutputDir, reasons: Iterable[str], per_reason: int) -> dict[str, list[dict]]:
    """Up to `per_reason` reject rows (id, source, raw) of each reason, reading only as far as needed."""
    wanted = {reason: [] for reason in reasons}
    dataset = out.dataset(commit.REJECTS_DIR)
    if dataset is None or not wanted:
        return wanted
    columns = [c for c in ("id", "source", "reason", "raw") if c in dataset.schema.names]
    for batch in dataset.to_batches(columns=columns):
        for row in batch.to_pylist():
            examples = wanted.setdefault(row["reason"], [])
            if len(examples) < per_reason:
                examples.append(row)
        if all(len(v) >= per_reason for v in wanted.values()):
            break
    return wanted


# ---------------------------------------------------------------------------------------- SVG charts


@dataclass(frozen=True)
class Axes:
    """A plot area with linear x/y scales."""

    width: int
    height: int
    xlim: tuple[float, float]
    ylim: tuple[float, float]
    left: int = 64
    right: int = 20
    top: int = 20
    bottom: int = 46

    def x(self, value: float) -> float:
        """Pixel x of a data x."""
        lo, hi = self.xlim
        return self.left + (value - lo) / ((hi - lo) or 1) * (self.width - self.left - self.right)

    def y(self, value: float) -> float:
        """Pixel y of a data y."""
        lo, hi = self.ylim
        return (
            self.height
            - self.bottom
            - (value - lo) / ((hi - lo) or 1) * (self.height - self.top - self.bottom)
        )


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` round tick values covering [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


def svg(name: str, width: int, height: int, body: str, title: str) -> str:
    """An inline SVG chart element (class `chart`, `data-chart` = name, fixed pixel size)."""
    return (
        f'<svg class="chart" data-chart="{esc(name)}" xmlns="http://www.w3.org/2000/svg" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{esc(title)}"><title>{esc(title)}</title>{body}</svg>'
    )


def axes_frame(axes: Axes, xlabel: str, ylabel: str, percent_y: bool = False) -> str:
    """Grid lines, tick labels and axis titles of an xy chart."""
    parts = []
    for tick in nice_ticks(*axes.ylim):
        y = axes.y(tick)
        label = f"{tick:.0%}" if percent_y else fmt(tick if tick != int(tick) else int(tick))
        parts.append(
            f'<line x1="{axes.left}" x2="{axes.width - axes.right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{axes.left - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">{label}</text>'
        )
    for tick in nice_ticks(*axes.xlim, count=6):
        x = axes.x(tick)
        label = fmt(tick if tick != int(tick) else int(tick))
        parts.append(
            f'<text x="{x:.1f}" y="{axes.height - axes.bottom + 16}" text-anchor="middle" class="tick">{label}</text>'
        )
    base = axes.height - axes.bottom
    parts.append(
        f'<line x1="{axes.left}" x2="{axes.width - axes.right}" y1="{base}" y2="{base}" class="axis"/>'
        f'<line x1="{axes.left}" x2="{axes.left}" y1="{axes.top}" y2="{base}" class="axis"/>'
        f'<text x="{(axes.left + axes.width - axes.right) / 2:.0f}" y="{axes.height - 8}" '
        f'text-anchor="middle" class="axis-title">{esc(xlabel)}</text>'
        f'<text transform="translate(14 {(axes.top + base) / 2:.0f}) rotate(-90)" text-anchor="middle" '
        f'class="axis-title">{esc(ylabel)}</text>'
    )
    return "".join(parts)


def legend(entries: Sequence[tuple[str, str]], x: float, y: float) -> str:
    """Colour swatches with names, stacked from (x, y)."""
    return "".join(
        f'<rect x="{x:.0f}" y="{y + 16 * i:.0f}" width="10" height="10" fill="{color}"/>'
        f'<text x="{x + 14:.0f}" y="{y + 16 * i + 9:.0f}" class="legend">{esc(name)}</text>'
        for i, (name, color) in enumerate(entries)
    )


def bar_chart(name: str, items: Sequence[tuple[str, float]], title: str, color: str = COLORS[0]) -> str:
    """Horizontal bars with their labels and values (labels cut to 28 characters, full text on hover)."""
    row, label_w, value_w = 24, 200, 80
    width = CHART_WIDTH
    height = row * len(items) + 8
    peak = max((v for _, v in items), default=0) or 1
    parts = []
    for i, (label, value) in enumerate(items):
        y = 4 + i * row
        bar = max(1.0, value / peak * (width - label_w - value_w)) if value else 0.0
        short = label if len(label) <= 28 else label[:27] + "…"
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 16}" text-anchor="end" class="label"><title>{esc(label)}</title>'
            f"{esc(short)}</text>"
            f'<rect x="{label_w}" y="{y + 3}" width="{bar:.1f}" height="{row - 6}" rx="2" fill="{color}"/>'
            f'<text x="{label_w + bar + 6:.1f}" y="{y + 16}" class="value">{fmt(value)}</text>'
        )
    return svg(name, width, height, "".join(parts), title)


def histogram(name: str, edges: Sequence[float], counts: Sequence[int], xlabel: str, title: str) -> str:
    """Vertical bars over bins given by `edges` (len(counts) + 1 values)."""
    axes = Axes(CHART_WIDTH, 260, (edges[0], edges[-1]), (0, max(max(counts, default=0), 1) * 1.05))
    parts = [axes_frame(axes, xlabel, "rows")]
    for lo, hi, count in zip(edges[:-1], edges[1:], counts, strict=True):
        x0, x1, y = axes.x(lo), axes.x(hi), axes.y(count)
        parts.append(
            f'<rect x="{x0 + 1:.1f}" y="{y:.1f}" width="{max(x1 - x0 - 2, 1):.1f}" '
            f'height="{axes.y(0) - y:.1f}" fill="{COLORS[0]}"><title>{lo:.2f}–{hi:.2f}: {count:,}</title></rect>'
        )
    return svg(name, axes.width, axes.height, "".join(parts), title)


def line_chart(
    name: str,
    series: Sequence[tuple[str, Sequence[float], Sequence[float]]],
    xlabel: str,
    ylabel: str,
    title: str,
    ylim: tuple[float, float] | None = None,
    percent_y: bool = False,
) -> str:
    """Lines (with markers when short) of (name, xs, ys) series, with a legend."""
    xs = [x for _, sx, _ in series for x in sx]
    ys = [y for _, _, sy in series for y in sy if not math.isnan(y)]
    if ylim is None:
        lo, hi = min(ys, default=0.0), max(ys, default=1.0)
        pad = (hi - lo) * 0.08 or 0.5
        ylim = (min(0.0, lo) if lo >= 0 and lo < hi * 0.2 else lo - pad, hi + pad)
    axes = Axes(CHART_WIDTH, 280, (min(xs, default=0.0), max(xs, default=1.0)), ylim)
    parts = [axes_frame(axes, xlabel, ylabel, percent_y)]
    for (label, sx, sy), color in zip(series, COLORS, strict=False):
        points = " ".join(f"{axes.x(x):.1f},{axes.y(y):.1f}" for x, y in zip(sx, sy, strict=True))
        parts.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="2"/>')
        if len(sx) <= 30:
            parts.extend(
                f'<circle cx="{axes.x(x):.1f}" cy="{axes.y(y):.1f}" r="3.5" fill="{color}">'
                f"<title>{esc(label)}: {fmt(float(y))}</title></circle>"
                for x, y in zip(sx, sy, strict=True)
            )
    if len(series) > 1:
        parts.append(legend([(s[0], c) for s, c in zip(series, COLORS, strict=False)], axes.width - 170, 24))
    return svg(name, axes.width, axes.height, "".join(parts), title)


def heatmap(name: str, labels: Sequence[str], matrix: Sequence[Sequence[int]], title: str) -> str:
    """Confusion matrix: counts in cells, colour by share of the true label's row."""
    n = len(labels)
    cell = int(min(64, max(22, 440 / max(n, 1))))
    left, top = 150, 30
    width, height = left + cell * n + 20, top + cell * n + 130
    parts = [
        f'<text x="{left + cell * n / 2:.0f}" y="16" text-anchor="middle" class="axis-title">predicted →</text>'
        f'<text transform="translate(14 {top + cell * n / 2:.0f}) rotate(-90)" text-anchor="middle" '
        f'class="axis-title">true →</text>'
    ]
    for i, row in enumerate(matrix):
        total = sum(row) or 1
        for j, count in enumerate(row):
            share = count / total
            x, y = left + j * cell, top + i * cell
            parts.append(
                f'<rect x="{x}" y="{y}" width="{cell - 1}" height="{cell - 1}" '
                f'fill="rgba(37,99,235,{0.06 + 0.94 * share:.3f})" data-count="{count}">'
                f"<title>true {esc(labels[i])}, predicted {esc(labels[j])}: {count:,} ({share:.1%})</title></rect>"
            )
            if cell >= 26:
                tone = "#fff" if share > 0.5 else "#111827"
                parts.append(
                    f'<text x="{x + cell / 2:.1f}" y="{y + cell / 2 + 4:.1f}" text-anchor="middle" '
                    f'class="cell" fill="{tone}">{count:,}</text>'
                )
    for k, label in enumerate(labels):
        short = esc(label if len(label) <= 18 else label[:17] + "…")
        parts.append(
            f'<text x="{left - 6}" y="{top + k * cell + cell / 2 + 4:.1f}" text-anchor="end" class="label">{short}</text>'
            f'<text transform="translate({left + k * cell + cell / 2 + 4:.1f} {top + n * cell + 8}) rotate(-50)" '
            f'text-anchor="end" class="label">{short}</text>'
        )
    return svg(name, width, height, "".join(parts), title)


def reliability_chart(name: str, bins: dict[str, Any], title: str) -> str:
    """Reliability diagram: accuracy per confidence bin (bars) against the diagonal of perfect calibration."""
    axes = Axes(CHART_WIDTH, 300, (0.0, 1.0), (0.0, 1.0))
    parts = [axes_frame(axes, "confidence (top score)", "accuracy", percent_y=True)]
    edges = bins["edges"]
    for lo, hi, count, accuracy in zip(edges[:-1], edges[1:], bins["count"], bins["accuracy"], strict=True):
        if not count:
            continue
        x0, x1, y = axes.x(lo), axes.x(hi), axes.y(accuracy)
        parts.append(
            f'<rect x="{x0 + 1:.1f}" y="{y:.1f}" width="{x1 - x0 - 2:.1f}" height="{axes.y(0) - y:.1f}" '
            f'fill="{COLORS[0]}" fill-opacity="0.8"><title>{lo:.1f}–{hi:.1f}: {count:,} rows, accuracy '
            f"{accuracy:.1%}</title></rect>"
        )
    parts.append(
        f'<line x1="{axes.x(0):.1f}" y1="{axes.y(0):.1f}" x2="{axes.x(1):.1f}" y2="{axes.y(1):.1f}" '
        f'stroke="{COLORS[3]}" stroke-dasharray="5 4" stroke-width="1.5"/>'
    )
    parts.append(legend([("accuracy in bin", COLORS[0]), ("perfect calibration", COLORS[3])], 80, 24))
    return svg(name, axes.width, axes.height, "".join(parts), title)


def thin(xs: np.ndarray, ys: np.ndarray, points: int = CURVE_POINTS) -> tuple[list[float], list[float]]:
    """At most `points` evenly spaced samples of a curve (its last point kept)."""
    if len(xs) <= points:
        return xs.tolist(), ys.tolist()
    index = np.unique(np.linspace(0, len(xs) - 1, points).astype(int))
    return xs[index].tolist(), ys[index].tolist()


# -------------------------------------------------------------------------------------- HTML pieces


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], cls: str = "") -> str:
    """An HTML table; cells are formatted numbers or escaped text, except :class:`Raw` cells."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    thead = f"<thead><tr>{head}</tr></thead>" if any(headers) else ""
    body = "".join(
        "<tr>" + "".join(f"<td>{cell if isinstance(cell, Raw) else fmt(cell)}</td>" for cell in row) + "</tr>"
        for row in rows
    )
    return f'<table class="{esc(cls)}">{thead}<tbody>{body}</tbody></table>'


class Raw(str):
    """Markup built here from escaped parts (never corpus text as is)."""


def snippet(text: Any) -> Raw:
    """Untrusted text as an escaped, wrapping block."""
    return Raw(f'<div class="text">{esc(text)}</div>')


def stats(items: Iterable[tuple[str, str, Any]]) -> str:
    """Key-number tiles: (key for tests, caption, value); None values are left out."""
    tiles = "".join(
        f'<div class="stat" data-key="{esc(key)}"><div class="v">{fmt(value)}</div>'
        f'<div class="k">{esc(caption)}</div></div>'
        for key, caption, value in items
        if value is not None
    )
    return f'<div class="stats">{tiles}</div>'


def generic(value: Any, depth: int = 0) -> str:
    """Any JSON value as nested tables (every string escaped): for sections whose shape belongs to others."""
    if isinstance(value, dict):
        if depth > 2:
            return f"<code>{esc(json.dumps(value, default=str)[:400])}</code>"
        return table(["", ""], [(k, Raw(generic(v, depth + 1))) for k, v in value.items()], "kv")
    if isinstance(value, list):
        if value and all(isinstance(v, dict) for v in value):
            keys = list(dict.fromkeys(k for v in value for k in v))
            shown = value[:50]
            cells = [[Raw(generic(v.get(k), depth + 1)) for k in keys] for v in shown]
            more = f'<p class="note">… and {len(value) - 50:,} more</p>' if len(value) > 50 else ""
            return table(keys, cells) + more
        return esc(", ".join(str(v) for v in value[:50])) + (" …" if len(value) > 50 else "")
    return fmt(value)


def section(anchor: str, title: str, body: str, note: str = "") -> tuple[str, str, str]:
    """A titled section (anchor id, title, HTML)."""
    intro = f'<p class="note">{esc(note)}</p>' if note else ""
    return anchor, title, f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{intro}{body}</section>'


CSS = """
:root{--fg:#111827;--muted:#6b7280;--line:#e5e7eb;--bg:#f9fafb;--card:#fff;--accent:#2563eb}
*{box-sizing:border-box}body{margin:0;font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:var(--fg);background:var(--bg)}header{background:#0f172a;color:#fff;padding:20px 32px}
header h1{margin:0;font-size:22px}header .sub{color:#cbd5e1;font-size:13px;margin-top:4px;word-break:break-all}
nav{padding:8px 32px;background:#fff;border-bottom:1px solid var(--line);position:sticky;top:0}
nav a{color:var(--accent);margin-right:16px;text-decoration:none;font-size:13px}
main{max-width:1100px;margin:0 auto;padding:16px 32px 48px}
section{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:16px 20px;margin:16px 0}
h2{font-size:17px;margin:0 0 10px}h3{font-size:14px;margin:14px 0 6px}.note{color:var(--muted);margin:4px 0 10px}
.stats{display:flex;flex-wrap:wrap;gap:10px}.stat{border:1px solid var(--line);border-radius:6px;padding:8px 14px;
min-width:130px}.stat .v{font-size:20px;font-weight:600}.stat .k{color:var(--muted);font-size:12px}
table{border-collapse:collapse;margin:6px 0;width:100%}th,td{border-bottom:1px solid var(--line);padding:4px 8px;
text-align:left;vertical-align:top}th{background:#f3f4f6;font-weight:600;font-size:12px}
table.kv td:first-child{width:220px;color:var(--muted)}.text{white-space:pre-wrap;word-break:break-word;
font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;max-height:9em;overflow:auto}
.ok{color:#16a34a;font-weight:600}.bad{color:#dc2626;font-weight:600}svg.chart{display:block;margin:8px 0;
max-width:100%;height:auto}svg .grid{stroke:#eef0f3}svg .axis{stroke:#9ca3af}svg text{font-size:11px;fill:#374151}
svg .axis-title{font-size:12px;fill:#6b7280}svg .cell{font-size:12px}.charts{display:flex;flex-wrap:wrap;gap:16px}
details pre{white-space:pre-wrap;word-break:break-word;font-size:12px;background:#f3f4f6;padding:8px}
footer{color:var(--muted);font-size:12px;text-align:center;padding:12px}
"""

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
"""No script may run and nothing is fetched: the page is inert even if a value escaped escaping."""


def page(title: str, subtitle: str, sections: Sequence[tuple[str, str, str]]) -> str:
    """The whole document."""
    nav = "".join(f'<a href="#{esc(anchor)}">{esc(name)}</a>' for anchor, name, _ in sections)
    body = "".join(html_ for _, _, html_ in sections)
    generated = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f'<header><h1>{esc(title)}</h1><div class="sub">{esc(subtitle)}</div></header>'
        f"<nav>{nav}</nav><main>{body}</main>"
        f"<footer>bm-ray report · generated {generated} from the output directory alone</footer></body></html>\n"
    )


# ------------------------------------------------------------------------------------ shared sections


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
    summary = out.json(commit.SUMMARY_FILE)
    if not isinstance(summary, dict):
        raise ReportError(f"{out.output}: no {commit.SUMMARY_FILE}; the {kind} job did not finish (rerun it)")
    job = out.json(commit.JOB_FILE)
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
    sections.append(details_section(commit.SUMMARY_FILE, summary))
    return page(f"bm-ray {kind} report", out.output, sections)


# --------------------------------------------------------------------------------------- model reports


def load_predictions(out: OutputDir) -> pa.Table | None:
    """predictions.parquet (id, label, predicted, score, text) as an Arrow table, or None when absent."""
    dataset = out.dataset(PREDICTIONS_FILE)
    return None if dataset is None else dataset.to_table()


def correctness(rows: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(top score, predicted == true label) per row."""
    scores = rows.column("score").to_numpy().astype(np.float64)
    correct = pc.equal(rows.column("label"), rows.column("predicted")).to_numpy(zero_copy_only=False)
    return scores, correct.astype(bool)


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
        ]
    )
    where = "the validation rows" if kind == "train" else f"{', '.join(metrics.get('data') or [])}"
    sections = [section("overview", "Scores", tiles, f"Measured on {where}.")]
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
    sections = [section("overview", "Agreement", stats(numbers))]
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


# ------------------------------------------------------------------------------------------ public API


def render_report(output: str) -> str:
    """The report of a job output directory as an HTML string (see :func:`build_report`)."""
    out = OutputDir(output)
    kind = detect_kind(out)
    if kind in ("ingest", "classify"):
        return corpus_report(out, kind)
    if kind == "compare":
        return compare_report(out)
    return model_report(out, kind)


def build_report(output: str, path: str | None = None) -> str:
    """Write ``report.html`` into the output directory (or to `path`) and return where it went.

    The job kind is detected from the output's files; :class:`ReportError` says what is missing when
    the directory is not a finished bm-ray job output.
    """
    document = render_report(output).encode("utf-8")
    if path is None:
        out = OutputDir(output)
        fs, target = out.fs, out.path(REPORT_FILE)
    else:
        fs, target = storage.resolve_uri(path)
    with fs.open_output_stream(target) as stream:
        stream.write(document)
    return path or f"{output.rstrip('/')}/{REPORT_FILE}"


def try_build_report(output: str) -> str | None:
    """Write the job's report after its results are committed; a failure is a warning, not a failed job.

    The report is derived from files already written, so a rendering bug must not turn a finished job
    into a failed one; ``bm-ray report DIR`` rebuilds it later.
    """
    try:
        return build_report(output)
    except Exception as error:  # any rendering failure: the job's results stand
        logger.warning(
            "report.html not written for %s (%s); rebuild it with `bm-ray report %s`", output, error, output
        )
        return None
