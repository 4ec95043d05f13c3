"""The exactly-once commit protocol, shared by `ingest` and bulk classification: units, temp + rename,
commit records, resume preparation, accounting and the summary. The driver of one resumable pass is
:func:`bm_ray.output.driver.commit_corpus`; the lease is :mod:`bm_ray.output.lease`.

Rows arrive in batches carrying the bookkeeping columns ``_unit`` (input unit: one file), ``_row``
(0-based record index within the unit) and ``reason`` (null when ok, ``blank_line`` for blank lines,
``unit_end`` for the row a reader adds after a file's last record, else a reject reason).
:class:`CommitProcessor` commits each batch as one commit covering its spans (runs of consecutive
``_row`` of one unit)::

    <ok_dir>/<name>.parquet    ok table (only if the batch has ok rows)
    rejects/<name>.parquet     rejects (only if any)
    _commits/<name>.json       spans, counts, the files above: written LAST, the commit point

Every file goes to a hidden temporary name in its directory and is then moved into place. Names are
deterministic (from the spans), so a Ray retry of the same batch overwrites identical files. On resume
(:func:`prepare_output`) a data file without a commit record is debris of a killed job and is deleted;
a commit record whose data file is missing is dropped with its other files, and its rows are read and
committed again (logged as a warning). :func:`committed_rows` tells the reader which rows to skip.

Accounting: the readers count each file's records as they read them (the ``unit_end`` row's ``_row``,
stored as ``unit_rows`` in the commit record that carries it). :func:`summarize` checks that every
input file's rows are covered by commits from 0 to that count without a gap or an overlap, that
``rows_read`` (the readers' counts minus blank lines) equals ``rows_ok + rows_rejected``, and that
every commit's data files exist: a row read but never committed fails the job loudly."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from bm_ray.corpus import BLANK_LINE, unit_key
from bm_ray.corpus.rows import UNIT_END
from bm_ray.layout import (
    COMMITS_DIR,
    JOB_FILE,
    LEASE_FILE,
    MANIFEST_KEY,
    REJECT_COLUMNS,
    REJECTS_DIR,
    SUMMARY_FILE,
)
from bm_ray.output.identity import identity_differences, manifest_changes
from bm_ray.output.lease import OutputInUseError
from bm_ray.storage import (
    TMP_PREFIX,
    exists,
    join,
    list_files,
    read_json,
    redact_uri,
    resolve_uri,
    write_json_atomic,
    write_parquet_atomic,
)

logger = logging.getLogger(__name__)


def run_name(unit: str, first_row: int, last_row: int) -> str:
    """Base name (no extension) of a commit of one span."""
    return f"{unit}-{first_row:012d}-{last_row:012d}"


def commit_name(spans: list[tuple[str, int, int]]) -> str:
    """Deterministic base name of a commit: its first span, plus how many more and their digest."""
    name = run_name(*spans[0])
    if len(spans) == 1:
        return name
    digest = hashlib.blake2b(json.dumps(spans).encode("utf-8"), digest_size=6).hexdigest()
    return f"{name}-and-{len(spans) - 1}-{digest}"


def _runs(units: list[str], rows: list[int]) -> Iterator[tuple[int, int]]:
    """[start, stop) index ranges of consecutive rows of one unit."""
    start = 0
    for i in range(1, len(units) + 1):
        if i == len(units) or units[i] != units[start] or rows[i] != rows[i - 1] + 1:
            yield start, i
            start = i


def load_commits(fs: pafs.FileSystem, root: str) -> list[tuple[str, dict[str, Any]]]:
    """(name, record) of every commit record, sorted by name."""
    out = []
    for info in sorted(list_files(fs, join(root, COMMITS_DIR)), key=lambda i: i.path):
        if info.base_name.endswith(".json") and not info.base_name.startswith("."):
            out.append((info.base_name[: -len(".json")], read_json(fs, info.path)))
    return out


def _data_files(fs: pafs.FileSystem, root: str, dirs: set[str]) -> set[str]:
    """`dir/name` of every file in `dirs` (relative to `root`)."""
    return {f"{d}/{info.base_name}" for d in dirs for info in list_files(fs, join(root, d))}


class OutputRefusedError(ValueError):
    """The output holds something else (not a bm-ray output, another job's, a different run's inputs):
    refused, nothing written; the message says how to start afresh or where else to write."""


def is_bm_ray_output(output: str) -> bool:
    """Whether `output` holds a bm-ray job's output (``_job.json`` or ``_commits/``)."""
    fs, root = resolve_uri(output)
    return exists(fs, join(root, JOB_FILE)) or exists(fs, join(root, COMMITS_DIR))


