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

Bookkeeping columns: ``_unit`` (input unit key: one per file), ``_row`` (0-based record index within
the file, counting every record incl. rejects and blank lines, so it never depends on other files) and
``_file`` (the file's position in the listing: the order de-duplication follows).
"""

from __future__ import annotations

import bisect
import codecs
import csv
import functools
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from bm_ray.corpus.dedupe import build_dedupe_index, mark_duplicates
from bm_ray.corpus.listing import CorpusFile, CorpusInfo, list_corpus
from bm_ray.corpus.rows import RowBuilder, decode, row_schema
from bm_ray.specs import IngestSpec

MAX_RECORD_LINES = 50
_CHUNK_BYTES = 1 << 20
LONG_LINE_KEPT_BYTES = 4 * 300
"""Bytes kept of a line over ``max_line_bytes`` (for its reject's snippet)."""

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


def _chunks(stream: Any, first: bytes = b"") -> Iterator[bytes]:
    """`first` (already read), then the rest of `stream` in 1 MiB chunks."""
    if first:
        yield first
    while data := stream.read(_CHUNK_BYTES):
        yield data


def _head(parts: list[bytes]) -> bytes:
    """The first :data:`LONG_LINE_KEPT_BYTES` of the concatenated `parts` (without joining them all)."""
    head = b""
    for part in parts:
        head += part[: LONG_LINE_KEPT_BYTES - len(head)]
        if len(head) >= LONG_LINE_KEPT_BYTES:
            break
    return head


def _iter_lines(chunks: Iterable[bytes], max_bytes: int) -> Iterator[tuple[bytes, bool]]:
    """(line, too_long) per physical line (without the line break; a trailing CR is removed).

    A line longer than `max_bytes` is never held whole: at most `max_bytes` of it are buffered before
    it is known to be too long, then only its first :data:`LONG_LINE_KEPT_BYTES` are kept (for the
    reject's snippet) and the rest is skipped up to the next line break.
    """
    parts: list[bytes] = []
    size = 0
    too_long = False
    for data in chunks:
        start = 0
        while (end := data.find(b"\n", start)) != -1:
            piece = data[start:end]
            if too_long or size + len(piece) > max_bytes:
                yield _head([*parts, piece]), True
            else:
                line = b"".join(parts) + piece if parts else piece
                yield (line[:-1] if line.endswith(b"\r") else line), False
            parts, size, too_long = [], 0, False
            start = end + 1
        if start < len(data):
            rest = data[start:]
            if too_long:
                continue
            if size + len(rest) > max_bytes:
                parts, too_long = [_head([*parts, rest])], True
            else:
                parts.append(rest)
                size += len(rest)
    if too_long:
        yield b"".join(parts), True
    elif parts:
        line = b"".join(parts)
        yield (line[:-1] if line.endswith(b"\r") else line), False


def _lines_numbered(chunks: Iterable[bytes], max_bytes: int) -> Iterator[tuple[int, bytes, bool]]:
    """(1-based line number, line, too_long) with a leading UTF-8 BOM removed."""
    for number, (line, too_long) in enumerate(_iter_lines(chunks, max_bytes), start=1):
        if number == 1 and line.startswith(b"\xef\xbb\xbf"):
            line = line[3:]
        yield number, line, too_long


def _read_jsonl(f: CorpusFile, rows: RowBuilder, skip: _Skip) -> Iterator[None]:
    """JSON Lines; a file whose first non-blank character is `[` is one JSON array of records."""
    with f.fs.open_input_stream(f.path) as stream:
        first = stream.read(_CHUNK_BYTES)
        if first.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
            yield from _read_json_array(f, _chunks(stream, first), rows, skip)
            return
        row = -1
        for number, line, too_long in _lines_numbered(_chunks(stream, first), rows.spec.max_line_bytes):
            row = number - 1
            yield None
            if row in skip:
                continue
            source = f"{f.relpath}:{number}"
            if too_long:
                rows.reject("too_long", f.unit, row, source, line)
                continue
            if not line.strip():
                rows.blank(f.unit, row, source)
                continue
            text, repaired, invalid = decode(line)
            if invalid:
                rows.reject("invalid_utf8", f.unit, row, source, text, utf8_repaired=True)
                continue
            try:
                rec = json.loads(text)
            except ValueError:
                rec = None
            if not isinstance(rec, dict):
                rows.reject("malformed_record", f.unit, row, source, text, utf8_repaired=repaired)
                continue
            rows.record(rec, f.unit, row, source, text, repaired)
        rows.unit_end(f.unit, row + 1, f.relpath, skip)


def _read_json_array(f: CorpusFile, chunks: Iterator[bytes], rows: RowBuilder, skip: _Skip) -> Iterator[None]:
    """A `.json` file holding one JSON array: each element is a record (source `path:[index]`).

    Elements are decoded one at a time from a sliding buffer (the file is never held whole). An element
    that is not an object is `malformed_record`; one over ``max_line_bytes`` is `too_long`. After an
    element that cannot be decoded (broken JSON, or too long) the array cannot be delimited any more:
    that element is rejected and the rest of the file is not read (the reject's `raw` says so).
    """
    decoder = json.JSONDecoder()
    text_decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    buf = text_decoder.decode(next(chunks, b"")).lstrip("\ufeff \t\r\n")[1:]  # past the `[`
    pos, index, done = 0, 0, False
    while True:
        while True:  # skip separators, make sure an element (or the end) is in the buffer
            while pos < len(buf) and buf[pos] in " \t\r\n,":
                pos += 1
            if pos < len(buf) or done:
                break
            more = next(chunks, None)
            done = more is None
            buf, pos = buf[pos:] + text_decoder.decode(more or b"", final=done), 0
        if pos >= len(buf) or buf[pos] == "]":
            break
        source = f"{f.relpath}:[{index}]"
        try:
            value, end = decoder.raw_decode(buf, pos)
            complete = end < len(buf) or done  # a number at the buffer's end may go on in the next chunk
        except ValueError:
            value, end, complete = None, -1, False
        if not complete and not done and len(buf) - pos <= rows.spec.max_line_bytes:
            more = next(chunks, None)
            done = more is None
            buf, pos = buf[pos:] + text_decoder.decode(more or b"", final=done), 0
            continue
        yield None
        if end < 0:  # undecodable: the rest of the array cannot be delimited
            reason = "too_long" if len(buf) - pos > rows.spec.max_line_bytes else "malformed_record"
            if index not in skip:
                rows.reject(
                    reason, f.unit, index, source, f"{buf[pos : pos + 200]} [rest of the file not read]"
                )
            index += 1
            break
        if index not in skip:
            if isinstance(value, dict):
                rows.record(value, f.unit, index, source, buf[pos:end], "\ufffd" in buf[pos:end])
            else:
                rows.reject("malformed_record", f.unit, index, source, buf[pos:end])
        index += 1
        pos = end
    rows.unit_end(f.unit, index, f.relpath, skip)


def _read_csv(f: CorpusFile, rows: RowBuilder, skip: _Skip) -> Iterator[None]:
    spec = rows.spec
    delimiter = (
        "\t" if f.relpath.lower().endswith(".tsv") and spec.csv_delimiter == "," else spec.csv_delimiter
    )
    max_bytes = 4 * spec.reject_text_chars + 4096
    with f.fs.open_input_stream(f.path) as stream:
        lines = _lines_numbered(_chunks(stream), spec.max_line_bytes)
        pending: list[tuple[int, bytes]] = []

        def next_line() -> tuple[int, bytes, bool] | None:
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
            number, line, too_long = first
            source = f"{f.relpath}:{number}"
            yield None
            if too_long:
                if row not in skip:
                    rows.reject("too_long", f.unit, row, source, line)
                continue
            if not line.strip():
                if row not in skip:
                    rows.blank(f.unit, row, source)
                continue
            # a quoted field may span lines: join physical lines while the quotes are unbalanced
            taken = [first]
            quotes = line.count(b'"')
            size = len(line)
            while quotes % 2 and len(taken) < MAX_RECORD_LINES and size <= max_bytes:
                more = next_line()
                if more is None or more[2]:
                    if more is not None:
                        pending.insert(0, more)
                    break
                taken.append(more)
                quotes += more[1].count(b'"')
                size += len(more[1]) + 1
            if quotes % 2:  # unterminated: reject the first line, resync on the next one
                pending[:0] = taken[1:]
                if row not in skip:
                    rows.reject("malformed_record", f.unit, row, source, line)
                continue
            if row in skip:
                continue
            record_bytes = b"\n".join(part for _, part, _ in taken)
            text, repaired, invalid = decode(record_bytes)
            if invalid:
                rows.reject("invalid_utf8", f.unit, row, source, text, utf8_repaired=True)
                continue
            try:
                parsed = list(csv.reader([text], delimiter=delimiter, strict=True))
            except csv.Error:
                parsed = []
            if len(parsed) != 1 or (names is not None and len(parsed[0]) != len(names)):
                rows.reject("malformed_record", f.unit, row, source, text, utf8_repaired=repaired)
                continue
            keys = names if names is not None else [str(i) for i in range(len(parsed[0]))]
            rows.record(dict(zip(keys, parsed[0], strict=True)), f.unit, row, source, text, repaired)
        rows.unit_end(f.unit, row + 1, f.relpath, skip)


def _read_parquet(f: CorpusFile, rows: RowBuilder, skip: _Skip) -> Iterator[None]:
    spec = rows.spec
    wanted = [*spec.text_fields, spec.id_field or "id", spec.label_field or "label", *spec.keep_fields]
    with f.fs.open_input_file(f.path) as handle:
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
                rows.record(rec, f.unit, row, f"{f.relpath}:{row + 1}", rec, False)
    rows.unit_end(f.unit, offset, f.relpath, skip)


def _read_folder_file(f: CorpusFile, rows: RowBuilder, skip: _Skip) -> Iterator[None]:
    """One article file of a folder corpus: record 0 of its own unit."""
    yield None
    if 0 not in skip:
        limit = 4 * rows.spec.reject_text_chars + 4
        with f.fs.open_input_stream(f.path) as stream:
            data = stream.read(limit + 1)
        text, repaired, invalid = decode(data)
        if invalid:
            rows.reject("invalid_utf8", f.unit, 0, f.relpath, text, f.relpath, utf8_repaired=True)
        elif len(data) > limit:
            rows.reject("too_long", f.unit, 0, f.relpath, text, f.relpath, utf8_repaired=repaired)
        else:
            title, _, body = text.strip().partition("\n")
            rec = {"id": f.relpath, "label": f.label, "text": text, "title": title, "body": body}
            rows.record(rec, f.unit, 0, f.relpath, text, repaired)
    rows.unit_end(f.unit, 1, f.relpath, skip)


_READERS = {"jsonl": _read_jsonl, "csv": _read_csv, "parquet": _read_parquet, "folders": _read_folder_file}


def _read_group(
    spec: IngestSpec, group: list[_Piece], skips: dict[str, list[tuple[int, int]]], unit_ends: bool
) -> Iterator[pa.Table]:
    """Read task body: stream the pieces, yield blocks of at most rows_per_block rows."""
    rows = RowBuilder(spec, unit_ends=unit_ends)
    for piece in group:
        for f in piece.files:
            rows.file_index = f.index
            for _ in _READERS[piece.format](f, rows, _Skip(skips.get(f.unit))):
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
