"""The exactly-once commit protocol, shared by `ingest` and bulk classification: units, temp + rename,
commit records, the input manifest, the output lease, accounting, summary, and the driver of one
resumable pass (:func:`commit_corpus`).

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
every commit's data files exist: a row read but never committed fails the job loudly.

Output lease: ``_lease.json`` (owner, host, pid, heartbeat) while a job runs, see :class:`OutputLease`.
"""

from __future__ import annotations

import getpass
import hashlib
import itertools
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import ray

from bm_ray.corpus import BLANK_LINE, CorpusInfo, list_corpus, read_corpus, unit_key
from bm_ray.corpus.listing import input_manifest
from bm_ray.corpus.rows import UNIT_END
from bm_ray.runtime.logs import PROGRESS_LOG_S
from bm_ray.specs import IngestSpec
from bm_ray.storage import (
    TMP_PREFIX,
    exists,
    join,
    list_files,
    read_json,
    redact,
    redact_uri,
    resolve_uri,
    write_json_atomic,
    write_parquet_atomic,
)

logger = logging.getLogger(__name__)

COMMITS_DIR = "_commits"
REJECTS_DIR = "rejects"
JOB_FILE = "_job.json"
SUMMARY_FILE = "summary.json"
LEASE_FILE = "_lease.json"
MANIFEST_KEY = "inputs_manifest"
"""Key of the input manifest in ``_job.json`` and ``summary.json``."""
REJECT_COLUMNS = ("id", "source", "reason", "raw")
"""Columns of the rejects tables."""

LEASE_HEARTBEAT_S = 10.0
"""How often a running job renews its lease."""
LEASE_STALE_S = 60.0
"""A lease whose heartbeat is older than this is stale: its job is taken to be dead and the lease is
taken over. A lease of a process on this host that no longer exists is stale at once."""

REJECT_CHECK_MIN_ROWS = 1000
"""Rows a run reads before ``max_reject_fraction`` is checked (it is checked again at the end)."""


class OutputInUseError(ValueError):
    """Another live job holds the output's lease."""


class TooManyRejectsError(ValueError):
    """More than ``max_reject_fraction`` of the rows read were rejected: the job stopped early."""


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


def _load_commits(fs: pafs.FileSystem, root: str) -> list[tuple[str, dict[str, Any]]]:
    """(name, record) of every commit record, sorted by name."""
    out = []
    for info in sorted(list_files(fs, join(root, COMMITS_DIR)), key=lambda i: i.path):
        if info.base_name.endswith(".json") and not info.base_name.startswith("."):
            out.append((info.base_name[: -len(".json")], read_json(fs, info.path)))
    return out


def _data_files(fs: pafs.FileSystem, root: str, dirs: set[str]) -> set[str]:
    """`dir/name` of every file in `dirs` (relative to `root`)."""
    return {f"{d}/{info.base_name}" for d in dirs for info in list_files(fs, join(root, d))}


# ------------------------------------------------------------------------------------------ the output


def is_bm_ray_output(output: str) -> bool:
    """Whether `output` holds a bm-ray job's output (``_job.json`` or ``_commits/``)."""
    fs, root = resolve_uri(output)
    return exists(fs, join(root, JOB_FILE)) or exists(fs, join(root, COMMITS_DIR))


def refuse_foreign_overwrite(output: str) -> None:
    """Raise ValueError if `output` is a non-empty directory that is not a bm-ray output."""
    fs, root = resolve_uri(output)
    if fs.get_file_info(root).type == pafs.FileType.File:
        raise ValueError(f"--output {redact_uri(output)} is a file, not a directory")
    entries = [
        info
        for info in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
        if info.base_name != LEASE_FILE  # the job's own lease, taken before its output is prepared
    ]
    if entries and not is_bm_ray_output(output):
        raise ValueError(
            f"refusing to overwrite {redact_uri(output)}: it is not empty and holds no bm-ray output "
            f"({JOB_FILE}, {COMMITS_DIR}/); choose an empty or new --output"
        )


