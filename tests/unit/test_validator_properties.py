"""Properties of the row validator (:meth:`bm_ray.corpus.rows.RowBuilder.record`) on arbitrary records.

Whatever a reader hands it (JSON values of any type, huge numbers, NaN and infinities, bytes and lone
surrogates, dates and decimals from Parquet, nested lists and objects): one call adds exactly one row,
its outcome is the one the rules of :mod:`bm_ray.corpus.rows` name (re-derived here from the module's
documented rules, not from its code), and the rows always make an Arrow table (a string Arrow cannot
encode would crash the whole read task)."""

from __future__ import annotations

import datetime
import decimal
import math
import re
from typing import Any

import pytest
from fuzzing import bounded
from hypothesis import example, given
from hypothesis import strategies as st

from bm_ray.corpus.rows import MAX_INVALID_FRACTION, RowBuilder, clean_text
from bm_ray.layout import REJECT_REASONS
from bm_ray.specs import IngestSpec

pytestmark = pytest.mark.fuzz

SURROGATE = re.compile("[\ud800-\udfff]")
KEYS = ["id", "text", "label", "title", "body", "x", "meta"]

ANY_TEXT = st.text(st.characters(codec=None, categories=None), max_size=40)  # lone surrogates included
NUMBERS = st.one_of(
    st.integers(),
    st.integers(
        min_value=-(10**4000), max_value=10**4000
    ),  # far past 64 bits (Python's str() cap is 4300 digits)
    st.sampled_from([2**63, -(2**63) - 1, 2**64, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),  # json.loads("1e999") is inf
    st.decimals(allow_nan=True),  # Parquet decimal columns
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    NUMBERS,
    ANY_TEXT,
    st.sampled_from(["", " ", "\n\t ", "\x00", "\ufeff", "\ud800", "a\udfffb", "&amp; #39;"]),
    st.binary(max_size=30),  # Parquet binary columns
    st.datetimes(),  # Parquet timestamp columns
    st.dates(),
)
JSON_LIKE = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(ANY_TEXT, children, max_size=3),
    max_leaves=12,
)
RECORDS = st.dictionaries(st.sampled_from(KEYS) | ANY_TEXT, JSON_LIKE, max_size=7)


@st.composite
def specs(draw: st.DrawFn) -> IngestSpec:
    """Any mapping of fields onto the row, and caps small enough for truncation and too_long to occur."""
    max_chars = draw(st.integers(1, 60))
    return IngestSpec(
        input=["unused.jsonl"],
        id_field=draw(st.sampled_from([None, "id", "x"])),
        label_field=draw(st.sampled_from([None, "label", "x"])),
        text_fields=draw(st.sampled_from([["text"], ["title", "body"], ["x"], ["text", "text"]])),
        text_separator=draw(st.sampled_from(["\n", " ", ""])),
        keep_fields=draw(st.lists(st.sampled_from(["x", "meta", "title", "id"]), max_size=3, unique=True)),
        clean_text=draw(st.booleans()),
        max_text_chars=max_chars,
        reject_text_chars=max_chars + draw(st.integers(0, 60)),
    )


# ---------------------------------------------------------------------- the documented rules, re-derived


class Rejected(Exception):
    """The outcome of a record the rules reject."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def scalar(value: Any) -> str | None:
    """An id or a label as the rules read it: strings (stripped) and numbers; None for any other type."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not value.is_integer():
        return repr(value)  # nan, inf, 0.5
    return str(int(value))


def repaired_text(value: str) -> tuple[str, bool]:
    """(text, invalid): lone surrogates (a JSON ``\\ud800`` escape) replaced like invalid UTF-8; invalid
    when more than :data:`MAX_INVALID_FRACTION` of the characters were replaced."""
    fixed = SURROGATE.sub("\ufffd", value)
    return fixed, fixed.count("\ufffd") > MAX_INVALID_FRACTION * max(1, len(fixed))


