"""`bm-ray train`: data-parallel BERT fine-tuning with Ray Train (TensorflowTrainer + MultiWorkerMirroredStrategy).

The driver: Ray Data ingests, validates and tokenises (:mod:`bm_ray.jobs.train.data`, the shared
preprocessing path) ahead of the workers; each worker (:mod:`bm_ray.jobs.train.loop`) reads only its
own shard, batches rows of similar length and pads each batch to its own longest row. Every epoch rank 0
validates with the shared predictor engine, and all workers report metrics plus a checkpoint (a complete
model directory). Worker or node loss restarts the worker group from the latest checkpoint
(FailureConfig); rerunning with `--resume` continues a run whose driver died. The driver then makes the
best checkpoint the model directory, calibrates and evaluates it (and with ``refit`` retrains on all rows).

Importing this module does not import TensorFlow: only the workers (and the final evaluation) need it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any, get_args

from bm_ray.jobs.train.data import PreparedData, prepare_data
from bm_ray.layout import METRICS_FILE, OPTIMIZER_STATE_FILE, TRAIN_RUN_DIR, TRAIN_STATE_FILE
from bm_ray.model.card import write_model_card
from bm_ray.model.registry import resolve_model
from bm_ray.results import RefitInfo, TrainResult
from bm_ray.specs import TrainSpec, TuneParam
from bm_ray.storage import is_remote, join_uri, redact, redact_uri, resolve_uri, upload_dir

logger = logging.getLogger(__name__)


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

    from bm_ray.jobs.train.loop import train_loop_per_worker
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


def output_name(output: str) -> str:
    """The model's name: the last part of its output location (credentials and URI options dropped)."""
    return Path(redact_uri(output).split("?", 1)[0].rstrip("/")).name or "bm-ray-model"


def train_config(spec: TrainSpec, data: PreparedData, tensorboard_dir: str) -> dict[str, Any]:
    """The train loop's config: labels, data shape and the recipe options of the spec."""
    return {
        "labels": data.names or data.labels,
        "raw_labels": data.labels if data.names else None,
        "max_length": data.max_length,
        "train_rows": data.counts["train_rows"],
        "base_model": spec.base_model,
        "name": output_name(spec.output),
        "tensorboard_dir": tensorboard_dir,
        "threads": max(1, int(spec.cpus_per_worker)),
        "validate": True,
        # every recipe option (those `bm-ray tune` may search) and the run's seed and precision
        **spec.model_dump(include={*get_args(TuneParam), "seed", "mixed_precision"}),
    }


def train(spec: TrainSpec) -> TrainResult:
    """Run the training job end to end and write the model directory; returns metrics.json's content.

    With ``mlflow_tracking_uri`` the run is tracked in MLflow (:mod:`bm_ray.jobs.tracking`): it ends
    FINISHED with the model registered, or FAILED when the training raised.
    """
    from bm_ray.jobs.tracking import TrackedRun, tracked

    run = None
    if spec.mlflow_tracking_uri is not None:  # fails here, before any work, without the mlflow extra
        run = TrackedRun(
            spec.mlflow_tracking_uri,
            spec.mlflow_experiment,
            output_name(spec.output),
            "train",
            tags={"bm_ray.output": redact_uri(spec.output)},
        )
    with tracked(run):
        return _train(spec, run)


