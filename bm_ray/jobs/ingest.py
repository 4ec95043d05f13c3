"""`bm-ray ingest`: validate a corpus into ``ok/`` + ``rejects/`` + ``summary.json``, exactly once, resumable."""

from __future__ import annotations

import functools
import time

import pyarrow as pa
import ray

from bm_ray.corpus import ROW_COLUMNS
from bm_ray.layout import NEAR_DUPLICATES_DIR, OK_COLUMNS, SUMMARY_FILE
from bm_ray.output.commit import CommitProcessor
from bm_ray.output.driver import commit_corpus
from bm_ray.report import try_build_report
from bm_ray.results import IngestResult, NearDuplicateCounts
from bm_ray.runtime.ray_init import init_ray
from bm_ray.specs import IngestSpec
from bm_ray.storage import join, resolve_uri, write_json_atomic


def _ok_table(columns: list[str], rows: pa.Table) -> pa.Table:
    return rows.select(columns)


def _commit(batch: pa.Table, processor: CommitProcessor) -> pa.Table:
    return processor(batch)


def ingest(
    spec: IngestSpec, output: str, *, overwrite: bool = False, near_duplicates: bool = False
) -> IngestResult:
    """`bm-ray ingest`: validate a corpus into ``output/ok/`` + ``output/rejects/`` + ``output/summary.json``.

    Resumes into an existing output of the same spec and inputs (rows already committed are not read
    again), unless `overwrite`, which starts afresh. Starts an embedded Ray unless one is running.
    With `near_duplicates`, the committed ok rows are then clustered (see :mod:`bm_ray.corpus.neardup`):
    ``output/near_duplicates/`` gets (id, cluster) for every ok row and the summary the
    ``near_duplicates`` counts. Returns the summary (see :func:`bm_ray.output.commit.summarize`), as
    summary.json holds it.
    """
    started = time.monotonic()
    ok_columns = [*OK_COLUMNS, *(k for k in spec.keep_fields if k not in ROW_COLUMNS)]
    ok_fn = functools.partial(_ok_table, ok_columns)

    def commit(ds: ray.data.Dataset, lease_token: str) -> ray.data.Dataset:
        processor = CommitProcessor(output, ok_fn, lease_token=lease_token)
        return ds.map_batches(
            _commit,
            fn_kwargs={"processor": processor},
            batch_format="pyarrow",
            batch_size=None,
            zero_copy_batch=True,
        )

    init_ray()
    summary = commit_corpus(
        spec,
        output,
        commit,
        kind="ingest",
        overwrite=overwrite,
        extra=lambda _: {"elapsed_s": round(time.monotonic() - started, 3)},
    )
    result = IngestResult.model_validate(summary)
    if near_duplicates:
        result.near_duplicates = write_near_duplicates(output)
        fs, root = resolve_uri(output)
        write_json_atomic(fs, join(root, SUMMARY_FILE), result.model_dump())
    try_build_report(output)
    return result


def write_near_duplicates(output: str) -> NearDuplicateCounts:
    """Cluster the ok rows committed under `output` and write ``near_duplicates/`` (id, cluster); counts."""
    from bm_ray.corpus.neardup import assign_clusters, find_clusters

    fs, root = resolve_uri(output)
    rows = ray.data.read_parquet(join(root, "ok"), filesystem=fs, file_extensions=["parquet"]).select_columns(
        ["id", "text"]
    )
    found = find_clusters(rows, key_column="id")
    clusters = rows.select_columns(["id"]).map_batches(
        assign_clusters,
        fn_kwargs={"cluster_of": found.cluster_of, "key_column": "id"},
        batch_format="pyarrow",
    )
    target = join(root, NEAR_DUPLICATES_DIR)
    fs.delete_dir_contents(target, missing_dir_ok=True)  # a rerun replaces the previous clustering
    clusters.write_parquet(target, filesystem=fs)
    return NearDuplicateCounts.model_validate(found.counts())