def _manifest_changes(previous: list[dict[str, Any]], current: list[dict[str, Any]]) -> list[str]:
    """Human-readable differences between two input manifests (by path)."""
    before = {m["path"]: m for m in previous}
    now = {m["path"]: m for m in current}
    changes = [f"{p} was added" for p in now if p not in before]
    changes += [f"{p} is gone" for p in before if p not in now]
    for path in now.keys() & before.keys():
        old, new = before[path], now[path]
        what = [
            f"{k} {old.get(k)} → {new.get(k)}" for k in ("size", "mtime", "etag") if old.get(k) != new.get(k)
        ]
        if what:
            changes.append(f"{path} changed ({', '.join(what)})")
    return sorted(changes)


def check_job_identity(output: str, previous: dict[str, Any], current: dict[str, Any]) -> None:
    """Raise ValueError if resuming `current` into an output made by `previous` is unsafe.

    Every key is compared generically (spec fields, model version, ...): differing keys are named; the
    input manifest is compared file by file and the changed, added or removed files are named.
    """
    keys = sorted(
        k for k in set(previous) | set(current) if k != MANIFEST_KEY and previous.get(k) != current.get(k)
    )
    if keys:
        differences = ", ".join(_difference(k, previous.get(k), current.get(k)) for k in keys)
        raise ValueError(
            f"{redact_uri(output)} holds the output of a different job (differs in: {differences}); "
            "pass overwrite (--overwrite) to start afresh or choose another output"
        )
    changes = _manifest_changes(previous.get(MANIFEST_KEY) or [], current.get(MANIFEST_KEY) or [])
    if changes:
        shown = "; ".join(changes[:5]) + (f"; and {len(changes) - 5} more" if len(changes) > 5 else "")
        raise ValueError(
            f"the inputs changed since the job into {redact_uri(output)} started: {shown}. Resuming would skip or "
            "repeat the wrong rows; pass overwrite (--overwrite) to start afresh or choose another output"
        )


SHOWN_VALUE_CHARS = 80
"""Identity values up to this long are shown in a resume refusal (e.g. both model versions); longer ones are named only."""


def _difference(key: str, previous: Any, current: Any) -> str:
    """`key` (was X, now Y) for short scalar values, else just `key` (spec sections, lists)."""
    scalars = all(v is None or isinstance(v, str | int | float | bool) for v in (previous, current))
    if scalars and max(len(repr(previous)), len(repr(current))) <= SHOWN_VALUE_CHARS:
        return f"{key} (was {previous}, now {current})"
    return key


def _stored_identity(output: str) -> dict[str, Any] | None:
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
    elif job is not None and (previous := _stored_identity(output)) is not None:
        check_job_identity(output, previous, json.loads(json.dumps(job)))
    for sub in (ok_dir, REJECTS_DIR, COMMITS_DIR):
        fs.create_dir(join(root, sub), recursive=True)
    if job is not None and _stored_identity(output) is None:
        write_json_atomic(fs, join(root, JOB_FILE), job)
    commits = _load_commits(fs, root)
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
    for _, record in _load_commits(fs, root):
        for unit, first, last in record["spans"]:
            intervals.setdefault(unit, []).append((first, last))
    for spans in intervals.values():
        spans.sort()
    return intervals


