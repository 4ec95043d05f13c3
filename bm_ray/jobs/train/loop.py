"""Everything that runs inside a Ray Train worker of `bm-ray train` (the TensorFlow side of training).

:func:`train_loop_per_worker` builds the classifier under a MultiWorkerMirroredStrategy, continues from
Ray Train's checkpoint when the worker group was restarted, fits one epoch at a time on the worker's
Ray Data shard (:mod:`~bm_ray.jobs.train.batches`), and on rank 0 validates, logs, writes the
TensorBoard events and saves the checkpoint every worker reports with.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bm_ray.jobs.train.batches import ShardEpochs
from bm_ray.layout import TRAIN_STATE_FILE
from bm_ray.model.registry import ModelInfo, resolve_model
from bm_ray.runtime.logs import PROGRESS_LOG_S
from bm_ray.runtime.tf import import_tensorflow
from bm_ray.storage import is_remote, redact_uri, upload_dir

tf = import_tensorflow()

logger = logging.getLogger(__name__)


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


@dataclass
class RunState:
    """A worker's place in the run: the epoch it starts at, the epochs done (rank 0 adds each one it
    finishes), and the weights it builds from."""

    weights_from: str
    """The base model, or the restored checkpoint's directory."""
    start_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    recoveries: list[int] = field(default_factory=list)
    """Epochs after which the worker group restarted from a checkpoint (this start included)."""
    restored_dir: str | None = None
    """Scratch copy of the restored checkpoint, removed when the loop ends; None on a fresh start."""


def restore_run(checkpoint: Any, base_model: str, rank: int) -> RunState:
    """Where this worker starts: after the epochs of Ray Train's latest `checkpoint` (the worker group
    restarted after a failure, or ``--resume``), else fresh from `base_model`."""
    if checkpoint is None:
        return RunState(weights_from=resolve_model(base_model))
    restored_dir = tempfile.mkdtemp(prefix="bm-ray-restore-")
    checkpoint.to_directory(restored_dir)
    state = json.loads((Path(restored_dir) / TRAIN_STATE_FILE).read_text(encoding="utf-8"))
    logger.info("rank %d: resuming after epoch %d from checkpoint", rank, state["epoch"])
    return RunState(
        weights_from=restored_dir,
        start_epoch=state["epoch"],
        history=state["history"],
        recoveries=[*state.get("recoveries", []), state["epoch"]],
        restored_dir=restored_dir,
    )


def prepare_worker(config: dict[str, Any]) -> None:
    """This worker process: bm-ray's logging, Ray Train's per-report line off, the thread budget, the seed."""
    import ray.data

    from bm_ray.model.engine import configure_threads
    from bm_ray.runtime.logs import configure_logging, quiet_ray_train_reports

    configure_logging()  # a Ray worker process: the level comes with the runtime_env
    quiet_ray_train_reports()
    configure_threads(config["threads"])
    tf.keras.utils.set_random_seed(config["seed"])
    ray.data.DataContext.get_current().enable_progress_bars = False  # the epoch progress lines say it better


def build_model(run: RunState, epochs: ShardEpochs, steps: int, config: dict[str, Any], rank: int) -> Any:
    """The compiled classifier (call in the strategy scope): its head warmed up on a fresh start, its
    optimizer at the step and state where a restored run left it."""
    from bm_ray.jobs.train.resume import restore_optimizer_state

    labels: list[str] = config["labels"]
    model = compile_classifier(run.weights_from, labels, steps * config["epochs"], config)
    head_steps = math.ceil(config["head_warmup"] * steps)
    if head_steps and run.restored_dir is None:
        head_loss = warm_up_head(
            model, epochs.dataset(config["seed"] * 1000 + 999, head_steps), head_steps, labels, config
        )
        if rank == 0:
            logger.info("head warm-up: %d steps, loss %.4f", head_steps, head_loss)
    model.optimizer.iterations.assign(run.start_epoch * steps)  # the LR schedule continues after a restore
    if run.restored_dir:
        restore_optimizer_state(model.optimizer, model, run.restored_dir)
    return model


def epoch_predictor(model: Any, config: dict[str, Any]) -> Any:
    """The shared predictor engine over the model in training: rank 0 validates and saves checkpoints with it."""
    from transformers import AutoTokenizer

    from bm_ray.model.engine import Predictor

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(config["base_model"]))
    # An empty version is stamped from the weights of each checkpoint when it is saved.
    info = ModelInfo(
        config["labels"],
        config["max_length"],
        config["name"],
        "",
        redact_uri(config["base_model"]),
        raw_labels=config.get("raw_labels"),
    )
    return Predictor(model, tokenizer, info, batch_size=64)


