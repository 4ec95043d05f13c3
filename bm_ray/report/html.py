"""The HTML of a report: escaping and number formatting, tables, key-number tiles, sections, and the page
itself with its inline CSS and its Content-Security-Policy.

Corpus text, ids, labels and reject snippets are untrusted: every value goes through :func:`esc`
(HTML escaping, quotes included) before it reaches the page, in text and in attributes alike; only
:class:`Raw` markup, built here from escaped parts, is placed as is.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


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


def stats(items: Iterable[tuple[str, str, Any]], details: Mapping[str, str] | None = None) -> str:
    """Key-number tiles: (key for tests, caption, value); None values are left out. `details` puts a
    line under the value of the tiles it names by key (a figure's interval)."""
    details = details or {}

    def detail(key: str) -> str:
        return f'<div class="ci">{esc(details[key])}</div>' if details.get(key) else ""

    tiles = "".join(
        f'<div class="stat" data-key="{esc(key)}"><div class="v">{fmt(value)}</div>{detail(key)}'
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
.stat .ci{font-size:12px}
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
