"""The training data of `bm-ray train`, prepared on the driver with Ray Data ahead of the workers.

Each corpus is read and validated once (:func:`read_labelled_corpus`); the labels (and their names)
are fixed, the rows split into training and validation (stratified, seeded, duplicate clusters kept on
one side unless ``split: random``), optional background and boilerplate rows added to the training side,
and every row tokenised with the shared encoder (:func:`encode_batch`). :func:`prepare_data` does it all
and returns a :class:`PreparedData` with the accounting of every row read.
"""

from __future__ import annotations

import functools
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from ray.data.expressions import col

from bm_ray.corpus.neardup import leakage_report
from bm_ray.jobs.scoring import MISSING_LABEL, UNKNOWN_LABEL
from bm_ray.model.registry import resolve_model
from bm_ray.specs import IngestSpec, TrainSpec
from bm_ray.storage import redact_uri, resolve_uri


class TrainError(ValueError):
    """Training data or options that cannot work; the message says what to change."""


def natural_key(label: str) -> tuple[Any, ...]:
    """Sort labels so that "2" < "10" and names sort alphabetically."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", label))


@dataclass
class PreparedData:
    """Tokenised train/val datasets plus the accounting of every row read."""

    train: Any
    val: Any
    val_rows: Any
    labels: list[str]
    """The data's raw label values in class order (the training targets are their indices)."""
    max_length: int
    counts: dict[str, Any] = field(default_factory=dict)
    names: list[str] | None = None
    """Names given to `labels` (``label_names``), in the same order; None: the raw values are the names."""


@functools.cache
def _encoder(model_ref: str, max_length: int) -> Any:
    """One tokenizer per worker process, reused by every batch it encodes."""
    from bm_ray.model.preprocess import TextEncoder

    return TextEncoder.from_dir(resolve_model(model_ref), max_length)


def encode_batch(batch: pa.Table, model_ref: str, max_length: int, labels: list[str]) -> pa.Table:
    """Ray Data task: texts → token ids (the shared TextEncoder), labels → class indices."""
    ids = _encoder(model_ref, max_length).encode(batch.column("text").to_pylist())
    label_index = {label: i for i, label in enumerate(labels)}
    return pa.table(
        {
            "input_ids": pa.array([seq.tolist() for seq in ids], type=pa.list_(pa.int32())),
            "label_id": pa.array(
                [label_index[label] for label in batch.column("label").to_pylist()], type=pa.int32()
            ),
        }
    )


def read_labelled_corpus(ingest: IngestSpec, name: str) -> tuple[Any, Any, Counter[str], Counter[str], int]:
    """(labelled ok rows, reject rows, rejects by reason, ok label counts, rows read) of one corpus.

    The corpus is read and validated once (materialised in the object store, not the driver).
    """
    from bm_ray.corpus import read_corpus

    ds, info = read_corpus(ingest)
    ds = ds.filter(expr=col("reason").is_null() | (col("reason") != "blank_line")).materialize()
    if info.dedupe is not None:
        info.dedupe.close()
    reasons: Counter[str] = Counter()
    label_counts: Counter[str] = Counter()
    rows_read = 0
    for batch in ds.select_columns(["reason", "label"]).iter_batches(
        batch_format="pyarrow", batch_size=65536
    ):
        rows_read += batch.num_rows
        for reason, label in zip(
            batch.column("reason").to_pylist(), batch.column("label").to_pylist(), strict=True
        ):
            if reason is not None:
                reasons[reason] += 1
            elif label is None:
                reasons[MISSING_LABEL] += 1
            else:
                label_counts[label] += 1
    if rows_read == 0:
        raise TrainError(f"{name}: no rows read from {', '.join(ingest.input)}")
    ok = ds.filter(expr=col("reason").is_null() & col("label").is_not_null())
    rejects = ds.filter(expr=col("reason").is_not_null() | col("label").is_null())
    return ok, rejects, reasons, label_counts, rows_read


