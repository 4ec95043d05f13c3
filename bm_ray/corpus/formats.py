"""The per-format record readers: one listed file's bytes → records → rows of a :class:`RowBuilder`.

Pure Python and pyarrow: no Ray, so each format's parsing can be driven (and tested) on its own;
:mod:`~bm_ray.corpus.readers` runs these inside Ray Data read tasks. A reader yields once per record
(the caller flushes full blocks in between) and ends the file with ``rows.unit_end``.

- JSONL: each line is parsed on its own; not JSON, not an object or nested deeper than
  :data:`MAX_JSON_DEPTH` → ``malformed_record``.
- CSV: line breaks are ``\\n``, ``\\r\\n`` or a lone ``\\r`` (as Python's csv module and spreadsheets
  read them). Physical lines are joined while the record has an odd number of ``"`` (a quoted field
  spanning lines), up to 50 lines; still unterminated → ``malformed_record`` for its first line and
  reading resumes at the next line. A wrong field count → ``malformed_record``. A UTF-8 BOM is fine;
  ``.tsv`` files use a tab unless ``spec.csv_delimiter`` is set to something other than ``,``.
- Parquet: a file pyarrow cannot decode (a broken footer, not Parquet at all, a corrupt page) is one
  ``malformed_record`` reject naming the file and the error (at the first row not read), and reading
  goes on with the next file. A row with a value Python cannot hold (a timestamp past year 9999) is a
  ``malformed_record`` of its own. A failure of the storage under it (an S3 error that outlived the storage
  client's retries, a local read error) is not the file's fault: it raises :class:`StorageReadError`
  (the read task fails; a rerun resumes) and is never committed as a reject.
- Folders: one row per file, record ``{"id": path, "label": <label>, "text": whole content,
  "title": first line, "body": the rest}``.
"""

from __future__ import annotations

import bisect
import codecs
import csv
import io
import json
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from bm_ray.corpus.listing import CorpusFile
from bm_ray.corpus.rows import RowBuilder, decode

MAX_RECORD_LINES = 50
_CHUNK_BYTES = 1 << 20
LONG_LINE_KEPT_BYTES = 4 * 300
"""Bytes kept of a line over ``max_line_bytes`` (for its reject's snippet)."""
MAX_JSON_DEPTH = 500
"""Deepest nesting of arrays and objects a JSON record may have; deeper is ``malformed_record``. Python's
parser gives up near its recursion limit (about 1,000 levels, fewer in a deeper stack), so a cap well
under it gives a record the same outcome in every process (both de-duplication passes, a resume)."""
_PARQUET_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError)
"""What pyarrow raises for a file it cannot decode: not Parquet, a broken footer or page (the Parquet
reader's errors surface as OSError), an encoding or codec it does not support."""
_TO_PYTHON_ERRORS = (ValueError, OverflowError, pa.ArrowException)
"""What turning a decoded value into Python raises (a timestamp or date past Python's year 9999)."""


class StorageReadError(OSError):
    """Reading a corpus file's bytes from its storage failed (after the storage client's own retries).

    Not a fault of the file, so never a reject: it fails the read task (the job stops, nothing of the
    file is committed, and a rerun resumes). An OSError, as the storage's own error is.
    """


class _TrackedInput(io.RawIOBase):
    """A read-only file object over a pyarrow input file that remembers the storage's own read error.

    The Parquet reader's decode errors and the storage's I/O errors are both OSError once they leave
    pyarrow; decoding through this object (as a ``pa.PythonFile``) tells them apart without holding the
    file in memory: an error is the storage's when :attr:`error` is set, else the file's content's.
    """

    def __init__(self, handle: Any) -> None:
        super().__init__()
        self._handle = handle
        self.error: OSError | None = None

    def readable(self) -> bool:
        """Always (read-only)."""
        return True

    def seekable(self) -> bool:
        """Always (a random-access input file)."""
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move the position (no I/O on any pyarrow input file)."""
        return self._handle.seek(offset, whence)

    def tell(self) -> int:
        """The position."""
        return self._handle.tell()

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes (all the rest when negative); a storage error is remembered, then raised."""
        try:
            return self._handle.read(None if size is None or size < 0 else size)
        except OSError as err:
            self.error = err
            raise

    def readinto(self, buffer: Any) -> int:
        """Read into `buffer`; the count read."""
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class Skip:
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


