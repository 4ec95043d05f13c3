"""`bm-ray classify`: bulk classification of a corpus with Ray Data, exactly once, resumable.

One streaming pass: :func:`bm_ray.corpus.read_corpus` (ok rows, rejects and blank lines together,
committed rows skipped) → one ``map_batches`` over an actor pool of :class:`ClassifyProcessor`, which
loads the :class:`~bm_ray.model.engine.Predictor` once per actor, predicts the ok rows of each batch in one
engine call and commits every run through :class:`~bm_ray.output.CommitProcessor`::

    DIR/predictions/<run>.parquet   id, label, score, scores (map<string, float>), abstained (with
                                    min_score), windows, model, keep_fields
    DIR/rejects/<run>.parquet       id, source, reason, raw
    DIR/_commits/<run>.json         counts (the commit point), the abstained rows among them
    DIR/summary.json                rows_read = rows_classified + rows_rejected, rows_abstained (with
                                    min_score), labels, speed,
                                    model, windows and rows_windows_capped (long texts read as windows)

With ``min_score`` a prediction whose top score is below it keeps its label and scores and is marked
``abstained``; each commit record counts them, so ``rows_abstained`` adds up the committed rows
(resumed commits included), exactly once like every other count. The threshold is part of the job's
identity: a resume with another one is refused, so every row of an output was judged by the same one.
Without ``min_score`` nothing is thresholded: no ``abstained`` column and no ``rows_abstained`` (the
report shows abstention only where a job recorded it).

A Ray retry of a batch (dead actor) rewrites the same deterministic file names; a killed job rerun
into the same output skips what was committed; ``overwrite`` starts afresh.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from bm_ray.corpus import ROW_COLUMNS, list_corpus
from bm_ray.layout import PREDICTIONS_DIR
from bm_ray.model.engine import Predictor
from bm_ray.model.metrics import abstained
from bm_ray.model.registry import read_model_info, resolve_model
from bm_ray.output.commit import CommitProcessor
from bm_ray.output.driver import commit_corpus
from bm_ray.report import try_build_report
from bm_ray.results import ClassifyResult
from bm_ray.runtime.ray_init import init_ray
from bm_ray.specs import ClassifySpec, LongTextOptions, Precision
from bm_ray.storage import redact_uri

ABSTAINED_COLUMN = "abstained"
PROBS_COLUMN = "_probs"
WINDOWS_COLUMN = "_windows"
SCORES_TYPE = pa.map_(pa.string(), pa.float32())


CLASSIFY_BLOCK_BYTES = 256 * 1024
"""Target block size of the classify pipeline for large corpora (≈ a thousand news rows)."""
MIN_BLOCK_BYTES = 8 * 1024
"""Smallest target block size (≈ 30 news rows): below it per-block overhead outweighs the spread."""
BLOCKS_PER_ACTOR = 4
"""A small corpus is cut into about this many blocks per actor, so every actor gets work."""


def block_bytes(input_bytes: int, actors: int) -> int:
    """Target block size for a corpus of `input_bytes` on `actors` actors.

    Large corpora get :data:`CLASSIFY_BLOCK_BYTES`; a small one (a few hundred KB, what people try first)
    gets about :data:`BLOCKS_PER_ACTOR` blocks per actor, never under :data:`MIN_BLOCK_BYTES`: with
    ~1,000-row blocks a 2,000-row corpus would be two blocks, and a 400-row one a single block on one actor.
    """
    spread = input_bytes // max(1, actors * BLOCKS_PER_ACTOR)
    return int(min(CLASSIFY_BLOCK_BYTES, max(MIN_BLOCK_BYTES, spread)))


READ_ARGS = {"num_cpus": 0}
"""Read + dedupe tasks run beside the actors: parsing is light next to the forward pass, and a pool
holding every CPU would otherwise starve the reads (they cannot fuse into an explicit-batch_size map)."""


class ClassifyProcessor(CommitProcessor):
    """Ray Data callable class: predict the ok rows of a block with the engine, then commit its runs.

    Returns one count row per commit (:data:`bm_ray.output.PROGRESS_SCHEMA`) plus ``windows`` and
    ``rows_windows_capped`` of that commit's texts, and ``real_tokens`` and ``padded_tokens`` of the
    block's forward passes (on its first commit) for the padding accounting.
    """

    def __init__(
        self,
        output: str,
        model: str,
        *,
        batch_size: int,
        precision: Precision = "auto",
        num_threads: int | None = None,
        keep_fields: Sequence[str] = (),
        long_text: LongTextOptions | None = None,
        lease_token: str | None = None,
        min_score: float | None = None,
        commit_rows: int | None = None,
    ) -> None:
        self.commit_rows = commit_rows
        super().__init__(
            output,
            self.prediction_table,
            ok_dir=PREDICTIONS_DIR,
            label_column="label",
            lease_token=lease_token,
            flag_columns=[] if min_score is None else [ABSTAINED_COLUMN],
        )
        self.min_score = min_score
        self.predictor = Predictor.load(model, batch_size, precision, num_threads, long_text)
        info = self.predictor.info
        self.model_tag = f"{info.name}/{info.version}"
        self.keep_fields = [k for k in keep_fields if k not in ROW_COLUMNS]

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Predict every ok row of `batch` in one engine call (length buckets over the whole block), then
        commit it in runs of at most `commit_rows` rows (the input's rows_per_block); return one count row
        per commit (the token counts of the engine call on the first)."""
        labels = len(self.predictor.labels)
        ok = np.flatnonzero(batch.column("reason").is_null().to_numpy(zero_copy_only=False))
        probs = np.zeros((batch.num_rows, labels), dtype=np.float32)
        windows = np.zeros(batch.num_rows, dtype=np.int32)
        capped = np.zeros(batch.num_rows, dtype=bool)
        stats = self.predictor.padding
        real, padded = stats.real_tokens, stats.padded_tokens
        if len(ok):
            texts = batch.column("text").take(pa.array(ok)).to_pylist()
            scored = self.predictor.score_texts(texts)
            probs[ok], windows[ok], capped[ok] = scored.probs, scored.windows, scored.capped
        flat = pa.FixedSizeListArray.from_arrays(pa.array(probs.ravel()), labels)
        batch = batch.append_column(PROBS_COLUMN, flat).append_column(WINDOWS_COLUMN, pa.array(windows))
        step = self.commit_rows or batch.num_rows or 1
        progress = []
        for start in range(0, max(batch.num_rows, 1), step):  # an empty block still commits (as before)
            part = super().__call__(batch.slice(start, step))
            counts = {
                "real_tokens": stats.real_tokens - real if start == 0 else 0,
                "padded_tokens": stats.padded_tokens - padded if start == 0 else 0,
                "windows": int(windows[start : start + step].sum()),
                "rows_windows_capped": int(capped[start : start + step].sum()),
            }
            for name, value in counts.items():
                part = part.append_column(name, pa.array([value], pa.int64()))
            progress.append(part)
        return pa.concat_tables(progress)

    def prediction_table(self, rows: pa.Table) -> pa.Table:
        """The predictions table of the ok rows of one run (probabilities in :data:`PROBS_COLUMN`)."""
        labels = self.predictor.labels
        n = rows.num_rows
        probs = np.asarray(rows.column(PROBS_COLUMN).combine_chunks().flatten()).reshape(n, len(labels))
        top = probs.argmax(axis=1)
        score = probs[np.arange(n), top]
        scores = pa.MapArray.from_arrays(
            pa.array(np.arange(0, (n + 1) * len(labels), len(labels), dtype=np.int32)),
            pa.array(labels * n, pa.string()),
            pa.array(probs.ravel(), pa.float32()),
        )
        columns = {
            "id": rows.column("id"),
            "label": pa.array([labels[k] for k in top], pa.string()),
            "score": pa.array(score, pa.float32()),
            "scores": scores.cast(SCORES_TYPE),
            "windows": rows.column(WINDOWS_COLUMN),
            "model": pa.array([self.model_tag] * n, pa.string()),
        }
        if self.min_score is not None:
            columns[ABSTAINED_COLUMN] = pa.array(abstained(score, self.min_score))
        columns.update({name: rows.column(name) for name in self.keep_fields})
        return pa.table(columns)


