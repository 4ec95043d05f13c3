"""A full output disk: `classify` into a tmpfs too small for its output fails with one clear error naming
the file it was writing and what to do; after the filesystem is enlarged, the rerun resumes and every
input row ends up exactly once in predictions ∪ rejects, with no partial part file counted as committed.

Needs root (``mount -t tmpfs``); skips with the reason elsewhere. The tmpfs is unmounted at teardown."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from tiny_model import make_tiny_model

from bm_ray.cli.main import exit_code
from bm_ray.jobs.classify import classify
from bm_ray.layout import COMMITS_DIR, PREDICTIONS_DIR, REJECTS_DIR, SUMMARY_FILE
from bm_ray.specs import ClassifySpec, IngestSpec
from bm_ray.storage import TMP_PREFIX, NoSpaceError, write_parquet_atomic

SMALL_KB = 48
"""Room for the lease, the job file and a few commits (tmpfs counts whole 4 KiB pages), not for all."""
LARGE_KB = 4096
GOOD_ROWS = 60
ROWS_PER_COMMIT = 5  # the input's rows_per_block: 12+ commits, each a part file and a record


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[tuple[Path, Callable[[int], None]]]:
    """A tmpfs of :data:`SMALL_KB` KiB and a function that resizes it (in KiB); unmounted at teardown."""
    if shutil.which("mount") is None:
        pytest.skip("no mount command on this machine")
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SMALL_KB}k", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"mount -t tmpfs is not allowed here: {mounted.stderr.strip() or mounted.returncode}")

    def resize(kb: int) -> None:
        done = subprocess.run(
            ["mount", "-o", f"remount,size={kb}k", str(mountpoint)], capture_output=True, text=True
        )
        if done.returncode != 0:
            pytest.skip(f"mount -o remount is not allowed here: {done.stderr.strip() or done.returncode}")

    try:
        yield mountpoint, resize
    finally:
        if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], check=False)  # busy: detach it anyway


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: str) -> str:
    """A tiny random BERT classifier with the real MiniLM tokenizer (its predictions do not matter here)."""
    return str(make_tiny_model(tmp_path_factory.mktemp("model") / "tiny", ["x", "y", "z"], tokenizer_dir))


def write_corpus(path: Path) -> tuple[set[str], set[str]]:
    """:data:`GOOD_ROWS` good rows and three rejects among them (not JSON, an empty text, a duplicate
    id); returns (the good ids, the rejects' sources)."""
    lines = [
        json.dumps({"id": f"g{i}", "text": f"markets rally as banks signal {i} " * (1 + i % 4)})
        for i in range(GOOD_ROWS)
    ]
    broken = {
        11: "not json",
        22: json.dumps({"id": "e1", "text": "  "}),
        33: json.dumps({"id": "g5", "text": "again"}),
    }
    for line_number, line in sorted(broken.items()):
        lines.insert(line_number - 1, line)
    path.write_text("\n".join(lines) + "\n")
    return {f"g{i}" for i in range(GOOD_ROWS)}, {f"{path.name}:{n}" for n in broken}


def committed_files(out: Path) -> list[tuple[str, dict]]:
    """(data file, its commit record) of every commit record."""
    records = [json.loads(p.read_text()) for p in sorted((out / COMMITS_DIR).glob("*.json"))]
    return [(f, record) for record in records for f in record["files"]]


def assert_commits_whole(out: Path) -> None:
    """Every commit record's files exist, read as Parquet, and hold the rows it counts: a part file cut
    short by the full disk is never one a commit counts (its temporary file is gone too)."""
    for name, record in committed_files(out):
        table = pq.read_table(out / name)
        expected = record["rows_ok"] if name.startswith(PREDICTIONS_DIR) else record["rows_rejected"]
        assert table.num_rows == expected, name
    assert not [p for p in out.rglob("*") if p.name.startswith(TMP_PREFIX)], "temporary files left behind"


@pytest.mark.skipif(  # before the Ray and model fixtures start; a refused mount skips in small_fs
    os.geteuid() != 0, reason=f"mounting a tmpfs needs root (running as uid {os.geteuid()})"
)
def test_a_full_output_disk_fails_clearly_and_the_rerun_resumes_exactly_once(
    ray_local, tmp_path: Path, tiny_model: str, small_fs: tuple[Path, Callable[[int], None]]
) -> None:
    mountpoint, resize = small_fs
    good, reject_sources = write_corpus(tmp_path / "corpus.jsonl")
    out = mountpoint / "out"
    spec = ClassifySpec(
        model=tiny_model,
        input=IngestSpec(input=[str(tmp_path / "corpus.jsonl")], rows_per_block=ROWS_PER_COMMIT),
        output=str(out),
        batch_size=16,
        actors=1,
    )

    with pytest.raises(NoSpaceError) as caught:
        classify(spec)
    message = str(caught.value)
    assert message.startswith(f"no space left on device writing {out}/"), message  # the file, in the output
    assert "free space there or choose another --output, then rerun the job to resume" in message
    assert "\n" not in message  # one line for the CLI (not a worker's traceback)
    assert exit_code(caught.value) == 1  # the CLI's "job failed"
    assert not (out / SUMMARY_FILE).exists()  # the job never claims to be done
    assert_commits_whole(out)
    committed_before = sum(
        json.loads(p.read_text())["rows_committed"] for p in (out / COMMITS_DIR).glob("*.json")
    )
    assert 0 < committed_before < len(good) + len(reject_sources)  # it failed part-way, after commits

    resize(LARGE_KB)
    summary = classify(spec)

    assert summary.rows_resumed == committed_before  # nothing committed was redone
    assert (
        summary.rows_read
        == summary.rows_classified + summary.rows_rejected
        == len(good) + len(reject_sources)
    )
    assert summary.rows_classified == len(good)
    assert summary.rejected_by_reason == {"duplicate_id": 1, "empty_text": 1, "malformed_record": 1}
    assert_commits_whole(out)
    # every data file belongs to exactly one commit (the debris of the failed run was cleared)
    data_files = sorted(
        f"{p.parent.name}/{p.name}" for d in (PREDICTIONS_DIR, REJECTS_DIR) for p in (out / d).iterdir()
    )
    assert sorted(name for name, _ in committed_files(out)) == data_files
    predicted = Counter(
        i
        for f in data_files
        if f.startswith(PREDICTIONS_DIR)
        for i in pq.read_table(out / f)["id"].to_pylist()
    )
    rejected = Counter(
        s
        for f in data_files
        if f.startswith(REJECTS_DIR)
        for s in pq.read_table(out / f)["source"].to_pylist()
    )
    assert max([*predicted.values(), *rejected.values()]) == 1  # duplicates = 0
    assert set(predicted) == good and set(rejected) == reject_sources  # rows lost = 0
    print(
        f"disk full: {committed_before} rows committed before ENOSPC, {summary.rows_this_run} after the resize; "
        f"rows read {summary.rows_read}, lost 0, duplicates 0"
    )


def test_no_space_error_survives_pickling_and_other_write_errors_pass_through(tmp_path: Path) -> None:
    """A Ray worker's error reaches the driver pickled, and Ray Data rewrites its args: the message is
    rebuilt from the path. An OSError that is not about space stays what it was."""
    error = NoSpaceError("/data/out/predictions/p.parquet")
    error.args = (error.args[0] + "\nFailed to apply UDF transform after 1/1 attempts",)
    again = pickle.loads(pickle.dumps(error))
    assert (type(again), again.path, again.errno) == (NoSpaceError, error.path, 28)
    assert str(again).startswith("no space left on device writing /data/out/predictions/p.parquet: ")
    assert "\n" not in str(again)
    with pytest.raises(OSError) as caught:  # a missing directory: not a full disk
        write_parquet_atomic(
            pafs.LocalFileSystem(), str(tmp_path / "absent" / "x.parquet"), pa.table({"a": [1]})
        )
    assert not isinstance(caught.value, NoSpaceError)