def refuse_foreign_overwrite(output: str) -> None:
    """Raise :class:`OutputRefusedError` if `output` is a file or a non-empty directory that is not a bm-ray output."""
    fs, root = resolve_uri(output)
    if fs.get_file_info(root).type == pafs.FileType.File:
        raise OutputRefusedError(f"--output {redact_uri(output)} is a file, not a directory")
    entries = [
        info
        for info in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
        if info.base_name != LEASE_FILE  # the job's own lease, taken before its output is prepared
    ]
    if entries and not is_bm_ray_output(output):
        raise OutputRefusedError(
            f"refusing to overwrite {redact_uri(output)}: it is not empty and holds no bm-ray output "
            f"({JOB_FILE}, {COMMITS_DIR}/); choose an empty or new --output"
        )


def check_job_identity(output: str, previous: dict[str, Any], current: dict[str, Any]) -> None:
    """Raise :class:`OutputRefusedError` if resuming `current` into an output made by `previous` is unsafe.

    Every key is compared generically (spec fields, model version, ...) by
    :func:`~bm_ray.output.identity.identity_differences`, which names each old and new value; the input
    manifest is compared file by file and the changed, added or removed files are named.
    """
    differences = identity_differences(
        {k: v for k, v in previous.items() if k != MANIFEST_KEY},
        {k: v for k, v in current.items() if k != MANIFEST_KEY},
    )
    if differences:
        raise OutputRefusedError(
            f"{redact_uri(output)} holds the output of a different job (differs in: {'; '.join(differences)}); "
            "pass overwrite (--overwrite) to start afresh or choose another output"
        )
    changes = manifest_changes(previous.get(MANIFEST_KEY) or [], current.get(MANIFEST_KEY) or [])
    if changes:
        listed = "; ".join(changes[:5]) + (f"; and {len(changes) - 5} more" if len(changes) > 5 else "")
        raise OutputRefusedError(
            f"the inputs changed since the job into {redact_uri(output)} started: {listed}. Resuming would skip or "
            "repeat the wrong rows; pass overwrite (--overwrite) to start afresh or choose another output"
        )


def stored_identity(output: str) -> dict[str, Any] | None:
    """The job identity stored in `output` (``_job.json``), or None when there is none yet."""
    fs, root = resolve_uri(output)
    path = join(root, JOB_FILE)
    return read_json(fs, path) if fs.get_file_info(path).type == pafs.FileType.File else None