def _universal_newlines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """`chunks` with every ``\\r\\n`` and lone ``\\r`` turned into ``\\n`` (a CR at a chunk's end waits for
    the next chunk, which may start with its LF), so a file with classic-Mac line ends is not one line."""
    held = b""
    for data in chunks:
        data = held + data if held else data
        held = b""
        if data.endswith(b"\r"):
            data, held = data[:-1], b"\r"
        yield data.replace(b"\r\n", b"\n").replace(b"\r", b"\n") if b"\r" in data else data
    if held:
        yield b"\n"


def _nesting(value: Any) -> int:
    """Deepest nesting of lists and dicts in a parsed JSON value (walked with a stack: no recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def _too_deep(text: str, value: Any, start: int = 0, end: int | None = None) -> bool:
    """Whether the JSON `value` parsed from ``text[start:end]`` nests deeper than :data:`MAX_JSON_DEPTH`.

    Only a text with more brackets than the cap can, so the walk runs for those alone.
    """
    brackets = text.count("[", start, end) + text.count("{", start, end)
    return brackets > MAX_JSON_DEPTH and _nesting(value) > MAX_JSON_DEPTH


def _read_jsonl(f: CorpusFile, rows: RowBuilder, skip: Skip) -> Iterator[None]:
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
            except (ValueError, RecursionError):  # RecursionError: nested too deep for Python's parser
                rec = None
            if not isinstance(rec, dict) or _too_deep(text, rec):
                rows.reject("malformed_record", f.unit, row, source, text, utf8_repaired=repaired)
                continue
            rows.record(rec, f.unit, row, source, text, repaired)
        rows.unit_end(f.unit, row + 1, f.relpath, skip)


def _read_json_array(f: CorpusFile, chunks: Iterator[bytes], rows: RowBuilder, skip: Skip) -> Iterator[None]:
    """A `.json` file holding one JSON array: each element is a record (source `path:[index]`).

    Elements are decoded one at a time from a sliding buffer (the file is never held whole). An element
    that is not an object (or nests deeper than :data:`MAX_JSON_DEPTH`) is `malformed_record`; one over
    ``max_line_bytes`` is `too_long`. After an element that cannot be decoded (broken JSON, nested too
    deep for the parser, or too long) the array cannot be delimited any more: that element is rejected
    and the rest of the file is not read (the reject's `raw` says so).
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
        too_deep = False
        try:
            value, end = decoder.raw_decode(buf, pos)
            complete = end < len(buf) or done  # a number at the buffer's end may go on in the next chunk
        except RecursionError:  # nested too deep for Python's parser: more of the file cannot help
            value, end, complete, too_deep = None, -1, True, True
        except ValueError:
            value, end, complete = None, -1, False
        if not complete and not done and len(buf) - pos <= rows.spec.max_line_bytes:
            more = next(chunks, None)
            done = more is None
            buf, pos = buf[pos:] + text_decoder.decode(more or b"", final=done), 0
            continue
        yield None
        if end < 0:  # undecodable: the rest of the array cannot be delimited
            too_long = not too_deep and len(buf) - pos > rows.spec.max_line_bytes
            reason = "too_long" if too_long else "malformed_record"
            if index not in skip:
                rows.reject(
                    reason, f.unit, index, source, f"{buf[pos : pos + 200]} [rest of the file not read]"
                )
            index += 1
            break
        if index not in skip:
            if isinstance(value, dict) and not _too_deep(buf, value, pos, end):
                rows.record(value, f.unit, index, source, buf[pos:end], "\ufffd" in buf[pos:end])
            else:
                rows.reject("malformed_record", f.unit, index, source, buf[pos:end])
        index += 1
        pos = end
    rows.unit_end(f.unit, index, f.relpath, skip)


def _read_csv(f: CorpusFile, rows: RowBuilder, skip: Skip) -> Iterator[None]:
    spec = rows.spec
    delimiter = (
        "\t" if f.relpath.lower().endswith(".tsv") and spec.csv_delimiter == "," else spec.csv_delimiter
    )
    max_bytes = 4 * spec.reject_text_chars + 4096
    # The csv module refuses a field over 128 KiB (a malformed_record for a text that should be kept,
    # truncated, or be too_long); the line caps here bound a record, so its limit is lifted to them.
    csv.field_size_limit(max(csv.field_size_limit(), max_bytes + spec.max_line_bytes + 1))
    with f.fs.open_input_stream(f.path) as stream:
        lines = _lines_numbered(_universal_newlines(_chunks(stream)), spec.max_line_bytes)
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


def _parquet_batches(handle: Any, wanted: list[str], batch_size: int) -> Iterator[pa.RecordBatch]:
    """The record batches of a Parquet file, with those of the `wanted` columns it has."""
    pfile = pq.ParquetFile(handle)
    present = set(pfile.schema_arrow.names)
    columns = list(dict.fromkeys(c for c in wanted if c in present))
    yield from pfile.iter_batches(batch_size=batch_size, columns=columns)


def _row_or_error(batch: pa.RecordBatch, i: int) -> dict[str, Any] | str:
    """Row `i` of `batch` as a record, or (a string) why its values cannot be read as Python values.

    Only for a batch whose ``to_pylist`` failed: one bad value must cost its row, not the read task.
    """
    try:
        return batch.slice(i, 1).to_pylist()[0]
    except _TO_PYTHON_ERRORS as err:
        return f"values that cannot be read as Python values ({type(err).__name__}: {err}); fix the writer or leave the column out"


def _read_parquet(f: CorpusFile, rows: RowBuilder, skip: Skip) -> Iterator[None]:
    """Parquet, batch by batch; what pyarrow cannot decode ends the file in one reject (source: the file)."""
    spec = rows.spec
    wanted = [*spec.text_fields, spec.id_field or "id", spec.label_field or "label", *spec.keep_fields]
    offset, broken = 0, None
    # Opening the file (the object's size, a HEAD on S3) is storage only: an error there raises as is.
    with f.fs.open_input_file(f.path) as handle:
        tracked = _TrackedInput(handle)
        batches = _parquet_batches(pa.PythonFile(tracked, mode="r"), wanted, spec.rows_per_block)
        while True:
            try:
                batch = next(batches, None)
            except _PARQUET_ERRORS as err:
                if tracked.error is not None:  # the storage failed, not the file: no reject, fail the task
                    raise StorageReadError(
                        f"{f.relpath}: reading it from storage failed after the storage client's retries "
                        f"({' '.join(str(tracked.error).split())}); nothing of it was rejected, rerun the "
                        "job to resume"
                    ) from tracked.error
                broken = f"{type(err).__name__}: {' '.join(str(err).split())}"  # one line
                break
            if batch is None:
                break
            first, n = offset, batch.num_rows
            offset += n
            if skip and skip.covers(first, first + n - 1):
                continue
            try:
                records: list[dict[str, Any] | str] = batch.to_pylist()
            except _TO_PYTHON_ERRORS:  # a value Python cannot hold: find its rows one by one
                records = [_row_or_error(batch, i) for i in range(n)]
            for i, rec in enumerate(records):
                row = first + i
                yield None
                if row in skip:
                    continue
                if isinstance(rec, str):
                    rows.reject("malformed_record", f.unit, row, f"{f.relpath}:{row + 1}", rec)
                    continue
                rows.record(rec, f.unit, row, f"{f.relpath}:{row + 1}", rec, False)
    if broken is not None:
        # The footer is the file's index and a page header the length of its page: past a broken one
        # no row can be delimited, so the rest of the file is one counted reject.
        yield None
        if offset not in skip:
            what = "the file" if offset == 0 else f"rows from {offset + 1} on"
            raw = f"{what} not read: not a readable Parquet file ({broken}); replace it or leave it out"
            rows.reject("malformed_record", f.unit, offset, f.relpath, raw)
        offset += 1
    rows.unit_end(f.unit, offset, f.relpath, skip)


def _read_folder_file(f: CorpusFile, rows: RowBuilder, skip: Skip) -> Iterator[None]:
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


READERS = {"jsonl": _read_jsonl, "csv": _read_csv, "parquet": _read_parquet, "folders": _read_folder_file}
"""The reader of each format (a listed file's ``format``): ``READERS[f.format](f, rows, skip)``."""
