"""Object-store URIs: credentials kept out of every record, joins that keep URI options, uploads.

Local paths and any URI pyarrow's filesystems read work everywhere bm-ray takes a location. For an
S3-compatible server (MinIO, Ceph, moto, ...) set the standard `AWS_ENDPOINT_URL` variable, or give
pyarrow's `endpoint_override` option in the URI (`s3://bucket/path?endpoint_override=host:9000&scheme=http`).
Credentials may come from the environment (`AWS_ACCESS_KEY_ID`, ...) or the URI's user part
(`s3://KEY:SECRET@bucket/path`); :func:`redact_uri` strips them before a URI is written anywhere.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pyarrow.fs as pafs

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


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow filesystem and path for a local path (relative allowed) or a URI (options honoured)."""
    if "://" not in uri:
        uri = os.path.abspath(os.path.expanduser(uri))
    return pafs.FileSystem.from_uri(uri)


def upload_dir(local_dir: str | Path, uri: str) -> None:
    """Copy a local directory tree into `uri` (merging into what is there)."""
    fs, path = filesystem(uri)
    pafs.copy_files(
        str(Path(local_dir).resolve()),
        path,
        source_filesystem=pafs.LocalFileSystem(),
        destination_filesystem=fs,
    )
