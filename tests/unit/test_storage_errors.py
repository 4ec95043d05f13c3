"""Storage errors and the storage client's retry setting (issue #31), without a server.

A Parquet file the storage cannot deliver is not a corrupt file: a read error of the storage under it
raises (the read task fails, nothing is committed, a rerun resumes), while a file pyarrow cannot decode
stays one counted ``malformed_record`` reject. The failing storage is a real pyarrow filesystem
(``pyarrow.fs.PyFileSystem``) over the local disk whose reads from the n-th one on raise OSError, as an
S3 read that outlived its retries does (``tests/integration/test_s3_faults.py`` does the same through a
real S3 server). pyarrow reads a Parquet file in two reads here: the footer (the last 64 KiB), then the
column chunks of every row group coalesced into one range (its read cache merges ranges up to 32 MiB).

s3:// filesystems get their attempts per request from ``BM_RAY_S3_MAX_ATTEMPTS`` and keep them when
pickled (as Ray sends them to tasks).
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from read_tasks import accounting, read_rows

from bm_ray.corpus.formats import READERS, Skip, StorageReadError
from bm_ray.corpus.listing import CorpusFile
from bm_ray.corpus.rows import RowBuilder
from bm_ray.specs import IngestSpec
from bm_ray.storage import DEFAULT_S3_MAX_ATTEMPTS, S3_MAX_ATTEMPTS_ENV, RetryingS3FileSystem, resolve_uri


class _FailingReads:
    """A file object over a real file whose reads from the `first_bad`-th one on (0-based) raise OSError."""

    def __init__(self, handle: Any, first_bad: int) -> None:
        self.handle, self.first_bad, self.reads, self.closed = handle, first_bad, 0, False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.handle.seek(offset, whence)

    def tell(self) -> int:
        return self.handle.tell()

    def read(self, size: int = -1) -> bytes:
        self.reads += 1
        if self.reads > self.first_bad:
            raise OSError("AWS Error SLOW_DOWN during GetObject operation: Please reduce your request rate.")
        return self.handle.read(None if size < 0 else size)

    def close(self) -> None:
        self.closed = True
        self.handle.close()


class FlakyStorage(pafs.FileSystemHandler):
    """The local filesystem, except that the reads of an opened file from the `first_bad`-th on raise
    OSError (never: `first_bad` None)."""

    def __init__(self, first_bad: int | None) -> None:
        self.local, self.first_bad = pafs.LocalFileSystem(), first_bad

    def open_input_file(self, path: str) -> pa.NativeFile:
        handle = self.local.open_input_file(path)
        return (
            handle
            if self.first_bad is None
            else pa.PythonFile(_FailingReads(handle, self.first_bad), mode="r")
        )

    # --- the rest is the local filesystem as it is
    def get_type_name(self) -> str:
        return "flaky-local"

    def equals(self, other: Any) -> bool:
        return other is self

    def normalize_path(self, path: str) -> str:
        return self.local.normalize_path(path)

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return self.local.get_file_info(paths)

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return self.local.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        self.local.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self.local.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.local.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise OSError("not on the test's storage")

    def delete_file(self, path: str) -> None:
        self.local.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self.local.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        self.local.copy_file(src, dest)

    def open_input_stream(self, path: str) -> pa.NativeFile:
        return self.local.open_input_stream(path)

    def open_output_stream(self, path: str, metadata: Any = None) -> pa.NativeFile:
        return self.local.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path: str, metadata: Any = None) -> pa.NativeFile:
        return self.local.open_append_stream(path, metadata=metadata)


def good_parquet(path: Path, n: int = 3000) -> Path:
    """A valid Parquet file of `n` incompressible texts in row groups of 1,000 (about 220 KB: bigger than
    the footer read, so the footer and the data are read apart)."""
    texts = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(n)]
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(n)], "text": texts}), path, row_group_size=1000)
    return path


def read_through(
    path: Path, first_bad: int | None, emitted: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Rows the Parquet reader emits for `path` on a storage failing the reads from the `first_bad`-th on,
    block by block into `emitted` (so a test sees what was emitted before an error)."""
    spec = IngestSpec(input=[str(path)], rows_per_block=400)
    f = CorpusFile(
        path=str(path),
        relpath=path.name,
        size=path.stat().st_size,
        format="parquet",
        root=str(path.parent),
        fs=pafs.PyFileSystem(FlakyStorage(first_bad)),
        index=0,
    )
    out = [] if emitted is None else emitted
    rows = RowBuilder(spec, unit_ends=True)
    try:
        for _ in READERS["parquet"](f, rows, Skip(None)):
            if len(rows) >= spec.rows_per_block:
                out += rows.flush().to_pylist()
    finally:
        out += rows.flush().to_pylist()
    return out


