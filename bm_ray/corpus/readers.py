"""Readers: JSONL, CSV/TSV, Parquet and folder-per-class files streamed into normalised rows (Ray Data).

Read tasks open the listed files and stream them line by line (row group by row group for Parquet),
emitting blocks of at most ``spec.rows_per_block`` rows. Every record becomes exactly one row of
:data:`~bm_ray.corpus.rows.ROW_COLUMNS` (+ ``spec.keep_fields``): ok rows (``reason`` null), rejects
and blank lines (``reason == "blank_line"``, not counted as rows read) travel together, so a job is one
streaming pass.

How each format's records are parsed (and rejected) is :mod:`~bm_ray.corpus.formats`.

Bookkeeping columns: ``_unit`` (input unit key: one per file), ``_row`` (0-based record index within
the file, counting every record incl. rejects and blank lines, so it never depends on other files) and
``_file`` (the file's position in the listing: the order de-duplication follows).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask
from ray.data.expressions import col

from bm_ray.corpus.dedupe import build_dedupe_index, mark_duplicates
from bm_ray.corpus.formats import LONG_LINE_KEPT_BYTES, MAX_RECORD_LINES, READERS, Skip
from bm_ray.corpus.listing import CorpusFile, CorpusInfo, list_corpus
from bm_ray.corpus.rows import RowBuilder, row_schema
from bm_ray.specs import IngestSpec

__all__ = [  # the two constants moved to formats with the readers; still importable from here
    "LONG_LINE_KEPT_BYTES",
    "MAX_RECORD_LINES",
    "CorpusDatasource",
    "ok_rows",
    "read_corpus",
]

# ------------------------------------------------------------------------------------------ read pieces


@dataclass(frozen=True)
class _Piece:
    """A unit of reading: one file (line formats, Parquet) or a chunk of files of a folder corpus."""

    format: str
    files: tuple[CorpusFile, ...]
    size: int


def _pieces(info: CorpusInfo, rows_per_block: int) -> list[_Piece]:
    if info.format != "folders":
        return [_Piece(f.format, (f,), f.size) for f in info.files]
    pieces = []
    for start in range(0, len(info.files), rows_per_block):
        chunk = tuple(info.files[start : start + rows_per_block])
        pieces.append(_Piece("folders", chunk, sum(f.size for f in chunk)))
    return pieces


def _group(pieces: list[_Piece], parallelism: int) -> list[list[_Piece]]:
    """Big pieces alone, small ones packed together, aiming at about `parallelism` groups."""
    if not pieces:
        return []
    parallelism = max(1, parallelism)
    target = max(1, sum(p.size for p in pieces) // parallelism)
    groups: list[list[_Piece]] = []
    current: list[_Piece] = []
    size = 0
    for piece in sorted(pieces, key=lambda p: -p.size):
        if piece.size >= target:
            groups.append([piece])
            continue
        if current and size + piece.size > target:
            groups.append(current)
            current, size = [], 0
        current.append(piece)
        size += piece.size
    if current:
        groups.append(current)
    return groups


def _read_group(
    spec: IngestSpec, group: list[_Piece], skips: dict[str, list[tuple[int, int]]], unit_ends: bool
) -> Iterator[pa.Table]:
    """Read task body: stream the pieces, yield blocks of at most rows_per_block rows."""
    rows = RowBuilder(spec, unit_ends=unit_ends)
    for piece in group:
        for f in piece.files:
            rows.file_index = f.index
            for _ in READERS[piece.format](f, rows, Skip(skips.get(f.unit))):
                if len(rows) >= spec.rows_per_block:
                    yield rows.flush()
    if len(rows):
        yield rows.flush()


class CorpusDatasource(Datasource):
    """Ray Data datasource over listed corpus files; read tasks stream files into normalised rows."""

    def __init__(
        self,
        spec: IngestSpec,
        info: CorpusInfo,
        skip: dict[str, list[tuple[int, int]]] | None = None,
        parallelism: int = 4,
        unit_ends: bool = False,
    ) -> None:
        super().__init__()
        self._spec = spec
        self._groups = _group(_pieces(info, spec.rows_per_block), parallelism)
        self._skip = skip or {}
        self._size = info.total_bytes
        self._unit_ends = unit_ends

    @property
    def num_tasks(self) -> int:
        """Number of read tasks (fixed at construction; pass it as ``override_num_blocks``)."""
        return len(self._groups)

    def get_name(self) -> str:
        """Name shown for the read operator."""
        return "ReadCorpus"

    def estimate_inmemory_data_size(self) -> int | None:
        """About the bytes on disk (text dominates)."""
        return self._size

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
    ) -> list[ReadTask]:
        """One task per big file, small files packed together.

        The grouping is fixed when the datasource is made (about 2 tasks per cluster CPU), so that Ray
        does not split the blocks further; the `parallelism` Ray asks for is ignored.
        """
        schema = row_schema(self._spec.keep_fields)
        tasks = []
        for group in self._groups:
            units = {f.unit for p in group for f in p.files}
            skips = {u: s for u, s in self._skip.items() if u in units}
            metadata = BlockMetadata(
                num_rows=None,
                size_bytes=sum(p.size for p in group),
                input_files=[f.path for p in group for f in p.files][:100],
                exec_stats=None,
            )
            read_fn = functools.partial(_read_group, self._spec, group, skips, self._unit_ends)
            tasks.append(ReadTask(read_fn, metadata, schema=schema, per_task_row_limit=per_task_row_limit))
        return tasks


# ------------------------------------------------------------------------------------------ public API


def read_corpus(
    spec: IngestSpec,
    *,
    dedupe: bool | None = None,
    skip: dict[str, list[tuple[int, int]]] | None = None,
    unit_ends: bool = False,
    ray_remote_args: dict[str, Any] | None = None,
) -> tuple[ray.data.Dataset, CorpusInfo]:
    """Dataset (streaming) of every record of the corpus as a normalised row: ok, rejects and blank lines.

    Needs a running Ray (callers start it). Columns: :data:`ROW_COLUMNS` + ``spec.keep_fields``. Filter
    ``reason`` null for the ok rows (see :func:`ok_rows`).

    Duplicate ids (`dedupe`, default ``spec.dedupe == "ids"``): the first row with an id in listing
    order (file, then row) wins, later ones are rejected as ``duplicate_id``. This reads the corpus
    twice: a first pass, run here before returning, registers every ok row's id in a
    :class:`~bm_ray.corpus.dedupe.DedupeIndex` (on-disk shards, kept in ``CorpusInfo.dedupe``: call its
    ``close()`` when done), the returned dataset asks it which rows lost. `skip` (``{unit: [(first_row,
    last_row)]}``, from :func:`bm_ray.output.commit.committed_rows`) lists rows that are not emitted at all
    (already committed by an earlier run); the first pass still sees them, so a resumed job keeps the
    same winners. `unit_ends` adds one :data:`~bm_ray.corpus.rows.UNIT_END` row after each file (its
    `_row` = the file's record count, counted as it was read: the commit protocol's accounting).
    `ray_remote_args` (e.g. ``{"num_cpus": 0}`` beside an actor pool holding every CPU) apply to the
    read and dedupe tasks.
    """
    remote_args = ray_remote_args or {}
    info = list_corpus(spec)
    cpus = int(ray.cluster_resources().get("CPU", 1))

    def read(skipped: dict[str, list[tuple[int, int]]] | None, ends: bool) -> ray.data.Dataset:
        source = CorpusDatasource(spec, info, skipped, parallelism=max(2, 2 * cpus), unit_ends=ends)
        return ray.data.read_datasource(source, override_num_blocks=source.num_tasks, **remote_args)

    ds = read(skip, unit_ends)
    if spec.dedupe == "ids" if dedupe is None else dedupe:
        info.dedupe = build_dedupe_index(read(None, False), remote_args)
        ds = ds.map_batches(
            mark_duplicates,
            fn_kwargs={"index": info.dedupe},
            batch_format="pyarrow",
            batch_size=None,
            zero_copy_batch=True,
            **remote_args,
        )
    return ds, info


def ok_rows(ds: ray.data.Dataset, columns: Iterable[str] = ("id", "text", "label")) -> ray.data.Dataset:
    """Only the ok rows of a :func:`read_corpus` dataset, with `columns`."""
    return ds.map_batches(
        _select_ok, fn_kwargs={"columns": list(columns)}, batch_format="pyarrow", batch_size=None
    )


def _select_ok(batch: pa.Table, columns: list[str]) -> pa.Table:
    return batch.filter(pc.is_null(batch.column("reason"))).select(columns)


def first_ok_rows(
    spec: IngestSpec, columns: list[str], limit: int, labelled: bool = False
) -> list[dict[str, Any]]:
    """The first `limit` ok rows of the corpus `spec` (with a label only, when `labelled`), as dicts of
    `columns`: the small samples benchmarks and the demo work on. Raises ValueError naming the input and
    text fields when no row qualifies."""
    ds, _ = read_corpus(spec, dedupe=False)
    ok = ok_rows(ds, list(dict.fromkeys([*columns, "label"])) if labelled else columns)
    if labelled:
        ok = ok.filter(expr=col("label").is_not_null()).select_columns(columns)
    rows = ok.take(limit)
    if not rows:
        kind = "labelled rows" if labelled else "valid rows"
        raise ValueError(f"{', '.join(spec.input)}: no {kind} in fields {', '.join(spec.text_fields)}")
    return rows
