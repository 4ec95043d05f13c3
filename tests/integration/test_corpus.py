"""Corpus ingestion: fault corpora in every format, CSV variants, multi-input, cleaning, real corpora."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fault_corpus import FORMATS, write_fault_corpus

from bm_ray.corpus import ROW_COLUMNS, clean_text, first_ok_rows, infer_format, list_corpus, read_corpus
from bm_ray.jobs.ingest import ingest
from bm_ray.layout import REJECT_REASONS
from bm_ray.specs import IngestSpec


def read_dir(path: Path) -> pa.Table | None:
    """All Parquet files of one output subdirectory, concatenated (None when there are none)."""
    files = sorted(p for p in path.glob("*.parquet") if not p.name.startswith("."))
    return pa.concat_tables([pq.read_table(p) for p in files]) if files else None


def check_exactly_once(out: Path, sources: set[str]) -> tuple[pa.Table, pa.Table | None]:
    """Every input record's source appears exactly once across ok ∪ rejects; ok ids are unique."""
    ok, rejects = read_dir(out / "ok"), read_dir(out / "rejects")
    seen = Counter(ok.column("source").to_pylist())
    if rejects is not None:
        seen.update(rejects.column("source").to_pylist())
    assert set(seen) == sources
    assert max(seen.values()) == 1
    ids = ok.column("id").to_pylist()
    assert len(ids) == len(set(ids))
    return ok, rejects


@pytest.mark.parametrize("fmt", FORMATS)
def test_fault_corpus_exact_accounting(ray_local, tmp_path: Path, fmt: str) -> None:
    corpus = write_fault_corpus(tmp_path, fmt)
    out = tmp_path / "out"
    summary = ingest(IngestSpec(**corpus.spec, rows_per_block=4), str(out))

    assert summary.format == fmt
    assert summary.rows_read == corpus.rows_read == summary.rows_ok + summary.rows_rejected
    assert summary.rows_ok == len(corpus.ok_ids)
    assert summary.rejected_by_reason == corpus.rejected_by_reason
    assert summary.blank_lines == corpus.blank_lines
    assert summary.rows_truncated == corpus.truncated
    assert summary.rows_utf8_repaired == corpus.utf8_repaired
    assert summary.ignored_files == corpus.ignored
    assert set(summary.rejected_by_reason) <= set(REJECT_REASONS)
    assert json.loads((out / "summary.json").read_text()) == summary.model_dump()

    ok, rejects = check_exactly_once(out, {*corpus.reasons, *_ok_sources(out)})
    assert sorted(ok.column("id").to_pylist()) == sorted(corpus.ok_ids)
    assert dict(
        zip(rejects.column("source").to_pylist(), rejects.column("reason").to_pylist(), strict=True)
    ) == (corpus.reasons)
    assert ok.column_names == ["id", "text", "label", "source", "truncated", "utf8_repaired"]
    assert rejects.column_names == ["id", "source", "reason", "raw"]
    assert all(raw is None or len(raw) <= 300 for raw in rejects.column("raw").to_pylist())
    texts = ok.column("text").to_pylist()
    assert max(len(t) for t in texts) == 50  # truncated to max_text_chars
    assert all(t == t.strip() and t for t in texts)


def _ok_sources(out: Path) -> list[str]:
    return read_dir(out / "ok").column("source").to_pylist()


def test_rows_carry_sources_ids_and_flags(ray_local, tmp_path: Path) -> None:
    corpus = write_fault_corpus(tmp_path, "jsonl")
    ds, info = read_corpus(IngestSpec(**corpus.spec, keep_fields=["label"]))
    rows = {r["source"]: r for r in ds.take_all()}
    assert list(ds.schema().names) == list(ROW_COLUMNS)
    assert info.format == "jsonl" and len(info.files) == 1
    assert len(rows) == 19 and [rows[s]["_row"] for s in ("faults.jsonl:1", "faults.jsonl:19")] == [0, 18]
    assert rows["faults.jsonl:15"]["reason"] == "blank_line"
    assert rows["faults.jsonl:17"]["id"] == "17" and rows["faults.jsonl:17"]["label"] == "3"
    assert rows["faults.jsonl:18"]["id"] == "faults.jsonl:18" and rows["faults.jsonl:18"]["label"] is None
    assert rows["faults.jsonl:10"]["utf8_repaired"] and rows["faults.jsonl:10"]["text"] == "caf\ufffd ok"
    assert rows["faults.jsonl:13"]["truncated"] and len(rows["faults.jsonl:13"]["text"]) == 50
    assert rows["faults.jsonl:8"]["raw"] == "this is not json" and rows["faults.jsonl:8"]["text"] is None
    assert rows["faults.jsonl:14"]["reason"] == "duplicate_id" and rows["faults.jsonl:1"]["reason"] is None
    info.dedupe.close()


