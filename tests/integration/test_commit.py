"""Exactly-once commits, resume after a killed job, overwrite, and row accounting."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from bm_ray.corpus import BLANK_LINE, read_corpus, row_schema
from bm_ray.corpus.listing import input_manifest
from bm_ray.corpus.rows import UNIT_END
from bm_ray.jobs.ingest import ingest
from bm_ray.layout import MANIFEST_KEY
from bm_ray.output.commit import (
    PROGRESS_SCHEMA,
    CommitProcessor,
    commit_name,
    committed_rows,
    prepare_output,
    summarize,
)
from bm_ray.output.lease import OutputInUseError, OutputLease
from bm_ray.specs import IngestSpec
from bm_ray.storage import write_json_atomic


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
            "raw": "raw" if reason and reason not in (BLANK_LINE, UNIT_END) else None,
            "truncated": row == 1,
            "utf8_repaired": False,
            "_unit": unit,
            "_row": row,
            "_file": 0,
        }
        for name, value in values.items():
            columns[name].append(value)
    return pa.table(columns, schema=row_schema())


def listing(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_processor_commits_batches_and_retries_are_idempotent(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    prepare_output(out)
    first = make_batch([("u1", 0, None), ("u1", 1, None), ("u1", 2, BLANK_LINE), ("u1", 3, "empty_text")])
    second = make_batch([("u1", 4, None), ("u1", 5, "too_long"), ("u1", 6, UNIT_END), ("u2", 0, BLANK_LINE)])
    processor = CommitProcessor(out)
    progress = processor(first)
    assert progress.schema == PROGRESS_SCHEMA
    assert progress.to_pylist() == [{"rows_committed": 3, "rows_ok": 2, "rows_rejected": 1, "blank_lines": 1}]
    processor(second)
    files = listing(tmp_path / "out")
    name2 = commit_name([("u1", 4, 6), ("u2", 0, 0)])
    assert name2.startswith("u1-000000000004-000000000006-and-1-")
    assert sorted(files) == sorted(
        [
            "_commits/u1-000000000000-000000000003.json",
            f"_commits/{name2}.json",
            "ok/u1-000000000000-000000000003.parquet",
            f"ok/{name2}.parquet",
            "rejects/u1-000000000000-000000000003.parquet",
            f"rejects/{name2}.parquet",
        ]
    )
    record = json.loads(files[f"_commits/{name2}.json"])
    assert record["spans"] == [["u1", 4, 6], ["u2", 0, 0]] and record["unit_rows"] == {"u1": 6}
    assert record["files"] == [f"ok/{name2}.parquet", f"rejects/{name2}.parquet"]

    processor(second)  # a retried task: same names, same contents, nothing added
    assert listing(tmp_path / "out") == files
    assert committed_rows(out) == {"u1": [(0, 3), (4, 6)], "u2": [(0, 0)]}
    # u2 (one blank line) was never read to its end: its unit end is missing
    with pytest.raises(RuntimeError, match="u2 was never read to its end"):
        summarize(out)
    processor(make_batch([("u2", 1, UNIT_END)]))
    summary = summarize(out, {"format": "jsonl"})
    counts = (summary["rows_read"], summary["rows_ok"], summary["rows_rejected"], summary["blank_lines"])
    assert counts == (5, 3, 2, 2) and summary["format"] == "jsonl" and summary["commits"] == 3


def test_a_worker_of_a_job_whose_lease_was_taken_over_commits_nothing(tmp_path: Path) -> None:
    """Fencing: a worker left running by a killed driver must not commit into the resumed job's output."""
    out = str(tmp_path / "out")
    prepare_output(out)
    old = OutputLease(out, "classify")
    old.acquire()
    orphan = CommitProcessor(out, lease_token=old.token)
    orphan(make_batch([("u1", 0, None)]))  # while its job holds the lease it commits
    old._stop.set()  # the driver dies: no more heartbeats, no release
    new = OutputLease(out, "classify")
    new.record["heartbeat"] = new.record["started"]
    write_json_atomic(new.fs, new.path, new.record)  # the resumed job took the lease over
    with pytest.raises(OutputInUseError, match="no longer holds the output's lease"):
        orphan(make_batch([("u1", 1, None)]))
    assert [p.name for p in (tmp_path / "out" / "_commits").iterdir()] == [
        "u1-000000000000-000000000000.json"
    ]
    CommitProcessor(out, lease_token=new.token)(make_batch([("u1", 1, None)]))
    assert len(list((tmp_path / "out" / "_commits").iterdir())) == 2


def test_a_row_lost_between_read_and_commit_fails_the_accounting(ray_local, tmp_path: Path) -> None:
    """The readers count each file's records as they read them; a row that never reaches a commit is
    a gap between that count and the committed spans, and the summary refuses it."""
    spec, _ = write_dup_corpus(tmp_path)
    out = str(tmp_path / "out")
    prepare_output(out)
    ds, info = read_corpus(spec, unit_ends=True, dedupe=False)
    lost = ds.filter(lambda row: row["source"] != "a.jsonl:5")  # a bug that drops one row
    processor = CommitProcessor(out)
    for batch in lost.iter_batches(batch_format="pyarrow", batch_size=None):
        processor(batch)
    with pytest.raises(RuntimeError, match=r"rows 4\.\.4 of a\.jsonl were read but never committed"):
        summarize(out, {MANIFEST_KEY: input_manifest(info)})

    # the same rows, none lost: the accounting holds
    clean = str(tmp_path / "clean")
    prepare_output(clean)
    processor = CommitProcessor(clean)
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        processor(batch)
    summary = summarize(clean, {MANIFEST_KEY: input_manifest(info)})
    assert summary["rows_read"] == 49 == summary["rows_ok"] + summary["rows_rejected"]