def prepare_data(spec: TrainSpec) -> PreparedData:
    """Ingest, validate, split (stratified, seeded) and tokenise the training and validation data."""
    from bm_ray.model.preprocess import TextEncoder, choose_max_length

    ok, rejects, reasons, label_counts, rows_read = read_labelled_corpus(spec.data, "data")
    if not label_counts:
        raise TrainError(
            f"data: none of the {rows_read} rows has a label; pass --label-field (rejected: {dict(reasons)})"
        )
    labels = sorted(label_counts, key=natural_key)
    if len(labels) < 2:
        raise TrainError(f"data: training needs at least 2 labels, found only {labels[0]!r}")
    names = resolve_label_names(spec, labels)
    n_ok = sum(label_counts.values())
    if n_ok < 2 * spec.workers:
        raise TrainError(f"data: {n_ok} labelled rows is too few for {spec.workers} workers")

    counts: dict[str, Any] = {"train_data": {"rows_read": rows_read, "rows_ok": n_ok}}
    if spec.val_data is not None:
        train_rows = ok
        val_ok, val_rejects, val_reasons, val_labels, val_read = read_labelled_corpus(
            spec.val_data, "val_data"
        )
        known = set(labels)
        unknown = sum(n for label, n in val_labels.items() if label not in known)
        val_rows = val_ok.filter(expr=col("label").is_in(sorted(known)))
        rejects = rejects.union(val_rejects)
        if unknown:
            val_reasons[UNKNOWN_LABEL] = unknown
            # Unknown validation labels cannot be scored; they are rejected rows, not a crash.
            rejects = rejects.union(
                val_ok.filter(expr=col("label").not_in(sorted(known))).map_batches(
                    _mark_reason, fn_kwargs={"reason": UNKNOWN_LABEL}, batch_format="pyarrow"
                )
            )
        n_val_ok = val_read - sum(val_reasons.values())
        counts["val_data"] = {
            "rows_read": val_read,
            "rows_ok": n_val_ok,
            "rows_rejected": sum(val_reasons.values()),
            "rejected_by_reason": dict(val_reasons),
        }
        counts["leakage"] = leakage_report(train_rows, val_rows, spec.duplicate_threshold)
    else:
        train_rows, val_rows, counts["duplicates"], counts["leakage"] = split_rows(ok, spec)
    # Corpora (and the stratified split) come ordered by label: batches of one class would undo
    # each other, so the training rows are shuffled once here and locally every epoch.
    train_rows = train_rows.random_shuffle(seed=spec.seed + 1)
    counts["train_data"].update(rows_rejected=sum(reasons.values()), rejected_by_reason=dict(reasons))

    sample = [row["text"] for row in train_rows.take(2000)]
    if spec.max_length:
        max_length = spec.max_length
    else:
        encoder = TextEncoder.from_dir(resolve_model(spec.base_model), 512)
        max_length = choose_max_length(encoder.token_lengths(sample))
    boilerplate_rows = 0
    if spec.boilerplate_rows:
        train_rows, boilerplate_rows = with_boilerplate(train_rows, spec)
    encode_args = {"model_ref": spec.base_model, "max_length": max_length, "labels": labels}
    tokenised = [
        rows.map_batches(
            encode_batch, fn_kwargs=encode_args, batch_format="pyarrow", batch_size=512
        ).materialize()
        for rows in (train_rows, val_rows)
    ]
    if spec.background_rows:
        tokenised[0] = with_background(tokenised[0], spec, max_length)
    counts.update(
        labels=dict(label_counts),
        background_rows=spec.background_rows,
        boilerplate_rows=boilerplate_rows,
        train_rows=tokenised[0].count(),
        val_rows=tokenised[1].count(),
        max_length=max_length,
        rejects=rejects,
    )
    return PreparedData(tokenised[0], tokenised[1], val_rows, labels, max_length, counts, names)


