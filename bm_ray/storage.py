"""URIs, filesystems and atomic writes (base layer): local paths and s3:// gs:// file:// URIs through ``pyarrow.fs``.

Local paths and any URI pyarrow's filesystems read work everywhere bm-ray takes a location. For an
S3-compatible server (MinIO, Ceph, moto, ...) set the standard `AWS_ENDPOINT_URL` variable, or give
pyarrow's `endpoint_override` option in the URI (`s3://bucket/path?endpoint_override=host:9000&scheme=http`).
Credentials may come from the environment (`AWS_ACCESS_KEY_ID`, ...) or the URI's user part
(`s3://KEY:SECRET@bucket/path`); :func:`redact_uri` strips them before a URI is written anywhere.

Retries: every S3 request (read, write, copy, delete, list) is retried by the storage client itself,
pyarrow's S3 client with an explicit retry strategy (:func:`s3_retry_strategy`): up to
:data:`S3_MAX_ATTEMPTS_ENV` (``BM_RAY_S3_MAX_ATTEMPTS``, default :data:`DEFAULT_S3_MAX_ATTEMPTS` = 10)
attempts per request on a 5xx answer, an S3 throttling error (``SlowDown``) or a network failure,
with exponential backoff. bm-ray has no retry loop of its own around storage calls: an error that
outlives these attempts raises ``OSError`` (the Ray task fails; a job run again resumes).

Atomic writes go to a hidden temporary sibling (:data:`TMP_PREFIX`) and are then moved into place: a
rename on local disks, a copy + delete on object stores (where a reader sees the old object or the
whole new one, never a part).
"""

from __future__ import annotations

import contextlib
import errno
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


S3_MAX_ATTEMPTS_ENV = "BM_RAY_S3_MAX_ATTEMPTS"
"""Environment variable: attempts per S3 request, the first included (an integer >= 1); read where a
filesystem is made (the driver, and the Ray workers that resolve a URI themselves)."""
DEFAULT_S3_MAX_ATTEMPTS = 10
"""Attempts per S3 request when :data:`S3_MAX_ATTEMPTS_ENV` is unset: with the backoff of
:func:`s3_retry_strategy` (25 ms doubling) a request gives up after about 13 s of failures."""


def s3_max_attempts() -> int:
    """Attempts per S3 request: :data:`S3_MAX_ATTEMPTS_ENV`, else :data:`DEFAULT_S3_MAX_ATTEMPTS`."""
    raw = os.environ.get(S3_MAX_ATTEMPTS_ENV, "").strip()
    if not raw:
        return DEFAULT_S3_MAX_ATTEMPTS
    try:
        attempts = int(raw)
    except ValueError:
        attempts = 0
    if attempts < 1:
        raise ValueError(f"{S3_MAX_ATTEMPTS_ENV}={raw!r}: expected a whole number of attempts >= 1")
    return attempts


def s3_retry_strategy(max_attempts: int) -> pafs.S3RetryStrategy:
    """pyarrow's retry strategy for `max_attempts` attempts per S3 request (the first one included).

    `AwsDefaultS3RetryStrategy` (the AWS SDK's DefaultRetryStrategy: retries the SDK marks retryable,
    i.e. 5xx, throttling and network errors, with 25 ms * 2**n backoff), not `AwsStandardS3RetryStrategy`:
    pyarrow wraps the SDK's StandardRetryStrategy without its per-request bookkeeping, so its retry
    quota (500 tokens, 5 per retry) is spent and never refilled: one filesystem object retries about
    100 times in its whole life and then not at all (measured with pyarrow 26 behind a proxy failing
    half the calls: 600 HEADs, 100 retried, 229 failed; the default strategy retried all and lost none).
    An actor that commits for hours keeps one filesystem. The SDK counts `max_attempts` of
    DefaultRetryStrategy as retries, hence the ``- 1``.
    """
    return pafs.AwsDefaultS3RetryStrategy(max_attempts=max_attempts - 1)


def _rebuild_s3(options: dict[str, Any], max_attempts: int) -> RetryingS3FileSystem:
    return RetryingS3FileSystem(options, max_attempts)


class RetryingS3FileSystem(pafs.S3FileSystem):
    """pyarrow's S3 filesystem with bm-ray's retry strategy, kept when it is pickled.

    pyarrow's own S3FileSystem pickles its options but not its retry strategy: a filesystem sent to a
    Ray task (a corpus file's, the one Ray Data wraps for `read_parquet` / `write_parquet`) would come
    back with pyarrow's default of 3 attempts. This one is rebuilt with the same `max_attempts`.
    """

    def __init__(self, options: dict[str, Any], max_attempts: int) -> None:
        super().__init__(**options, retry_strategy=s3_retry_strategy(max_attempts))
        self.options = dict(options)
        self.max_attempts = max_attempts

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_s3, (self.options, self.max_attempts))


def resolve_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    """Filesystem and path for a local path (relative allowed) or an s3:// gs:// file:// URI.

    An s3:// URI gets a :class:`RetryingS3FileSystem` with :func:`s3_max_attempts` attempts per request.
    pyarrow's ``FileSystem.from_uri`` takes no retry strategy, so it resolves the URI first (its
    options, `AWS_ENDPOINT_URL`, the credentials, the bucket's region) and the filesystem is made
    again from the options it resolved, with the strategy.
    """
    if "://" not in uri:
        uri = os.path.abspath(os.path.expanduser(uri))
    fs, path = pafs.FileSystem.from_uri(uri)
    if isinstance(fs, pafs.S3FileSystem):
        _, (options,) = fs.__reduce__()  # the resolved options, as pyarrow pickles them
        fs = RetryingS3FileSystem(options, s3_max_attempts())
    return fs, path


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
    """Write `data` as JSON to `path` atomically (temporary file + move); a full disk: :class:`NoSpaceError`."""
    payload = json.dumps(data, indent=2, sort_keys=True).encode("utf-8")
    with _no_space_named(path):
        write_atomic(fs, path, lambda stream: stream.write(payload))


def write_parquet_atomic(fs: pafs.FileSystem, path: str, table: pa.Table) -> None:
    """Write `table` as Parquet to `path` atomically (temporary file + move); a full disk: :class:`NoSpaceError`."""
    with _no_space_named(path):
        write_atomic(fs, path, lambda stream: pq.write_table(table, stream))


NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
"""A write that ran out of room: the device is full, or the user's disk quota is spent."""


class NoSpaceError(OSError):
    """Writing `path` ran out of space (``ENOSPC``, or a disk quota: ``EDQUOT``).

    The message names the file and what to do. The temporary file was removed and nothing was moved into
    place, so no partial file is ever committed: freeing space (or another output) and rerunning resumes.
    Pickled by its path, so the message survives a Ray worker (whose wrappers rewrite an error's args).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(
            f"no space left on device writing {redact_uri(path)}: free space there or choose another "
            "--output, then rerun the job to resume (what was committed is kept)"
        )
        self.errno = errno.ENOSPC

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path,))


@contextlib.contextmanager
def _no_space_named(path: str) -> Any:
    """Turn an out-of-space OSError of the write of `path` into :class:`NoSpaceError` (pyarrow's own says
    ``[Errno 28] Error writing bytes to file`` without naming the file)."""
    try:
        yield
    except NoSpaceError:
        raise
    except OSError as err:
        if err.errno in NO_SPACE_ERRNOS:
            raise NoSpaceError(path) from err
        raise


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