def test_prepare_output_removes_debris_and_refuses_other_jobs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    prepare_output(str(out), job={"kind": "ingest", "input": ["a"]})
    CommitProcessor(str(out))(make_batch([("u1", 0, None), ("u1", 1, "empty_text")]))
    (out / "ok" / "u9-000000000000-000000000009.parquet").write_bytes(b"half-written")
    (out / "rejects" / ".tmp-u1-000000000000-000000000001.parquet-1234").write_bytes(b"tmp")
    (out / "_commits" / ".tmp-u9-000000000000-000000000009.json-1234").write_bytes(b"{")
    before = listing(out)
    prepare_output(str(out), job={"kind": "ingest", "input": ["a"]})
    after = listing(out)
    assert sorted(set(before) - set(after)) == [
        "_commits/.tmp-u9-000000000000-000000000009.json-1234",
        "ok/u9-000000000000-000000000009.parquet",
        "rejects/.tmp-u1-000000000000-000000000001.parquet-1234",
    ]
    with pytest.raises(
        ValueError, match=r"different job \(differs in: input: \[.a.\] → \[.b.\]\).*overwrite"
    ):
        prepare_output(str(out), job={"kind": "ingest", "input": ["b"]})
    assert listing(out) == after  # refused: nothing written
    prepare_output(str(out), overwrite=True, job={"kind": "ingest", "input": ["b"]})
    assert sorted(listing(out)) == ["_job.json"]


def write_dup_corpus(root: Path) -> tuple[IngestSpec, set[str]]:
    """Two JSONL files: 49 records, 34 distinct ids, 2 blank lines; returns the spec and all sources."""
    a = [json.dumps({"id": f"i{n % 30}", "text": f"a {n}", "label": str(n % 3)}) for n in range(40)]
    a[12] = ""  # a blank line in the middle
    # b's i25..i29 repeat ids of a (listed first): a's rows win, whatever the task timing
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
    assert (first.rows_read, first.rows_ok, first.rejected_by_reason, first.blank_lines) == (
        49,
        34,
        {"duplicate_id": 15},
        2,
    )

    ok_sources = pa.concat_tables([pq.read_table(p) for p in (out / "ok").glob("*.parquet")]).column("source")
    assert sorted(s for s in ok_sources.to_pylist() if s.startswith("b")) == sorted(
        f"b.jsonl:{n}" for n in range(6, 11)
    )
    again = ingest(spec, str(out))  # nothing left to do
    assert {k: getattr(again, k) for k in COUNTS} == {
        k: getattr(first, k) for k in COUNTS
    } and again.rows_resumed == 49

    # commits lost their record (as if a job died between data and record), temporaries lie around
    commits = sorted((out / "_commits").glob("*.json"))
    for record in commits[::3]:
        record.unlink()
    (out / "ok" / ".tmp-a_jsonl_0-000000000000-000000000006.parquet-dead").write_bytes(b"partial")
    resumed = ingest(spec, str(out))
    assert {k: getattr(resumed, k) for k in COUNTS} == {k: getattr(first, k) for k in COUNTS}
    assert 0 < resumed.rows_resumed < 49
    ids, seen = outputs(out)
    assert set(seen) == sources and max(seen.values()) == 1
    assert len(ids) == len(set(ids)) == 34
    assert not list(out.rglob(".tmp-*"))

    fresh = ingest(spec, str(out), overwrite=True)
    assert {k: getattr(fresh, k) for k in COUNTS} == {
        k: getattr(first, k) for k in COUNTS
    } and fresh.rows_resumed == 0
    with pytest.raises(ValueError, match="different job"):
        ingest(spec.model_copy(update={"clean_text": True}), str(out))


def test_processor_as_ray_data_callable_class(ray_local, tmp_path: Path) -> None:
    """How bulk classification reuses the commit protocol: an actor pool, another ok table and ok subdir."""
    spec, _ = write_dup_corpus(tmp_path)
    out = str(tmp_path / "pred")
    prepare_output(out, ok_dir="predictions")

    def predict(rows: pa.Table) -> pa.Table:
        return pa.table({"id": rows.column("id"), "predicted": pc.utf8_length(rows.column("text"))})

    ds, info = read_corpus(spec, unit_ends=True)
    progress = ds.map_batches(
        CommitProcessor,
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
    assert progress.sum("rows_committed") == 49
    info.dedupe.close()
    summary = summarize(out)
    assert (summary["rows_ok"], summary["rows_rejected"]) == (34, 15)
    assert sum(summary["label_counts"].values()) == 34  # the predicted "labels" (text lengths)
    assert len(list((tmp_path / "pred" / "predictions").glob("*.parquet"))) >= 2
