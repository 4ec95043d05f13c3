"""Listing (the driver never opens a file): inputs → files with size and format, and the input manifest.

Default ids and sources name a file by its path relative to the common root of ALL inputs (the
deepest directory holding every input file; a single file or directory input keeps its own relative
names): `--input day1/news.jsonl,day2/news.jsonl` gives `day1/news.jsonl:1` and `day2/news.jsonl:1`,
the same on every rerun with the same inputs.

Inputs are files, directories (recursively), globs (fnmatch on the listing) or URIs of any ``pyarrow.fs``
filesystem. Folder corpora: ``root/<label>/.../<file>``; files directly under the root and hidden files
are listed in ``CorpusInfo.ignored_files``, never silently dropped.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pyarrow.fs as pafs

from bm_ray.specs import IngestSpec
from bm_ray.storage import redact_uri, resolve_uri

EXTENSIONS = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
}
_GLOB_CHARS = re.compile(r"[*?\[]")


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
    mtime: datetime | None = None
    base: str = ""
    """Directory the input names (a file input: its directory); ids are relative to the common one."""
    index: int = -1
    """Position in the listing of all inputs (the order "first row with an id wins" follows)."""

    @functools.cached_property
    def unit(self) -> str:
        """Commit unit of the file's rows (one per file, so row positions never depend on other files)."""
        return unit_key(self.relpath, self.path)


@dataclass
class CorpusInfo:
    """What :func:`read_corpus` found: files, format, ignored (non-article) files, the dedupe index."""

    inputs: list[str]
    format: str
    files: list[CorpusFile]
    ignored_files: list[str] = field(default_factory=list)
    dedupe: Any = None
    """The :class:`~bm_ray.corpus.dedupe.DedupeIndex` of a deduplicating read: its shard actors live
    until :meth:`close` (or the end of a ``with info:`` block), after the dataset has been consumed."""

    def close(self) -> None:
        """End the dedupe shard actors of this read, if any (idempotent)."""
        if self.dedupe is not None:
            self.dedupe.close()
            self.dedupe = None

    def __enter__(self) -> CorpusInfo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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


def _walk(fs: pafs.FileSystem, base: str) -> list[tuple[str, str, int, datetime | None]]:
    """(path, relpath, size, mtime) of every file under `base`, sorted by relpath."""
    prefix = base.rstrip("/") + "/"
    try:
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
        out = [
            (
                i.path,
                i.path[len(prefix) :] if i.path.startswith(prefix) else i.base_name,
                i.size or 0,
                i.mtime,
            )
            for i in infos
            if i.type == pafs.FileType.File
        ]
    except UnicodeDecodeError as err:  # pyarrow gives paths as UTF-8 and cannot read one that is not
        name = bytes(err.object).decode("utf-8", errors="replace") if isinstance(err.object, bytes) else "?"
        raise ValueError(
            f"{base}: a file or folder name under it is not valid UTF-8 ({name!r}, undecodable bytes as "
            "U+FFFD), so it cannot be listed; rename it (e.g. with convmv) or move it out of the input"
        ) from None
    return sorted(out, key=lambda t: t[1])


