"""Data integrity at corpus scale: qualified ids, the input manifest, the output lease, foreign
directories, huge lines, JSON arrays, the reject-fraction stop and deterministic de-duplication."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bm_ray.corpus.formats import LONG_LINE_KEPT_BYTES, _iter_lines
from bm_ray.jobs.ingest import ingest
from bm_ray.layout import LEASE_FILE, MANIFEST_KEY
from bm_ray.output.driver import TooManyRejectsError
from bm_ray.output.lease import LEASE_STALE_S, OutputInUseError
from bm_ray.specs import IngestSpec


def read_dir(path: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(path.glob("*.parquet"))])


def listing(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def write_days(root: Path) -> list[str]:
    """day1/news.jsonl and day2/news.jsonl, 3 rows each, no id field."""
    paths = []
    for day in ("day1", "day2"):
        (root / day).mkdir(parents=True)
        rows = [{"title": f"{day} t{i}", "body": f"body {i}"} for i in range(3)]
        (root / day / "news.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(str(root / day / "news.jsonl"))
    return paths


def test_same_file_names_in_two_inputs_get_distinct_ids(ray_local, tmp_path: Path) -> None:
    inputs = write_days(tmp_path / "in")
    summary = ingest(IngestSpec(input=inputs, text_fields=["title", "body"]), str(tmp_path / "out"))
    assert (summary.rows_ok, summary.rows_rejected) == (6, 0)
    ids = sorted(read_dir(tmp_path / "out" / "ok").column("id").to_pylist())
    assert ids == [f"{d}/news.jsonl:{n}" for d in ("day1", "day2") for n in (1, 2, 3)]

    # two folder corpora with the same label/file
    for corpus in ("bbc_a", "bbc_b"):
        (tmp_path / corpus / "sport").mkdir(parents=True)
        (tmp_path / corpus / "sport" / "001.txt").write_text(f"{corpus} title\nbody")
    spec = IngestSpec(input=[str(tmp_path / "bbc_a"), str(tmp_path / "bbc_b")], format="folders")
    folders = ingest(spec, str(tmp_path / "out-folders"))
    assert (folders.rows_ok, folders.rows_rejected, folders.label_counts) == (2, 0, {"sport": 2})
    ids = sorted(read_dir(tmp_path / "out-folders" / "ok").column("id").to_pylist())
    assert ids == ["bbc_a/sport/001.txt", "bbc_b/sport/001.txt"]


def test_changed_or_added_input_refuses_resume(ray_local, tmp_path: Path) -> None:
    inputs = write_days(tmp_path / "in")
    spec = IngestSpec(input=[str(tmp_path / "in")], format="jsonl", text_fields=["title", "body"])
    out = tmp_path / "out"
    first = ingest(spec, str(out))
    job = json.loads((out / "_job.json").read_text())
    assert [m["name"] for m in job[MANIFEST_KEY]] == ["day1/news.jsonl", "day2/news.jsonl"]
    assert first.model_dump()[MANIFEST_KEY] == job[MANIFEST_KEY]
    before = listing(out)

    with open(inputs[1], "a", encoding="utf-8") as f:  # a file appended to between runs
        f.write(json.dumps({"title": "late", "body": "news"}) + "\n")
    with pytest.raises(ValueError, match=r"inputs changed.*day2/news\.jsonl changed \(size"):
        ingest(spec, str(out))
    assert listing(out) == before  # nothing written
    (tmp_path / "in" / "day3").mkdir()
    (tmp_path / "in" / "day3" / "news.jsonl").write_text(json.dumps({"title": "x", "body": "y"}) + "\n")
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("bm-ray")),
            "ingest",
            "--input",
            str(tmp_path / "in"),
            "--format",
            "jsonl",
            "--text-fields",
            "title,body",
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0 and "day3/news.jsonl was added" in " ".join(result.stderr.split())
    assert listing(out) == before
    again = ingest(spec, str(out), overwrite=True)
    assert again.rows_ok == 8 and again.rows_resumed == 0


def test_live_lease_refuses_and_stale_lease_is_taken_over(ray_local, tmp_path: Path) -> None:
    inputs = write_days(tmp_path / "in")
    spec = IngestSpec(input=inputs, text_fields=["title", "body"])
    out = tmp_path / "out"
    out.mkdir()
    lease = {"owner": "alice@node-7 (classify, pid 4242)", "host": "node-7", "pid": 4242, "token": "t"}
    (out / LEASE_FILE).write_text(json.dumps({**lease, "heartbeat": time.time()}))
    with pytest.raises(OutputInUseError, match=r"in use by alice@node-7 \(classify, pid 4242\)"):
        ingest(spec, str(out))
    assert not (out / "_job.json").exists()

    stale = time.time() - LEASE_STALE_S - 5
    (out / LEASE_FILE).write_text(json.dumps({**lease, "heartbeat": stale}))
    assert ingest(spec, str(out)).rows_ok == 6
    assert not (out / LEASE_FILE).exists()  # released at the end

    # a dead process on this host: stale at once, whatever its heartbeat
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    mine = {**lease, "host": socket.gethostname(), "pid": int(dead.stdout), "heartbeat": time.time()}
    (out / LEASE_FILE).write_text(json.dumps(mine))
    assert ingest(spec, str(out)).rows_ok == 6
    # this process is alive: its lease is live
    (out / LEASE_FILE).write_text(json.dumps({**mine, "pid": os.getpid()}))
    with pytest.raises(OutputInUseError):
        ingest(spec, str(out))


def test_overwrite_refuses_a_directory_that_is_not_a_bm_ray_output(ray_local, tmp_path: Path) -> None:
    inputs = write_days(tmp_path / "in")
    precious = tmp_path / "data"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(ValueError, match=r"refusing to overwrite.*not empty and holds no bm-ray output"):
        ingest(IngestSpec(input=inputs, text_fields=["title", "body"]), str(precious), overwrite=True)
    assert listing(precious) == {"thesis.tex": b"years of work"}


def test_overwrite_into_a_new_or_empty_directory_runs(ray_local, tmp_path: Path) -> None:
    """The job's own lease (taken before the output is prepared) is not a foreign file."""
    inputs = write_days(tmp_path / "in")
    spec = IngestSpec(input=inputs, text_fields=["title", "body"])
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "new", tmp_path / "empty"):
        summary = ingest(spec, str(out), overwrite=True)
        assert summary.rows_read == summary.rows_ok + summary.rows_rejected > 0
        assert not (out / LEASE_FILE).exists()


