"""`bm-ray train`: data-parallel BERT fine-tuning with Ray Train (TensorflowTrainer + MultiWorkerMirroredStrategy).

Ray Data ingests, validates and tokenises (shared preprocessing path) ahead of the workers; each
worker reads only its own shard, batches rows of similar length and pads each batch to its own
longest row. Every epoch rank 0 validates with the shared predictor engine, and all workers report
metrics plus a checkpoint (a complete model directory). Worker or node loss restarts the worker
group from the latest checkpoint (FailureConfig); rerunning with `--resume` continues a run whose
driver died.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import re
import shutil
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pyarrow as pa
from ray.data.expressions import col

from bm_ray.corpus.neardup import leakage_report
from bm_ray.jobs.scoring import MISSING_LABEL, UNKNOWN_LABEL
from bm_ray.jobs.train.resume import OPTIMIZER_STATE_FILE, RUN_DIR
from bm_ray.model.registry import ModelInfo, resolve_model
from bm_ray.runtime.logs import PROGRESS_LOG_S
from bm_ray.runtime.tf import import_tensorflow
from bm_ray.specs import IngestSpec, TrainSpec, TuneParam
from bm_ray.storage import is_remote, join_uri, redact, redact_uri, resolve_uri, upload_dir

tf = import_tensorflow()

logger = logging.getLogger(__name__)

TRAIN_STATE_FILE = "train_state.json"


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


def _read_rows(ingest: IngestSpec, name: str) -> tuple[Any, Any, Counter[str], Counter[str], int]:
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

    ok, rejects, reasons, label_counts, rows_read = _read_rows(spec.data, "data")
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
        val_ok, val_rejects, val_reasons, val_labels, val_read = _read_rows(spec.val_data, "val_data")
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
    from bm_ray.corpus.neardup import assign_clusters, find_clusters, leakage_from_edges, split_by_cluster

    found = find_clusters(ok, spec.duplicate_threshold, key_column="id")
    if spec.split == "grouped":
        ok = ok.map_batches(
            assign_clusters,
            fn_kwargs={"cluster_of": found.cluster_of, "key_column": "id"},
            batch_format="pyarrow",
        )
        train_rows, val_rows = split_by_cluster(ok, spec.val_fraction, spec.seed)
    else:
        # Seeded shuffle first: Ray's stratified split itself takes rows in order. It filters with a
        # Python function inside Ray; Ray's "use expr" advice is for Ray's code, not for the user.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Use 'expr' instead of 'fn'", category=UserWarning)
            train_rows, val_rows = ok.random_shuffle(seed=spec.seed).train_test_split(
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

    Background rows carry :data:`~bm_ray.jobs.train.background.BACKGROUND_LABEL_ID`: :func:`classifier_loss`
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


def epoch_batches(blocks: Any, batch_size: int, steps: int, seed: int = 0) -> Any:
    """Length-bucketed, dynamically padded (inputs, labels) batches for one epoch.

    `blocks` yields dicts with `input_ids` (token id arrays) and `label_id` (e.g. a Ray Data shard's
    `iter_batches(batch_format="numpy")`). Exactly `steps` batches come out on every worker
    (MultiWorkerMirroredStrategy needs the same number of steps everywhere); a shard that runs
    short repeats its first batch. Batches of one window are visited in a seeded random order, so
    short and long batches interleave.
    """
    from bm_ray.model.preprocess import length_batches, pad_batch

    rng = np.random.default_rng(seed)
    produced = 0
    first = None
    for block in blocks:
        sequences = block["input_ids"]
        label_ids = block["label_id"]
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
        batches = length_batches(lengths, batch_size, window=len(lengths))
        for k in rng.permutation(len(batches)):
            batch = batches[k]
            ids, mask = pad_batch([np.asarray(sequences[i], dtype=np.int32) for i in batch])
            item = ({"input_ids": ids, "attention_mask": mask}, label_ids[batch].astype(np.int32))
            first = first or item
            if produced < steps:
                produced += 1
                yield item
    while produced < steps and first is not None:
        produced += 1
        yield first


SORT_WINDOW_BATCHES = 64
"""Rows of this many batches are sorted by length together: bounded memory, similar-length batches."""


def batch_signature() -> tuple[Any, Any]:
    """tf.data element spec of :func:`epoch_batches`: any batch size, any padded length."""
    return (
        {
            "input_ids": tf.TensorSpec([None, None], tf.int32),
            "attention_mask": tf.TensorSpec([None, None], tf.int32),
        },
        tf.TensorSpec([None], tf.int32),
    )


def classifier_loss(num_labels: int, label_smoothing: float) -> Any:
    """Per-row cross-entropy on logits for integer label ids, with optional label smoothing.

    Background rows (label id :data:`~bm_ray.jobs.train.background.BACKGROUND_LABEL_ID`, ``--background-rows``)
    are trained towards the uniform distribution: generic non-topical text should get a flat answer,
    so windows of boilerplate carry little weight when a long article's windows are aggregated.
    """
    from bm_ray.jobs.train.background import BACKGROUND_LABEL_ID

    def loss(y_true: Any, logits: Any) -> Any:
        # Per-example losses: Keras reduces them (a Loss object called here would not distribute).
        label_ids = tf.cast(tf.reshape(y_true, [-1]), tf.int32)
        log_probs = tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1)
        one_hot = tf.one_hot(tf.maximum(label_ids, 0), num_labels)
        smoothed = one_hot * (1.0 - label_smoothing) + label_smoothing / num_labels
        uniform = tf.fill(tf.shape(log_probs), 1.0 / num_labels)
        target = tf.where((label_ids == BACKGROUND_LABEL_ID)[:, None], uniform, smoothed)
        return -tf.reduce_sum(target * log_probs, axis=-1)

    return loss


def _compile(model: Any, optimizer: Any, labels: list[str], config: dict[str, Any]) -> None:
    model.compile(
        optimizer=optimizer,
        loss=classifier_loss(len(labels), config.get("label_smoothing", 0.0)),
        metrics=[tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )


def compile_classifier(weights_from: str, labels: list[str], total_steps: int, config: dict[str, Any]) -> Any:
    """The classifier with AdamW, linear warm-up then linear decay, and the loss, compiled (call in scope)."""
    from bm_ray.jobs.train.optimizer import create_optimizer
    from bm_ray.model.engine import gpu_available, keras_precision
    from bm_ray.model.registry import build_classifier

    precision = "fp32"
    if config["mixed_precision"]:
        precision = "fp16" if gpu_available() else "bf16"
    dropout = config.get("dropout")
    overrides = (
        {}
        if dropout is None
        else {
            "hidden_dropout_prob": dropout,
            "attention_probs_dropout_prob": dropout,
            "classifier_dropout": dropout,
        }
    )
    with keras_precision(precision):
        model = build_classifier(weights_from, labels, **overrides)
        optimizer = create_optimizer(
            init_lr=config["learning_rate"],
            num_train_steps=total_steps,
            num_warmup_steps=int(config["warmup_fraction"] * total_steps),
            weight_decay_rate=config["weight_decay"],
            layer_decay=config.get("layer_lr_decay", 1.0),
            num_layers=model.config.num_hidden_layers,
        )
        _compile(model, optimizer, labels, config)
    return model


def warm_up_head(model: Any, dataset: Any, steps: int, labels: list[str], config: dict[str, Any]) -> float:
    """Train the classifier head alone (encoder frozen) for `steps` at `head_learning_rate`; returns its loss.

    The base is a mean-pooling sentence model: a fresh head on its [CLS] pooler starts far from useful,
    and full fine-tuning from there spends its first steps (at the peak learning rate) on the head.
    Call in the strategy scope; the model comes back compiled with its own optimizer, all weights trainable.
    """
    main_optimizer = model.optimizer
    model.bert.trainable = False
    _compile(model, tf.keras.optimizers.Adam(config["head_learning_rate"]), labels, config)
    fit = model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0)
    model.bert.trainable = True
    _compile(model, main_optimizer, labels, config)
    return float(fit.history["loss"][-1])


def distribution_strategy() -> Any:
    """MultiWorkerMirroredStrategy with NCCL all-reduce on GPU workers and ring all-reduce on CPU workers.

    Named rather than left to TF's AUTO so GPU workers all-reduce gradients on the devices with NCCL
    (TF falls back to RING for what NCCL does not cover); NCCL has no CPU path, so CPU workers use RING.
    Ray Train has set TF_CONFIG (the cluster) by the time this runs.
    """
    gpu = bool(tf.config.list_physical_devices("GPU"))
    implementation = tf.distribute.experimental.CommunicationImplementation
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=implementation.NCCL if gpu else implementation.RING
    )
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: build under the strategy, fit an epoch, validate, report, checkpoint."""
    import os

    import ray.data
    import ray.train
    from transformers import AutoTokenizer

    from bm_ray.jobs.train.resume import restore_optimizer_state, save_optimizer_state
    from bm_ray.model.engine import Predictor, configure_threads
    from bm_ray.model.registry import save_model_dir
    from bm_ray.runtime.logs import configure_logging, quiet_ray_train_reports

    configure_logging()  # a Ray worker process: the level comes with the runtime_env
    quiet_ray_train_reports()
    configure_threads(config["threads"])
    tf.keras.utils.set_random_seed(config["seed"])
    ray.data.DataContext.get_current().enable_progress_bars = False  # the epoch progress lines say it better
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    strategy = distribution_strategy()
    labels: list[str] = config["labels"]
    per_worker_batch = config["batch_size"] // world
    steps = max(1, math.ceil(config["train_rows"] // world / per_worker_batch))
    total_steps = steps * config["epochs"]

    start_epoch, history, recoveries = 0, [], []
    checkpoint = ray.train.get_checkpoint()
    weights_from = resolve_model(config["base_model"])
    restored_dir = None
    if checkpoint is not None:
        restored_dir = tempfile.mkdtemp(prefix="bm-ray-restore-")
        checkpoint.to_directory(restored_dir)
        state = json.loads((Path(restored_dir) / TRAIN_STATE_FILE).read_text(encoding="utf-8"))
        start_epoch, history = state["epoch"], state["history"]
        recoveries = [*state.get("recoveries", []), start_epoch]
        weights_from = restored_dir
        logger.info("rank %d: resuming after epoch %d from checkpoint", rank, start_epoch)

    options = tf.data.Options()
    # Each worker already holds only its own Ray Data shard: TF must not shard it again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    shard = ray.train.get_dataset_shard("train")
    per_worker_window = per_worker_batch * SORT_WINDOW_BATCHES

    def epoch_dataset(epoch_seed: int, epoch_steps: int) -> Any:
        blocks = shard.iter_batches(
            batch_size=per_worker_window,
            batch_format="numpy",
            local_shuffle_buffer_size=per_worker_window,
            local_shuffle_seed=epoch_seed,
        )
        return tf.data.Dataset.from_generator(
            lambda: epoch_batches(blocks, per_worker_batch, epoch_steps, epoch_seed),
            output_signature=batch_signature(),
        ).with_options(options)

    with strategy.scope():
        model = compile_classifier(weights_from, labels, total_steps, config)
        head_steps = math.ceil(config["head_warmup"] * steps)
        if head_steps and checkpoint is None:
            head_loss = warm_up_head(
                model, epoch_dataset(config["seed"] * 1000 + 999, head_steps), head_steps, labels, config
            )
            if rank == 0:
                logger.info("head warm-up: %d steps, loss %.4f", head_steps, head_loss)
        model.optimizer.iterations.assign(start_epoch * steps)  # the LR schedule continues after a restore
        if restored_dir:
            restore_optimizer_state(model.optimizer, model, restored_dir)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(config["base_model"]))
    # An empty version is stamped from the weights of each checkpoint when it is saved.
    info = ModelInfo(
        labels,
        config["max_length"],
        config["name"],
        "",
        redact_uri(config["base_model"]),
        raw_labels=config.get("raw_labels"),
    )
    predictor = Predictor(model, tokenizer, info, batch_size=64)
    # TF writes summaries to local disks only: for an object-store output rank 0 writes a local copy
    # and uploads it every epoch, so the events land in the output whichever node ran rank 0.
    tensorboard_target = config["tensorboard_dir"]
    tensorboard_local = tempfile.mkdtemp(prefix="bm-ray-tb-") if is_remote(tensorboard_target) else None
    tensorboard = (
        tf.summary.create_file_writer(tensorboard_local or tensorboard_target) if rank == 0 else None
    )

    for epoch in range(start_epoch, config["epochs"]):
        started = time.time()
        dataset = epoch_dataset(config["seed"] * 1000 + epoch * 10 + rank, steps)
        progress = EpochProgress(rank, epoch, config["epochs"], steps, config["batch_size"])
        fit = model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[progress])
        train_seconds = time.time() - started
        metrics: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": float(fit.history["loss"][-1]),
            "train_accuracy": float(fit.history["accuracy"][-1]),
            "train_rows_per_s": steps * config["batch_size"] / train_seconds,
            "epoch_train_s": train_seconds,
            "recovered_after_epochs": list(recoveries),
        }
        checkpoint_out = None
        if rank == 0:
            if config["validate"]:
                metrics.update(_validate(predictor, ray.train.get_dataset_shard("val"), labels))
            else:  # a refit trains on the validation rows too: its "validation" would be no measure
                metrics.update(val_loss=float("nan"), val_accuracy=float("nan"), val_macro_f1=float(epoch))
            history.append(metrics)
            logger.info(
                "epoch %d/%d: train loss %.4f acc %.4f | val loss %.4f acc %.4f macro-F1 %.4f | %.1f rows/s",
                epoch + 1,
                config["epochs"],
                metrics["train_loss"],
                metrics["train_accuracy"],
                metrics["val_loss"],
                metrics["val_accuracy"],
                metrics["val_macro_f1"],
                metrics["train_rows_per_s"],
            )
            with tensorboard.as_default(step=epoch + 1):
                for key, value in metrics.items():
                    if isinstance(value, int | float):
                        tf.summary.scalar(key, value)
            tensorboard.flush()
            if tensorboard_local:
                upload_dir(tensorboard_local, tensorboard_target)
            checkpoint_dir = tempfile.mkdtemp(prefix="bm-ray-ckpt-")
            save_model_dir(model, tokenizer, info, checkpoint_dir)
            save_optimizer_state(model.optimizer, checkpoint_dir)
            state = {"epoch": epoch + 1, "history": history, "recoveries": recoveries}
            (Path(checkpoint_dir) / TRAIN_STATE_FILE).write_text(json.dumps(state), encoding="utf-8")
            checkpoint_out = ray.train.Checkpoint.from_directory(checkpoint_dir)
        # The latest report carries the whole history: the best checkpoint's own copy stops at its epoch.
        ray.train.report({**metrics, "history": list(history)}, checkpoint=checkpoint_out)
        if checkpoint_out is not None:
            shutil.rmtree(checkpoint_out.path, ignore_errors=True)
    for scratch in (restored_dir, tensorboard_local):
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    os.environ.pop("TF_CONFIG", None)