def test_headerless_csv_ag_news_style(ray_local, tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_bytes(
        b'"3","Wall St. #39;s Bears","Short-sellers, Wall Street #39;s dwindling band, are \\$24 back  amp; up."\r\n'
        b'"4","Kids  quot;fun quot;","A  #36;5 toy\\spanned"\r\n'
        b'"1","",""\r\n'
    )
    spec = IngestSpec(
        input=[str(tmp_path / "train.csv")],
        csv_header=False,
        csv_columns=["class", "title", "description"],
        text_fields=["title", "description"],
        text_separator=". ",
        label_field="class",
        clean_text=True,
    )
    out = tmp_path / "out"
    summary = ingest(spec, str(out))
    assert (summary.rows_read, summary.rows_ok, summary.rejected_by_reason) == (
        3,
        2,
        {"empty_text": 1},
    )
    assert summary.label_counts == {"3": 1, "4": 1}
    ok = read_dir(out / "ok").sort_by("source").to_pylist()
    assert (
        ok[0]["text"] == "Wall St.'s Bears. Short-sellers, Wall Street's dwindling band, are $24 back & up."
    )
    assert ok[1]["text"] == 'Kids "fun". A $5 toy spanned'
    assert ok[0]["source"] == "train.csv:1" and ok[0]["id"] == "train.csv:1"

    # without column names: 0-based index strings
    by_index = IngestSpec(input=spec.input, csv_header=False, text_fields=["1", "2"], label_field="0")
    rows = sorted(read_corpus(by_index, dedupe=False)[0].take_all(), key=lambda r: r["_row"])
    assert [r["label"] for r in rows] == ["3", "4", None] and rows[2]["reason"] == "empty_text"
    assert rows[0]["text"].startswith("Wall St. #39;s Bears\n")  # no cleaning unless asked


def test_multi_input_files_and_glob(ray_local, tmp_path: Path) -> None:
    for name, n in (("a.jsonl", 3), ("b.jsonl", 2)):
        (tmp_path / name).write_text("".join(json.dumps({"text": f"{name} {i}"}) + "\n" for i in range(n)))
    (tmp_path / "more").mkdir()
    for name in ("c.jsonl", "d.jsonl", "skip.txt"):
        (tmp_path / "more" / name).write_text(json.dumps({"text": name, "label": "L"}) + "\n")
    spec = IngestSpec(input=f"{tmp_path}/a.jsonl,{tmp_path}/b.jsonl,{tmp_path}/more/*.jsonl")
    info = list_corpus(spec)
    assert sorted(f.relpath for f in info.files) == ["a.jsonl", "b.jsonl", "more/c.jsonl", "more/d.jsonl"]
    summary = ingest(spec, str(tmp_path / "out"))
    assert (summary.rows_read, summary.rows_ok, summary.files) == (7, 7, 4)
    assert summary.label_counts == {"L": 2}
    # a directory input: files with other extensions are reported, not read
    info = list_corpus(IngestSpec(input=str(tmp_path / "more")))
    assert info.format == "jsonl" and info.ignored_files == ["skip.txt"]


def test_first_ok_rows_skip_rejects_and_unlabelled_rows(ray_local, tmp_path: Path) -> None:
    """The benchmarks' sample reader: the first ok rows in file order (rejects and, when asked,
    unlabelled rows passed over), and a clear error when none qualifies."""
    lines = ['{"id": "a", "text": "one", "label": "x"}', "not json", '{"id": "b", "text": "two"}']
    lines += ['{"id": "c", "text": "three", "label": "y"}', '{"id": "d", "text": ""}']
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    spec = IngestSpec(input=[str(path)])
    assert [r["id"] for r in first_ok_rows(spec, ["id"], 10)] == ["a", "b", "c"]
    assert first_ok_rows(spec, ["id", "label"], 1, labelled=True) == [{"id": "a", "label": "x"}]
    assert [r["id"] for r in first_ok_rows(spec, ["id"], 10, labelled=True)] == ["a", "c"]
    (tmp_path / "bad.jsonl").write_text("not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl: no valid rows in fields text"):
        first_ok_rows(IngestSpec(input=[str(tmp_path / "bad.jsonl")]), ["text"], 5)


def test_infer_format(tmp_path: Path) -> None:
    assert [
        infer_format(p) for p in ("a.jsonl", "s3://b/x.NDJSON", "c.json", "d.tsv", "e.csv", "f.parquet")
    ] == [
        "jsonl",
        "jsonl",
        "jsonl",
        "csv",
        "csv",
        "parquet",
    ]
    with pytest.raises(ValueError, match=r"notes\.txt.*--format"):
        infer_format("notes.txt")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="--format"):
        list_corpus(IngestSpec(input=str(tmp_path / "notes.txt")))
    with pytest.raises(FileNotFoundError, match="input not found"):
        list_corpus(IngestSpec(input=str(tmp_path / "missing.csv")))


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        (" #39;Do-not-call #39; law", "'Do-not-call' law"),
        ("Wall St. #39;s", "Wall St.'s"),
        ("Kids  quot;fun quot; time", 'Kids "fun" time'),
        ("Johnson  amp; Johnson", "Johnson & Johnson"),
        ("a \\$24 billion", "a $24 billion"),
        ("cost  #36;5", "cost $5"),
        ("&lt;b&gt;bold&lt;/b&gt;", "<b>bold</b>"),
        (" lt;p gt;text", "<p>text"),
        ("URLs,\\\\Right now", "URLs, Right now"),
        ("line one\\line two", "line one line two"),
        ("zero\u200bwidth\ufeff and\x07 ctrl\ttab", "zerowidth and ctrl tab"),
        ("  many   spaces \n\n\n new line  ", "many spaces\nnew line"),
        ("AT&T; R&D and &amp;", "AT&T; R&D and &"),
    ],
)
def test_clean_text(raw: str, clean: str) -> None:
    assert clean_text(raw) == clean


