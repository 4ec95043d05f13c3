"""Corpus ingestion: any corpus (JSONL, CSV/TSV, Parquet, folder-per-class) → a streaming Ray Dataset.

The driver only lists files (``pyarrow.fs``: local paths, file:// s3:// gs:// URIs, directories
recursively, globs matched with fnmatch on the listing); read tasks open them and stream them line by
line (row group by row group for Parquet), emitting blocks of at most ``spec.rows_per_block`` rows.
Every record becomes exactly one row of :data:`ROW_COLUMNS` (+ ``spec.keep_fields``): ok rows
(``reason`` null), rejects (``reason`` in :data:`REJECT_REASONS`, ``raw`` snippet) and blank lines
(``reason == "blank_line"``, not counted as rows read) travel together, so a job is one streaming pass.

Rules:

- ``id``: ``spec.id_field`` (missing → ``missing_field``), else the record's ``id``, else ``source``
  (``<relative-path>:<line>`` for JSONL/CSV, ``<relative-path>:<row>`` for Parquet, the relative
  path for folder files). Numbers become strings.
- ``text``: ``spec.text_fields``, each stripped, empty ones skipped, joined with ``spec.text_separator``.
  A missing field → ``missing_field``; null counts as empty; numbers/lists/dicts/bools →
  ``not_a_string``; nothing left → ``empty_text``. Longer than ``spec.max_text_chars`` → truncated
  (``truncated=True``, still ok); longer than ``spec.reject_text_chars`` → ``too_long``.
- ``label``: ``spec.label_field`` (missing → ``missing_field``; null/empty → null) else the record's
  ``label``; numbers become strings, lists etc. → ``not_a_string``.
- Invalid UTF-8: a record (line, or folder file) is decoded with ``errors="replace"`` and kept with
  ``utf8_repaired=True``, unless more than 10% of its characters are U+FFFD replacement characters:
  then it is rejected as ``invalid_utf8``.
- JSONL: each line is parsed on its own; not JSON or not an object → ``malformed_record``.
- CSV: physical lines are joined while the record has an odd number of ``"`` (a quoted field spanning
  lines), up to 50 lines; still unterminated → ``malformed_record`` for its first line and reading
  resumes at the next line. A wrong field count → ``malformed_record``. CRLF and a UTF-8 BOM are fine;
  ``.tsv`` files use a tab unless ``spec.csv_delimiter`` is set to something other than ``,``.
- Folders: ``root/<label>/.../<file>`` → one row per file, record ``{"id": relpath, "label": <label>,
  "text": whole content, "title": first line, "body": the rest}``; files directly under the root and
  hidden files are listed in ``CorpusInfo.ignored_files`` (and the summary), never silently dropped.
- Duplicate ids (ok rows only): the first registered in an :class:`IdRegistry` actor is kept, later
  ones are rejected as ``duplicate_id``. Registration is keyed by ``(_unit, _row)``, so task retries
  are idempotent.

Bookkeeping columns: ``_unit`` (input unit key; one per file, one per class folder for folders) and
``_row`` (0-based record index within the unit, counting every record incl. rejects and blank lines).
"""

from __future__ import annotations

import bisect
import csv
import fnmatch
import functools
import hashlib
import html
import json
import logging
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from bm_ray import sink
from bm_ray.runtime import init_ray
from bm_ray.specs import IngestSpec

logger = logging.getLogger(__name__)

REJECT_REASONS = (
    "empty_text",
    "not_a_string",
    "missing_field",
    "malformed_record",
    "invalid_utf8",
    "too_long",
    "duplicate_id",
)
"""Fixed vocabulary of `reason` for rejected rows (blank lines carry ``"blank_line"``, not a reject)."""

BLANK_LINE = sink.BLANK_LINE

ROW_COLUMNS = (
    "id",
    "text",
    "label",
    "source",
    "reason",
    "raw",
    "truncated",
    "utf8_repaired",
    "_unit",
    "_row",
)
"""Columns of every emitted row, followed by ``spec.keep_fields`` (strings)."""

OK_COLUMNS = ("id", "text", "label", "source", "truncated", "utf8_repaired")
"""Columns of ``output/ok/`` written by :func:`ingest` (+ keep_fields)."""

