"""Inline SVG charts of a report (bars, histogram, lines, heatmap, reliability diagram), drawn here: no
plotting library, no script, nothing fetched. Every label and value goes through :func:`~bm_ray.report.html.esc`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bm_ray.report.html import esc, fmt

CURVE_POINTS = 200
"""Risk–coverage and throughput curves are drawn with at most this many points."""

COLORS = ("#2563eb", "#f59e0b", "#16a34a", "#dc2626", "#7c3aed", "#0891b2", "#db2777", "#65a30d")
CHART_WIDTH = 640


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
