"""Reading a job output for its report: the directory (local or any pyarrow filesystem URI), which job wrote
it, a few reject rows of each reason, and the per-row predictions of a scored model.

File names come from :mod:`bm_ray.layout`; nothing here imports Ray or a model.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from bm_ray import storage
from bm_ray.layout import (
    COMMITS_DIR,
    COMPARE_FILE,
    JOB_FILE,
    METRICS_FILE,
    PREDICTIONS_DIR,
    PREDICTIONS_FILE,
    REJECTS_DIR,
    SUMMARY_FILE,
)

KINDS = ("ingest", "classify", "train", "evaluate", "compare")


class ReportError(ValueError):
    """The directory is not a bm-ray job output; the message says what was expected."""


class OutputDir:
    """Read-only view of a job output directory (a local path or a pyarrow-filesystem URI)."""

    def __init__(self, output: str) -> None:
        self.output = output
        self.fs, self.root = storage.resolve_uri(output)

    def path(self, name: str) -> str:
        """Full path of `name` under the output."""
        return f"{self.root.rstrip('/')}/{name}"

    def kind_of(self, name: str) -> pafs.FileType:
        """File, Directory or NotFound."""
        return self.fs.get_file_info(self.path(name)).type

    def json(self, name: str) -> Any:
        """Parsed JSON file, or None when absent."""
        if self.kind_of(name) != pafs.FileType.File:
            return None
        with self.fs.open_input_stream(self.path(name)) as stream:
            return json.loads(stream.read().decode("utf-8"))

    def dataset(self, name: str) -> pads.Dataset | None:
        """Parquet dataset of a file or a directory (hidden and temporary files ignored), or None."""
        if self.kind_of(name) == pafs.FileType.NotFound:
            return None
        dataset = pads.dataset(self.path(name), filesystem=self.fs, format="parquet")
        return dataset if dataset.files else None

    def commit_times(self) -> list[tuple[float, int]]:
        """(commit time, rows committed) of every commit record, oldest first.

        The time is the record file's modification time: the record is written last and moved into
        place, so its mtime is the moment the run was committed.
        """
        selector = pafs.FileSelector(self.path(COMMITS_DIR), allow_not_found=True)
        points = []
        for info in self.fs.get_file_info(selector):
            if info.type == pafs.FileType.File and info.base_name.endswith(".json"):
                if info.base_name.startswith(".") or info.mtime is None:
                    continue
                with self.fs.open_input_stream(info.path) as stream:
                    record = json.loads(stream.read().decode("utf-8"))
                points.append((info.mtime.timestamp(), int(record["rows_committed"])))
        return sorted(points)


def detect_kind(out: OutputDir) -> str:
    """Which job wrote the output: from `_job.json`, else from the files it holds."""
    job = out.json(JOB_FILE)
    if isinstance(job, dict) and job.get("kind") in KINDS:
        return str(job["kind"])
    if out.kind_of(COMPARE_FILE) == pafs.FileType.File:
        return "compare"
    metrics = out.json(METRICS_FILE)
    if isinstance(metrics, dict):
        return "train" if "epochs" in metrics else "evaluate"
    if out.kind_of(SUMMARY_FILE) == pafs.FileType.File:
        return "classify" if out.kind_of(PREDICTIONS_DIR) == pafs.FileType.Directory else "ingest"
    raise ReportError(
        f"{out.output}: not a bm-ray job output (no {JOB_FILE}, {SUMMARY_FILE}, {METRICS_FILE} "
        f"or {COMPARE_FILE}); give the --output directory of ingest, classify, train or evaluate"
    )


def reject_examples(out: OutputDir, reasons: Iterable[str], per_reason: int) -> dict[str, list[dict]]:
    """Up to `per_reason` reject rows (id, source, raw) of each reason, reading only as far as needed."""
    wanted = {reason: [] for reason in reasons}
    dataset = out.dataset(REJECTS_DIR)
    if dataset is None or not wanted:
        return wanted
    columns = [c for c in ("id", "source", "reason", "raw") if c in dataset.schema.names]
    for batch in dataset.to_batches(columns=columns):
        for row in batch.to_pylist():
            examples = wanted.setdefault(row["reason"], [])
            if len(examples) < per_reason:
                examples.append(row)
        if all(len(v) >= per_reason for v in wanted.values()):
            break
    return wanted


def load_predictions(out: OutputDir) -> pa.Table | None:
    """predictions.parquet (id, label, predicted, score, text) as an Arrow table, or None when absent."""
    dataset = out.dataset(PREDICTIONS_FILE)
    return None if dataset is None else dataset.to_table()


def correctness(rows: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(top score, predicted == true label) per row."""
    scores = rows.column("score").to_numpy().astype(np.float64)
    correct = pc.equal(rows.column("label"), rows.column("predicted")).to_numpy(zero_copy_only=False)
    return scores, correct.astype(bool)
