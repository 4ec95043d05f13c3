"""The exactly-once commit protocol, shared by `ingest` and bulk classification: units, temp + rename,
commit records, accounting, summary, and the driver of one resumable pass (:func:`commit_corpus`).

Rows arrive in batches carrying the bookkeeping columns ``_unit`` (input unit key, e.g. one file),
``_row`` (0-based record index within the unit) and ``reason`` (null when ok, ``blank_line`` for
blank lines, else a reject reason). :class:`CommitProcessor` splits a batch into runs of consecutive
``_row`` of one unit and commits each run as::

    <ok_dir>/<unit>-<first:012d>-<last:012d>.parquet    ok table (only if the run has ok rows)
    rejects/<unit>-<first:012d>-<last:012d>.parquet     rejects (only if any)
    _commits/<unit>-<first:012d>-<last:012d>.json       counts; written LAST: the commit point

Every file goes to a hidden temporary name in its directory and is then moved into place (an atomic
rename on local disks). Names are deterministic, so a Ray retry of the same batch overwrites identical
files. A data file without a commit record is debris of a killed job: :func:`prepare_output` deletes
it before the next run, and :func:`committed_rows` tells the reader which rows to skip, so a resumed
job writes every row exactly once. :func:`summarize` adds the commit records up into ``summary.json``.

Local paths and s3:// gs:// file:// URIs all go through ``pyarrow.fs``.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray

from bm_ray.corpus import BLANK_LINE, read_corpus
from bm_ray.corpus.dedupe import create_id_registry
from bm_ray.specs import IngestSpec
from bm_ray.storage import (
    TMP_PREFIX,
    join,
    list_files,
    read_json,
    resolve_uri,
    write_json_atomic,
    write_parquet_atomic,
)

logger = logging.getLogger(__name__)

COMMITS_DIR = "_commits"
REJECTS_DIR = "rejects"
JOB_FILE = "_job.json"
SUMMARY_FILE = "summary.json"
REJECT_COLUMNS = ("id", "source", "reason", "raw")
"""Columns of the rejects tables."""


def run_name(unit: str, first_row: int, last_row: int) -> str:
    """Base name (no extension) of the files of one committed run."""
    return f"{unit}-{first_row:012d}-{last_row:012d}"


def _commit_records(fs: pafs.FileSystem, root: str) -> Iterator[dict[str, Any]]:
    for info in sorted(list_files(fs, join(root, COMMITS_DIR)), key=lambda i: i.path):
        if info.base_name.endswith(".json") and not info.base_name.startswith("."):
            yield read_json(fs, info.path)


def prepare_output(
    output: str, *, ok_dir: str = "ok", overwrite: bool = False, job: dict | None = None
) -> None:
    """Make `output` ready for a (possibly resumed) run.

    `overwrite` deletes everything first. Otherwise a run resumes: data files in `ok_dir`/ and
    rejects/ without a commit record, and temporary files, are deleted (a killed job's debris).
    `job` (a JSON-able description of what produces the rows, e.g. the spec) is stored in `_job.json`;
    resuming into an output made by a different job raises ValueError naming the differing keys.
    """
    fs, root = resolve_uri(output)
    if overwrite and fs.get_file_info(root).type != pafs.FileType.NotFound:
        fs.delete_dir(root)
    for sub in (ok_dir, REJECTS_DIR, COMMITS_DIR):
        fs.create_dir(join(root, sub), recursive=True)
    if job is not None:
        job_path = join(root, JOB_FILE)
        if fs.get_file_info(job_path).type == pafs.FileType.File:
            previous = read_json(fs, job_path)
            if previous != json.loads(json.dumps(job)):
                keys = sorted(k for k in set(previous) | set(job) if previous.get(k) != job.get(k))
                raise ValueError(
                    f"{output} holds the output of a different job (differs in: {', '.join(keys)}); "
                    "pass overwrite (--overwrite) to start afresh or choose another output"
                )
        else:
            write_json_atomic(fs, job_path, job)
    committed = {info.base_name[: -len(".json")] for info in list_files(fs, join(root, COMMITS_DIR))}
    for sub in (ok_dir, REJECTS_DIR, COMMITS_DIR):
        for info in list_files(fs, join(root, sub)):
            stem = info.base_name.rsplit(".", 1)[0]
            if info.base_name.startswith(TMP_PREFIX) or (sub != COMMITS_DIR and stem not in committed):
                fs.delete_file(info.path)


def committed_rows(output: str) -> dict[str, list[tuple[int, int]]]:
    """Committed row intervals per unit: `{unit: [(first_row, last_row), ...]}` (inclusive, sorted)."""
    fs, root = resolve_uri(output)
    intervals: dict[str, list[tuple[int, int]]] = {}
    for record in _commit_records(fs, root):
        intervals.setdefault(record["unit"], []).append((record["first_row"], record["last_row"]))
    for spans in intervals.values():
        spans.sort()
    return intervals


def iter_committed_ids(output: str, *, ok_dir: str = "ok", id_column: str = "id") -> Iterator[list[str]]:
    """Ids of the committed ok rows, a file at a time (to pre-seed a duplicate-id registry on resume)."""
    fs, root = resolve_uri(output)
    for info in list_files(fs, join(root, ok_dir)):
        if info.base_name.endswith(".parquet") and not info.base_name.startswith("."):
            with fs.open_input_file(info.path) as f:
                yield pq.read_table(f, columns=[id_column]).column(id_column).to_pylist()


def _runs(units: list[str], rows: list[int]) -> Iterator[tuple[int, int]]:
    """[start, stop) index ranges of consecutive rows of one unit."""
    start = 0
    for i in range(1, len(units) + 1):
        if i == len(units) or units[i] != units[start] or rows[i] != rows[i - 1] + 1:
            yield start, i
            start = i


class CommitProcessor:
    """Commits batches of rows exactly once; a Ray Data callable class (`fn_constructor_kwargs`) or object.

    Args:
        output: output directory or URI (already prepared with :func:`prepare_output`).
        ok_fn: turns the ok rows of a run (reason null) into the table written to `ok_dir`;
            e.g. a column selection for ingest, model predictions for classification.
        ok_dir: subdirectory of the ok tables (`ok` for ingest, `predictions` for classify).
        label_column: column of the ok table whose values are counted in `label_counts` (if present).
    """

    def __init__(
        self,
        output: str,
        ok_fn: Callable[[pa.Table], pa.Table] | None = None,
        *,
        ok_dir: str = "ok",
        label_column: str = "label",
    ) -> None:
        self.output = output
        self.ok_fn = ok_fn or (lambda table: table)
        self.ok_dir = ok_dir
        self.label_column = label_column
        self._fs: pafs.FileSystem | None = None
        self._root = ""

    def _filesystem(self) -> tuple[pafs.FileSystem, str]:
        if self._fs is None:
            self._fs, self._root = resolve_uri(self.output)
        return self._fs, self._root

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Commit every run of `batch`; return one row of counts per committed run."""
        units = batch.column("_unit").to_pylist()
        rows = batch.column("_row").to_pylist()
        results = [self.commit_run(batch.slice(start, stop - start)) for start, stop in _runs(units, rows)]
        return pa.Table.from_pylist(results, schema=PROGRESS_SCHEMA)

    def commit_run(self, run: pa.Table) -> dict[str, Any]:
        """Write the ok table, the rejects and last the commit record of one run; return its counts."""
        fs, root = self._filesystem()
        unit = run.column("_unit")[0].as_py()
        first, last = run.column("_row")[0].as_py(), run.column("_row")[-1].as_py()
        name = run_name(unit, first, last)
        reason = run.column("reason")
        ok_rows = run.filter(pc.is_null(reason))
        blank = run.filter(pc.fill_null(pc.equal(reason, BLANK_LINE), False)).num_rows
        rejects = run.filter(pc.fill_null(pc.not_equal(reason, BLANK_LINE), False))
        label_counts: dict[str, int] = {}
        truncated = repaired = 0
        if ok_rows.num_rows:
            ok_table = self.ok_fn(ok_rows)
            if ok_table.num_rows != ok_rows.num_rows:
                raise ValueError(f"ok_fn returned {ok_table.num_rows} rows for {ok_rows.num_rows} ok rows")
            if self.label_column in ok_table.column_names:
                labels = Counter(ok_table.column(self.label_column).to_pylist())
                label_counts = {str(k): v for k, v in sorted(labels.items(), key=str) if k is not None}
            truncated = _count_true(ok_rows, "truncated")
            repaired = _count_true(ok_rows, "utf8_repaired")
            write_parquet_atomic(fs, join(root, self.ok_dir, f"{name}.parquet"), ok_table)
        if rejects.num_rows:
            write_parquet_atomic(
                fs, join(root, REJECTS_DIR, f"{name}.parquet"), rejects.select(REJECT_COLUMNS)
            )
        record = {
            "unit": unit,
            "first_row": first,
            "last_row": last,
            "rows_read": ok_rows.num_rows + rejects.num_rows,
            "rows_ok": ok_rows.num_rows,
            "rows_rejected": rejects.num_rows,
            "rejected_by_reason": dict(sorted(Counter(rejects.column("reason").to_pylist()).items())),
            "blank_lines": blank,
            "label_counts": label_counts,
            "truncated": truncated,
            "utf8_repaired": repaired,
        }
        write_json_atomic(fs, join(root, COMMITS_DIR, f"{name}.json"), record)
        return {k: record[k] for k in PROGRESS_SCHEMA.names}


PROGRESS_SCHEMA = pa.schema(
    [
        ("unit", pa.string()),
        ("first_row", pa.int64()),
        ("last_row", pa.int64()),
        ("rows_read", pa.int64()),
        ("rows_ok", pa.int64()),
        ("rows_rejected", pa.int64()),
        ("blank_lines", pa.int64()),
    ]
)
"""Schema of the tiny table :class:`CommitProcessor` returns per batch (one row per committed run)."""


def _count_true(table: pa.Table, column: str) -> int:
    if column not in table.column_names:
        return 0
    return int(pc.sum(pc.cast(pc.fill_null(table.column(column), False), pa.int64())).as_py() or 0)


def summarize(output: str, extra: dict[str, Any] | None = None, *, write: bool = True) -> dict[str, Any]:
    """Add up all commit records of `output` into the summary (also written to summary.json).

    Keys: rows_read, rows_ok, rows_rejected, rejected_by_reason, blank_lines, label_counts,
    rows_truncated, rows_utf8_repaired, units, commits, plus everything in `extra` (elapsed_s,
    ignored_files, format, inputs, ...). Raises RuntimeError if rows_read != rows_ok + rows_rejected
    or if two commits of a unit overlap (a row would be counted twice).
    """
    fs, root = resolve_uri(output)
    totals = Counter()
    reasons: Counter[str] = Counter()
    labels: Counter[str] = Counter()
    spans: dict[str, list[tuple[int, int]]] = {}
    commits = 0
    for record in _commit_records(fs, root):
        commits += 1
        for key in ("rows_read", "rows_ok", "rows_rejected", "blank_lines", "truncated", "utf8_repaired"):
            totals[key] += record[key]
        reasons.update(record["rejected_by_reason"])
        labels.update(record["label_counts"])
        spans.setdefault(record["unit"], []).append((record["first_row"], record["last_row"]))
    for unit, unit_spans in spans.items():
        unit_spans.sort()
        for (_, prev_last), (first, _) in itertools.pairwise(unit_spans):
            if first <= prev_last:
                raise RuntimeError(f"{output}: overlapping commits for unit {unit} at row {first}")
    summary: dict[str, Any] = {
        "rows_read": totals["rows_read"],
        "rows_ok": totals["rows_ok"],
        "rows_rejected": totals["rows_rejected"],
        "rejected_by_reason": dict(sorted(reasons.items())),
        "blank_lines": totals["blank_lines"],
        "label_counts": dict(sorted(labels.items())),
        "rows_truncated": totals["truncated"],
        "rows_utf8_repaired": totals["utf8_repaired"],
        "units": len(spans),
        "commits": commits,
    }
    read, ok, rejected = summary["rows_read"], summary["rows_ok"], summary["rows_rejected"]
    if read != ok + rejected or rejected != sum(reasons.values()):
        raise RuntimeError(
            f"{output}: row accounting broken: rows_read={read} != rows_ok={ok} + rows_rejected={rejected}"
            f" (by reason: {dict(reasons)})"
        )
    summary.update(extra or {})
    if write:
        write_json_atomic(fs, join(root, SUMMARY_FILE), summary)
    return summary


IGNORED_FILES_LISTED = 100
"""Ignored (non-article) files listed by name in the summary; all are counted."""

PROGRESS_LOG_S = 10.0
"""Seconds between the driver's `rows committed (rows/s)` log lines."""


def commit_corpus(
    spec: IngestSpec,
    output: str,
    commit: Callable[[ray.data.Dataset], ray.data.Dataset],
    *,
    job: dict[str, Any],
    ok_dir: str = "ok",
    overwrite: bool = False,
    read_args: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], Counter[str]]:
    """Drive one resumable, exactly-once pass of a corpus through a commit stage (ingest, classify).

    Prepares `output` (see :func:`bm_ray.prepare_output`; `job` guards resuming into another job's
    output), skips the rows already committed, seeds the duplicate-id registry with the committed ids,
    reads the corpus, applies `commit` (dataset → dataset of per-run count rows, at least
    :data:`bm_ray.PROGRESS_SCHEMA`, e.g. a `map_batches` over a :class:`~bm_ray.CommitProcessor`)
    and drains it, logging rows committed and rows/s. `read_args` are the read tasks' Ray remote args
    (see :func:`read_corpus`). Returns the summary extras (format, inputs, files,
    ignored_files, rows_resumed) and the totals of every integer column of the count rows of this run.
    """
    started = time.monotonic()
    prepare_output(output, ok_dir=ok_dir, overwrite=overwrite, job=job)
    skip = committed_rows(output)
    registry = create_id_registry()
    totals: Counter[str] = Counter()
    try:
        ray.get([registry.seed.remote(ids) for ids in iter_committed_ids(output, ok_dir=ok_dir)])
        ds, info = read_corpus(spec, registry=registry, skip=skip, ray_remote_args=read_args)
        last_log = time.monotonic()
        for batch in commit(ds).iter_batches(batch_format="pyarrow", batch_size=None):
            for name, column in zip(batch.column_names, batch.columns, strict=True):
                if pa.types.is_integer(column.type):
                    totals[name] += int(pc.sum(column).as_py() or 0)
            if time.monotonic() - last_log > PROGRESS_LOG_S:
                last_log = time.monotonic()
                rate = totals["rows_read"] / (last_log - started)
                logger.warning(
                    "%s: %d rows committed so far (%.1f rows/s)", job.get("kind"), totals["rows_read"], rate
                )
    finally:
        ray.kill(registry)
    extra = {
        "format": info.format,
        "inputs": info.inputs,
        "files": len(info.files),
        "ignored_files": info.ignored_files[:IGNORED_FILES_LISTED],
        "ignored_files_count": len(info.ignored_files),
        "rows_resumed": sum(b - a + 1 for spans in skip.values() for a, b in spans),
    }
    return extra, totals
