"""URIs, filesystems and atomic writes (base layer): local paths and s3:// gs:// file:// URIs through ``pyarrow.fs``.

Local paths and any URI pyarrow's filesystems read work everywhere bm-ray takes a location. For an
S3-compatible server (MinIO, Ceph, moto, ...) set the standard `AWS_ENDPOINT_URL` variable, or give
pyarrow's `endpoint_override` option in the URI (`s3://bucket/path?endpoint_override=host:9000&scheme=http`).
Credentials may come from the environment (`AWS_ACCESS_KEY_ID`, ...) or the URI's user part
(`s3://KEY:SECRET@bucket/path`); :func:`redact_uri` strips them before a URI is written anywhere.

Atomic writes go to a hidden temporary sibling (:data:`TMP_PREFIX`) and are then moved into place: a
rename on local disks, a copy + delete on object stores (where a reader sees the old object or the
whole new one, never a part).
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

TMP_PREFIX = ".tmp-"
"""Name prefix of temporary files (debris of a killed writer when found later)."""


def resolve_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    """Filesystem and path for a local path (relative allowed) or an s3:// gs:// file:// URI."""
    if "://" not in uri:
        uri = os.path.abspath(os.path.expanduser(uri))
    return pafs.FileSystem.from_uri(uri)


def join(base: str, *parts: str) -> str:
    """`base/part/...` for filesystem paths as :func:`resolve_uri` returns them (no duplicate slashes)."""
    return "/".join([base.rstrip("/"), *parts])


def write_atomic(fs: pafs.FileSystem, path: str, write: Callable[[Any], None]) -> None:
    """Write through `write(stream)` to a temporary sibling, then move it onto `path`."""
    directory, name = path.rsplit("/", 1)
    tmp = f"{directory}/{TMP_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
    try:
        with fs.open_output_stream(tmp) as stream:
            write(stream)
        fs.move(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            fs.delete_file(tmp)
        raise


def write_json_atomic(fs: pafs.FileSystem, path: str, data: Any) -> None:
    """Write `data` as JSON to `path` atomically (temporary file + move)."""
    payload = json.dumps(data, indent=2, sort_keys=True).encode("utf-8")
    write_atomic(fs, path, lambda stream: stream.write(payload))


def write_parquet_atomic(fs: pafs.FileSystem, path: str, table: pa.Table) -> None:
    """Write `table` as Parquet to `path` atomically (temporary file + move)."""
    write_atomic(fs, path, lambda stream: pq.write_table(table, stream))


def read_json(fs: pafs.FileSystem, path: str) -> Any:
    """The JSON document at `path`."""
    with fs.open_input_stream(path) as stream:
        return json.loads(stream.read().decode("utf-8"))


def list_files(fs: pafs.FileSystem, directory: str) -> list[pafs.FileInfo]:
    """Files (not directories) directly under `directory`; empty when it does not exist."""
    selector = pafs.FileSelector(directory, allow_not_found=True, recursive=False)
    return [info for info in fs.get_file_info(selector) if info.type == pafs.FileType.File]


def exists(fs: pafs.FileSystem, path: str) -> bool:
    """Whether anything (file or directory) is at `path`."""
    return fs.get_file_info(path).type != pafs.FileType.NotFound


SECRET_QUERY_KEYS = frozenset(
    {"access_key", "secret_key", "session_token", "aws_access_key_id", "aws_secret_access_key", "token"}
)
"""URI query options that carry credentials (dropped by :func:`redact_uri`)."""


def redact_uri(uri: str) -> str:
    """`uri` without credentials: the `user:password@` part and credential query options are removed."""
    if "://" not in uri:
        return uri
    parts = urlsplit(uri)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k.lower() not in SECRET_QUERY_KEYS])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact(value: Any) -> Any:
    """A copy of a JSON-able value (spec dump, summary) with every URI string passed through :func:`redact_uri`."""
    if isinstance(value, str):
        return redact_uri(value)
    if isinstance(value, dict):
        return {key: redact(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact(item) for item in value]
    return value


def join_uri(uri: str, *parts: str) -> str:
    """`uri/part/...` for a local path or a URI; URI options (`?endpoint_override=...`) stay at the end."""
    base, sep, query = uri.partition("?")
    return "/".join([base.rstrip("/"), *parts]) + (sep + query if sep else "")


def is_remote(uri: str) -> bool:
    """True for object-store URIs that pyarrow's filesystems read (s3://, gs://, ...)."""
    return "://" in uri and not uri.startswith("file://")


def upload_dir(local_dir: str | Path, uri: str) -> None:
    """Copy a local directory tree into `uri` (merging into what is there)."""
    fs, path = resolve_uri(uri)
    pafs.copy_files(
        str(Path(local_dir).resolve()),
        path,
        source_filesystem=pafs.LocalFileSystem(),
        destination_filesystem=fs,
    )
