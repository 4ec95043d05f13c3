"""Properties of the four readers (JSONL and JSON arrays, CSV, Parquet, folder-per-class files): whatever
the input, reading never raises, and every record is accounted for (rows 0..n-1 of its file once each, n
the reader's count, each ok or rejected with a reason of the vocabulary: read = ok + rejected + blank).

Two kinds of input: arbitrary bytes (drawn at random and from the pieces that break parsers: brackets,
quotes, separators, every line break, BOMs, invalid and truncated UTF-8, NUL), and well-formed files with
hostile contents (huge numbers, NaN, duplicate keys, deep nesting, lone surrogates, quote storms, odd
Parquet schemas, odd file names), where the outcome of each record is also predicted: the one the row
validator gives the record an independent parser (json, csv, pyarrow) reads. The caps are small so
too_long and truncation occur. `make test` runs a bounded number of examples; `make test-fuzz` many more
(tests/fuzzing.py)."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fuzzing import bounded
from hypothesis import example, given
from hypothesis import strategies as st
from read_tasks import accounting, read_rows, rows_read

from bm_ray.corpus import list_corpus
from bm_ray.corpus.formats import MAX_JSON_DEPTH
from bm_ray.corpus.rows import RowBuilder, decode
from bm_ray.specs import IngestSpec

pytestmark = pytest.mark.fuzz

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
    b"1e999",
    b"1" * 30,  # past 64 bits
    b'{"id": 1, "id": "2", "text": "dup"}',
    b'"\\ud800"',  # a lone surrogate escape
    b"\\u0000",
    b"\xef\xbb\xbf",  # UTF-8 BOM
    b"\xff\xfe",  # UTF-16 BOM
    b"\xc3",  # truncated 2-byte sequence
    b"\xe2\x82",  # truncated 3-byte sequence (of €)
    b"\xf0\x9f\x98",  # truncated 4-byte sequence (of an emoji)
    "é€😀".encode(),
    b"\x00",
    b"\\",
    b"[" * 2000,
]
CORPUS_BYTES = st.one_of(
    st.binary(max_size=3000),
    st.lists(st.sampled_from(PIECES), max_size=80).map(b"".join),
)
CAPS = {"max_line_bytes": 256, "max_text_chars": 20, "reject_text_chars": 40, "rows_per_block": 3}


def read_bytes(name: str, data: bytes, **options: object) -> list[dict]:
    """The rows read from a file `name` holding `data`."""
    with tempfile.TemporaryDirectory() as root:
        path = Path(root) / name
        path.write_bytes(data)
        return read_rows(IngestSpec(input=[str(path)], **{**CAPS, **options}))


def physical_lines(data: bytes, *, lone_cr: bool = False) -> int:
    """Lines of `data` ended by LF (also by a lone CR when `lone_cr`); a last line without one counts."""
    if lone_cr:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


def outcome_of(rec: dict[str, Any], spec: IngestSpec, source: str = "s:1", repaired: bool = False) -> str:
    """`ok` or the reason the row validator gives `rec` (its own properties: test_validator_properties.py)."""
    rows = RowBuilder(spec)
    rows.record(rec, "u", 0, source, rec, repaired)
    return rows.flush().column("reason")[0].as_py() or "ok"


def outcomes_by_source(rows: list[dict]) -> dict[str, str]:
    """source → `ok`, `blank_line` or the reject reason, for every record row (each source once)."""
    found = [(r["source"], r["reason"] or "ok") for r in rows if r["reason"] != "unit_end"]
    assert len({source for source, _ in found}) == len(found), "a source emitted twice"
    return dict(found)


def depth(value: Any) -> int:
    """Nesting of lists and dicts in a parsed JSON value (a stack, not recursion: values go 3,000 deep)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


# -------------------------------------------------------------------------------------- arbitrary bytes


@bounded(150)
@given(CORPUS_BYTES)
def test_any_bytes_as_jsonl_are_read_and_every_line_accounted(data: bytes) -> None:
    rows = read_bytes("fuzz.jsonl", data)
    outcomes = accounting(rows)
    if not data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):  # a `[` file is one JSON array instead
        assert sum(outcomes.values()) == physical_lines(data)


@bounded(150)
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


