"""Exactly-once commits, resume after a killed job, overwrite, and row accounting."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import ray

from bm_ray import commit
from bm_ray.corpus import BLANK_LINE, read_corpus, row_schema
from bm_ray.ingest import ingest
from bm_ray.specs import IngestSpec


def make_batch(rows: list[tuple[str, int, str | None]]) -> pa.Table:
    """Rows (unit, row, reason) in the corpus row schema."""
    columns = {name: [] for name in row_schema().names}
    for unit, row, reason in rows:
        source = f"{unit}.jsonl:{row + 1}"
        values = {
            "id": f"{unit}-{row}",
            "text": None if reason else f"text {row}",
            "label": None if reason else ("a" if row % 2 else "b"),
            "source": source,
            "reason": reason,
            "raw": "raw" if reason and reason != BLANK_LINE else None,
            "truncated": row == 1,
            "utf8_repaired": False,
            "_unit": unit,
            "_row": row,
        }
        for name, value in values.items():
            columns[name].append(value)
    return pa.table(columns, schema=row_schema())


def listing(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_processor_commits_runs_and_retries_are_idempotent(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    commit.prepare_output(out)
    batch = make_batch(
        [
            ("u1", 0, None),
            ("u1", 1, None),
            ("u1", 2, BLANK_LINE),
            ("u1", 3, "empty_text"),
            ("u1", 7, None),
            ("u1", 8, "too_long"),
            ("u2", 0, BLANK_LINE),
        ]
    )
    processor = commit.CommitProcessor(out)
    progress = processor(batch)
    assert progress.schema == commit.PROGRESS_SCHEMA
    assert progress.select(["unit", "first_row", "last_row", "rows_read", "blank_lines"]).to_pylist() == [
        {"unit": "u1", "first_row": 0, "last_row": 3, "rows_read": 3, "blank_lines": 1},
        {"unit": "u1", "first_row": 7, "last_row": 8, "rows_read": 2, "blank_lines": 0},
        {"unit": "u2", "first_row": 0, "last_row": 0, "rows_read": 0, "blank_lines": 1},
    ]
    files = listing(tmp_path / "out")
    assert sorted(files) == [
        "_commits/u1-000000000000-000000000003.json",
        "_commits/u1-000000000007-000000000008.json",
        "_commits/u2-000000000000-000000000000.json",
        "ok/u1-000000000000-000000000003.parquet",
        "ok/u1-000000000007-000000000008.parquet",
        "rejects/u1-000000000000-000000000003.parquet",
        "rejects/u1-000000000007-000000000008.parquet",
    ]
    record = json.loads(files["_commits/u1-000000000000-000000000003.json"])
    assert record["rejected_by_reason"] == {"empty_text": 1} and record["label_counts"] == {"a": 1, "b": 1}
    assert record["truncated"] == 1

    processor(batch)  # a retried task: same names, same contents, nothing added
    assert listing(tmp_path / "out") == files
    assert commit.committed_rows(out) == {"u1": [(0, 3), (7, 8)], "u2": [(0, 0)]}
    summary = commit.summarize(out, {"format": "jsonl"})
    assert (summary["rows_read"], summary["rows_ok"], summary["rows_rejected"], summary["blank_lines"]) == (
        5,
        3,
        2,
        2,
    )
    assert summary["format"] == "jsonl" and summary["commits"] == 3


def test_summarize_refuses_broken_accounting(tmp_path: Path) -> None:
    out = tmp_path / "out"
    commit.prepare_output(str(out))
    commit.CommitProcessor(str(out))(make_batch([("u1", 0, None), ("u1", 1, None)]))
    record = {"unit": "u1", "first_row": 1, "last_row": 4, "rows_read": 4, "rows_ok": 4, "rows_rejected": 0}
    record |= {
        "rejected_by_reason": {},
        "blank_lines": 0,
        "label_counts": {},
        "truncated": 0,
        "utf8_repaired": 0,
    }
    (out / "_commits" / "u1-000000000001-000000000004.json").write_text(json.dumps(record))
    with pytest.raises(RuntimeError, match="overlapping commits for unit u1"):
        commit.summarize(str(out))
    record |= {"first_row": 5, "last_row": 8, "rows_ok": 3}
    (out / "_commits" / "u1-000000000001-000000000004.json").unlink()
    (out / "_commits" / "u1-000000000005-000000000008.json").write_text(json.dumps(record))
    with pytest.raises(RuntimeError, match="row accounting broken"):
        commit.summarize(str(out))


def test_prepare_output_removes_debris_and_refuses_other_jobs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    commit.prepare_output(str(out), job={"kind": "ingest", "input": ["a"]})
    commit.CommitProcessor(str(out))(make_batch([("u1", 0, None), ("u1", 1, "empty_text")]))
    (out / "ok" / "u9-000000000000-000000000009.parquet").write_bytes(b"half-written")
    (out / "rejects" / ".tmp-u1-000000000000-000000000001.parquet-1234").write_bytes(b"tmp")
    (out / "_commits" / ".tmp-u9-000000000000-000000000009.json-1234").write_bytes(b"{")
    before = listing(out)
    commit.prepare_output(str(out), job={"kind": "ingest", "input": ["a"]})
    after = listing(out)
    assert sorted(set(before) - set(after)) == [
        "_commits/.tmp-u9-000000000000-000000000009.json-1234",
        "ok/u9-000000000000-000000000009.parquet",
        "rejects/.tmp-u1-000000000000-000000000001.parquet-1234",
    ]
    with pytest.raises(ValueError, match=r"different job \(differs in: input\).*overwrite"):
        commit.prepare_output(str(out), job={"kind": "ingest", "input": ["b"]})
    commit.prepare_output(str(out), overwrite=True, job={"kind": "ingest", "input": ["b"]})
    assert sorted(listing(out)) == ["_job.json"]


def write_dup_corpus(root: Path) -> tuple[IngestSpec, set[str]]:
    """Two JSONL files: 49 records, 34 distinct ids, 2 blank lines; returns the spec and all sources."""
    a = [json.dumps({"id": f"i{n % 30}", "text": f"a {n}", "label": str(n % 3)}) for n in range(40)]
    a[12] = ""  # a blank line in the middle
    # duplicates carry the same label as their twin: which twin wins depends on task timing
    b = [json.dumps({"id": f"i{n}", "text": f"b {n}", "label": str(n % 3)}) for n in range(25, 35)]
    (root / "a.jsonl").write_text("\n".join(a) + "\n\n")
    (root / "b.jsonl").write_text("\n".join(b) + "\n")
    sources = {f"a.jsonl:{n + 1}" for n in range(40) if n != 12} | {f"b.jsonl:{n + 1}" for n in range(10)}
    return IngestSpec(input=[str(root / "a.jsonl"), str(root / "b.jsonl")], rows_per_block=7), sources


def outputs(out: Path) -> tuple[list[str], Counter[str]]:
    ok = pa.concat_tables([pq.read_table(p) for p in (out / "ok").glob("*.parquet")])
    rejects = pa.concat_tables([pq.read_table(p) for p in (out / "rejects").glob("*.parquet")])
    seen = Counter(ok.column("source").to_pylist() + rejects.column("source").to_pylist())
    return ok.column("id").to_pylist(), seen


COUNTS = ("rows_read", "rows_ok", "rows_rejected", "rejected_by_reason", "blank_lines", "label_counts")


def test_resume_after_killed_job_is_exactly_once(ray_local, tmp_path: Path) -> None:
    spec, sources = write_dup_corpus(tmp_path)
    out = tmp_path / "out"
    first = ingest(spec, str(out))
    assert (first["rows_read"], first["rows_ok"], first["rejected_by_reason"], first["blank_lines"]) == (
        49,
        34,
        {"duplicate_id": 15},
        2,
    )

    again = ingest(spec, str(out))  # nothing left to do
    assert {k: again[k] for k in COUNTS} == {k: first[k] for k in COUNTS} and again["rows_resumed"] == 51

    # a killed job: some runs lost their commit record, half-written temporaries lie around
    commits = sorted((out / "_commits").glob("*.json"))
    for record in commits[::3]:
        record.unlink()
    (out / "ok" / ".tmp-a_jsonl_0-000000000000-000000000006.parquet-dead").write_bytes(b"partial")
    resumed = ingest(spec, str(out))
    assert {k: resumed[k] for k in COUNTS} == {k: first[k] for k in COUNTS}
    assert 0 < resumed["rows_resumed"] < 51
    ids, seen = outputs(out)
    assert set(seen) == sources and max(seen.values()) == 1
    assert len(ids) == len(set(ids)) == 34
    assert not list(out.rglob(".tmp-*"))

    fresh = ingest(spec, str(out), overwrite=True)
    assert {k: fresh[k] for k in COUNTS} == {k: first[k] for k in COUNTS} and fresh["rows_resumed"] == 0
    with pytest.raises(ValueError, match="different job"):
        ingest(spec.model_copy(update={"clean_text": True}), str(out))


def test_processor_as_ray_data_callable_class(ray_local, tmp_path: Path) -> None:
    """How bulk classification reuses the commit protocol: an actor pool, another ok table and ok subdir."""
    spec, _ = write_dup_corpus(tmp_path)
    out = str(tmp_path / "pred")
    commit.prepare_output(out, ok_dir="predictions")

    def predict(rows: pa.Table) -> pa.Table:
        return pa.table({"id": rows.column("id"), "predicted": pc.utf8_length(rows.column("text"))})

    ds, info = read_corpus(spec)
    progress = ds.map_batches(
        commit.CommitProcessor,
        fn_constructor_kwargs={
            "output": out,
            "ok_fn": predict,
            "ok_dir": "predictions",
            "label_column": "predicted",
        },
        batch_format="pyarrow",
        batch_size=None,
        concurrency=1,
    )
    assert progress.sum("rows_read") == 49
    ray.kill(info.registry)
    summary = commit.summarize(out)
    assert (summary["rows_ok"], summary["rows_rejected"]) == (34, 15)
    assert sum(summary["label_counts"].values()) == 34  # the predicted "labels" (text lengths)
    assert len(list((tmp_path / "pred" / "predictions").glob("*.parquet"))) >= 2