RAW_SNIPPET_CHARS = 300
MAX_INVALID_FRACTION = 0.10
MAX_RECORD_LINES = 50
IGNORED_FILES_LISTED = 100

EXTENSIONS = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
}
_GLOB_CHARS = re.compile(r"[*?\[]")
_CHUNK_BYTES = 1 << 20


def row_schema(keep_fields: Iterable[str] = ()) -> pa.Schema:
    """Arrow schema of the rows :func:`read_corpus` emits."""
    types = {"truncated": pa.bool_(), "utf8_repaired": pa.bool_(), "_row": pa.int64()}
    fields = [pa.field(name, types.get(name, pa.string())) for name in ROW_COLUMNS]
    fields += [pa.field(name, pa.string()) for name in keep_fields if name not in ROW_COLUMNS]
    return pa.schema(fields)


# --------------------------------------------------------------------------------------------- cleaning

_AMP_LESS_ENTITY = re.compile(r"(?:\s|^)(#\d{1,6};|#x[0-9a-fA-F]{1,6};|(?:quot|amp|lt|gt|apos|nbsp);)")
_ZERO_WIDTH = re.compile("[\u200b\u200c\u200d\u2060\ufeff]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_LONE_BACKSLASH = re.compile(r"\\(?!\S*\\)")


def clean_text(s: str) -> str:
    """Repair scraped-news artefacts (as in AG News); used when ``spec.clean_text`` is on.

    In order:
    1. ``\\$`` → ``$``;
    2. entities whose ``&`` was replaced by a space (AG News), at the start or after whitespace:
       ``#<digits>;`` / ``#x<hex>;`` (``#39;`` → ``'``, ``#36;`` → ``$``), ``quot;`` ``amp;``
       ``lt;`` ``gt;`` ``apos;`` ``nbsp;``; the one whitespace character before the entity stood
       for the ``&`` and goes with it (``St. #39;s`` → ``St.'s``, ``A  amp; B`` → ``A & B``);
    3. ``html.unescape`` (real ``&...;`` entities, applied twice for double-escaped ones);
    4. remaining backslashes → space;
    5. control characters other than ``\\n`` and ``\\t``, and zero-width characters (U+200B-U+200D,
       U+2060, U+FEFF), removed;
    6. runs of spaces/tabs collapsed to one space, runs of blank lines to one newline, ends stripped.
    """
    s = s.replace("\\$", "$")
    s = _AMP_LESS_ENTITY.sub(lambda m: "&" + m.group(1), s)
    s = html.unescape(html.unescape(s))
    s = s.replace("\\", " ")
    s = _ZERO_WIDTH.sub("", s)
    s = _CONTROL.sub("", s)
    s = s.replace("\xa0", " ")
    s = re.sub(r"[ \t]+", " ", s)
    s = re.sub(r" ?\n[\s]*", "\n", s)
    return s.strip()


# ---------------------------------------------------------------------------------------------- listing


@dataclass(frozen=True)
class CorpusFile:
    """One listed input file (its contents are never opened by the driver)."""

    path: str
    relpath: str
    size: int
    format: str
    root: str
    label: str | None = None
    fs: Any = field(default=None, compare=False, repr=False)


@dataclass
class CorpusInfo:
    """What :func:`read_corpus` found: files, format, ignored (non-article) files, the id registry."""

    inputs: list[str]
    format: str
    files: list[CorpusFile]
    ignored_files: list[str] = field(default_factory=list)
    registry: Any = None

    @property
    def total_bytes(self) -> int:
        """Sum of the input file sizes."""
        return sum(f.size for f in self.files)


def infer_format(path: str) -> str:
    """Corpus format from a file name's extension (`.jsonl` `.json` `.ndjson` `.csv` `.tsv` `.parquet`).

    Raises ValueError naming the path (and suggesting ``--format``) for an unknown extension.
    A directory of class folders is recognised by :func:`list_corpus`, not here.
    """
    name = path.rstrip("/").rsplit("/", 1)[-1].lower()
    for ext, fmt in EXTENSIONS.items():
        if name.endswith(ext):
            return fmt
    raise ValueError(
        f"{path}: cannot tell the corpus format from the extension; "
        "pass --format (jsonl, csv, parquet, folders)"
    )


def _is_hidden(relpath: str) -> bool:
    return any(part.startswith((".", "_")) for part in relpath.split("/"))


def _known_format(path: str) -> str | None:
    try:
        return infer_format(path)
    except ValueError:
        return None


def _walk(fs: pafs.FileSystem, base: str) -> list[tuple[str, str, int]]:
    """(path, relpath, size) of every file under `base`, sorted by relpath."""
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    prefix = base.rstrip("/") + "/"
    out = [
        (i.path, i.path[len(prefix) :] if i.path.startswith(prefix) else i.base_name, i.size or 0)
        for i in infos
        if i.type == pafs.FileType.File
    ]
    return sorted(out, key=lambda t: t[1])


def _list_one(uri: str, fmt: str | None) -> tuple[str, list[CorpusFile], list[str]]:
    """Expand one input (file, directory, glob) into files; returns (format, files, ignored relpaths)."""
    glob = None
    if _GLOB_CHARS.search(uri):
        scheme, sep, rest = uri.rpartition("://")
        parts = (rest if sep else uri).split("/")
        cut = next(i for i, part in enumerate(parts) if _GLOB_CHARS.search(part))
        base_uri = (scheme + sep if sep else "") + (
            "/".join(parts[:cut]) or ("/" if uri.startswith("/") else ".")
        )
        glob = "/".join(parts[cut:])
        fs, base = sink.resolve_uri(base_uri)
    else:
        fs, base = sink.resolve_uri(uri)
    info = fs.get_file_info(base)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"input not found: {uri}")
    if info.type == pafs.FileType.File and glob is None:
        fmt = fmt or infer_format(uri)
        if fmt == "folders":
            raise ValueError(f"{uri}: format folders needs a directory of class folders")
        return fmt, [CorpusFile(info.path, info.base_name, info.size or 0, fmt, uri, fs=fs)], []
    listing = _walk(fs, base)
    if glob is not None:
        listing = [t for t in listing if fnmatch.fnmatchcase(t[1], glob)]
        if not listing:
            raise FileNotFoundError(f"input {uri}: the pattern matches no file")
    ignored = [rel for _, rel, _ in listing if _is_hidden(rel)]
    listing = [t for t in listing if not _is_hidden(t[1])]
    if fmt is None:
        top_files = [rel for _, rel, _ in listing if "/" not in rel]
        has_dirs = any("/" in rel for _, rel, _ in listing)
        if glob is None and has_dirs and not any(_known_format(rel) for rel in top_files):
            fmt = "folders"
        else:
            found = {f for f in (_known_format(rel) for _, rel, _ in listing) if f}
            if len(found) != 1:
                what = (
                    f"mixed formats ({', '.join(sorted(found))})"
                    if found
                    else "no file with a known extension"
                )
                raise ValueError(f"{uri}: {what}; pass --format (jsonl, csv, parquet, folders)")
            fmt = found.pop()
            ignored += [rel for _, rel, _ in listing if _known_format(rel) != fmt]
            listing = [t for t in listing if _known_format(t[1]) == fmt]
    if fmt == "folders":
        ignored += [rel for _, rel, _ in listing if "/" not in rel]
        files = [
            CorpusFile(p, rel, size, fmt, uri, rel.split("/", 1)[0], fs)
            for p, rel, size in listing
            if "/" in rel
        ]
    else:
        files = [CorpusFile(p, rel, size, fmt, uri, fs=fs) for p, rel, size in listing]
    return fmt, files, sorted(ignored)