def expected_outcome(rec: dict[str, Any], spec: IngestSpec) -> tuple[str | None, dict[str, Any]]:
    """(reject reason or None, the ok row's id/text/label/truncated) by the rules of bm_ray.corpus.rows."""
    try:
        # id: the id field (missing or empty → missing_field), else `id` when it has a value, else source
        id_value = "src:1"
        id_field = spec.id_field or ("id" if rec.get("id") is not None and rec.get("id") != "" else None)
        if id_field is not None:
            if rec.get(id_field) is None or rec.get(id_field) == "":
                raise Rejected("missing_field")
            id_value = scalar(rec[id_field])
            if not id_value:
                raise Rejected("not_a_string")
        # text: each field stripped, null and empty skipped, anything but a string is not_a_string
        parts = []
        for name in spec.text_fields:
            if name not in rec:
                raise Rejected("missing_field")
            value = rec[name]
            if isinstance(value, bytes):
                value = value.decode("utf-8", errors="replace")
                if value.count("\ufffd") > MAX_INVALID_FRACTION * max(1, len(value)):
                    raise Rejected("invalid_utf8")
            if value is None:
                continue
            if not isinstance(value, str):
                raise Rejected("not_a_string")
            value, invalid = repaired_text(value)
            if invalid:
                raise Rejected("invalid_utf8")
            if value.strip():
                parts.append(value.strip())
        text = spec.text_separator.join(parts)
        if spec.clean_text:
            text = clean_text(text)
        if not text.strip():
            raise Rejected("empty_text")
        if len(text) > spec.reject_text_chars:
            raise Rejected("too_long")
        # label: the label field (missing → missing_field), else `label` when present; null/empty → null
        label = None
        label_field = spec.label_field or ("label" if "label" in rec else None)
        if label_field is not None:
            if label_field not in rec:
                raise Rejected("missing_field")
            value = rec[label_field]
            if value is not None and value != "":
                label = scalar(value)
                if label is None:
                    raise Rejected("not_a_string")
                label = label or None
    except Rejected as rejected:
        return rejected.reason, {}
    ok = {"id": SURROGATE.sub("\ufffd", id_value), "text": text[: spec.max_text_chars]}
    ok["label"] = SURROGATE.sub("\ufffd", label) if label else label
    ok["truncated"] = len(text) > spec.max_text_chars
    return None, ok


def has_surrogate(value: Any) -> bool:
    """Whether a lone surrogate is anywhere in `value` (strings, list items, dict keys and values)."""
    if isinstance(value, str):
        return bool(SURROGATE.search(value))
    if isinstance(value, dict):
        return any(has_surrogate(k) or has_surrogate(v) for k, v in value.items())
    return isinstance(value, list) and any(has_surrogate(v) for v in value)


def valid_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def needs_repair(rec: dict[str, Any], spec: IngestSpec) -> bool:
    """Whether an ok row of `rec` must say ``utf8_repaired``: a text field of invalid UTF-8 bytes, or a lone
    surrogate in a field the row carries (id, texts, label, kept fields)."""
    used = [*spec.text_fields, *spec.keep_fields, spec.id_field or "id", spec.label_field or "label"]
    invalid_bytes = any(
        isinstance(rec.get(name), bytes) and not valid_utf8(rec[name]) for name in spec.text_fields
    )
    return invalid_bytes or any(has_surrogate(rec.get(name)) for name in used)


# ------------------------------------------------------------------------------------------- properties