@pytest.mark.realdata
def test_real_ag_news(ray_local, shared_data: Path, tmp_path: Path) -> None:
    spec = IngestSpec(
        input=str(shared_data / "ag_news_dev" / "val.csv"),
        text_fields=["Title", "Description"],
        label_field="Class Index",
        clean_text=True,
    )
    summary = ingest(spec, str(tmp_path / "out"))
    assert (summary.rows_read, summary.rows_ok, summary.rows_rejected) == (6001, 6001, 0)
    assert summary.label_counts == {"1": 1409, "2": 1412, "3": 1665, "4": 1515}
    texts = read_dir(tmp_path / "out" / "ok").column("text").to_pylist()
    assert not any(" #39;" in t or " quot;" in t or "\\$" in t for t in texts)


@pytest.mark.realdata
def test_real_bbc_folders(ray_local, shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = ingest(IngestSpec(input=str(shared_data / "bbc")), str(out))
    assert summary.format == "folders"
    assert (summary.rows_read, summary.rows_ok, summary.rows_rejected) == (2225, 2225, 0)
    assert summary.label_counts == {
        "business": 510,
        "entertainment": 386,
        "politics": 417,
        "sport": 511,
        "tech": 401,
    }
    assert summary.ignored_files == ["README.TXT", "SHA256SUMS"]
    assert summary.rows_utf8_repaired == 1
    ok = read_dir(out / "ok")
    repaired = ok.filter(ok.column("utf8_repaired")).to_pylist()
    assert [r["id"] for r in repaired] == ["sport/199.txt"] and "\ufffd" in repaired[0]["text"]
