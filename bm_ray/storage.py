"""URIs, filesystems and atomic writes (base layer): local paths and s3:// gs:// file:// URIs through ``pyarrow.fs``.

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
from typing import Any

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
    """`base/part/...` for filesystem paths (no duplicate slashes)."""
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