@bounded(200)
@given(RECORDS, specs())
@example({"text": "a\ud800b"}, IngestSpec(input=["unused.jsonl"]))  # found: crashed the read task
@example({"id": "\udfff", "text": "x"}, IngestSpec(input=["unused.jsonl"]))  # found: crashed it too
@example({"text": "ok", "meta": ["\ud83d"]}, IngestSpec(input=["unused.jsonl"], keep_fields=["meta"]))
@example({"text": b"\xff\xfe\xfd"}, IngestSpec(input=["unused.jsonl"]))  # found: kept as ok, all U+FFFD
@example({"id": 10**400, "label": float("inf"), "text": "x"}, IngestSpec(input=["unused.jsonl"]))
@example({"id": float("nan"), "text": "x"}, IngestSpec(input=["unused.jsonl"]))
def test_any_record_becomes_one_row_with_the_documented_outcome(
    rec: dict[str, Any], spec: IngestSpec
) -> None:
    rows = RowBuilder(spec)
    rows.record(rec, "unit", 7, "src:1", rec, repaired=False)  # raw: the record, as the Parquet reader passes
    table = rows.flush()  # must encode: a lone surrogate in any column would raise here
    assert table.num_rows == 1
    (row,) = table.to_pylist()
    assert (row["_unit"], row["_row"], row["source"]) == ("unit", 7, "src:1")
    assert row["reason"] is None or row["reason"] in REJECT_REASONS
    reason, ok = expected_outcome(rec, spec)
    assert row["reason"] == reason, (rec, row)
    if reason is None:
        assert {k: row[k] for k in ok} == ok
        assert row["text"].strip() and len(row["text"]) <= spec.max_text_chars
        assert row["utf8_repaired"] == needs_repair(rec, spec)
    else:
        assert row["text"] is None and row["raw"] is not None and row["id"]


@bounded(60)
@given(st.lists(st.tuples(RECORDS, st.booleans()), max_size=12), specs(), st.integers(1, 5))
def test_rows_of_many_records_add_up_block_by_block(records: list, spec: IngestSpec, block: int) -> None:
    """A reader's loop (records, rejects and blank lines, flushed every `block` rows) loses no row."""
    rows = RowBuilder(spec)
    tables = []
    for i, (rec, blank) in enumerate(records):
        if blank:
            rows.blank("unit", i, f"src:{i + 1}")
        else:
            rows.record(rec, "unit", i, f"src:{i + 1}", rec, repaired=False)
        if len(rows) >= block:
            tables.append(rows.flush())
    tables.append(rows.flush())
    out = [row for table in tables for row in table.to_pylist()]
    assert [row["_row"] for row in out] == list(range(len(records)))
    blanks = sum(blank for _, blank in records)
    assert sum(row["reason"] == "blank_line" for row in out) == blanks
    outcomes = [row["reason"] for row in out if row["reason"] != "blank_line"]
    assert len(outcomes) == len(records) - blanks  # read = ok + rejected
    assert all(r is None or r in REJECT_REASONS for r in outcomes)


def test_the_rules_oracle_agrees_with_the_docstring_examples() -> None:
    """The re-derived rules above, pinned on the cases the module's docstring names (so a wrong oracle
    cannot make the property vacuous)."""
    spec = IngestSpec(input=["unused.jsonl"], max_text_chars=5, reject_text_chars=8)
    assert expected_outcome({"text": "hello world"}, spec)[0] == "too_long"
    assert expected_outcome({"text": "abcdefg"}, spec)[1]["truncated"] is True
    assert expected_outcome({"text": 1}, spec)[0] == "not_a_string"
    assert expected_outcome({"text": None}, spec)[0] == "empty_text"
    assert expected_outcome({"id": True, "text": "a"}, spec)[0] == "not_a_string"
    assert expected_outcome({"id": 3.0, "text": "a", "label": 2}, spec)[1] == {
        "id": "3",
        "text": "a",
        "label": "2",
        "truncated": False,
    }
    assert expected_outcome({"text": "a", "label": []}, spec)[0] == "not_a_string"
    assert expected_outcome({"body": "a"}, spec)[0] == "missing_field"
    assert math.isnan(float(expected_outcome({"id": float("nan"), "text": "a"}, spec)[1]["id"]))
    assert scalar(decimal.Decimal(1)) is None and scalar(datetime.date(2020, 1, 1)) is None