def test_a_huge_line_is_too_long_without_being_held(tmp_path: Path) -> None:
    big = 64 * 1024 * 1024

    def chunks():  # a 64 MiB line between two short ones, streamed in 1 MiB chunks
        yield b'{"text": "short"}\n{"text": "'
        for _ in range(big // (1 << 20)):
            yield b"x" * (1 << 20)
        yield b'"}\n{"text": "after"}\n'

    tracemalloc.start()
    lines = [(line[:40], len(line), too_long) for line, too_long in _iter_lines(chunks(), 1 << 20)]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert [(n, t) for _, n, t in lines] == [(17, False), (LONG_LINE_KEPT_BYTES, True), (17, False)]
    assert peak < 8 * (1 << 20)  # at most max_line_bytes (1 MiB here) buffered, never the 64 MiB line


def test_huge_line_json_array_and_reject_fraction(ray_local, tmp_path: Path) -> None:
    lines = [json.dumps({"id": "a", "text": "fine"}), json.dumps({"id": "b", "text": "y" * 5000}), ""]
    (tmp_path / "lines.jsonl").write_text("\n".join(lines) + "\n")
    spec = IngestSpec(input=[str(tmp_path / "lines.jsonl")], max_line_bytes=1000)
    summary = ingest(spec, str(tmp_path / "out-lines"))
    assert (summary.rows_ok, summary.rejected_by_reason, summary.blank_lines) == (
        1,
        {"too_long": 1},
        1,
    )

    records = [{"id": "r1", "text": "one"}, {"id": "r2", "text": "two"}, 7, {"id": "r3", "text": "three"}]
    (tmp_path / "array.json").write_text(json.dumps(records, indent=2))
    summary = ingest(IngestSpec(input=[str(tmp_path / "array.json")]), str(tmp_path / "out-array"))
    assert (summary.rows_read, summary.rows_ok) == (4, 3)
    assert summary.rejected_by_reason == {"malformed_record": 1}
    assert read_dir(tmp_path / "out-array" / "rejects").column("source").to_pylist() == ["array.json:[2]"]

    typo = IngestSpec(input=[str(tmp_path / "array.json")], text_fields=["txet"])
    with pytest.raises(TooManyRejectsError, match=r"4 of the 4 rows read \(100%\).*missing_field 3"):
        ingest(typo, str(tmp_path / "out-typo"))
    assert not (tmp_path / "out-typo" / "summary.json").exists()


def test_dedupe_none_keeps_repeated_ids(ray_local, tmp_path: Path) -> None:
    rows = [{"id": f"i{n % 3}", "text": f"t {n}"} for n in range(6)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = IngestSpec(input=[str(tmp_path / "a.jsonl")])
    assert ingest(spec, str(tmp_path / "ids")).rejected_by_reason == {"duplicate_id": 3}
    winners = read_dir(tmp_path / "ids" / "ok").column("source").to_pylist()
    assert sorted(winners) == ["a.jsonl:1", "a.jsonl:2", "a.jsonl:3"]
    none = ingest(spec.model_copy(update={"dedupe": "none"}), str(tmp_path / "none"))
    assert (none.rows_ok, none.rows_rejected) == (6, 0)