def prepare_output(
    output: str,
    *,
    ok_dir: str = "ok",
    overwrite: bool = False,
    job: dict[str, Any] | None = None,
) -> None:
    """Make `output` ready for a (possibly resumed) run.

    `overwrite` deletes everything first (but the lease), and refuses a non-empty directory that is not
    a bm-ray output. Otherwise a run resumes: `job` (the job's identity: spec, model version, input
    manifest under :data:`MANIFEST_KEY`, ...) must equal the stored ``_job.json`` (see
    :func:`check_job_identity`; nothing is written when it does not); temporary files and data files
    without a commit record are deleted; a commit record whose data file is missing is dropped with its
    files (its rows will be committed again).
    """
    fs, root = resolve_uri(output)
    if overwrite:
        refuse_foreign_overwrite(output)
        for info in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True)):
            if info.base_name == LEASE_FILE:
                continue
            if info.type == pafs.FileType.Directory:
                fs.delete_dir(info.path)
            else:
                fs.delete_file(info.path)
    elif job is not None and (previous := stored_identity(output)) is not None:
        check_job_identity(output, previous, json.loads(json.dumps(job)))
    for sub in (ok_dir, REJECTS_DIR, COMMITS_DIR):
        fs.create_dir(join(root, sub), recursive=True)
    if job is not None and stored_identity(output) is None:
        write_json_atomic(fs, join(root, JOB_FILE), job)
    commits = load_commits(fs, root)
    present = _data_files(fs, root, {ok_dir, REJECTS_DIR})
    valid = set()
    for name, record in commits:
        missing = [f for f in record.get("files", []) if f not in present]
        if missing:
            logger.warning(
                "%s: commit %s lost its data file %s; its rows will be read and committed again",
                redact_uri(output),
                name,
                missing[0],
            )
            fs.delete_file(join(root, COMMITS_DIR, f"{name}.json"))
        else:
            valid.add(name)
    for sub in (ok_dir, REJECTS_DIR, COMMITS_DIR):
        for info in list_files(fs, join(root, sub)):
            stem = info.base_name.rsplit(".", 1)[0]
            if info.base_name.startswith(TMP_PREFIX) or (sub != COMMITS_DIR and stem not in valid):
                fs.delete_file(info.path)


def committed_rows(output: str) -> dict[str, list[tuple[int, int]]]:
    """Committed row intervals per unit: `{unit: [(first_row, last_row), ...]}` (inclusive, sorted)."""
    fs, root = resolve_uri(output)
    intervals: dict[str, list[tuple[int, int]]] = {}
    for _, record in load_commits(fs, root):
        for unit, first, last in record["spans"]:
            intervals.setdefault(unit, []).append((first, last))
    for spans in intervals.values():
        spans.sort()
    return intervals