def list_corpus(spec: IngestSpec) -> CorpusInfo:
    """List (never open) the files of every input of `spec` and settle the format."""
    files: list[CorpusFile] = []
    ignored: list[str] = []
    formats = set()
    for uri in spec.input:
        fmt, found, skipped = _list_one(uri, spec.format)
        formats.add(fmt)
        files += found
        ignored += [f"{uri.rstrip('/')}/{rel}" if len(spec.input) > 1 else rel for rel in skipped]
    if len(formats) > 1:
        raise ValueError(
            f"inputs have mixed formats ({', '.join(sorted(formats))}); pass --format or ingest apart"
        )
    if not files:
        raise FileNotFoundError(f"no corpus files found in {', '.join(spec.input)}")
    return CorpusInfo(list(spec.input), formats.pop(), files, ignored)


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
            pieces.append(_Piece(sink.unit_key(f.relpath, f.path), f.format, (f,), 0, f.size))
        return pieces
    by_folder: dict[tuple[str, str], list[CorpusFile]] = {}
    for f in info.files:
        by_folder.setdefault((f.root, f.label or ""), []).append(f)
    for (root, label), folder_files in by_folder.items():
        unit = sink.unit_key(label, f"{root.rstrip('/')}/{label}")
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


# ------------------------------------------------------------------------------------------- normalise