# ------------------------------------------------------------------------------------------- the lease


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutputLease:
    """``_lease.json`` in an output while a job writes it: owner, host, pid, started, heartbeat.

    :meth:`acquire` refuses (:class:`OutputInUseError`, naming the owner) while another job's lease is
    live; a stale one (heartbeat older than :data:`LEASE_STALE_S`, or a dead process on this host) is
    taken over. A daemon thread renews the heartbeat every :data:`LEASE_HEARTBEAT_S`; :meth:`release`
    deletes the lease. Writes are whole-file replacements, so on object stores (no create-if-absent)
    two jobs starting in the same instant are caught by the read-back after writing, not excluded.
    """

    def __init__(self, output: str, kind: str) -> None:
        self.output = output
        self.fs, root = resolve_uri(output)
        self.root = root
        self.path = join(root, LEASE_FILE)
        self.token = uuid.uuid4().hex
        self.record = {
            "owner": f"{getpass.getuser()}@{socket.gethostname()} ({kind}, pid {os.getpid()})",
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "kind": kind,
            "token": self.token,
            "started": time.time(),
            "heartbeat": time.time(),
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    def _read(self) -> dict[str, Any] | None:
        try:
            return read_json(self.fs, self.path)
        except (FileNotFoundError, OSError, ValueError):
            return None

    @staticmethod
    def is_live(lease: dict[str, Any]) -> bool:
        """Whether a lease's job may still be running."""
        if lease.get("host") == socket.gethostname() and not _pid_alive(int(lease.get("pid", 0))):
            return False
        return time.time() - float(lease.get("heartbeat", 0)) < LEASE_STALE_S

    def acquire(self) -> None:
        """Take the lease, or raise :class:`OutputInUseError` naming the live owner."""
        self.fs.create_dir(self.root, recursive=True)
        current = self._read()
        if current is not None and current.get("token") != self.token:
            if self.is_live(current):
                age = time.time() - float(current.get("heartbeat", 0))
                raise OutputInUseError(
                    f"{redact_uri(self.output)} is in use by {current.get('owner')}, last heartbeat {age:.0f} s ago; "
                    f"wait for that job to end (a dead job's lease goes stale {LEASE_STALE_S:.0f} s after "
                    "its last heartbeat) or choose another output"
                )
            logger.warning(
                "%s: taking over the stale lease of %s", redact_uri(self.output), current.get("owner")
            )
        self._write()
        if (self._read() or {}).get("token") != self.token:
            raise OutputInUseError(
                f"{redact_uri(self.output)}: another job took the lease at the same moment"
            )
        self._thread = threading.Thread(target=self._beat, name="bm-ray-lease", daemon=True)
        self._thread.start()

    def _write(self) -> None:
        self.record["heartbeat"] = time.time()
        write_json_atomic(self.fs, self.path, self.record)

    def _beat(self) -> None:
        while not self._stop.wait(LEASE_HEARTBEAT_S):
            if (self._read() or {}).get("token") != self.token:
                self.lost = True
                return
            self._write()

    def release(self) -> None:
        """Stop the heartbeat and delete the lease (if it is still ours)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if (self._read() or {}).get("token") == self.token:
            self.fs.delete_file(self.path)


# ---------------------------------------------------------------------------------------- committing


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
    commits = _load_commits(fs, root)
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


# ------------------------------------------------------------------------------------------ the driver

IGNORED_FILES_LISTED = 100
"""Ignored (non-article) files listed by name in the summary; all are counted."""

IDENTITY_EXCLUDED = {"rows_per_block", "max_reject_fraction"}
"""IngestSpec fields that do not change a job's rows, so a resume may change them."""


def job_identity(kind: str, spec: IngestSpec, info: CorpusInfo, **fields: Any) -> dict[str, Any]:
    """The identity stored in ``_job.json``: kind, the ingestion spec, extra `fields` (e.g. the model and
    its version; compared generically on resume) and the input manifest."""
    return {
        "kind": kind,
        "input": redact(spec.model_dump(mode="json", exclude=IDENTITY_EXCLUDED)),  # no credentials on disk
        **fields,
        MANIFEST_KEY: input_manifest(info),
    }


def _reject_check(spec: IngestSpec, output: str, totals: Counter[str], final: bool) -> None:
    limit = spec.max_reject_fraction
    read, rejected = totals["rows_committed"], totals["rows_rejected"]
    if limit is None or read == 0 or (read < REJECT_CHECK_MIN_ROWS and not final) or rejected <= limit * read:
        return
    fs, root = resolve_uri(output)
    reasons: Counter[str] = Counter()
    for _, record in _load_commits(fs, root):
        reasons.update(record["rejected_by_reason"])
    top = ", ".join(f"{k} {v:,}" for k, v in reasons.most_common(3))
    raise TooManyRejectsError(
        f"stopped: {rejected:,} of the {read:,} rows read ({rejected / read:.0%}) were rejected ({top}), "
        f"more than max_reject_fraction {limit}. Check the ingestion options (e.g. a typo in --text-fields "
        f"rejects every row as missing_field); see {redact_uri(output)}/rejects/. Rerun with the same options and "
        "--max-reject-fraction 1 to go on anyway"
    )


def commit_corpus(
    spec: IngestSpec,
    output: str,
    commit: Callable[[ray.data.Dataset, str], ray.data.Dataset],
    *,
    kind: str,
    identity: dict[str, Any] | None = None,
    ok_dir: str = "ok",
    overwrite: bool = False,
    read_args: dict[str, Any] | None = None,
    extra: Callable[[Counter[str]], dict[str, Any]] | None = None,
    ok_alias: str | None = None,
) -> dict[str, Any]:
    """Drive one resumable, exactly-once pass of a corpus through a commit stage (ingest, classify).

    Needs a running Ray. Lists the inputs; refuses (nothing written) a resume whose job identity
    (:func:`job_identity` with `identity`'s extra fields) or input manifest differs; takes the output's
    lease; prepares `output` (:func:`prepare_output`); reads the rows not committed yet (with unit ends
    and duplicate-id detection per ``spec.dedupe``); applies `commit` ((dataset, lease token) → dataset of
    count rows, at least :data:`PROGRESS_SCHEMA`, e.g. a `map_batches` over a :class:`CommitProcessor`
    given that `lease_token`) and drains
    it, logging progress and stopping early on too many rejects (:class:`TooManyRejectsError`); then
    writes the summary (:func:`summarize` with `extra(totals)`, the totals of every integer column of
    this run's count rows) and releases the lease. Returns the summary.
    """
    started = time.monotonic()
    if overwrite:
        refuse_foreign_overwrite(output)
    info = list_corpus(spec)
    job = job_identity(kind, spec, info, **(identity or {}))
    if not overwrite and (previous := _stored_identity(output)) is not None:
        check_job_identity(output, previous, json.loads(json.dumps(job)))
    lease = OutputLease(output, kind)
    lease.acquire()
    totals: Counter[str] = Counter()
    try:
        prepare_output(output, ok_dir=ok_dir, overwrite=overwrite, job=job)
        skip = committed_rows(output)
        fs, root = resolve_uri(output)
        resumed = sum(r["rows_committed"] for _, r in _load_commits(fs, root))
        ds, read_info = read_corpus(spec, skip=skip, unit_ends=True, ray_remote_args=read_args)
        try:
            last_log = time.monotonic()
            for batch in commit(ds, lease.token).iter_batches(batch_format="pyarrow", batch_size=None):
                for name, column in zip(batch.column_names, batch.columns, strict=True):
                    if pa.types.is_integer(column.type):
                        totals[name] += int(pc.sum(column).as_py() or 0)
                if lease.lost:
                    raise OutputInUseError(
                        f"{redact_uri(output)}: this job lost its lease to another job; stopping"
                    )
                _reject_check(spec, output, totals, final=False)
                if time.monotonic() - last_log > PROGRESS_LOG_S:
                    last_log = time.monotonic()
                    rate = totals["rows_committed"] / (last_log - started)
                    logger.info(
                        "%s: %d rows committed so far (%.1f rows/s)", kind, totals["rows_committed"], rate
                    )
        finally:
            if read_info.dedupe is not None:
                read_info.dedupe.close()
        _reject_check(spec, output, totals, final=True)
        details = {
            "format": info.format,
            "inputs": redact(info.inputs),
            "files": len(info.files),
            "ignored_files": redact(info.ignored_files[:IGNORED_FILES_LISTED]),
            "ignored_files_count": len(info.ignored_files),
            "rows_resumed": resumed,
            MANIFEST_KEY: job[MANIFEST_KEY],
            **(extra(totals) if extra else {}),
        }
        return summarize(output, details, ok_alias=ok_alias)
    finally:
        lease.release()
