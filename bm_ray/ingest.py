"""`bm-ray ingest`: validate a corpus into ``ok/`` + ``rejects/`` + ``summary.json``, exactly once, resumable."""

from __future__ import annotations

import functools
import time
from typing import Any

import pyarrow as pa
import ray

from bm_ray import commit as commit_protocol
from bm_ray.corpus import ROW_COLUMNS
from bm_ray.report import try_build_report
from bm_ray.runtime import init_ray
from bm_ray.specs import IngestSpec

OK_COLUMNS = ("id", "text", "label", "source", "truncated", "utf8_repaired")
"""Columns of ``output/ok/`` (+ keep_fields)."""


def _ok_table(columns: list[str], rows: pa.Table) -> pa.Table:
    return rows.select(columns)


def _commit(batch: pa.Table, processor: commit_protocol.CommitProcessor) -> pa.Table:
    return processor(batch)


def ingest(spec: IngestSpec, output: str, *, overwrite: bool = False) -> dict[str, Any]:
    """`bm-ray ingest`: validate a corpus into ``output/ok/`` + ``output/rejects/`` + ``output/summary.json``.

    Resumes into an existing output of the same spec and inputs (rows already committed are not read
    again), unless `overwrite`, which starts afresh. Starts an embedded Ray unless one is running.
    Returns the summary (see :func:`bm_ray.commit.summarize`).
    """
    started = time.monotonic()
    ok_columns = [*OK_COLUMNS, *(k for k in spec.keep_fields if k not in ROW_COLUMNS)]
    ok_fn = functools.partial(_ok_table, ok_columns)

    def commit(ds: ray.data.Dataset, lease_token: str) -> ray.data.Dataset:
        processor = commit_protocol.CommitProcessor(output, ok_fn, lease_token=lease_token)
        return ds.map_batches(
            _commit,
            fn_kwargs={"processor": processor},
            batch_format="pyarrow",
            batch_size=None,
            zero_copy_batch=True,
        )

    init_ray()
    summary = commit_protocol.commit_corpus(
        spec,
        output,
        commit,
        kind="ingest",
        overwrite=overwrite,
        extra=lambda _: {"elapsed_s": round(time.monotonic() - started, 3)},
    )
    try_build_report(output)
    return summary