def test_a_corrupt_parquet_file_is_one_counted_reject(tmp_path: Path) -> None:
    path = good_parquet(tmp_path / "broken.parquet")
    path.write_bytes(path.read_bytes()[:-10])  # a truncated footer: the file's fault
    rows = read_rows(IngestSpec(input=[str(path)]))
    assert accounting(rows) == {"malformed_record": 1}
    # The same file read through the storage of the other tests, delivering every byte: one reject.
    rows = read_through(path, first_bad=None)
    assert accounting(rows) == {"malformed_record": 1}
    assert rows[0]["raw"].startswith("the file not read: not a readable Parquet file (")


def test_a_good_file_reads_whole_through_that_storage(tmp_path: Path) -> None:
    assert accounting(read_through(good_parquet(tmp_path / "good.parquet"), first_bad=None)) == {"ok": 3000}


def test_a_storage_error_on_the_footer_raises_instead_of_a_reject(tmp_path: Path) -> None:
    path = good_parquet(tmp_path / "good.parquet")
    emitted: list[dict[str, Any]] = []
    with pytest.raises(StorageReadError, match=r"good\.parquet: reading it from storage failed .*SLOW_DOWN"):
        read_through(path, first_bad=0, emitted=emitted)
    assert emitted == []


def test_a_storage_error_on_the_data_raises_instead_of_a_reject(tmp_path: Path) -> None:
    path = good_parquet(tmp_path / "good.parquet")
    emitted: list[dict[str, Any]] = []
    with pytest.raises(
        StorageReadError, match="nothing of it was rejected, rerun the job to resume"
    ) as caught:
        read_through(path, first_bad=1, emitted=emitted)  # the footer is read, the row groups are not
    assert isinstance(caught.value, OSError) and "SLOW_DOWN" in str(caught.value.__cause__)
    # No reject and no unit_end row: the task fails, and the commit protocol never counts the file read.
    assert emitted == []


# ------------------------------------------------------------------------------ the S3 retry setting

S3_URI = "s3://KEY:SECRET@bucket/corpus?endpoint_override=127.0.0.1:9&scheme=http&region=us-east-1"
"""An s3:// URI that resolves without any network call (endpoint and region given)."""


def test_s3_filesystems_take_their_attempts_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(S3_MAX_ATTEMPTS_ENV, raising=False)
    fs, path = resolve_uri(S3_URI)
    assert isinstance(fs, RetryingS3FileSystem) and path == "bucket/corpus"
    assert fs.max_attempts == DEFAULT_S3_MAX_ATTEMPTS == 10
    monkeypatch.setenv(S3_MAX_ATTEMPTS_ENV, "4")
    fs, _ = resolve_uri(S3_URI)
    copy = pickle.loads(pickle.dumps(fs))  # as Ray sends it to a task: the attempts go with it
    assert (type(copy), copy.max_attempts, copy.equals(fs)) == (RetryingS3FileSystem, 4, True)
    assert copy.options["endpoint_override"] == "127.0.0.1:9" and copy.options["access_key"] == "KEY"
    for bad in ("0", "-1", "many"):
        monkeypatch.setenv(S3_MAX_ATTEMPTS_ENV, bad)
        with pytest.raises(ValueError, match=S3_MAX_ATTEMPTS_ENV):
            resolve_uri(S3_URI)
    assert isinstance(resolve_uri("/tmp")[0], pafs.LocalFileSystem)  # other filesystems as pyarrow makes them