def _validate(predictor: Any, val_shard: Any, labels: list[str]) -> dict[str, float]:
    """Validation loss, accuracy and macro-F1 on the whole validation set, through the shared engine."""
    from bm_ray.model.metrics import ConfusionMatrix

    matrix = ConfusionMatrix(labels)
    loss_sum = 0.0
    for block in val_shard.iter_batches(batch_size=1024, batch_format="numpy"):
        sequences = [np.asarray(seq, dtype=np.int32) for seq in block["input_ids"]]
        true_ids = block["label_id"].astype(np.int64)
        probs = predictor.predict_tokens(sequences)
        matrix.add_indices(true_ids, probs.argmax(axis=1))
        loss_sum += float(-np.log(np.clip(probs[np.arange(len(true_ids)), true_ids], 1e-12, 1.0)).sum())
    report = matrix.report()
    return {
        "val_loss": loss_sum / max(matrix.total, 1),
        "val_accuracy": report["accuracy"],
        "val_macro_f1": report["macro_f1"],
    }


class EpochProgress(tf.keras.callbacks.Callback):
    """Epoch/step, rows/s and ETA on rank 0 every tenth of an epoch, at most one line per
    :data:`~bm_ray.runtime.logs.PROGRESS_LOG_S` (visible in the driver's log), and at the epoch's last step."""

    def __init__(self, rank: int, epoch: int, epochs: int, steps: int, global_batch: int) -> None:
        super().__init__()
        self.rank, self.epoch, self.epochs, self.steps = rank, epoch, epochs, steps
        self.global_batch = global_batch
        self.every = max(1, steps // 10)
        self.started = self.logged = time.time()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        """Start the epoch clock."""
        self.started = self.logged = time.time()

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        """Print progress every `every` steps (no sooner than PROGRESS_LOG_S after the last line) and at
        the last step: a short epoch (the demo's 12 steps) gets a line per 10 s, not one per step."""
        done = batch + 1
        if self.rank != 0:
            return
        now = time.time()
        if done != self.steps and (done % self.every or now - self.logged < PROGRESS_LOG_S):
            return
        self.logged = now
        elapsed = now - self.started
        eta = (self.steps - done) * elapsed / done
        logger.info(
            "epoch %d/%d step %d/%d %.1f rows/s ETA %.0fs",
            self.epoch + 1,
            self.epochs,
            done,
            self.steps,
            done * self.global_batch / elapsed,
            eta,
        )


def run_name(output: str) -> str:
    """Stable Ray Train run name for an output location (the key `--resume` finds the run by)."""
    return "bm-ray-train-" + hashlib.blake2b(output.encode(), digest_size=6).hexdigest()


def fit_trainer(
    spec: TrainSpec,
    config: dict[str, Any],
    datasets: dict[str, Any],
    name: str,
    storage: str,
    callbacks: list[Any] | None = None,
) -> Any:
    """One TensorflowTrainer run (fault tolerant, checkpointed) with its runs under the `storage` URI;
    returns the Ray Train result.

    `callbacks` are Ray Train run callbacks (e.g. Tune's report callback when run as a Tune trial).
    """
    import ray.data
    import ray.train
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    from bm_ray.runtime.logs import verbose
    from bm_ray.runtime.ray_init import runtime_env

    # An explicit filesystem: URI options (endpoint_override, credentials) survive path joins.
    storage_fs, storage_path = resolve_uri(storage)
    # The trainer hands this DataContext to its dataset split coordinator and workers: their progress
    # bars, relayed from remote processes, would interleave with the epoch lines that say it better.
    ray.data.DataContext.get_current().enable_progress_bars = False
    trainer = TensorflowTrainer(
        train_loop_per_worker=train_loop_per_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=spec.workers,
            use_gpu=spec.gpus_per_worker > 0,
            resources_per_worker={"CPU": spec.cpus_per_worker, "GPU": spec.gpus_per_worker},
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            checkpoint_config=CheckpointConfig(
                num_to_keep=spec.keep_checkpoints,
                checkpoint_score_attribute="val_macro_f1",
                checkpoint_score_order="max",
            ),
            failure_config=FailureConfig(max_failures=spec.max_failures),
            worker_runtime_env=runtime_env(),
            # Ray Train's INFO lines (worker group start, every reported result and checkpoint) repeat
            # what bm-ray's epoch lines say; --verbose keeps them.
            logging_config=ray.train.LoggingConfig(log_level="DEBUG" if verbose() else "WARNING"),
            callbacks=callbacks,
        ),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    return result


def train_config(spec: TrainSpec, data: PreparedData, tensorboard_dir: str) -> dict[str, Any]:
    """The train loop's config: labels, data shape and the recipe options of the spec."""
    return {
        "labels": data.names or data.labels,
        "raw_labels": data.labels if data.names else None,
        "max_length": data.max_length,
        "train_rows": data.counts["train_rows"],
        "base_model": spec.base_model,
        "name": Path(redact_uri(spec.output).split("?", 1)[0].rstrip("/")).name or "bm-ray-model",
        "tensorboard_dir": tensorboard_dir,
        "threads": max(1, int(spec.cpus_per_worker)),
        "validate": True,
        # every recipe option (those `bm-ray tune` may search) and the run's seed and precision
        **spec.model_dump(include={*get_args(TuneParam), "seed", "mixed_precision"}),
    }


def train(spec: TrainSpec) -> dict[str, Any]:
    """Run the training job end to end and write the model directory; returns metrics.json's content."""
    from bm_ray.corpus.neardup import leakage_warning
    from bm_ray.jobs.train.resume import prepare_train_output, record_labels
    from bm_ray.report.pages import try_build_report
    from bm_ray.runtime.ray_init import init_ray

    started = time.time()
    prepare_train_output(spec)  # refuses a finished output or a resume of another run, before any work
    resolve_model(spec.base_model)  # a missing path or an offline download fails here, not in a worker
    init_ray(spec.address)
    remote_output = is_remote(spec.output)
    local_output = Path(tempfile.mkdtemp(prefix="bm-ray-model-")) if remote_output else Path(spec.output)
    local_output.mkdir(parents=True, exist_ok=True)
    storage = join_uri(spec.output, RUN_DIR)
    name = run_name(spec.output)

    data = prepare_data(spec)
    record_labels(spec, data.labels)
    rejects = data.counts.pop("rejects")
    logger.info(
        "training on %d rows, validating on %d, %d labels, max_length %d, %d workers, split %s",
        data.counts["train_rows"],
        data.counts["val_rows"],
        len(data.labels),
        data.max_length,
        spec.workers,
        spec.split if spec.val_data is None else "val_data",
    )
    warning = leakage_warning(data.counts["leakage"])
    if warning:
        logger.warning("%s", warning)
    tensorboard_dir = (
        join_uri(spec.output, "tensorboard") if remote_output else str(local_output / "tensorboard")
    )
    config = train_config(spec, data, tensorboard_dir)
    result = fit_trainer(spec, config, {"train": data.train, "val": data.val}, name, storage)
    best_checkpoint, _ = max(result.best_checkpoints, key=lambda item: item[1]["val_macro_f1"])
    report = _finish(spec, data, rejects, best_checkpoint, result.metrics, local_output, started)
    if spec.refit:
        from bm_ray.model.registry import read_model_info, write_model_info

        selected = read_model_info(local_output)
        report["refit"] = _refit(spec, data, config, report["best_epoch"], name, storage, local_output)
        calibration = report["calibration"]
        if calibration is not None:  # the refit's labels.json came from its checkpoint
            refitted = read_model_info(local_output)
            write_model_info(
                replace(
                    refitted,
                    temperature=selected.temperature,
                    top_label_calibration=selected.top_label_calibration,
                ),
                local_output,
            )
            refit_note = (
                "fitted on the selection run's validation rows and applied to the refit weights, which "
                "then trained on those rows: no held-out rows are left to fit it on"
            )
            calibration["note"] = (
                f"{calibration['note']}; {refit_note}" if "note" in calibration else refit_note
            )
        report["elapsed_s"] = round(time.time() - started, 1)
        (local_output / "metrics.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    try_build_report(str(local_output))
    if remote_output:
        upload_dir(local_output, spec.output)
    return report


def _refit(
    spec: TrainSpec,
    data: PreparedData,
    config: dict[str, Any],
    epochs: int,
    name: str,
    storage: str,
    local_output: Path,
) -> dict[str, Any]:
    """Retrain the selected configuration for its best epoch count on train + validation rows; its
    last checkpoint becomes the model directory's weights (labels, max_length unchanged)."""
    started = time.time()
    rows = data.train.union(data.val).random_shuffle(seed=spec.seed + 2).materialize()
    refit_config = {**config, "epochs": epochs, "train_rows": rows.count(), "validate": False}
    result = fit_trainer(spec, refit_config, {"train": rows, "val": data.val}, f"{name}-refit", storage)
    result.checkpoint.to_directory(str(local_output))
    for state_file in (TRAIN_STATE_FILE, OPTIMIZER_STATE_FILE):  # resume state, not part of the model
        (local_output / state_file).unlink(missing_ok=True)
    return {
        "rows": refit_config["train_rows"],
        "epochs": epochs,
        "train_s": round(time.time() - started, 1),
        "note": "the model directory holds the refit weights; accuracy, epochs and leakage above are the "
        "selection run's, measured on the validation rows the refit then trained on",
    }


def calibrate_model(predictor: Any, val_rows: Any, model_dir: Path) -> dict[str, Any]:
    """Fit the calibration on the validation rows (temperature, then the top-label map when there are
    :data:`~bm_ray.model.calibration.TOP_LABEL_MIN_ROWS` rows or more), store it in `model_dir`'s
    labels.json and in `predictor`; returns the fit's report (ECE and log-loss before and after).

    The logits come through the engine the model is served with (same tokenisation and windows),
    and both stages are fitted on the aggregated probabilities it answers with.
    """
    from bm_ray.jobs.scoring import corpus_batches
    from bm_ray.model.calibration import (
        TOP_LABEL_MIN_ROWS,
        calibration_report,
        fit_temperature,
        fit_top_label_map,
        temperature_softmax,
    )
    from bm_ray.model.registry import write_model_info

    to_name = predictor.info.label_lookup()
    index = {label: i for i, label in enumerate(predictor.labels)}
    logits, counts, label_ids = [], [], []
    for texts, labels, _ in corpus_batches(val_rows, Counter()):
        unit_logits, unit_counts = predictor.unit_logits(texts)
        logits.append(unit_logits)
        counts.append(unit_counts)
        label_ids.extend(index[to_name[label]] for label in labels)
    all_logits = np.concatenate(logits) if logits else np.zeros((0, len(index)), np.float32)
    all_counts = np.concatenate(counts) if counts else np.zeros(0, np.int64)
    ids = np.asarray(label_ids, dtype=np.int64)
    combine = functools.partial(predictor.combine_windows, counts=all_counts)
    temperature = fit_temperature(all_logits, ids, combine)
    top_label = None
    if len(ids) >= TOP_LABEL_MIN_ROWS:
        tempered = combine(temperature_softmax(all_logits, temperature))
        top_label = fit_top_label_map(tempered.max(axis=1), tempered.argmax(axis=1) == ids)
    info = replace(predictor.info, temperature=temperature, top_label_calibration=top_label)
    write_model_info(info, model_dir)
    predictor.info = info
    report = calibration_report(all_logits, ids, temperature, combine, top_label)
    if top_label is None:
        report["note"] = (
            f"top-label map not fitted: {len(ids)} validation rows, it needs {TOP_LABEL_MIN_ROWS} "
            "(--val-fraction or --val-data give more); the temperature alone calibrates the scores"
            if len(ids) < TOP_LABEL_MIN_ROWS
            else "top-label map not fitted: the validation scores do not rank right above wrong rows"
        )
    logger.info(
        "calibration: temperature %.3f, top-label map %s, validation ECE %.4f -> %.4f, log-loss %.4f -> %.4f",
        temperature,
        "fitted" if top_label else "not fitted",
        report["before"]["ece"],
        report["after"]["ece"],
        report["before"]["log_loss"],
        report["after"]["log_loss"],
    )
    return report


def _finish(
    spec: TrainSpec,
    data: PreparedData,
    rejects: Any,
    checkpoint: Any,
    latest_metrics: dict[str, Any],
    local_output: Path,
    started: float,
) -> dict[str, Any]:
    """Materialise the best checkpoint as the model directory, evaluate it, write metrics and plots."""
    from bm_ray.jobs.scoring import PredictionLog, corpus_batches, evaluate_batches, write_report
    from bm_ray.model.engine import Predictor
    from bm_ray.model.metrics import plot_training_curves

    checkpoint.to_directory(str(local_output))
    state = json.loads((local_output / TRAIN_STATE_FILE).read_text(encoding="utf-8"))
    (local_output / TRAIN_STATE_FILE).unlink()
    (local_output / OPTIMIZER_STATE_FILE).unlink(missing_ok=True)  # resume state, not part of the model
    predictor = Predictor.load(str(local_output), batch_size=64)
    calibration = calibrate_model(predictor, data.val_rows, local_output) if spec.calibrate else None
    log = PredictionLog()
    # The selected model with its temperature: the validation metrics are the calibrated scores'.
    report = evaluate_batches(predictor, corpus_batches(data.val_rows, Counter()), log)
    report.update(
        calibration=calibration,
        epochs=latest_metrics.get("history") or state["history"],
        best_epoch=state["epoch"],
        recovered_after_epochs=latest_metrics.get("recovered_after_epochs", []),
        leakage=data.counts.pop("leakage"),
        data=data.counts,
        spec=redact(spec.model_dump(mode="json")),
        elapsed_s=round(time.time() - started, 1),
    )
    if rejects.count():
        # Written by Ray Data tasks on any node: straight into the output, never a driver-local path.
        rejects_fs, rejects_path = resolve_uri(join_uri(spec.output, "rejects"))
        rejects.drop_columns(["_unit", "_row"]).write_parquet(rejects_path, filesystem=rejects_fs)
    write_report(report, local_output, title="validation", log=log)
    plot_training_curves(report["epochs"], local_output / "training_curves.png")
    return report