def _decode(raw: bytes) -> tuple[str, bool, bool]:
    """(text, repaired, invalid): invalid when > 10% of the characters had to be replaced."""
    try:
        return raw.decode("utf-8"), False, False
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace")
        return text, True, text.count("\ufffd") > MAX_INVALID_FRACTION * max(1, len(text))


def _scalar(value: Any) -> str | None:
    """String form of a str/int/float id or label; None for anything else (bools, lists, dicts)."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return None


def _keep(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return json.dumps(value, default=str, ensure_ascii=False)


def _snippet(raw: Any) -> str:
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="replace")
    elif not isinstance(raw, str):
        raw = json.dumps(raw, default=str, ensure_ascii=False)
    return raw[:RAW_SNIPPET_CHARS]


class _Rows:
    """Turns records into normalised rows and packs them into blocks of ≤ rows_per_block rows."""

    def __init__(self, spec: IngestSpec) -> None:
        self.spec = spec
        self.schema = row_schema(spec.keep_fields)
        self.keep = [k for k in spec.keep_fields if k not in ROW_COLUMNS]
        self.columns: dict[str, list[Any]] = {name: [] for name in self.schema.names}

    def __len__(self) -> int:
        return len(self.columns["_row"])

    def flush(self) -> pa.Table:
        """The rows gathered so far as a table; starts a new one."""
        table = pa.table(self.columns, schema=self.schema)
        self.columns = {name: [] for name in self.schema.names}
        return table

    def _add(self, **row: Any) -> None:
        for name, values in self.columns.items():
            values.append(row.get(name))

    def blank(self, unit: str, row: int, source: str) -> None:
        """A blank line: carried for accounting, never a row read."""
        self._add(
            id=source,
            source=source,
            reason=BLANK_LINE,
            truncated=False,
            utf8_repaired=False,
            _unit=unit,
            _row=row,
        )

    def reject(
        self, reason: str, unit: str, row: int, source: str, raw: Any, id_: str | None = None, **kw: Any
    ) -> None:
        """A rejected record."""
        self._add(
            id=id_ or source,
            source=source,
            reason=reason,
            raw=_snippet(raw),
            truncated=False,
            utf8_repaired=kw.get("utf8_repaired", False),
            _unit=unit,
            _row=row,
            **{k: kw.get(k) for k in self.keep},
        )

    def record(self, rec: dict[str, Any], unit: str, row: int, source: str, raw: Any, repaired: bool) -> None:
        """Validate one parsed record and add it as an ok row or a reject."""
        spec = self.spec
        kept = {k: _keep(rec.get(k)) for k in self.keep}
        common = {"utf8_repaired": repaired, **kept}
        # id
        id_value: str | None = source
        id_field = spec.id_field or ("id" if rec.get("id") not in (None, "") else None)
        if id_field is not None:
            value = rec.get(id_field)
            if value is None or value == "":
                return self.reject("missing_field", unit, row, source, raw, **common)
            id_value = _scalar(value)
            if not id_value:
                return self.reject("not_a_string", unit, row, source, raw, **common)
        # text
        parts = []
        for name in spec.text_fields:
            if name not in rec:
                return self.reject("missing_field", unit, row, source, raw, id_value, **common)
            value = rec[name]
            if isinstance(value, bytes):
                value, fixed, _ = _decode(value)
                repaired = repaired or fixed
            if value is None:
                continue
            if not isinstance(value, str):
                return self.reject("not_a_string", unit, row, source, raw, id_value, **common)
            if value.strip():
                parts.append(value.strip())
        text = spec.text_separator.join(parts)
        if spec.clean_text:
            text = clean_text(text)
        if not text.strip():
            return self.reject("empty_text", unit, row, source, raw, id_value, **common)
        if len(text) > spec.reject_text_chars:
            return self.reject("too_long", unit, row, source, raw, id_value, **common)
        truncated = len(text) > spec.max_text_chars
        if truncated:
            text = text[: spec.max_text_chars]
        # label
        label = None
        label_field = spec.label_field or ("label" if "label" in rec else None)
        if label_field is not None:
            if label_field not in rec:
                return self.reject("missing_field", unit, row, source, raw, id_value, **common)
            value = rec[label_field]
            if value is not None and value != "":
                label = _scalar(value)
                if label is None:
                    return self.reject("not_a_string", unit, row, source, raw, id_value, **common)
                label = label or None
        self._add(
            id=id_value,
            text=text,
            label=label,
            source=source,
            truncated=truncated,
            utf8_repaired=repaired,
            _unit=unit,
            _row=row,
            **kept,
        )
        return None


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


def _read_jsonl(piece: _Piece, rows: _Rows, skip: _Skip, fs: pafs.FileSystem) -> Iterator[None]:
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
            text, repaired, invalid = _decode(line)
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


def _read_csv(piece: _Piece, rows: _Rows, skip: _Skip, fs: pafs.FileSystem) -> Iterator[None]:
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
                names = next(csv.reader([_decode(header[1])[0]], delimiter=delimiter), [])
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
            text, repaired, invalid = _decode(record_bytes)
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


def _read_parquet(piece: _Piece, rows: _Rows, skip: _Skip, fs: pafs.FileSystem) -> Iterator[None]:
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


def _read_folders(piece: _Piece, rows: _Rows, skip: _Skip, fs: pafs.FileSystem) -> Iterator[None]:
    limit = 4 * rows.spec.reject_text_chars + 4
    for i, f in enumerate(piece.files):
        row = piece.first_row + i
        yield None
        if row in skip:
            continue
        with fs.open_input_stream(f.path) as stream:
            data = stream.read(limit + 1)
        text, repaired, invalid = _decode(data)
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
    rows = _Rows(spec)
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


# ------------------------------------------------------------------------------------------ duplicates


def _hash64(value: str) -> int:
    return int.from_bytes(hashlib.blake2b(value.encode("utf-8"), digest_size=8).digest(), "little")


_SEEDED = 0  # "source" of ids committed by an earlier run: any live row with such an id is a duplicate


@ray.remote(num_cpus=0)
class IdRegistry:
    """Per-job map hash64(id) → hash64(source) deciding which row keeps a duplicated id (the first one)."""

    def __init__(self) -> None:
        self._seen: dict[int, int] = {}

    def seed(self, ids: list[str]) -> int:
        """Register ids already committed (resume): any row carrying one of them is a duplicate."""
        for id_ in ids:
            self._seen[_hash64(id_)] = _SEEDED
        return len(self._seen)

    def check(self, ids: list[str], sources: list[str]) -> list[bool]:
        """Register ids; True where the id was already registered from a DIFFERENT source (a duplicate)."""
        out = []
        for id_, source in zip(ids, sources, strict=True):
            key, src = _hash64(id_), _hash64(source)
            seen = self._seen.setdefault(key, src)
            out.append(seen != src)
        return out

    def size(self) -> int:
        """Number of registered ids."""
        return len(self._seen)


def create_id_registry() -> Any:
    """Start a named (not detached) :class:`IdRegistry` actor for one job; returns its handle."""
    return IdRegistry.options(name=f"bm_ray_id_registry_{uuid.uuid4().hex[:12]}").remote()


def mark_duplicates(batch: pa.Table, registry: Any) -> pa.Table:
    """Reject ok rows whose id an earlier row (another `_unit`/`_row`) registered first (`duplicate_id`)."""
    reasons = batch.column("reason").to_pylist()
    ok = [i for i, r in enumerate(reasons) if r is None]
    if not ok:
        return batch
    ids = batch.column("id").to_pylist()
    units = batch.column("_unit").to_pylist()
    row_numbers = batch.column("_row").to_pylist()
    dup = ray.get(registry.check.remote([ids[i] for i in ok], [f"{units[i]}:{row_numbers[i]}" for i in ok]))
    if not any(dup):
        return batch
    texts = batch.column("text").to_pylist()
    raws = batch.column("raw").to_pylist()
    for i, is_dup in zip(ok, dup, strict=True):
        if is_dup:
            reasons[i], raws[i], texts[i] = "duplicate_id", _snippet(texts[i]), None
    for name, values in (("reason", reasons), ("raw", raws), ("text", texts)):
        batch = batch.set_column(batch.schema.get_field_index(name), name, pa.array(values, pa.string()))
    return batch


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
    init_ray()
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


def _ok_table(columns: list[str], rows: pa.Table) -> pa.Table:
    return rows.select(columns)


def _commit(batch: pa.Table, processor: sink.CommitProcessor) -> pa.Table:
    return processor(batch)


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

    Prepares `output` (see :func:`bm_ray.sink.prepare_output`; `job` guards resuming into another job's
    output), skips the rows already committed, seeds the duplicate-id registry with the committed ids,
    reads the corpus, applies `commit` (dataset → dataset of per-run count rows, at least
    :data:`bm_ray.sink.PROGRESS_SCHEMA`, e.g. a `map_batches` over a :class:`~bm_ray.sink.CommitProcessor`)
    and drains it, logging rows committed and rows/s. `read_args` are the read tasks' Ray remote args
    (see :func:`read_corpus`). Returns the summary extras (format, inputs, files,
    ignored_files, rows_resumed) and the totals of every integer column of the count rows of this run.
    """
    started = time.monotonic()
    init_ray()
    sink.prepare_output(output, ok_dir=ok_dir, overwrite=overwrite, job=job)
    skip = sink.committed_rows(output)
    registry = create_id_registry()
    totals: Counter[str] = Counter()
    try:
        ray.get([registry.seed.remote(ids) for ids in sink.iter_committed_ids(output, ok_dir=ok_dir)])
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