def _train(spec: TrainSpec, run: Any) -> TrainResult:
    """:func:`train`, with `run` (a :class:`~bm_ray.jobs.tracking.TrackedRun`, or None) tracking it."""
    from bm_ray.corpus.neardup import leakage_warning
    from bm_ray.jobs.train.resume import prepare_train_output, record_labels
    from bm_ray.report import try_build_report
    from bm_ray.runtime.ray_init import init_ray

    started = time.time()
    prepare_train_output(spec)  # refuses a finished output or a resume of another run, before any work
    resolve_model(spec.base_model)  # a missing path or an offline download fails here, not in a worker
    init_ray(spec.address)
    remote_output = is_remote(spec.output)
    local_output = Path(tempfile.mkdtemp(prefix="bm-ray-model-")) if remote_output else Path(spec.output)
    local_output.mkdir(parents=True, exist_ok=True)
    storage = join_uri(spec.output, TRAIN_RUN_DIR)
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
    if run is not None:
        config["mlflow"] = run.worker_config()  # rank 0 logs the params and every epoch into the run
    result = fit_trainer(spec, config, {"train": data.train, "val": data.val}, name, storage)
    best_checkpoint, _ = max(result.best_checkpoints, key=lambda item: item[1]["val_macro_f1"])
    report = _finish(spec, data, rejects, best_checkpoint, result.metrics, local_output, started)
    if spec.refit:
        from bm_ray.model.registry import read_model_info, write_model_info

        selected = read_model_info(local_output)
        report.refit = _refit(spec, data, config, report.best_epoch, name, storage, local_output)
        calibration = report.calibration
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
            calibration.note = refit_note if calibration.note is None else f"{calibration.note}; {refit_note}"
        report.elapsed_s = round(time.time() - started, 1)
        (local_output / METRICS_FILE).write_text(json.dumps(report.model_dump(), indent=2), encoding="utf-8")
    if run is not None:
        report.mlflow_run_id = run.run_id
        (local_output / METRICS_FILE).write_text(json.dumps(report.model_dump(), indent=2), encoding="utf-8")
    write_model_card(local_output, report)  # the model directory is final: its README.md
    try_build_report(str(local_output))
    if run is not None:  # artifacts, the registered version, and mlflow.json in the model directory
        from bm_ray.jobs.tracking import log_model_dir

        log_model_dir(run, report, local_output, spec.mlflow_model_name or output_name(spec.output))
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
) -> RefitInfo:
    """Retrain the selected configuration for its best epoch count on train + validation rows; its
    last checkpoint becomes the model directory's weights (labels, max_length unchanged)."""
    started = time.time()
    rows = data.train.union(data.val).random_shuffle(seed=spec.seed + 2).materialize()
    refit_config = {**config, "epochs": epochs, "train_rows": rows.count(), "validate": False}
    if config.get("mlflow"):  # the refit's epochs go into the same run as refit_* (its params differ)
        refit_config["mlflow"] = {**config["mlflow"], "log_params": False, "prefix": "refit_"}
    result = fit_trainer(spec, refit_config, {"train": rows, "val": data.val}, f"{name}-refit", storage)
    result.checkpoint.to_directory(str(local_output))
    for state_file in (TRAIN_STATE_FILE, OPTIMIZER_STATE_FILE):  # resume state, not part of the model
        (local_output / state_file).unlink(missing_ok=True)
    return RefitInfo(
        rows=refit_config["train_rows"],
        epochs=epochs,
        train_s=round(time.time() - started, 1),
        note="the model directory holds the refit weights; accuracy, epochs and leakage above are the "
        "selection run's, measured on the validation rows the refit then trained on",
    )


def _finish(
    spec: TrainSpec,
    data: PreparedData,
    rejects: Any,
    checkpoint: Any,
    latest_metrics: dict[str, Any],
    local_output: Path,
    started: float,
) -> TrainResult:
    """Materialise the best checkpoint as the model directory, evaluate it, write metrics and plots."""
    from bm_ray.jobs.scoring import PredictionLog, corpus_batches, evaluate_batches, write_report
    from bm_ray.jobs.train.calibrate import calibrate_model
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
    scored = evaluate_batches(predictor, corpus_batches(data.val_rows, Counter()), log)
    report = TrainResult.model_validate(
        {
            **scored,
            "calibration": calibration,
            "epochs": latest_metrics.get("history") or state["history"],
            "best_epoch": state["epoch"],
            "recovered_after_epochs": latest_metrics.get("recovered_after_epochs", []),
            "leakage": data.counts.pop("leakage"),
            "data": data.counts,
            "spec": redact(spec.model_dump(mode="json")),
            "elapsed_s": round(time.time() - started, 1),
        }
    )
    if rejects.count():
        # Written by Ray Data tasks on any node: straight into the output, never a driver-local path.
        rejects_fs, rejects_path = resolve_uri(join_uri(spec.output, "rejects"))
        rejects.drop_columns(["_unit", "_row"]).write_parquet(rejects_path, filesystem=rejects_fs)
    write_report(report, local_output, title="validation", log=log)
    plot_training_curves(report.epochs, local_output / "training_curves.png")
    return report