class EpochSummaries:
    """Rank 0's TensorBoard events: every numeric metric of every epoch (and, for a tracked run, the
    recipe as MLflow params and the same metrics at step = epoch: :class:`bm_ray.jobs.tracking.EpochLog`).

    TF writes summaries to local disks only: for an object-store output a local copy is written and
    uploaded every epoch, so the events land in the output whichever node ran rank 0.
    """

    def __init__(self, target: str, config: dict[str, Any] | None = None) -> None:
        self.target = target
        self.local = tempfile.mkdtemp(prefix="bm-ray-tb-") if is_remote(target) else None
        self.writer = tf.summary.create_file_writer(self.local or target)
        self.tracking = None
        if config and config.get("mlflow"):
            from bm_ray.jobs.tracking import EpochLog

            self.tracking = EpochLog(config["mlflow"])
            self.tracking.log_params(config)

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        """The numeric `metrics` at `step`, flushed (and uploaded)."""
        with self.writer.as_default(step=step):
            for key, value in metrics.items():
                if isinstance(value, int | float):
                    tf.summary.scalar(key, value)
        self.writer.flush()
        if self.local:
            upload_dir(self.local, self.target)
        if self.tracking is not None:
            self.tracking.log_epoch(step, metrics)

    def close(self) -> None:
        """Remove the local copy (its events are uploaded)."""
        if self.local:
            shutil.rmtree(self.local, ignore_errors=True)


def fit_epoch(
    model: Any, epochs: ShardEpochs, epoch: int, steps: int, rank: int, config: dict[str, Any], run: RunState
) -> dict[str, Any]:
    """Train one epoch of `steps` steps on this worker's shard; the epoch's training metrics."""
    started = time.time()
    dataset = epochs.dataset(config["seed"] * 1000 + epoch * 10 + rank, steps)
    progress = EpochProgress(rank, epoch, config["epochs"], steps, config["batch_size"])
    fit = model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[progress])
    train_seconds = time.time() - started
    return {
        "epoch": epoch + 1,
        "train_loss": float(fit.history["loss"][-1]),
        "train_accuracy": float(fit.history["accuracy"][-1]),
        "train_rows_per_s": steps * config["batch_size"] / train_seconds,
        "epoch_train_s": train_seconds,
        "recovered_after_epochs": list(run.recoveries),
    }


def finish_epoch(
    predictor: Any,
    summaries: EpochSummaries,
    run: RunState,
    epoch: int,
    metrics: dict[str, Any],
    config: dict[str, Any],
) -> Any:
    """Rank 0 after `epoch`: validate into `metrics`, log them, write the summaries, save the checkpoint.

    Returns the Ray Train checkpoint (its scratch directory is removed once it is reported).
    """
    import ray.train

    from bm_ray.jobs.train.resume import save_optimizer_state
    from bm_ray.model.registry import save_model_dir

    if config["validate"]:
        metrics.update(_validate(predictor, ray.train.get_dataset_shard("val"), config["labels"]))
    else:  # a refit trains on the validation rows too: its "validation" would be no measure
        metrics.update(val_loss=float("nan"), val_accuracy=float("nan"), val_macro_f1=float(epoch))
    run.history.append(metrics)
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
    summaries.write(epoch + 1, metrics)
    checkpoint_dir = tempfile.mkdtemp(prefix="bm-ray-ckpt-")
    save_model_dir(predictor.model, predictor.encoder.tokenizer, predictor.info, checkpoint_dir)
    save_optimizer_state(predictor.model.optimizer, checkpoint_dir)
    state = {"epoch": epoch + 1, "history": run.history, "recoveries": run.recoveries}
    (Path(checkpoint_dir) / TRAIN_STATE_FILE).write_text(json.dumps(state), encoding="utf-8")
    return ray.train.Checkpoint.from_directory(checkpoint_dir)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: build under the strategy, fit an epoch, validate, report, checkpoint."""
    import ray.train

    prepare_worker(config)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    strategy = distribution_strategy()
    per_worker_batch = config["batch_size"] // world
    steps = max(1, math.ceil(config["train_rows"] // world / per_worker_batch))
    run = restore_run(ray.train.get_checkpoint(), config["base_model"], rank)
    epochs = ShardEpochs(ray.train.get_dataset_shard("train"), per_worker_batch)
    with strategy.scope():
        model = build_model(run, epochs, steps, config, rank)
    predictor = epoch_predictor(model, config)
    summaries = EpochSummaries(config["tensorboard_dir"], config) if rank == 0 else None
    for epoch in range(run.start_epoch, config["epochs"]):
        metrics = fit_epoch(model, epochs, epoch, steps, rank, config, run)
        checkpoint = None
        if summaries is not None:  # rank 0
            checkpoint = finish_epoch(predictor, summaries, run, epoch, metrics, config)
        # The latest report carries the whole history: the best checkpoint's own copy stops at its epoch.
        ray.train.report({**metrics, "history": list(run.history)}, checkpoint=checkpoint)
        if checkpoint is not None:
            shutil.rmtree(checkpoint.path, ignore_errors=True)
    if run.restored_dir:
        shutil.rmtree(run.restored_dir, ignore_errors=True)
    if summaries is not None:
        summaries.close()
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