@bounded(60)
@given(CORPUS_BYTES)
def test_any_bytes_as_a_folder_article_are_one_row(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as root:
        (Path(root) / "label").mkdir()
        (Path(root) / "label" / "article.txt").write_bytes(data)
        rows = read_rows(IngestSpec(input=[root], format="folders", **CAPS))
    assert rows_read(accounting(rows)) == 1


# ------------------------------------------------------------------------------------- JSON with traps

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**200), max_value=2**200),
    st.floats(allow_nan=True, allow_infinity=True),  # written as NaN / Infinity, which Python's json reads
    st.text(max_size=30),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)
LITERALS = [
    "1e999",  # inf
    "-1e999",
    "1E+400",
    "0.1e-999",  # 0.0
    "123456789012345678901234567890",  # past 64 bits
    "-" + "9" * 60,
    '"\\ud800"',  # a lone surrogate escape: no UTF-8 can hold it
    '"a\\udc00b"',
    '"\\ud83d\\ude00"',  # a valid pair (one emoji)
    '"\\u0000"',
    '"a\x00b"',  # a raw control character: not JSON
    '"\ufeffbom"',
    "NaN",
    "-Infinity",
]
DEPTHS = [2, MAX_JSON_DEPTH - 2, MAX_JSON_DEPTH - 1, MAX_JSON_DEPTH, 3000]  # 3000: past Python's parser


@st.composite
def json_literals(draw: st.DrawFn) -> str:
    """A JSON value as text: a generated value, a number or string that breaks parsers, or deep nesting."""
    kind = draw(st.sampled_from(["value", "value", "literal", "deep"]))
    if kind == "literal":
        return draw(st.sampled_from(LITERALS))
    if kind == "deep":
        levels = draw(st.sampled_from(DEPTHS))
        return "[" * levels + "]" * levels
    return json.dumps(draw(JSON_VALUES), ensure_ascii=draw(st.booleans()))


@st.composite
def json_records(draw: st.DrawFn) -> str:
    """A JSON object as text, keys repeated at will (Python's json keeps the last), or another JSON value."""
    if draw(st.integers(0, 9)) == 0:
        return draw(json_literals())
    space = draw(st.sampled_from(["", " ", "\t", "\r"]))  # \r is JSON whitespace inside a line
    keys = st.sampled_from(["id", "text", "text", "label", "title", "x"])
    values = st.one_of(json_literals(), st.text(max_size=30).map(json.dumps))
    pairs = draw(st.lists(st.tuples(keys, values), max_size=6))
    return "{" + f",{space}".join(f"{json.dumps(k)}:{space}{v}" for k, v in pairs) + "}"