def _list_one(uri: str, fmt: str | None) -> tuple[str, list[CorpusFile], list[str]]:
    """Expand one input (file, directory, glob) into files; returns (format, files, ignored relpaths)."""
    glob = None
    # A URI's `?` starts its options (endpoint_override=...): they stay with the base, not the glob.
    located, qmark, options = uri.partition("?") if "://" in uri else (uri, "", "")
    shown = redact_uri(uri)  # messages never echo credentials
    if _GLOB_CHARS.search(located):
        scheme, sep, rest = located.rpartition("://")
        parts = (rest if sep else located).split("/")
        cut = next(i for i, part in enumerate(parts) if _GLOB_CHARS.search(part))
        base_uri = (scheme + sep if sep else "") + (
            "/".join(parts[:cut]) or ("/" if uri.startswith("/") else ".")
        )
        glob = "/".join(parts[cut:])
        fs, base = resolve_uri(base_uri + qmark + options)
    else:
        fs, base = resolve_uri(uri)
    info = fs.get_file_info(base)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"input not found: {shown}")
    if info.type == pafs.FileType.File and glob is None:
        fmt = fmt or infer_format(redact_uri(located))
        if fmt == "folders":
            raise ValueError(f"{shown}: format folders needs a directory of class folders")
        parent = info.path.rsplit("/", 1)[0] if "/" in info.path else ""
        found = CorpusFile(info.path, info.base_name, info.size or 0, fmt, uri, None, fs, info.mtime, parent)
        return fmt, [found], []
    listing = _walk(fs, base)
    if glob is not None:
        listing = [t for t in listing if fnmatch.fnmatchcase(t[1], glob)]
        if not listing:
            raise FileNotFoundError(f"input {shown}: the pattern matches no file")
    ignored = [t[1] for t in listing if _is_hidden(t[1])]
    listing = [t for t in listing if not _is_hidden(t[1])]
    if fmt is None:
        top_files = [t[1] for t in listing if "/" not in t[1]]
        has_dirs = any("/" in t[1] for t in listing)
        if glob is None and has_dirs and not any(_known_format(rel) for rel in top_files):
            fmt = "folders"
        else:
            found = {f for f in (_known_format(t[1]) for t in listing) if f}
            if len(found) != 1:
                what = (
                    f"mixed formats ({', '.join(sorted(found))})"
                    if found
                    else "no file with a known extension"
                )
                raise ValueError(f"{shown}: {what}; pass --format (jsonl, csv, parquet, folders)")
            fmt = found.pop()
            ignored += [t[1] for t in listing if _known_format(t[1]) != fmt]
            listing = [t for t in listing if _known_format(t[1]) == fmt]
    if fmt == "folders":
        ignored += [t[1] for t in listing if "/" not in t[1]]
        files = [
            CorpusFile(p, rel, size, fmt, uri, rel.split("/", 1)[0], fs, mtime, base)
            for p, rel, size, mtime in listing
            if "/" in rel
        ]
    else:
        files = [CorpusFile(p, rel, size, fmt, uri, None, fs, mtime, base) for p, rel, size, mtime in listing]
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
    root = common_root([f.base for f in files])
    files = [dataclasses.replace(f, relpath=_relative(f.path, root), index=i) for i, f in enumerate(files)]
    return CorpusInfo(list(spec.input), formats.pop(), files, ignored)


def common_root(directories: list[str]) -> str:
    """The deepest directory containing all `directories` ("" when they share none, e.g. two buckets)."""
    split = [d.rstrip("/").split("/") for d in directories]
    shared: list[str] = []
    for parts in zip(*split, strict=False):
        if any(part != parts[0] for part in parts):
            break
        shared.append(parts[0])
    return "/".join(shared)


def _relative(path: str, root: str) -> str:
    prefix = root.rstrip("/") + "/" if root else ""
    return path[len(prefix) :] if prefix and path.startswith(prefix) else path.lstrip("/")


def input_manifest(source: IngestSpec | CorpusInfo) -> list[dict[str, Any]]:
    """Each input file's path, name (as in ids), size and modification time (ISO 8601), in listing order.

    A rerun into the same output compares its manifest with the stored one (see
    :func:`bm_ray.output.commit.prepare_output`). pyarrow's filesystems expose no ETag, so object stores are
    identified by size and LastModified, like local files. Paths are filesystem paths: credentials
    given in a URI are never part of them.
    """
    info = source if isinstance(source, CorpusInfo) else list_corpus(source)
    return [
        {"path": f.path, "name": f.relpath, "size": f.size, "mtime": f.mtime.isoformat() if f.mtime else None}
        for f in info.files
    ]


def unit_key(relpath: str, full_path: str) -> str:
    """Filesystem-safe deterministic unit name: sanitized `relpath` (≤ 60 chars) + 8 hex of `full_path`."""
    safe = re.sub(r"[^A-Za-z0-9.]+", "_", relpath).strip("._")[-60:].lstrip("._") or "unit"
    digest = hashlib.blake2b(full_path.encode("utf-8"), digest_size=4).hexdigest()
    return f"{safe}_{digest}"
