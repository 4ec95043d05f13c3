"""Readers: JSONL, CSV/TSV, Parquet and folder-per-class files streamed into normalised rows (Ray Data).

Read tasks open the listed files and stream them line by line (row group by row group for Parquet),
emitting blocks of at most ``spec.rows_per_block`` rows. Every record becomes exactly one row of
:data:`~bm_ray.corpus.rows.ROW_COLUMNS` (+ ``spec.keep_fields``): ok rows (``reason`` null), rejects
and blank lines (``reason == "blank_line"``, not counted as rows read) travel together, so a job is one
streaming pass.

- JSONL: each line is parsed on its own; not JSON or not an object → ``malformed_record``.
- CSV: physical lines are joined while the record has an odd number of ``"`` (a quoted field spanning
  lines), up to 50 lines; still unterminated → ``malformed_record`` for its first line and reading
  resumes at the next line. A wrong field count → ``malformed_record``. CRLF and a UTF-8 BOM are fine;
  ``.tsv`` files use a tab unless ``spec.csv_delimiter`` is set to something other than ``,``.
- Folders: one row per file, record ``{"id": path, "label": <label>, "text": whole content,
  "title": first line, "body": the rest}``.

Bookkeeping columns: ``_unit`` (input unit key) and ``_row`` (0-based record index within the unit,
counting every record incl. rejects and blank lines).
"""

from __future__ import annotations

import bisect
import csv
import functools
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from bm_ray.corpus.dedupe import create_id_registry, mark_duplicates
from bm_ray.corpus.listing import CorpusFile, CorpusInfo, list_corpus, unit_key
from bm_ray.corpus.rows import RowBuilder, decode, row_schema
from bm_ray.specs import IngestSpec

MAX_RECORD_LINES = 50
_CHUNK_BYTES = 1 << 20

# ------------------------------------------------------------------------------------------ read pieces


@dataclass(frozen=True)
class _Piece:
    """A unit of reading: one file (line formats, Parquet) or a chunk of one class folder's files."""

    unit: str
    format: str
    files: tuple[CorpusFile, ...]
    first_row: int
    size: int


def _pieces(info: CorpusInfo, rows_per_block: int) -> list[_Piece]:
    pieces = []
    if info.format != "folders":
        for f in info.files:
            pieces.append(_Piece(unit_key(f.relpath, f.path), f.format, (f,), 0, f.size))
        return pieces
    by_folder: dict[tuple[str, str], list[CorpusFile]] = {}
    for f in info.files:
        by_folder.setdefault((f.root, f.label or ""), []).append(f)
    for (root, label), folder_files in by_folder.items():
        unit = unit_key(label, f"{root.rstrip('/')}/{label}")
        for start in range(0, len(folder_files), rows_per_block):
            chunk = tuple(folder_files[start : start + rows_per_block])
            pieces.append(_Piece(unit, "folders", chunk, start, sum(f.size for f in chunk)))
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


class _Skip:
    """Membership test for already committed rows of one unit."""

    def __init__(self, spans: list[tuple[int, int]] | None) -> None:
        self.starts = [a for a, _ in spans or []]
        self.ends = [b for _, b in spans or []]

    def __bool__(self) -> bool:
        return bool(self.starts)

    def __contains__(self, row: int) -> bool:
        i = bisect.bisect_right(self.starts, row) - 1
        return i >= 0 and row <= self.ends[i]

    def covers(self, first: int, last: int) -> bool:
        """Whether rows first..last are all committed (inside one span)."""
        i = bisect.bisect_right(self.starts, first) - 1
        return i >= 0 and last <= self.ends[i]


# --------------------------------------------------------------------------------------------- readers


def _iter_lines(stream: Any) -> Iterator[bytes]:
    """Physical lines (without the line break; a trailing CR is removed), streamed in 1 MiB chunks."""
    parts: list[bytes] = []
    while data := stream.read(_CHUNK_BYTES):
        start = 0
        while (end := data.find(b"\n", start)) != -1:
            parts.append(data[start:end])
            line = b"".join(parts)
            parts = []
            yield line[:-1] if line.endswith(b"\r") else line
            start = end + 1
        if start < len(data):
            parts.append(data[start:])
    if parts:
        line = b"".join(parts)
        yield line[:-1] if line.endswith(b"\r") else line