class CommitProcessor:
    """Commits batches of rows exactly once; a Ray Data callable class (`fn_constructor_kwargs`) or object.

    Args:
        output: output directory or URI (already prepared with :func:`prepare_output`).
        ok_fn: turns the ok rows of a batch (reason null) into the table written to `ok_dir`;
            e.g. a column selection for ingest, model predictions for classification.
        ok_dir: subdirectory of the ok tables (`ok` for ingest, `predictions` for classify).
        label_column: column of the ok table whose values are counted in `label_counts` (if present).
        flag_columns: boolean columns of the ok table whose true values are counted per commit
            (``flag_counts``), summed into ``rows_<column>`` by :func:`summarize` (e.g. ``abstained``).
        lease_token: the token of the job's :class:`OutputLease`. Before each commit record is written
            the lease must still hold it: a worker left running by a killed driver (its lease since
            taken over by a resumed job) stops instead of committing into the new job's output.
    """

    def __init__(
        self,
        output: str,
        ok_fn: Callable[[pa.Table], pa.Table] | None = None,
        *,
        ok_dir: str = "ok",
        label_column: str = "label",
        lease_token: str | None = None,
        flag_columns: Sequence[str] = (),
    ) -> None:
        self.output = output
        self.ok_fn = ok_fn or (lambda table: table)
        self.ok_dir = ok_dir
        self.label_column = label_column
        self.flag_columns = list(flag_columns)
        self.lease_token = lease_token
        self._fs: pafs.FileSystem | None = None
        self._root = ""

    def _filesystem(self) -> tuple[pafs.FileSystem, str]:
        if self._fs is None:
            self._fs, self._root = resolve_uri(self.output)
        return self._fs, self._root

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Commit `batch` (all its spans, one commit); return one row of counts (:data:`PROGRESS_SCHEMA`)."""
        record = self.commit(batch)
        return pa.Table.from_pylist([{k: record[k] for k in PROGRESS_SCHEMA.names}], schema=PROGRESS_SCHEMA)

    def _check_lease(self, fs: pafs.FileSystem, root: str) -> None:
        if self.lease_token is None:
            return
        try:
            holder = read_json(fs, join(root, LEASE_FILE)).get("token")
        except (FileNotFoundError, OSError, ValueError):
            holder = None
        if holder != self.lease_token:
            raise OutputInUseError(
                f"{redact_uri(self.output)}: this job no longer holds the output's lease (taken over by another job); "
                "not committing"
            )

    def commit(self, batch: pa.Table) -> dict[str, Any]:
        """Write the ok table, the rejects and last the commit record of `batch`; return the record."""
        fs, root = self._filesystem()
        units = batch.column("_unit").to_pylist()
        rows = batch.column("_row").to_pylist()
        spans = [(units[a], rows[a], rows[b - 1]) for a, b in _runs(units, rows)]
        name = commit_name(spans)
        reason = batch.column("reason")
        ok_rows = batch.filter(pc.is_null(reason))
        blank = batch.filter(pc.fill_null(pc.equal(reason, BLANK_LINE), False)).num_rows
        ends = batch.filter(pc.fill_null(pc.equal(reason, UNIT_END), False))
        bookkeeping = pc.is_in(reason, pa.array([BLANK_LINE, UNIT_END]))
        rejects = batch.filter(pc.and_(pc.is_valid(reason), pc.invert(bookkeeping)))
        label_counts: dict[str, int] = {}
        flag_counts = dict.fromkeys(self.flag_columns, 0)
        truncated = repaired = 0
        files = []
        if ok_rows.num_rows:
            ok_table = self.ok_fn(ok_rows)
            if ok_table.num_rows != ok_rows.num_rows:
                raise ValueError(f"ok_fn returned {ok_table.num_rows} rows for {ok_rows.num_rows} ok rows")
            if self.label_column in ok_table.column_names:
                labels = Counter(ok_table.column(self.label_column).to_pylist())
                label_counts = {str(k): v for k, v in sorted(labels.items(), key=str) if k is not None}
            flag_counts = {column: _count_true(ok_table, column) for column in self.flag_columns}
            truncated = _count_true(ok_rows, "truncated")
            repaired = _count_true(ok_rows, "utf8_repaired")
            files.append(f"{self.ok_dir}/{name}.parquet")
            write_parquet_atomic(fs, join(root, files[-1]), ok_table)
        if rejects.num_rows:
            files.append(f"{REJECTS_DIR}/{name}.parquet")
            write_parquet_atomic(fs, join(root, files[-1]), rejects.select(REJECT_COLUMNS))
        record = {
            "spans": [list(s) for s in spans],
            "rows_committed": ok_rows.num_rows + rejects.num_rows,
            "rows_ok": ok_rows.num_rows,
            "rows_rejected": rejects.num_rows,
            "rejected_by_reason": dict(sorted(Counter(rejects.column("reason").to_pylist()).items())),
            "blank_lines": blank,
            "unit_rows": dict(
                zip(ends.column("_unit").to_pylist(), ends.column("_row").to_pylist(), strict=True)
            ),
            "label_counts": label_counts,
            "flag_counts": flag_counts,
            "truncated": truncated,
            "utf8_repaired": repaired,
            "files": files,
        }
        self._check_lease(fs, root)
        write_json_atomic(fs, join(root, COMMITS_DIR, f"{name}.json"), record)
        return record


PROGRESS_SCHEMA = pa.schema(
    [
        ("rows_committed", pa.int64()),
        ("rows_ok", pa.int64()),
        ("rows_rejected", pa.int64()),
        ("blank_lines", pa.int64()),
    ]
)
"""Schema of the one-row table :class:`CommitProcessor` returns per batch (its counts)."""


def _count_true(table: pa.Table, column: str) -> int:
    if column not in table.column_names:
        return 0
    return int(pc.sum(pc.cast(pc.fill_null(table.column(column), False), pa.int64())).as_py() or 0)


def _check_coverage(
    output: str, spans: dict[str, list[tuple[int, int]]], unit_rows: dict[str, int], names: dict[str, str]
) -> None:
    """Every unit's committed spans run from row 0 to its read count without gap or overlap."""
    for unit in sorted(set(spans) | set(names)):
        label = names.get(unit, unit)
        unit_spans = sorted(spans.get(unit, []))
        for (_, prev_last), (first, _) in itertools.pairwise(unit_spans):
            if first <= prev_last:
                raise RuntimeError(
                    f"{redact_uri(output)}: overlapping commits for unit {label} at row {first}"
                )
        if unit not in unit_rows:
            raise RuntimeError(
                f"{redact_uri(output)}: row accounting broken: {label} was never read to its end (rows lost); rerun the job to resume"
            )
        expected, row = unit_rows[unit], 0
        gap = None
        for first, last in unit_spans:
            if first != row:
                gap = (row, first - 1)
                break
            row = last + 1
        if gap is None and row != expected + 1:
            gap = (row, expected - 1)
        if gap is not None:
            raise RuntimeError(
                f"{redact_uri(output)}: row accounting broken: rows {gap[0]}..{gap[1]} of {label} were read but never "
                "committed; rerun the job to resume"
            )