def actor_pool(spec: ClassifySpec) -> tuple[int, int]:
    """(min, max) actors: `spec.actors`, else as many as the cluster's CPUs (and GPUs) hold."""
    if spec.actors is not None:
        return spec.actors.min, spec.actors.max
    resources = ray.cluster_resources()
    size = int(resources.get("CPU", 1) // spec.cpus_per_actor)
    if spec.gpus_per_actor:
        size = min(size, int(resources.get("GPU", 0) // spec.gpus_per_actor))
    return max(1, size), max(1, size)


def classify(spec: ClassifySpec) -> ClassifyResult:
    """Run the classify job; returns the summary also written to ``output/summary.json``.

    Fields (beyond :func:`bm_ray.output.summarize`, whose rows_abstained counts the committed predictions
    below ``min_score`` when one is set): rows_classified, min_score, elapsed_s, rows_per_s (rows read by
    this run / its wall time), rows_this_run, padding_waste, model (name, version, path), precision,
    actors, batch_size, long_text (the options), windows (read by this run) and rows_windows_capped (rows
    of this run whose text needed more than max_windows windows: their tail was not read).
    """
    started = time.monotonic()
    info = read_model_info(resolve_model(spec.model))  # fail fast, before touching the output
    init_ray(spec.address)
    min_actors, max_actors = actor_pool(spec)

    def predict_and_commit(ds: ray.data.Dataset, lease_token: str) -> ray.data.Dataset:
        return ds.map_batches(
            ClassifyProcessor,
            fn_constructor_args=(spec.output, spec.model),
            fn_constructor_kwargs={
                "batch_size": spec.batch_size,
                "precision": spec.precision,
                "num_threads": math.ceil(spec.cpus_per_actor),
                "keep_fields": spec.input.keep_fields,
                "lease_token": lease_token,
                "long_text": spec.long_text_options(),
                "min_score": spec.min_score,
                "commit_rows": spec.input.rows_per_block,
            },
            compute=ray.data.ActorPoolStrategy(min_size=min_actors, max_size=max_actors),
            num_cpus=spec.cpus_per_actor,
            num_gpus=spec.gpus_per_actor,
            # One call per block (sized by block_bytes below): a batch_size would bundle blocks up to it
            # first, and a 2,000-row corpus in 1,000-row bundles gave both tasks to the first actor up.
            batch_size=None,
            batch_format="pyarrow",
            zero_copy_batch=True,
        )

    # Ray Data merges a read task's small blocks up to target_max_block_size (128 MiB): one file would
    # reach the actor pool as one block, i.e. one task on one actor. Blocks sized by block_bytes keep
    # every actor busy; the forward pass dwarfs the per-block overhead.
    context = ray.data.DataContext.get_current()
    previous_block_size = context.target_max_block_size
    context.target_max_block_size = block_bytes(list_corpus(spec.input).total_bytes, max_actors)

    def finish(totals: Counter[str]) -> dict[str, Any]:
        elapsed = time.monotonic() - started
        return {
            "elapsed_s": round(elapsed, 3),
            "rows_this_run": totals["rows_committed"],
            "rows_per_s": round(totals["rows_committed"] / elapsed, 2) if elapsed else 0.0,
            "padding_waste": round(totals["padded_tokens"] / totals["real_tokens"], 4)
            if totals["real_tokens"]
            else 1.0,
            "real_tokens": totals["real_tokens"],
            "long_text": spec.long_text_options().model_dump(),
            "min_score": spec.min_score,
            "windows": totals["windows"],
            "rows_windows_capped": totals["rows_windows_capped"],
            "model": {"name": info.name, "version": info.version, "path": redact_uri(spec.model)},
            "precision": spec.precision,
            "actors": {"min": min_actors, "max": max_actors, "cpus_per_actor": spec.cpus_per_actor},
            "batch_size": spec.batch_size,
            "output": redact_uri(spec.output),
        }

    try:
        summary = commit_corpus(
            spec.input,
            spec.output,
            predict_and_commit,
            kind="classify",
            identity={
                "model": redact_uri(spec.model),
                "model_version": info.version,
                "min_score": spec.min_score,
            },
            ok_dir=PREDICTIONS_DIR,
            overwrite=spec.overwrite,
            read_args=READ_ARGS,
            extra=finish,
            ok_alias="rows_classified",
        )
    finally:
        context.target_max_block_size = previous_block_size
    try_build_report(spec.output)
    return ClassifyResult.model_validate(summary)


def summary_table(summary: ClassifyResult) -> Any:
    """A one-screen rich rendering of a classify summary."""
    from rich.table import Table

    table = Table(title=f"bm-ray classify → {summary.output}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    model = summary.model
    table.add_row("model", f"{model.name} {model.version} ({model.path})")
    table.add_row("rows read", f"{summary.rows_read:,} ({summary.rows_resumed:,} resumed)")
    table.add_row("classified", f"{summary.rows_classified:,}")
    if summary.min_score is not None:
        table.add_row(
            "abstained", f"{summary.rows_abstained or 0:,} (top score < min_score {summary.min_score:g})"
        )
    reasons = ", ".join(f"{k} {v:,}" for k, v in summary.rejected_by_reason.items())
    table.add_row("rejected", f"{summary.rows_rejected:,}" + (f" ({reasons})" if reasons else ""))
    top = sorted(summary.label_counts.items(), key=lambda kv: -kv[1])[:10]
    table.add_row("labels", ", ".join(f"{k} {v:,}" for k, v in top))
    table.add_row(
        "speed",
        f"{summary.rows_per_s:,.1f} rows/s, {summary.elapsed_s:.1f} s, padding ×{summary.padding_waste:.2f}",
    )
    if summary.long_text["long_text"] == "window":
        capped = summary.rows_windows_capped
        table.add_row(
            "windows",
            f"{summary.windows:,} for {summary.rows_this_run:,} rows read"
            + (f" ({capped:,} rows longer than max_windows: tails unread)" if capped else ""),
        )
    actors = summary.actors
    table.add_row("actors", f"{actors.min}–{actors.max} × {actors.cpus_per_actor} CPU")
    return table