def _lines_numbered(stream: Any) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, line) with a leading UTF-8 BOM removed."""
    for number, line in enumerate(_iter_lines(stream), start=1):
        if number == 1 and line.startswith(b"\xef\xbb\xbf"):
            line = line[3:]
        yield number, line


def _read_jsonl(piece: _Piece, rows: RowBuilder, skip: _Skip, fs: pafs.FileSystem) -> Iterator[None]:
    f = piece.files[0]
    with fs.open_input_stream(f.path) as stream:
        for number, line in _lines_numbered(stream):
            row = number - 1
            yield None
            if row in skip:
                continue
            source = f"{f.relpath}:{number}"
            if not line.strip():
                rows.blank(piece.unit, row, source)
                continue
            text, repaired, invalid = decode(line)
            if invalid:
                rows.reject("invalid_utf8", piece.unit, row, source, text, utf8_repaired=True)
                continue
            try:
                rec = json.loads(text)
            except ValueError:
                rec = None
            if not isinstance(rec, dict):
                rows.reject("malformed_record", piece.unit, row, source, text, utf8_repaired=repaired)
                continue
            rows.record(rec, piece.unit, row, source, text, repaired)


def _read_csv(piece: _Piece, rows: RowBuilder, skip: _Skip, fs: pafs.FileSystem) -> Iterator[None]:
    spec = rows.spec
    f = piece.files[0]
    delimiter = (
        "\t" if f.relpath.lower().endswith(".tsv") and spec.csv_delimiter == "," else spec.csv_delimiter
    )
    max_bytes = 4 * spec.reject_text_chars + 4096
    with fs.open_input_stream(f.path) as stream:
        lines = _lines_numbered(stream)
        pending: list[tuple[int, bytes]] = []

        def next_line() -> tuple[int, bytes] | None:
            return pending.pop(0) if pending else next(lines, None)

        names: list[str] | None = list(spec.csv_columns) if spec.csv_columns else None
        if spec.csv_header:
            header = next_line()
            if header is not None and names is None:
                names = next(csv.reader([decode(header[1])[0]], delimiter=delimiter), [])
                names = [n.strip() for n in names]
        row = -1
        while (first := next_line()) is not None:
            row += 1
            number, line = first
            source = f"{f.relpath}:{number}"
            yield None
            if not line.strip():
                if row not in skip:
                    rows.blank(piece.unit, row, source)
                continue
            # a quoted field may span lines: join physical lines while the quotes are unbalanced
            taken = [first]
            quotes = line.count(b'"')
            size = len(line)
            while quotes % 2 and len(taken) < MAX_RECORD_LINES and size <= max_bytes:
                more = next_line()
                if more is None:
                    break
                taken.append(more)
                quotes += more[1].count(b'"')
                size += len(more[1]) + 1
            if quotes % 2:  # unterminated: reject the first line, resync on the next one
                pending[:0] = taken[1:]
                if row not in skip:
                    rows.reject("malformed_record", piece.unit, row, source, line)
                continue
            if row in skip:
                continue
            record_bytes = b"\n".join(part for _, part in taken)
            text, repaired, invalid = decode(record_bytes)
            if invalid:
                rows.reject("invalid_utf8", piece.unit, row, source, text, utf8_repaired=True)
                continue
            try:
                parsed = list(csv.reader([text], delimiter=delimiter, strict=True))
            except csv.Error:
                parsed = []
            if len(parsed) != 1 or (names is not None and len(parsed[0]) != len(names)):
                rows.reject("malformed_record", piece.unit, row, source, text, utf8_repaired=repaired)
                continue
            keys = names if names is not None else [str(i) for i in range(len(parsed[0]))]
            rows.record(dict(zip(keys, parsed[0], strict=True)), piece.unit, row, source, text, repaired)


def _read_parquet(piece: _Piece, rows: RowBuilder, skip: _Skip, fs: pafs.FileSystem) -> Iterator[None]:
    spec = rows.spec
    f = piece.files[0]
    wanted = [*spec.text_fields, spec.id_field or "id", spec.label_field or "label", *spec.keep_fields]
    with fs.open_input_file(f.path) as handle:
        pfile = pq.ParquetFile(handle)
        present = set(pfile.schema_arrow.names)
        columns = list(dict.fromkeys(c for c in wanted if c in present))
        offset = 0
        for batch in pfile.iter_batches(batch_size=spec.rows_per_block, columns=columns):
            first, n = offset, batch.num_rows
            offset += n
            if skip and skip.covers(first, first + n - 1):
                continue
            for i, rec in enumerate(batch.to_pylist()):
                row = first + i
                yield None
                if row in skip:
                    continue
                rows.record(rec, piece.unit, row, f"{f.relpath}:{row + 1}", rec, False)


def _read_folders(piece: _Piece, rows: RowBuilder, skip: _Skip, fs: pafs.FileSystem) -> Iterator[None]:
    limit = 4 * rows.spec.reject_text_chars + 4
    for i, f in enumerate(piece.files):
        row = piece.first_row + i
        yield None
        if row in skip:
            continue
        with fs.open_input_stream(f.path) as stream:
            data = stream.read(limit + 1)
        text, repaired, invalid = decode(data)
        if invalid:
            rows.reject("invalid_utf8", piece.unit, row, f.relpath, text, f.relpath, utf8_repaired=True)
            continue
        if len(data) > limit:
            rows.reject("too_long", piece.unit, row, f.relpath, text, f.relpath, utf8_repaired=repaired)
            continue
        title, _, body = text.strip().partition("\n")
        rec = {"id": f.relpath, "label": f.label, "text": text, "title": title, "body": body}
        rows.record(rec, piece.unit, row, f.relpath, text, repaired)


_READERS = {"jsonl": _read_jsonl, "csv": _read_csv, "parquet": _read_parquet, "folders": _read_folders}


def _read_group(
    spec: IngestSpec, group: list[_Piece], skips: dict[str, list[tuple[int, int]]]
) -> Iterator[pa.Table]:
    """Read task body: stream the pieces, yield blocks of at most rows_per_block rows."""
    rows = RowBuilder(spec)
    for piece in group:
        reader = _READERS[piece.format]
        for _ in reader(piece, rows, _Skip(skips.get(piece.unit)), piece.files[0].fs):
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
    ) -> None:
        super().__init__()
        self._spec = spec
        self._groups = _group(_pieces(info, spec.rows_per_block), parallelism)
        self._skip = skip or {}
        self._size = info.total_bytes

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
            units = {p.unit for p in group}
            skips = {u: s for u, s in self._skip.items() if u in units}
            metadata = BlockMetadata(
                num_rows=None,
                size_bytes=sum(p.size for p in group),
                input_files=[f.path for p in group for f in p.files][:100],
                exec_stats=None,
            )
            read_fn = functools.partial(_read_group, self._spec, group, skips)
            tasks.append(ReadTask(read_fn, metadata, schema=schema, per_task_row_limit=per_task_row_limit))
        return tasks


# ------------------------------------------------------------------------------------------ public API


def read_corpus(
    spec: IngestSpec,
    *,
    registry: Any = None,
    dedupe: bool = True,
    skip: dict[str, list[tuple[int, int]]] | None = None,
    ray_remote_args: dict[str, Any] | None = None,
) -> tuple[ray.data.Dataset, CorpusInfo]:
    """Dataset (streaming) of every record of the corpus as a normalised row: ok, rejects and blank lines.

    Columns: :data:`ROW_COLUMNS` + ``spec.keep_fields``. Filter ``reason`` null for the ok rows
    (see :func:`ok_rows`). Duplicate ids are rejected through `registry` (an :class:`IdRegistry`
    handle; a new one, kept in ``CorpusInfo.registry``, when None) unless `dedupe` is False.
    `skip` (``{unit: [(first_row, last_row)]}``, from :func:`bm_ray.sink.committed_rows`) lists rows
    that are not emitted at all (already committed by an earlier run). `ray_remote_args` (e.g.
    ``{"num_cpus": 0}`` beside an actor pool holding every CPU) apply to the read and dedupe tasks.
    """
    remote_args = ray_remote_args or {}
    info = list_corpus(spec)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    source = CorpusDatasource(spec, info, skip, parallelism=max(2, 2 * cpus))
    ds = ray.data.read_datasource(source, override_num_blocks=source.num_tasks, **remote_args)
    if dedupe:
        info.registry = registry if registry is not None else create_id_registry()
        ds = ds.map_batches(
            mark_duplicates,
            fn_kwargs={"registry": info.registry},
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