def ingest(
    spec: IngestSpec, output: str, *, overwrite: bool = False, near_duplicates: bool = False
) -> dict[str, Any]:
    """`bm-ray ingest`: validate a corpus into ``output/ok/`` + ``output/rejects/`` + ``output/summary.json``.

    Resumes into an existing output of the same spec (rows already committed are not read again),
    unless `overwrite`, which starts afresh. With `near_duplicates`, the committed ok rows are then
    clustered (see :mod:`bm_ray.neardup`): ``output/near_duplicates/`` gets (id, cluster) for every
    ok row and the summary ``near_duplicates`` counts. Returns the summary (see :func:`bm_ray.sink.summarize`).
    """
    started = time.monotonic()
    job = {"kind": "ingest", **spec.model_dump(mode="json", exclude={"rows_per_block"})}
    ok_columns = [*OK_COLUMNS, *(k for k in spec.keep_fields if k not in ROW_COLUMNS)]
    processor = sink.CommitProcessor(output, functools.partial(_ok_table, ok_columns))

    def commit(ds: ray.data.Dataset) -> ray.data.Dataset:
        return ds.map_batches(
            _commit,
            fn_kwargs={"processor": processor},
            batch_format="pyarrow",
            batch_size=None,
            zero_copy_batch=True,
        )

    extra, _ = commit_corpus(spec, output, commit, job=job, overwrite=overwrite)
    if near_duplicates:
        extra["near_duplicates"] = write_near_duplicates(output)
    extra["elapsed_s"] = round(time.monotonic() - started, 3)
    return sink.summarize(output, extra)


def write_near_duplicates(output: str) -> dict[str, Any]:
    """Cluster the ok rows committed under `output` and write ``near_duplicates/`` (id, cluster); counts."""
    from bm_ray.neardup import assign_clusters, find_clusters

    rows = ray.data.read_parquet(f"{output.rstrip('/')}/ok", file_extensions=["parquet"]).select_columns(
        ["id", "text"]
    )
    found = find_clusters(rows, key_column="id")
    clusters = rows.select_columns(["id"]).map_batches(
        assign_clusters,
        fn_kwargs={"cluster_of": found.cluster_of, "key_column": "id"},
        batch_format="pyarrow",
    )
    target = f"{output.rstrip('/')}/near_duplicates"
    fs, path = pafs.FileSystem.from_uri(target) if "://" in target else (pafs.LocalFileSystem(), target)
    fs.delete_dir_contents(path, missing_dir_ok=True)  # a rerun replaces the previous clustering
    clusters.write_parquet(target)
    return found.counts()