def json_expectation(text: str, spec: IngestSpec, source: str) -> str:
    """The outcome of one JSON record's text: malformed unless an object within the nesting cap, else what
    the validator gives the object Python's json parses."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return "malformed_record"
    if not isinstance(value, dict) or depth(value) > MAX_JSON_DEPTH:
        return "malformed_record"
    return outcome_of(value, spec, source)


JSON_SPEC = {"max_text_chars": 20, "reject_text_chars": 40, "keep_fields": ["x"], "rows_per_block": 4}


@bounded(100)
@given(
    st.lists(
        st.tuples(
            st.one_of(json_records(), st.sampled_from(["", " ", "\t"])), st.sampled_from(["\n", "\r\n"])
        ),
        max_size=10,
    ),
    st.booleans(),
    st.booleans(),
)
@example([('{"text": "a\\ud800b"}', "\n"), ('{"id": "\\udfff", "text": "x"}', "\n")], False, True)  # crashed
def test_jsonl_records_with_traps_are_each_read_as_the_validator_rules(
    lines: list[tuple[str, str]], bom: bool, last_ended: bool
) -> None:
    data = ("\ufeff" if bom else "") + "".join(text + end for text, end in lines)
    if lines and not last_ended:
        data = data[: -len(lines[-1][1])]
    spec_options = {**JSON_SPEC, "max_line_bytes": 1 << 20}
    rows = read_bytes("fuzz.jsonl", data.encode(), **spec_options)
    accounting(rows)
    if data.lstrip("\ufeff \t\r\n").startswith("["):  # read as one JSON array (its own property below)
        return
    spec = IngestSpec(input=["fuzz.jsonl"], **spec_options)
    physical = data.removeprefix("\ufeff").split("\n") if data else []  # a BOM only before line 1
    if data.endswith("\n"):
        physical.pop()
    expected = {}
    for n, line in enumerate((line.removesuffix("\r") for line in physical), start=1):
        source = f"fuzz.jsonl:{n}"
        expected[source] = "blank_line" if not line.strip() else json_expectation(line, spec, source)
    assert outcomes_by_source(rows) == expected


@bounded(50)
@given(st.lists(json_records(), max_size=8), st.sampled_from([", ", ",", ",\r\n", " ,\n "]), st.booleans())
def test_json_array_elements_with_traps_are_read_until_one_cannot_be_delimited(
    elements: list[str], separator: str, bom: bool
) -> None:
    data = ("\ufeff" if bom else "") + "[" + separator.join(elements) + "]"
    rows = read_bytes("fuzz.json", data.encode(), **JSON_SPEC, max_line_bytes=1 << 20)
    accounting(rows)
    spec = IngestSpec(input=["fuzz.json"], **JSON_SPEC)
    expected = {}
    for index, text in enumerate(elements):
        source = f"fuzz.json:[{index}]"
        try:
            json.loads(text)
        except (ValueError, RecursionError):  # not delimitable: its reject is the last row of the file
            expected[source] = "malformed_record"
            break
        expected[source] = json_expectation(text, spec, source)
    assert outcomes_by_source(rows) == expected


# ----------------------------------------------------------------------------------- CSV quote storms

CSV_TEXT = st.text(
    st.sampled_from(['"', '"', ",", "\n", "\r", " ", "a", "é", "\x00", "\t", "'", "\ufeff", "\\"])
    | st.characters(codec="utf-8"),
    max_size=25,
)


@bounded(120)
@given(
    st.lists(st.tuples(CSV_TEXT, CSV_TEXT, st.sampled_from(["\n", "\r\n", "\r"])), max_size=10),
    st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC]),
    st.booleans(),
)
def test_csv_quote_storms_written_by_a_csv_writer_are_read_record_by_record(
    records: list[tuple[str, str, str]], quoting: int, bom: bool
) -> None:
    """Fields full of quotes, delimiters and every line break, each row ended differently (a CRLF/CR/LF
    mix): every record a csv writer wrote is read as one row whose outcome the validator names."""
    out = io.StringIO()
    out.write(("\ufeff" if bom else "") + "id,text,label\r\n")
    for i, (text, label, end) in enumerate(records):
        # written with CRLF, then ended with `end`: a minimal-quoting writer quotes a field holding CR or
        # LF only when they are in its terminator (Python 3.11's writes `a\rb` bare after a `\n` row end)
        row = io.StringIO()
        csv.writer(row, quoting=quoting, lineterminator="\r\n").writerow([f"r{i}", text, label])
        out.write(row.getvalue().removesuffix("\r\n") + end)
    spec_options = {"max_text_chars": 20, "reject_text_chars": 60, "rows_per_block": 3}
    rows = read_bytes("fuzz.csv", out.getvalue().encode(), **spec_options)
    outcomes = accounting(rows)
    assert rows_read(outcomes) == len(records)  # no row split in two, none merged, none lost
    spec = IngestSpec(input=["fuzz.csv"], **spec_options)

    def newlines(value: str) -> str:  # the reader reads every CRLF and lone CR as a line break
        return value.replace("\r\n", "\n").replace("\r", "\n")

    found = {r["id"]: r for r in rows if r["reason"] != "unit_end"}
    assert set(found) == {f"r{i}" for i in range(len(records))}
    for i, (text, label, _) in enumerate(records):
        row = found[f"r{i}"]
        rec = {"id": f"r{i}", "text": newlines(text), "label": newlines(label)}
        assert (row["reason"] or "ok") == outcome_of(rec, spec), (rec, row)
        if row["reason"] is None:
            assert row["text"] == newlines(text).strip()[: spec.max_text_chars]


# --------------------------------------------------------------------------------- odd Parquet schemas

N_ROWS = st.integers(0, 25)


def column_types(n: int) -> st.SearchStrategy[pa.Array]:
    """A column of `n` values of any of the types a Parquet producer may use for a text, id or label."""
    texts = st.lists(st.text(max_size=12) | st.none(), min_size=n, max_size=n)
    return st.one_of(
        texts.map(lambda v: pa.array(v, pa.string())),
        texts.map(lambda v: pa.array(v, pa.large_string())),
        texts.map(lambda v: pa.array(v, pa.string()).dictionary_encode()),
        st.lists(st.binary(max_size=12) | st.none(), min_size=n, max_size=n).map(pa.array),
        st.lists(st.integers(-(2**63), 2**63 - 1) | st.none(), min_size=n, max_size=n).map(
            lambda v: pa.array(v, pa.int64())
        ),
        st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=n, max_size=n).map(pa.array),
        st.lists(st.booleans(), min_size=n, max_size=n).map(pa.array),
        st.just(pa.nulls(n)),
        texts.map(lambda v: pa.array([{"a": x} for x in v], pa.struct([("a", pa.string())]))),
        st.lists(st.lists(st.text(max_size=4), max_size=2), min_size=n, max_size=n).map(pa.array),
        st.lists(st.integers(-(2**53), 2**53), min_size=n, max_size=n).map(
            lambda v: pa.array(v, pa.timestamp("s"))  # most past Python's datetime range (year 9999)
        ),
        st.lists(st.integers(-(2**31), 2**31 - 1), min_size=n, max_size=n).map(
            lambda v: pa.array(v, pa.date32())
        ),
    )


@st.composite
def parquet_tables(draw: st.DrawFn) -> pa.Table:
    """A table with any of `text`, `id`, `label` and an extra column, each of any type, or none of them."""
    n = draw(N_ROWS)
    names = draw(st.lists(st.sampled_from(["text", "id", "label", "other"]), unique=True, max_size=4))
    columns = {name: draw(column_types(n)) for name in names}
    return pa.table(columns) if columns else pa.table({"other": pa.nulls(n)})


def breakages() -> st.SearchStrategy[tuple[str, Callable[[bytes], bytes]]]:
    """What happens to the written file: nothing, emptied, or cut at a random byte."""
    return st.one_of(
        st.just(("intact", lambda data: data)),
        st.just(("empty", lambda data: b"")),
        st.floats(0, 1, exclude_max=True).map(
            lambda f: ("truncated", lambda data: data[: int(f * len(data))])
        ),
    )


@bounded(80)
@given(parquet_tables(), st.integers(1, 7), st.integers(1, 5), breakages())
@example(pa.table({"text": pa.array([10**15], pa.timestamp("s"))}), 1, 1, ("intact", lambda d: d))  # crashed
def test_parquet_of_any_schema_is_read_row_by_row_or_rejected_whole(
    table: pa.Table, row_group_size: int, block: int, breakage: tuple[str, Callable[[bytes], bytes]]
) -> None:
    what, breaks = breakage
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=row_group_size)  # many row groups
    spec_options = {
        "max_text_chars": 8,
        "reject_text_chars": 10,
        "rows_per_block": block,
        "keep_fields": ["other"],
    }
    rows = read_bytes("fuzz.parquet", breaks(buffer.getvalue()), **spec_options)
    outcomes = accounting(rows)
    if what != "intact":  # no footer, no row: the file is one counted reject
        assert outcomes == {"malformed_record": 1}
        return
    assert rows_read(outcomes) == table.num_rows
    spec = IngestSpec(input=["fuzz.parquet"], **spec_options)
    wanted = [c for c in ("text", "id", "label", "other") if c in table.column_names]
    found = outcomes_by_source(rows)
    for i in range(table.num_rows):
        source = f"fuzz.parquet:{i + 1}"
        try:
            rec = {c: table.column(c)[i].as_py() for c in wanted}
        except (ValueError, OverflowError):  # a value Python cannot hold (a timestamp past year 9999)
            assert found[source] == "malformed_record"
            continue
        assert found[source] == outcome_of(rec, spec, source), rec


# ------------------------------------------------------------------------------ folder-per-class trees

NAME = st.text(st.sampled_from(list("abcXYZ019 -_.#%?*[]'\"\\\n\tüé日😀")), min_size=1, max_size=12).filter(
    lambda name: name not in (".", "..") and len(name.encode()) < 200
)
CONTENTS = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=60).map(str.encode),
    st.sampled_from(
        [b"", b"\n\n", b"\xef\xbb\xbftitle\nbody", b"a\x00b", b"\xff\xfe" + "hi".encode("utf-16-le")]
    ),
)


@bounded(80)
@given(
    st.dictionaries(
        st.tuples(NAME, st.none() | NAME, NAME),  # <label>/[<sub>/]<file>
        CONTENTS,
        min_size=1,
        max_size=6,
    ),
    st.lists(st.tuples(NAME, CONTENTS), max_size=2),  # files directly under the root: never articles
)
def test_folder_trees_with_odd_names_and_contents_are_one_row_per_article(
    tree: dict[tuple[str, str | None, str], bytes], top: list[tuple[str, bytes]]
) -> None:
    spec_options = {**CAPS, "text_fields": ["title", "body"]}
    with tempfile.TemporaryDirectory() as root:
        paths = {}
        for (label, sub, name), content in tree.items():
            relpath = "/".join(part for part in (label, sub, name) if part is not None)
            if Path(root, relpath).exists() or any(Path(root, p).is_file() for p in Path(relpath).parents):
                continue  # a name drawn twice as a file and a folder
            Path(root, relpath).parent.mkdir(parents=True, exist_ok=True)
            Path(root, relpath).write_bytes(content)
            paths[relpath] = content
        for name, content in top:
            if not Path(root, name).exists():
                Path(root, name).write_bytes(content)
        articles = {
            p: c for p, c in paths.items() if not any(part.startswith((".", "_")) for part in p.split("/"))
        }
        spec = IngestSpec(input=[root], format="folders", **spec_options)
        if not articles:
            with pytest.raises(FileNotFoundError, match="no corpus files found"):
                list_corpus(spec)
            return
        info = list_corpus(spec)
        assert {f.relpath for f in info.files} == set(articles)
        rows = read_rows(spec)
    outcomes = accounting(rows)
    assert rows_read(outcomes) == len(articles)
    found = outcomes_by_source(rows)
    limit = 4 * spec.reject_text_chars + 4
    for relpath, content in articles.items():
        text, repaired, invalid = decode(content)
        if invalid:
            expected = "invalid_utf8"
        elif len(content) > limit:
            expected = "too_long"
        else:
            title, _, body = text.strip().partition("\n")
            rec = {"id": relpath, "label": relpath.split("/")[0], "text": text, "title": title, "body": body}
            expected = outcome_of(rec, spec, relpath, repaired)
        assert found[relpath] == expected, (relpath, content)
    # the id is the path (stripped, as every id is), the label the first folder
    ok = [r for r in rows if r["reason"] is None]
    assert all(r["id"] == r["source"].strip() for r in ok)
    assert all(r["label"] == (r["source"].split("/")[0].strip() or None) for r in ok)


def test_a_file_name_that_is_not_utf8_fails_the_listing_with_the_folder_named(tmp_path: Path) -> None:
    """pyarrow cannot list a folder holding a name that is not UTF-8 (found by the property above, with
    names as bytes): the listing names the folder and what to do, instead of a bare UnicodeDecodeError."""
    (tmp_path / "label").mkdir()
    (tmp_path / "label" / "fine.txt").write_text("hello")
    (tmp_path / "label" / os.fsdecode(b"latin1-\xe9t\xe9.txt")).write_text("bonjour")
    with pytest.raises(ValueError, match=rf"{re.escape(str(tmp_path))}.*not valid UTF-8.*latin1-.*rename"):
        list_corpus(IngestSpec(input=[str(tmp_path)], format="folders"))


def test_timestamps_past_pythons_range_are_named_rejects_not_a_crash(tmp_path: Path) -> None:
    """Found by the Parquet property: a value pyarrow cannot turn into Python (a timestamp past year 9999)
    crashed the read task; now only its row is rejected, and the rows around it are read."""
    ids = pa.array([0, 10**15, 1], pa.timestamp("s"))
    pq.write_table(pa.table({"id": ids, "text": ["a", "b", "c"]}), tmp_path / "t.parquet")
    rows = read_rows(IngestSpec(input=[str(tmp_path / "t.parquet")]))
    assert accounting(rows) == {"not_a_string": 2, "malformed_record": 1}
    bad = next(r for r in rows if r["reason"] == "malformed_record")
    assert (bad["source"], bad["_row"]) == ("t.parquet:2", 1)
    assert "cannot be read as Python values" in bad["raw"]
