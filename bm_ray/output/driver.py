"""The driver of one resumable, exactly-once pass of a corpus through a commit stage (ingest, classify):
listing, the identity check, the lease, the read of the rows not committed yet, progress, the reject
limit and the summary."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray

from bm_ray.corpus import CorpusInfo, list_corpus, read_corpus
from bm_ray.corpus.listing import input_manifest
from bm_ray.layout import (
    MANIFEST_KEY,
)
from bm_ray.output.commit import (
    check_job_identity,
    committed_rows,
    load_commits,
    prepare_output,
    refuse_foreign_overwrite,
    stored_identity,
    summarize,
)
from bm_ray.output.lease import OutputInUseError, OutputLease
from bm_ray.runtime.logs import PROGRESS_LOG_S
from bm_ray.specs import IngestSpec
from bm_ray.storage import (
    NoSpaceError,
    redact,
    redact_uri,
    resolve_uri,
)

logger = logging.getLogger(__name__)

REJECT_CHECK_MIN_ROWS = 1000
"""Rows a run reads before ``max_reject_fraction`` is checked (it is checked again at the end)."""


class TooManyRejectsError(ValueError):
    """More than ``max_reject_fraction`` of the rows read were rejected: the job stopped early."""


IGNORED_FILES_LISTED = 100
"""Ignored (non-article) files listed by name in the summary; all are counted."""


IDENTITY_EXCLUDED = {"rows_per_block", "max_reject_fraction"}
"""IngestSpec fields that do not change a job's rows, so a resume may change them."""


def job_identity(kind: str, spec: IngestSpec, info: CorpusInfo, **fields: Any) -> dict[str, Any]:
    """The identity stored in ``_job.json``: kind, the ingestion spec, extra `fields` (e.g. the model and
    its version; compared generically on resume) and the input manifest."""
    return {
        "kind": kind,
        "input": redact(spec.model_dump(mode="json", exclude=IDENTITY_EXCLUDED)),  # no credentials on disk
        **fields,
        MANIFEST_KEY: input_manifest(info),
    }


def _reject_check(spec: IngestSpec, output: str, totals: Counter[str], final: bool) -> None:
    limit = spec.max_reject_fraction
    read, rejected = totals["rows_committed"], totals["rows_rejected"]
    if limit is None or read == 0 or (read < REJECT_CHECK_MIN_ROWS and not final) or rejected <= limit * read:
        return
    fs, root = resolve_uri(output)
    reasons: Counter[str] = Counter()
    for _, record in load_commits(fs, root):
        reasons.update(record["rejected_by_reason"])
    top = ", ".join(f"{k} {v:,}" for k, v in reasons.most_common(3))
    raise TooManyRejectsError(
        f"stopped: {rejected:,} of the {read:,} rows read ({rejected / read:.0%}) were rejected ({top}), "
        f"more than max_reject_fraction {limit}. Check the ingestion options (e.g. a typo in --text-fields "
        f"rejects every row as missing_field); see {redact_uri(output)}/rejects/. Rerun with the same options and "
        "--max-reject-fraction 1 to go on anyway"
    )


