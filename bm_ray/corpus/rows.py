"""Row validation, the reject vocabulary and text cleaning: every record becomes one normalised row.

Rules:

- ``id``: ``spec.id_field`` (missing → ``missing_field``), else the record's ``id``, else ``source``
  (``<path>:<line>`` for JSONL/CSV, ``<path>:<row>`` for Parquet, the path for folder files, the path
  relative to the common root of all inputs, see :mod:`bm_ray.corpus.listing`). Numbers become strings.
- ``text``: ``spec.text_fields``, each stripped, empty ones skipped, joined with ``spec.text_separator``.
  A missing field → ``missing_field``; null counts as empty; numbers/lists/dicts/bools →
  ``not_a_string``; nothing left → ``empty_text``. Longer than ``spec.max_text_chars`` → truncated
  (``truncated=True``, still ok); longer than ``spec.reject_text_chars`` → ``too_long``.
- ``label``: ``spec.label_field`` (missing → ``missing_field``; null/empty → null) else the record's
  ``label``; numbers become strings, lists etc. → ``not_a_string``.
- Invalid UTF-8: a record is decoded with ``errors="replace"`` and kept with ``utf8_repaired=True``,
  unless more than 10% of its characters are U+FFFD replacement characters: then it is rejected as
  ``invalid_utf8``. The same holds for a text field that is bytes (a Parquet binary column) or a string
  holding lone surrogates (a JSON ``"\\ud800"`` escape: no UTF-8 can encode it); a lone surrogate in any
  other field (id, label, keep_fields) becomes U+FFFD with ``utf8_repaired=True``.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable
from typing import Any

import pyarrow as pa

from bm_ray.specs import IngestSpec

UNIT_END = "unit_end"
"""`reason` of the bookkeeping row a reader adds after each file when asked (``unit_ends``): its `_row` is
the number of records read from the file. Never a row read; the commit protocol checks the counts."""

BLANK_LINE = "blank_line"
"""`reason` of a blank line: carried through runs (so it is committed) but never counted as a row read."""

ROW_COLUMNS = (
    "id",
    "text",
    "label",
    "source",
    "reason",
    "raw",
    "truncated",
    "utf8_repaired",
    "_unit",
    "_row",
    "_file",
)
"""Columns of every emitted row, followed by ``spec.keep_fields`` (strings)."""

RAW_SNIPPET_CHARS = 300
MAX_INVALID_FRACTION = 0.10


def row_schema(keep_fields: Iterable[str] = ()) -> pa.Schema:
    """Arrow schema of the rows :func:`read_corpus` emits."""
    types = {"truncated": pa.bool_(), "utf8_repaired": pa.bool_(), "_row": pa.int64(), "_file": pa.int32()}
    fields = [pa.field(name, types.get(name, pa.string())) for name in ROW_COLUMNS]
    fields += [pa.field(name, pa.string()) for name in keep_fields if name not in ROW_COLUMNS]
    return pa.schema(fields)


# --------------------------------------------------------------------------------------------- cleaning

_AMP_LESS_ENTITY = re.compile(r"(?:\s|^)(#\d{1,6};|#x[0-9a-fA-F]{1,6};|(?:quot|amp|lt|gt|apos|nbsp);)")
_ZERO_WIDTH = re.compile("[\u200b\u200c\u200d\u2060\ufeff]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_LONE_BACKSLASH = re.compile(r"\\(?!\S*\\)")


def clean_text(s: str) -> str:
    """Repair scraped-news artefacts (as in AG News); used when ``spec.clean_text`` is on.

    In order:
    1. ``\\$`` → ``$``;
    2. entities whose ``&`` was replaced by a space (AG News), at the start or after whitespace:
       ``#<digits>;`` / ``#x<hex>;`` (``#39;`` → ``'``, ``#36;`` → ``$``), ``quot;`` ``amp;``
       ``lt;`` ``gt;`` ``apos;`` ``nbsp;``; the one whitespace character before the entity stood
       for the ``&`` and goes with it (``St. #39;s`` → ``St.'s``, ``A  amp; B`` → ``A & B``);
    3. ``html.unescape`` (real ``&...;`` entities, applied twice for double-escaped ones);
    4. remaining backslashes → space;
    5. control characters other than ``\\n`` and ``\\t``, and zero-width characters (U+200B-U+200D,
       U+2060, U+FEFF), removed;
    6. runs of spaces/tabs collapsed to one space, runs of blank lines to one newline, ends stripped.
    """
    s = s.replace("\\$", "$")
    s = _AMP_LESS_ENTITY.sub(lambda m: "&" + m.group(1), s)
    s = html.unescape(html.unescape(s))
    s = s.replace("\\", " ")
    s = _ZERO_WIDTH.sub("", s)
    s = _CONTROL.sub("", s)
    s = s.replace("\xa0", " ")
    s = re.sub(r"[ \t]+", " ", s)
    s = re.sub(r" ?\n[\s]*", "\n", s)
    return s.strip()


# ------------------------------------------------------------------------------------------- normalise


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
"""A surrogate code point: JSON's ``\\ud800`` escape parses to one, and no UTF-8 (so no Arrow string) can hold it."""


def repair_surrogates(text: str) -> tuple[str, bool]:
    """(text with every lone surrogate replaced by U+FFFD, whether any was).

    Cheap for the common string: ``isascii`` is O(1) in CPython, and CPython's UTF-8 encoder (which
    refuses exactly the surrogates) scans a non-ASCII text several times faster than a regex search.
    """
    if text.isascii():
        return text, False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _LONE_SURROGATE.sub("\ufffd", text), True
    return text, False


def _mostly_replaced(text: str) -> bool:
    """Whether more than :data:`MAX_INVALID_FRACTION` of `text` are U+FFFD replacement characters."""
    return text.count("\ufffd") > MAX_INVALID_FRACTION * max(1, len(text))


def decode(raw: bytes) -> tuple[str, bool, bool]:
    """(text, repaired, invalid): invalid when > 10% of the characters had to be replaced."""
    try:
        return raw.decode("utf-8"), False, False
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace")
        return text, True, text.count("\ufffd") > MAX_INVALID_FRACTION * max(1, len(text))


def _scalar(value: Any) -> str | None:
    """String form of a str/int/float id or label; None for anything else (bools, lists, dicts)."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return None


def _keep(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return json.dumps(value, default=str, ensure_ascii=False)


def snippet(raw: Any) -> str:
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="replace")
    elif not isinstance(raw, str):
        raw = json.dumps(raw, default=str, ensure_ascii=False)
    return raw[:RAW_SNIPPET_CHARS]


class RowBuilder:
    """Turns records into normalised rows and packs them into blocks of ≤ rows_per_block rows."""

    def __init__(self, spec: IngestSpec, unit_ends: bool = False) -> None:
        self.spec = spec
        self.unit_ends = unit_ends
        self.file_index = -1
        """Listing position of the file being read (the `_file` column)."""
        self.schema = row_schema(spec.keep_fields)
        self.keep = [k for k in spec.keep_fields if k not in ROW_COLUMNS]
        self.columns: dict[str, list[Any]] = {name: [] for name in self.schema.names}

    def __len__(self) -> int:
        return len(self.columns["_row"])

    def flush(self) -> pa.Table:
        """The rows gathered so far as a table; starts a new one."""
        table = pa.table(self.columns, schema=self.schema)
        self.columns = {name: [] for name in self.schema.names}
        return table

    def _add(self, **row: Any) -> None:
        # A lone surrogate left in any string (an id, a label, a kept field, a raw snippet) would make
        # the whole block unencodable and crash the read task: repaired here, where every row passes
        # (but the text, which `record` repaired already, field by field).
        for name, value in list(row.items()):
            if isinstance(value, str) and name != "text":
                row[name], fixed = repair_surrogates(value)
                if fixed:
                    row["utf8_repaired"] = True
        row["_file"] = self.file_index
        for name, values in self.columns.items():
            values.append(row.get(name))

    def unit_end(self, unit: str, records: int, source: str, skip: Any) -> None:
        """After a file's last record: a :data:`UNIT_END` row at `_row` = `records` (when asked for and
        not already committed)."""
        if self.unit_ends and records not in skip:
            self._add(
                id=None,
                source=source,
                reason=UNIT_END,
                truncated=False,
                utf8_repaired=False,
                _unit=unit,
                _row=records,
            )

    def blank(self, unit: str, row: int, source: str) -> None:
        """A blank line: carried for accounting, never a row read."""
        self._add(
            id=source,
            source=source,
            reason=BLANK_LINE,
            truncated=False,
            utf8_repaired=False,
            _unit=unit,
            _row=row,
        )

    def reject(
        self, reason: str, unit: str, row: int, source: str, raw: Any, id_: str | None = None, **kw: Any
    ) -> None:
        """A rejected record."""
        self._add(
            id=id_ or source,
            source=source,
            reason=reason,
            raw=snippet(raw),
            truncated=False,
            utf8_repaired=kw.get("utf8_repaired", False),
            _unit=unit,
            _row=row,
            **{k: kw.get(k) for k in self.keep},
        )

    def record(self, rec: dict[str, Any], unit: str, row: int, source: str, raw: Any, repaired: bool) -> None:
        """Validate one parsed record and add it as an ok row or a reject."""
        spec = self.spec
        kept = {k: _keep(rec.get(k)) for k in self.keep}
        common = {"utf8_repaired": repaired, **kept}
        # id
        id_value: str | None = source
        id_field = spec.id_field or ("id" if rec.get("id") not in (None, "") else None)
        if id_field is not None:
            value = rec.get(id_field)
            if value is None or value == "":
                return self.reject("missing_field", unit, row, source, raw, **common)
            id_value = _scalar(value)
            if not id_value:
                return self.reject("not_a_string", unit, row, source, raw, **common)
        # text
        parts = []
        for name in spec.text_fields:
            if name not in rec:
                return self.reject("missing_field", unit, row, source, raw, id_value, **common)
            value = rec[name]
            if isinstance(value, bytes):
                value, fixed, invalid = decode(value)
                repaired = repaired or fixed
                if invalid:  # the rule for invalid UTF-8 in a line holds for a binary field too
                    return self.reject("invalid_utf8", unit, row, source, raw, id_value, **common)
            if value is None:
                continue
            if not isinstance(value, str):
                return self.reject("not_a_string", unit, row, source, raw, id_value, **common)
            value, fixed = repair_surrogates(value)
            if fixed:
                repaired = True
                if _mostly_replaced(value):
                    return self.reject("invalid_utf8", unit, row, source, raw, id_value, **common)
            if value.strip():
                parts.append(value.strip())
        text = spec.text_separator.join(parts)
        if spec.clean_text:
            text = clean_text(text)
        if not text.strip():
            return self.reject("empty_text", unit, row, source, raw, id_value, **common)
        if len(text) > spec.reject_text_chars:
            return self.reject("too_long", unit, row, source, raw, id_value, **common)
        truncated = len(text) > spec.max_text_chars
        if truncated:
            text = text[: spec.max_text_chars]
        # label
        label = None
        label_field = spec.label_field or ("label" if "label" in rec else None)
        if label_field is not None:
            if label_field not in rec:
                return self.reject("missing_field", unit, row, source, raw, id_value, **common)
            value = rec[label_field]
            if value is not None and value != "":
                label = _scalar(value)
                if label is None:
                    return self.reject("not_a_string", unit, row, source, raw, id_value, **common)
                label = label or None
        self._add(
            id=id_value,
            text=text,
            label=label,
            source=source,
            truncated=truncated,
            utf8_repaired=repaired,
            _unit=unit,
            _row=row,
            **kept,
        )
        return None
