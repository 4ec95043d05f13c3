"""Hostile inputs become counted rejects with a reason, never a crashed read or a silently lost row:
JSON nested past Python's parser, CSV with lone carriage returns, Parquet files that cannot be decoded.

Most tests run the read tasks' own bodies in this process (see tests/read_tasks.py); the last one runs
`ingest` end to end on Ray."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from read_tasks import accounting, read_rows, rows_read

from bm_ray.corpus.formats import MAX_JSON_DEPTH, MAX_RECORD_LINES, _universal_newlines
from bm_ray.jobs.ingest import ingest
from bm_ray.layout import REJECTS_DIR, SUMMARY_FILE
from bm_ray.specs import IngestSpec

DEEP = 100_000  # far past Python's recursion limit


def outcome_by_source(rows: list[dict]) -> dict[str, str]:
    """source → `ok` or the reject reason, for every record row."""
    return {r["source"]: r["reason"] or "ok" for r in rows if r["reason"] not in ("unit_end", "blank_line")}


def nested(depth: int) -> str:
    """A JSON array nested `depth` levels deep."""
    return "[" * depth + "]" * depth


# ---------------------------------------------------------------------------------------------- JSON


def test_jsonl_nested_too_deep_is_a_malformed_line_and_the_others_are_read(tmp_path: Path) -> None:
    lines = [
        '{"text": "before"}',
        "[" * DEEP,  # unterminated: Python's parser raises RecursionError, not ValueError
        '{"text": "x", "meta": ' + nested(DEEP) + "}",
        '{"text": "x", "meta": ' + nested(MAX_JSON_DEPTH + 1) + "}",  # parses, but over the cap
        '{"text": "kept", "meta": ' + nested(MAX_JSON_DEPTH - 1) + "}",  # at the cap (the record is 1)
        '{"text": "after"}',
    ]
    path = tmp_path / "deep.jsonl"
    path.write_text("\n".join(lines) + "\n")
    rows = read_rows(IngestSpec(input=[str(path)], keep_fields=["meta"]))
    outcomes = accounting(rows)
    assert rows_read(outcomes) == len(lines) == outcomes["ok"] + outcomes["malformed_record"]
    assert outcome_by_source(rows) == {
        "deep.jsonl:1": "ok",
        "deep.jsonl:2": "malformed_record",
        "deep.jsonl:3": "malformed_record",
        "deep.jsonl:4": "malformed_record",
        "deep.jsonl:5": "ok",
        "deep.jsonl:6": "ok",
    }
    kept = next(r for r in rows if r["source"] == "deep.jsonl:5")
    assert json.loads(kept["meta"]) == json.loads(nested(MAX_JSON_DEPTH - 1))  # written back whole


def test_json_array_element_nested_too_deep(tmp_path: Path) -> None:
    """A delimited element over the cap is one reject and reading goes on; one too deep for the parser
    cannot be delimited, so it is the last record read (its raw says the rest was not read)."""
    path = tmp_path / "deep.json"
    path.write_text(
        '[{"text": "a"}, {"text": "b", "m": '
        + nested(MAX_JSON_DEPTH + 5)
        + '}, {"text": "c"}, '
        + "[" * DEEP
        + ', {"text": "never reached"}]'
    )
    rows = read_rows(IngestSpec(input=[str(path)]))
    outcomes = accounting(rows)
    assert rows_read(outcomes) == 4
    assert outcome_by_source(rows) == {
        "deep.json:[0]": "ok",
        "deep.json:[1]": "malformed_record",
        "deep.json:[2]": "ok",
        "deep.json:[3]": "malformed_record",
    }
    last = next(r for r in rows if r["source"] == "deep.json:[3]")
    assert last["raw"].endswith("[rest of the file not read]")


# ----------------------------------------------------------------------------------------------- CSV


def test_csv_with_lone_cr_line_ends_is_read_row_by_row(tmp_path: Path) -> None:
    path = tmp_path / "mac.csv"
    path.write_bytes(b'id,text\r1,hello\r2,"two\rlines"\r\r3,world\r')
    rows = read_rows(IngestSpec(input=[str(path)]))
    outcomes = accounting(rows)
    assert outcomes == {"ok": 3, "blank_line": 1}
    ok = {r["id"]: (r["text"], r["source"]) for r in rows if r["reason"] is None}
    assert ok == {"1": ("hello", "mac.csv:2"), "2": ("two\nlines", "mac.csv:3"), "3": ("world", "mac.csv:6")}


def test_csv_stray_cr_is_a_line_break_and_every_piece_is_counted(tmp_path: Path) -> None:
    """A lone CR ends a line (as in Python's csv module) also in an LF file: inside a quoted field it is
    kept as a newline; in an unquoted one it splits the line, each piece an ok row or a named reject."""
    path = tmp_path / "stray.csv"
    path.write_bytes(b'id,text,label\n1,"quoted\rcr",a\n2,unquoted\rcr,b\n3,after,c\n')
    rows = read_rows(IngestSpec(input=[str(path)]))
    outcomes = accounting(rows)
    assert rows_read(outcomes) == 4 == outcomes["ok"] + outcomes["malformed_record"]
    assert outcome_by_source(rows) == {
        "stray.csv:2": "ok",
        "stray.csv:4": "malformed_record",  # `2,unquoted`: two fields of three
        "stray.csv:5": "malformed_record",  # `cr,b`
        "stray.csv:6": "ok",
    }
    assert next(r["text"] for r in rows if r["source"] == "stray.csv:2") == "quoted\ncr"


def test_a_broken_csv_quote_runs_at_most_max_record_lines_then_reading_resumes(tmp_path: Path) -> None:
    """An opened, never closed quote folds the following lines into its field only up to the bound:
    past MAX_RECORD_LINES physical lines it is one malformed_record for its first line, and every line
    after it is read again as its own row. Balanced within the bound, the lines are one record (the csv rule)."""
    assert MAX_RECORD_LINES == 50  # the bound the inputs page documents
    plain = 60
    # The stray quote on the last line would balance the first one if a field could run that far.
    lines = ['0,"never closed,a'] + [f"{i},plain {i},b" for i in range(1, plain + 1)] + ['99,stray" quote,c']
    path = tmp_path / "broken.csv"
    path.write_text("id,text,label\n" + "\n".join(lines) + "\n", encoding="utf-8")
    rows = read_rows(IngestSpec(input=[str(path)]))
    outcomes = accounting(rows)
    assert outcomes == {"malformed_record": 2, "ok": plain}  # each quote costs its own line, no more
    by_source = outcome_by_source(rows)
    assert by_source["broken.csv:2"] == by_source[f"broken.csv:{plain + 3}"] == "malformed_record"
    folded = tmp_path / "folded.csv"
    folded.write_text('id,text,label\n1,"spans\nthree\nlines",a\n2,next,b\n', encoding="utf-8")
    ok = {r["id"]: r["text"] for r in read_rows(IngestSpec(input=[str(folded)])) if r["reason"] is None}
    assert ok == {"1": "spans\nthree\nlines", "2": "next"}


def test_csv_cr_in_the_header_is_no_crash(tmp_path: Path) -> None:
    path = tmp_path / "header.csv"
    path.write_bytes(b"id,te\rxt\n1,hello\n")
    outcomes = accounting(read_rows(IngestSpec(input=[str(path)])))
    assert outcomes == {"malformed_record": 1, "missing_field": 1}  # `xt`, then a row without `text`


def test_crlf_csv_is_read_as_before(tmp_path: Path) -> None:
    path = tmp_path / "crlf.csv"
    path.write_bytes(b'id,text\r\n1,"a\r\nb"\r\n2,c\r\n')
    rows = read_rows(IngestSpec(input=[str(path)]))
    assert accounting(rows) == {"ok": 2}
    assert [(r["source"], r["text"]) for r in rows if r["reason"] is None] == [
        ("crlf.csv:2", "a\nb"),
        ("crlf.csv:4", "c"),
    ]


def test_a_csv_field_over_the_csv_modules_limit_is_kept_truncated(tmp_path: Path) -> None:
    """The csv module refuses fields over 128 KiB; such a text is truncated like any other (not malformed)."""
    path = tmp_path / "big.csv"
    path.write_bytes(b"id,text\n1," + b"x" * 200_000 + b"\n")
    rows = read_rows(IngestSpec(input=[str(path)]))
    assert accounting(rows) == {"ok": 1}
    assert rows[0]["truncated"] and len(rows[0]["text"]) == 100_000


@pytest.mark.parametrize("data", [b"a\rb\r\nc\n\rd\r", b"\r\r\n\r", b"x\r\ny"])
def test_universal_newlines_whatever_the_chunk_boundaries(data: bytes) -> None:
    expected = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    for cut in range(len(data) + 1):
        for second in range(cut, len(data) + 1):
            chunks = [data[:cut], data[cut:second], data[second:]]
            assert b"".join(_universal_newlines(chunks)) == expected, (cut, second)


# ------------------------------------------------------------------------------------------- Parquet


def good_parquet(path: Path, n: int = 30, prefix: str = "row") -> bytes:
    """A valid Parquet file of `n` texts in row groups of 10; its bytes."""
    pq.write_table(pa.table({"text": [f"{prefix} {i}" for i in range(n)]}), path, row_group_size=10)
    return path.read_bytes()


@pytest.mark.parametrize(
    "breakage",
    [
        pytest.param(lambda data: data[:-10], id="truncated-footer"),
        pytest.param(lambda data: data[:-4] + b"XXXX", id="bad-magic"),
        pytest.param(lambda data: data[:-8] + b"\xff\xff\xff\x7fPAR1", id="footer-length-past-start"),
        pytest.param(lambda data: b"", id="empty"),
        pytest.param(lambda data: b'{"text": "not parquet"}\n', id="not-parquet"),
    ],
)
def test_undecodable_parquet_file_is_one_reject_and_the_others_are_read(tmp_path: Path, breakage) -> None:
    good_parquet(tmp_path / "a.parquet", prefix="a")
    (tmp_path / "b.parquet").write_bytes(breakage(good_parquet(tmp_path / "b.parquet")))
    good_parquet(tmp_path / "c.parquet", prefix="c")
    rows = read_rows(IngestSpec(input=[str(tmp_path)]))
    assert accounting(rows) == {"ok": 60, "malformed_record": 1}
    (reject,) = [r for r in rows if r["reason"] == "malformed_record"]
    assert (reject["source"], reject["_row"]) == ("b.parquet", 0)
    assert reject["raw"].startswith("the file not read: not a readable Parquet file (")


def test_parquet_corrupt_after_some_rows_keeps_them_and_counts_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "mid.parquet"
    data = bytearray(good_parquet(path))
    page = pq.ParquetFile(path).metadata.row_group(2).column(0).data_page_offset
    data[page : page + 16] = b"\xab" * 16  # the third row group's page header
    path.write_bytes(bytes(data))
    rows = read_rows(IngestSpec(input=[str(path)], rows_per_block=4))
    assert accounting(rows) == {"ok": 20, "malformed_record": 1}
    reject = next(r for r in rows if r["reason"] == "malformed_record")
    assert (reject["source"], reject["_row"]) == ("mid.parquet", 20)
    assert reject["raw"].startswith("rows from 21 on not read: not a readable Parquet file (")


# ---------------------------------------------------------------------------------------- end to end


def write_jsonl(root: Path) -> dict[str, str]:
    (root / "deep.jsonl").write_text('{"text": "a"}\n' + "[" * DEEP + '\n{"text": "b"}\n')
    return {"deep.jsonl:2": "malformed_record"}


def write_csv(root: Path) -> dict[str, str]:
    (root / "mac.csv").write_bytes(b"text\rone\rtwo\rthree\r")
    return {}


def write_parquet(root: Path) -> dict[str, str]:
    good_parquet(root / "good.parquet")
    (root / "broken.parquet").write_bytes(good_parquet(root / "broken.parquet")[:-10])
    return {"broken.parquet": "malformed_record"}


@pytest.mark.parametrize(
    ("write", "ok"), [(write_jsonl, 2), (write_csv, 3), (write_parquet, 30)], ids=["jsonl", "csv", "parquet"]
)
def test_ingest_counts_fuzzed_inputs_and_finishes(ray_local, tmp_path: Path, write, ok: int) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rejects = write(corpus)
    out = tmp_path / "out"
    ingest(IngestSpec(input=[str(corpus)]), str(out))

    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["rows_read"] == summary["rows_ok"] + summary["rows_rejected"] == ok + len(rejects)
    assert summary["rows_ok"] == ok
    assert summary["rejected_by_reason"] == ({"malformed_record": len(rejects)} if rejects else {})
    files = [f for f in (out / REJECTS_DIR).glob("*.parquet") if not f.name.startswith(".")]
    found = {r["source"]: r["reason"] for f in files for r in pq.read_table(f).to_pylist()}
    assert found == rejects