def summarize(
    output: str,
    extra: dict[str, Any] | None = None,
    *,
    write: bool = True,
    ok_alias: str | None = None,
) -> dict[str, Any]:
    """Add up all commit records of `output` into the summary (also written to summary.json).

    Keys: rows_read, rows_ok (and `ok_alias`, e.g. rows_classified), rows_rejected, rejected_by_reason,
    blank_lines, label_counts, rows_truncated, rows_utf8_repaired, units, commits, ``rows_<flag>`` for every
    flag column counted by the commits (e.g. rows_abstained; read from the commit records, so resumed
    commits count too), plus everything in
    `extra` (elapsed_s, ignored_files, format, inputs, the input manifest, ...). ``rows_read`` is the
    readers' count (records read minus blank lines). Raises RuntimeError when the accounting is broken
    (see the module doc): a lost row, an overlap, a missing data file, rows_read != ok + rejected. When
    `extra` holds the input manifest, every input file must have been read to its end.
    """
    fs, root = resolve_uri(output)
    totals: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    labels: Counter[str] = Counter()
    flags: Counter[str] = Counter()
    spans: dict[str, list[tuple[int, int]]] = {}
    unit_rows: dict[str, int] = {}
    commits = load_commits(fs, root)
    present = _data_files(fs, root, {f.split("/", 1)[0] for _, r in commits for f in r["files"]})
    for name, record in commits:
        for f in record["files"]:
            if f not in present:
                raise RuntimeError(
                    f"{redact_uri(output)}: commit {name} lists {f}, which is missing; rerun the job to resume"
                )
        for key in ("rows_ok", "rows_rejected", "blank_lines", "truncated", "utf8_repaired"):
            totals[key] += record[key]
        reasons.update(record["rejected_by_reason"])
        labels.update(record["label_counts"])
        flags.update(record.get("flag_counts", {}))  # absent in records written before flags existed
        unit_rows.update(record["unit_rows"])
        for unit, first, last in record["spans"]:
            spans.setdefault(unit, []).append((first, last))
    names = {unit_key(m["name"], m["path"]): m["name"] for m in (extra or {}).get(MANIFEST_KEY, [])}
    _check_coverage(output, spans, unit_rows, names)
    records_read = sum(unit_rows.values())
    rows_read = records_read - totals["blank_lines"]
    ok, rejected = totals["rows_ok"], totals["rows_rejected"]
    if rows_read != ok + rejected or rejected != sum(reasons.values()):
        raise RuntimeError(
            f"{redact_uri(output)}: row accounting broken: rows_read={rows_read} (counted by the readers) != "
            f"rows_ok={ok} + rows_rejected={rejected} (by reason: {dict(reasons)})"
        )
    summary: dict[str, Any] = {
        "rows_read": rows_read,
        "rows_ok": ok,
        "rows_rejected": rejected,
        "rejected_by_reason": dict(sorted(reasons.items())),
        "blank_lines": totals["blank_lines"],
        "label_counts": dict(sorted(labels.items())),
        "rows_truncated": totals["truncated"],
        "rows_utf8_repaired": totals["utf8_repaired"],
        "units": len(spans),
        "commits": len(commits),
        **{f"rows_{flag}": count for flag, count in sorted(flags.items())},
    }
    if ok_alias:
        summary[ok_alias] = ok
    summary.update(extra or {})
    if write:
        write_json_atomic(fs, join(root, SUMMARY_FILE), summary)
    return summary