def read_label_names_file(uri: str) -> list[str]:
    """The names of a label-names file (path or URI): one per non-blank line, in class order."""
    fs, path = resolve_uri(uri)
    try:
        with fs.open_input_stream(path) as stream:
            text = stream.read().decode("utf-8")
    except FileNotFoundError:
        raise TrainError(f"label_names_file {redact_uri(uri)}: no such file") from None
    except UnicodeDecodeError as err:
        raise TrainError(f"label_names_file {redact_uri(uri)}: not UTF-8 text ({err})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def resolve_label_names(spec: TrainSpec, labels: list[str]) -> list[str] | None:
    """The names of `labels` (raw values in class order) from ``label_names`` / ``label_names_file``.

    None when neither is given. A mapping must name every label of the data and nothing else; a list
    (or file) must have one name per label, in class order. Names must be unique, non-empty, and must
    not be the raw value of another class (``evaluate`` accepts either, so they must not collide).
    """
    given: dict[str, str] | list[str] | None = spec.label_names
    source = "label_names"
    if spec.label_names_file is not None:
        given = read_label_names_file(spec.label_names_file)
        source = f"label_names_file {redact_uri(spec.label_names_file)}"
    if given is None:
        return None
    found = ", ".join(labels)
    if isinstance(given, dict):
        extra = [raw for raw in given if raw not in labels]
        if extra:
            raise TrainError(
                f"{source}: {', '.join(map(repr, extra))} is not a label of the data (labels found: {found})"
            )
        missing = [raw for raw in labels if raw not in given]
        if missing:
            raise TrainError(
                f"{source}: no name for label(s) {', '.join(map(repr, missing))}; name every label "
                f"(labels found: {found})"
            )
        names = [given[raw] for raw in labels]
    else:
        if len(given) != len(labels):
            raise TrainError(
                f"{source}: {len(given)} names for {len(labels)} labels; give one name per label in class "
                f"order ({found}), or RAW=NAME pairs"
            )
        names = list(given)
    seen: dict[str, str] = {}
    for raw, name in zip(labels, names, strict=True):
        if not name:
            raise TrainError(f"{source}: label {raw!r} has an empty name")
        if name in seen:
            raise TrainError(
                f"{source}: name {name!r} is given to labels {seen[name]!r} and {raw!r}; names must be unique"
            )
        seen[name] = raw
        if name in labels and name != raw:
            raise TrainError(
                f"{source}: name {name!r} of label {raw!r} is also the raw value of another label; "
                "data labelled either way could not be told apart"
            )
    return names


def split_rows(ok: Any, spec: TrainSpec) -> tuple[Any, Any, dict[str, Any], dict[str, Any]]:
    """(train rows, val rows, duplicate counts, leakage report) of the labelled ok rows.

    Duplicate clusters are found over all rows either way (Ray Data work, see :mod:`bm_ray.corpus.neardup`):
    `grouped` keeps each cluster on one side (stratified by label, seeded); `random` is a seeded
    stratified random split, whose leakage the report then shows.
    """
    from bm_ray.corpus.neardup import find_clusters, grouped_split, leakage_from_edges
    from bm_ray.corpus.shuffle import group_by_input

    found = find_clusters(ok, spec.duplicate_threshold, key_column="id")
    if spec.split == "grouped":
        train_rows, val_rows = grouped_split(ok, found, spec.val_fraction, spec.seed)
    else:
        # Seeded shuffle first: Ray's stratified split itself takes rows in order. It filters with a
        # Python function inside Ray; Ray's "use expr" advice is for Ray's code, not for the user.
        # The stratified split is a group-by per label: on the task-based shuffle (see group_by_input).
        shuffled = ok.random_shuffle(seed=spec.seed).materialize()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Use 'expr' instead of 'fn'", category=UserWarning)
            train_rows, val_rows = group_by_input(shuffled, shuffled.count()).train_test_split(
                test_size=spec.val_fraction, stratify="label"
            )
    val_keys = {
        k
        for batch in val_rows.select_columns(["id"]).iter_batches(batch_format="pyarrow")
        for k in batch.column(0).to_pylist()
    }
    if not val_keys:
        duplicates = found.counts()
        raise ValueError(
            f"the {spec.split} split left no validation rows: the {spec.data.input} corpus's rows fall into "
            f"{duplicates['clusters']} duplicate cluster(s) holding {duplicates['rows_in_clusters']} rows, "
            "and no cluster fits in the validation share. Give a separate validation corpus (--val-data), "
            "raise --val-fraction, or pass --split random (its leakage is then reported)"
        )
    leakage = leakage_from_edges(found.edges, val_keys, len(val_keys), spec.duplicate_threshold)
    return train_rows, val_rows, found.counts(), leakage


def with_background(train: Any, spec: TrainSpec, max_length: int) -> Any:
    """Tokenised training rows plus `spec.background_rows` generic non-topical rows, shuffled together.

    Background rows carry :data:`~bm_ray.jobs.train.background.BACKGROUND_LABEL_ID`: :func:`~bm_ray.jobs.train.loop.classifier_loss`
    trains them towards a uniform distribution (they never enter validation).
    """
    import ray

    from bm_ray.jobs.train.background import BACKGROUND_LABEL_ID, background_texts

    ids = _encoder(spec.base_model, max_length).encode(background_texts(spec.background_rows, spec.seed))
    table = pa.table(
        {
            "input_ids": pa.array([seq.tolist() for seq in ids], type=pa.list_(pa.int32())),
            "label_id": pa.array([BACKGROUND_LABEL_ID] * len(ids), type=pa.int32()),
        }
    )
    return train.union(ray.data.from_arrow(table)).random_shuffle(seed=spec.seed + 2).materialize()


def with_boilerplate(train_rows: Any, spec: TrainSpec) -> tuple[Any, int]:
    """(training rows plus copies of `spec.boilerplate_rows` of them behind page boilerplate, copies made).

    The copies are a seeded sample of the training rows (all of them when fewer), their texts put in a
    page by :func:`~bm_ray.jobs.train.background.behind_boilerplate`; labels are kept. Ids get a ``#page`` suffix
    so every row stays unique, and originals and copies are shuffled together.
    """
    from bm_ray.jobs.train.background import behind_boilerplate

    rows = train_rows.materialize()
    copies = min(spec.boilerplate_rows, rows.count())
    paged = (
        rows.random_shuffle(seed=spec.seed + 3)
        .limit(copies)
        .map_batches(behind_boilerplate, fn_kwargs={"seed": spec.seed}, batch_format="pyarrow")
        .map_batches(_page_ids, batch_format="pyarrow")
    )
    return rows.union(paged).random_shuffle(seed=spec.seed + 4).materialize(), copies


def _page_ids(batch: pa.Table) -> pa.Table:
    ids = pa.array([f"{i}#page" for i in batch.column("id").to_pylist()], pa.string())
    return batch.set_column(batch.schema.get_field_index("id"), "id", ids)


def _mark_reason(batch: pa.Table, reason: str) -> pa.Table:
    return batch.set_column(
        batch.schema.get_field_index("reason"),
        "reason",
        pa.array([reason] * batch.num_rows, type=pa.string()),
    )