def commit_corpus(
    spec: IngestSpec,
    output: str,
    commit: Callable[[ray.data.Dataset, str], ray.data.Dataset],
    *,
    kind: str,
    identity: dict[str, Any] | None = None,
    ok_dir: str = "ok",
    overwrite: bool = False,
    read_args: dict[str, Any] | None = None,
    extra: Callable[[Counter[str]], dict[str, Any]] | None = None,
    ok_alias: str | None = None,
) -> dict[str, Any]:
    """Drive one resumable, exactly-once pass of a corpus through a commit stage (ingest, classify).

    Needs a running Ray. Lists the inputs; refuses (nothing written) a resume whose job identity
    (:func:`job_identity` with `identity`'s extra fields) or input manifest differs; takes the output's
    lease; prepares `output` (:func:`prepare_output`); reads the rows not committed yet (with unit ends
    and duplicate-id detection per ``spec.dedupe``); applies `commit` ((dataset, lease token) → dataset of
    count rows, at least :data:`PROGRESS_SCHEMA`, e.g. a `map_batches` over a :class:`CommitProcessor`
    given that `lease_token`) and drains
    it, logging progress and stopping early on too many rejects (:class:`TooManyRejectsError`); then
    writes the summary (:func:`summarize` with `extra(totals)`, the totals of every integer column of
    this run's count rows) and releases the lease. Returns the summary.
    """
    started = time.monotonic()
    if overwrite:
        refuse_foreign_overwrite(output)
    info = list_corpus(spec)
    job = job_identity(kind, spec, info, **(identity or {}))
    if not overwrite and (previous := stored_identity(output)) is not None:
        check_job_identity(output, previous, json.loads(json.dumps(job)))
    lease = OutputLease(output, kind)
    lease.acquire()
    totals: Counter[str] = Counter()
    # A worker's error reaches the driver as its own class (RayTaskError(NoSpaceError)), not as Ray Data's
    # "UDF failed to process a data block" (UserCodeException), so a full output disk is told as such.
    context = ray.data.DataContext.get_current()
    raise_original = context.raise_original_map_exception
    context.raise_original_map_exception = True
    try:
        prepare_output(output, ok_dir=ok_dir, overwrite=overwrite, job=job)
        skip = committed_rows(output)
        fs, root = resolve_uri(output)
        resumed = sum(r["rows_committed"] for _, r in load_commits(fs, root))
        ds, read_info = read_corpus(spec, skip=skip, unit_ends=True, ray_remote_args=read_args)
        with read_info:
            last_log = time.monotonic()
            for batch in commit(ds, lease.token).iter_batches(batch_format="pyarrow", batch_size=None):
                for name, column in zip(batch.column_names, batch.columns, strict=True):
                    if pa.types.is_integer(column.type):
                        totals[name] += int(pc.sum(column).as_py() or 0)
                if lease.lost:
                    raise OutputInUseError(
                        f"{redact_uri(output)}: this job lost its lease to another job; stopping"
                    )
                _reject_check(spec, output, totals, final=False)
                if time.monotonic() - last_log > PROGRESS_LOG_S:
                    last_log = time.monotonic()
                    rate = totals["rows_committed"] / (last_log - started)
                    logger.info(
                        "%s: %d rows committed so far (%.1f rows/s)", kind, totals["rows_committed"], rate
                    )
        _reject_check(spec, output, totals, final=True)
        details = {
            "format": info.format,
            "inputs": redact(info.inputs),
            "files": len(info.files),
            "ignored_files": redact(info.ignored_files[:IGNORED_FILES_LISTED]),
            "ignored_files_count": len(info.ignored_files),
            "rows_resumed": resumed,
            MANIFEST_KEY: job[MANIFEST_KEY],
            **(extra(totals) if extra else {}),
        }
        return summarize(output, details, ok_alias=ok_alias)
    except NoSpaceError as err:
        # one line naming the file and what to do, instead of a worker's traceback (the commits made so
        # far stand: a rerun with space resumes after them)
        raise NoSpaceError(getattr(err, "cause", err).path) from err
    except ray.exceptions.RayError as err:
        # What Ray cannot recover from (a lost node that held the dedupe shards or lost blocks whose
        # re-read is refused, tests/integration/test_node_loss.py) reaches the user as Ray's own error;
        # the note says what stands and how to go on.
        with contextlib.suppress(Exception):
            fs, root = resolve_uri(output)
            committed = sum(r["rows_committed"] for _, r in load_commits(fs, root))
            err.add_note(
                f"{kind} stopped on a Ray failure (a lost node or worker?); the {committed:,} rows committed "
                f"into {redact_uri(output)} are kept: rerun the same command to resume"
            )
        raise
    finally:
        context.raise_original_map_exception = raise_original
        lease.release()
