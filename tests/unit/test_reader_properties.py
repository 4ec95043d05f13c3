"""Properties of the line readers on arbitrary bytes: reading never raises, and every record is
accounted for (rows 0..n-1 of its file once each, n the reader's count: read = ok + rejected + blank).

The bytes are drawn at random and from the pieces that break parsers (brackets, quotes, separators,
every line break, a BOM, invalid UTF-8, NUL); the caps are small so too_long and truncation occur."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from read_tasks import accounting, read_rows

from bm_ray.specs import IngestSpec

PIECES = [
    b'{"text": "a"}',
    b'{"text": ',
    b'"',
    b"'",
    b"[",
    b"]",
    b"{",
    b"}",
    b":",
    b",",
    b"\t",
    b" ",
    b"\n",
    b"\r",
    b"\r\n",
    b"text",
    b"id",
    b"label",
    b"1",
    b"\xef\xbb\xbf",
    b"\xff\xfe",
    b"\xc3",
    b"\x00",
    b"\\",
    b"[" * 2000,
]
CORPUS_BYTES = st.one_of(
    st.binary(max_size=3000),
    st.lists(st.sampled_from(PIECES), max_size=80).map(b"".join),
)
CAPS = {"max_line_bytes": 256, "max_text_chars": 20, "reject_text_chars": 40, "rows_per_block": 3}
PROPERTIES = settings(max_examples=150, deadline=None)


def read_bytes(name: str, data: bytes, **options: object) -> list[dict]:
    """The rows read from a file `name` holding `data`."""
    with tempfile.TemporaryDirectory() as root:
        path = Path(root) / name
        path.write_bytes(data)
        return read_rows(IngestSpec(input=[str(path)], **CAPS, **options))


def physical_lines(data: bytes, *, lone_cr: bool = False) -> int:
    """Lines of `data` ended by LF (also by a lone CR when `lone_cr`); a last line without one counts."""
    if lone_cr:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


@PROPERTIES
@given(CORPUS_BYTES)
def test_any_bytes_as_jsonl_are_read_and_every_line_accounted(data: bytes) -> None:
    rows = read_bytes("fuzz.jsonl", data)
    outcomes = accounting(rows)
    if not data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):  # a `[` file is one JSON array instead
        assert sum(outcomes.values()) == physical_lines(data)


@PROPERTIES
@given(CORPUS_BYTES, st.booleans())
def test_any_bytes_as_csv_are_read_and_every_record_accounted(data: bytes, header: bool) -> None:
    options = {} if header else {"csv_header": False, "text_fields": ["0"]}
    rows = read_bytes("fuzz.csv", data, **options)
    outcomes = accounting(rows)
    lines = physical_lines(data, lone_cr=True)
    records = [r for r in rows if r["reason"] != "unit_end"]
    # a record spans one line or more (a quoted field), so there are at most as many as lines
    assert sum(outcomes.values()) <= max(0, lines - header)
    numbers = [int(r["source"].rpartition(":")[2]) for r in records]
    assert numbers == sorted(set(numbers)) and all(1 + header <= n <= lines for n in numbers)
