"""MLflow tracking (the optional ``mlflow`` extra): training runs, tune trials as child runs, the model
registry, and `bm-ray compare --promote`.

Everything that talks to MLflow is here, imported only when a spec asks for tracking
(``mlflow_tracking_uri`` of a train spec, ``promote`` of a compare spec): bm-ray runs without the extra,
and asking for tracking without it fails at once with :class:`TrackingError` naming the install.

- The driver of `bm-ray train` opens the run (:class:`TrackedRun`) and hands its id to the workers in the
  train loop's config (:meth:`TrackedRun.worker_config`); rank 0 logs the recipe as params and every
  epoch's numeric metrics at step = epoch (:class:`EpochLog`), through an :class:`mlflow.MlflowClient`
  (no global active run in the workers). At the end the driver logs the calibration, ``metrics.json``,
  the model card and the model directory as artifacts, registers the directory as a version of a
  registered model (:func:`log_model_dir`) and writes the run and version into the model directory's
  :data:`~bm_ray.layout.MLFLOW_FILE`.
- `bm-ray tune` opens a parent run; each trial is a child run (tag ``mlflow.parentRunId``) logged by its
  rank 0 in the same way.
- `bm-ray compare --promote ALIAS` sets the alias on model B's registered version (:func:`set_alias`),
  found by B's :data:`~bm_ray.layout.MLFLOW_FILE`.

A relative ``sqlite:///mlflow.db`` (or plain directory) is made absolute by the driver, so every
process of a one-machine cluster writes the same store; experiments bm-ray creates in a SQLite store
keep their artifacts in ``mlartifacts/`` beside the database file. On a multi-node cluster give an
MLflow server (``http://...``): rank 0 may run on any node.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

from bm_ray.layout import (
    JOB_FILE,
    LABELS_FILE,
    METRICS_FILE,
    MLFLOW_FILE,
    MODEL_CARD_FILE,
    TRAIN_RUN_DIR,
)
from bm_ray.specs import TuneParam
from bm_ray.storage import exists, is_remote, join, read_json, redact_uri, resolve_uri

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'bm-ray[mlflow]'"
"""How to get the optional MLflow dependencies (named by every error that lacks them)."""
MODEL_ARTIFACT_DIR = "model"
"""Artifact path of the model directory in a training run (the registered version's source)."""
NOT_MODEL_PARTS = {TRAIN_RUN_DIR, "tensorboard", "rejects", JOB_FILE, MLFLOW_FILE}
"""Entries of a training output that are not part of the model: checkpoints, events, rejects, identity."""
SQLITE_PREFIX = "sqlite:///"
ARTIFACTS_DIR = "mlartifacts"
"""Beside a SQLite store's database: the artifact root of the experiments bm-ray creates there."""
VERSION_TAG = "bm_ray.version"
"""Tag of a registered model version: the bm-ray model version (labels.json) it holds."""


def shown_uri(uri: str) -> str:
    """`uri` as logs and records show it: without credentials (a ``sqlite:////abs`` path kept whole)."""
    return uri if uri.startswith(SQLITE_PREFIX) or "://" not in uri else redact_uri(uri)


class TrackingError(ValueError):
    """MLflow tracking was asked for but cannot be done: the extra is not installed, or the store refuses."""


def require_mlflow() -> Any:
    """The :mod:`mlflow` module; raises :class:`TrackingError` naming the install when it is missing."""
    try:
        import mlflow
    except ImportError as err:
        raise TrackingError(f"MLflow tracking needs the mlflow extra: {INSTALL_HINT} ({err})") from err
    return mlflow


def absolute_uri(uri: str) -> str:
    """`uri` as every process reads it: a relative ``sqlite:///PATH`` or plain path made absolute."""
    if uri.startswith(SQLITE_PREFIX) and not uri.startswith(SQLITE_PREFIX + "/"):
        return SQLITE_PREFIX + str(Path(uri[len(SQLITE_PREFIX) :]).resolve())
    if ":" not in uri:  # a directory: MLflow's file store
        return str(Path(uri).resolve())
    return uri


def client(uri: str) -> Any:
    """An :class:`mlflow.MlflowClient` of tracking (and registry) store `uri` (made absolute)."""
    require_mlflow()
    from mlflow import MlflowClient

    uri = absolute_uri(uri)
    if uri.startswith(SQLITE_PREFIX):
        Path(uri[len(SQLITE_PREFIX) :]).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _already_exists(err: Exception) -> bool:
    return getattr(err, "error_code", None) == "RESOURCE_ALREADY_EXISTS"


def experiment_id(mlflow_client: Any, name: str, uri: str) -> str:
    """The id of experiment `name`, created when missing (in a SQLite store with its artifacts beside it)."""
    from mlflow.exceptions import MlflowException

    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    uri = absolute_uri(uri)
    location = None
    if uri.startswith(SQLITE_PREFIX):
        location = (Path(uri[len(SQLITE_PREFIX) :]).parent / ARTIFACTS_DIR).as_uri()
    try:
        return str(mlflow_client.create_experiment(name, artifact_location=location))
    except MlflowException as err:  # created meanwhile by another process
        if not _already_exists(err):
            raise
        return str(mlflow_client.get_experiment_by_name(name).experiment_id)


class TrackedRun:
    """One MLflow run bm-ray opens: a training run, a tune parent run or a trial's child run.

    Nothing is written to the store before :meth:`start`; :func:`tracked` ends the run (FINISHED, or FAILED
    when its block raised).
    """

    def __init__(
        self,
        uri: str,
        experiment: str,
        name: str,
        kind: str,
        tags: dict[str, str] | None = None,
        parent_run_id: str | None = None,
    ) -> None:
        require_mlflow()
        self.uri = absolute_uri(uri)
        self.experiment, self.name, self.kind = experiment, name, kind
        self.tags = dict(tags or {})
        self.parent_run_id = parent_run_id
        self.run_id: str | None = None
        self.experiment_id: str | None = None

    @property
    def client(self) -> Any:
        """The client of this run's store."""
        return client(self.uri)

    def start(self) -> str:
        """Create the run (once); returns its id."""
        if self.run_id is None:
            mlflow_client = self.client
            self.experiment_id = experiment_id(mlflow_client, self.experiment, self.uri)
            tags = {"bm_ray.kind": self.kind, "mlflow.source.name": "bm-ray", **self.tags}
            if self.parent_run_id:
                tags["mlflow.parentRunId"] = self.parent_run_id
            run = mlflow_client.create_run(self.experiment_id, run_name=self.name, tags=tags)
            self.run_id = str(run.info.run_id)
            logger.info(
                "MLflow run %s (%s) in experiment %r of %s",
                self.run_id,
                self.name,
                self.experiment,
                shown_uri(self.uri),
            )
        return self.run_id

    def worker_config(self, *, log_params: bool = True, prefix: str = "") -> dict[str, Any]:
        """What the train loop's rank 0 needs to log into this run (the `mlflow` key of its config)."""
        return {"tracking_uri": self.uri, "run_id": self.start(), "log_params": log_params, "prefix": prefix}

    def end(self, status: str = "FINISHED") -> None:
        """Mark the run ended with `status` (FINISHED, FAILED, KILLED), if it was started."""
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status=status)


@contextlib.contextmanager
def tracked(run: TrackedRun | None, *, end_on_error: bool = True) -> Iterator[TrackedRun | None]:
    """Run the block with `run` (None: no tracking); the run ends FINISHED, FAILED when the block raises,
    KILLED when it is interrupted. With ``end_on_error=False`` a raising block leaves the run open for
    another process to end (a tune trial's, which :func:`end_children` ends)."""
    if run is None:
        yield None
        return
    try:
        yield run
    except BaseException as err:
        if not end_on_error:
            raise
        try:
            if run.run_id is not None:
                run.client.set_tag(run.run_id, "bm_ray.error", f"{type(err).__name__}: {err}"[:5000])
            run.end("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        except Exception as end_err:  # the job's own error is the one to raise
            logger.warning("could not end MLflow run %s: %s", run.run_id, end_err)
        raise
    run.end("FINISHED")


def recipe_params(config: dict[str, Any]) -> dict[str, str]:
    """The params of a run: the recipe options of the train loop's `config` (those `bm-ray tune` may
    search), its seed and precision, and the data's shape."""
    keys = [*get_args(TuneParam), "seed", "mixed_precision", "max_length", "train_rows"]
    params = {key: config[key] for key in keys if key in config}
    params["base_model"] = redact_uri(str(config["base_model"]))
    params["num_labels"] = len(config["labels"])
    return {key: str(value) for key, value in params.items()}


def numeric_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of `metrics` (bools, lists, NaN left out), keys prefixed."""
    return {
        prefix + key: float(value)
        for key, value in metrics.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    }


class EpochLog:
    """Rank 0's side of a tracked run (in a Ray Train worker): the params once, then every epoch's metrics."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.client = client(settings["tracking_uri"])
        self.run_id: str = settings["run_id"]
        self.log_params_too: bool = settings.get("log_params", True)
        self.prefix: str = settings.get("prefix", "")

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> EpochLog | None:
        """The log of the train loop's `config`, None when the run is not tracked."""
        settings = config.get("mlflow")
        return cls(settings) if settings else None

    def log_params(self, config: dict[str, Any]) -> None:
        """The recipe (:func:`recipe_params`) as the run's params (not for a refit: its epochs differ)."""
        if self.log_params_too:
            from mlflow.entities import Param

            params = [Param(key, value) for key, value in recipe_params(config).items()]
            self.client.log_batch(self.run_id, params=params)

    def log_epoch(self, epoch: int, metrics: dict[str, Any]) -> None:
        """The numeric metrics of 1-based `epoch` at step `epoch` (``epoch`` itself is the step)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        values = numeric_metrics({k: v for k, v in metrics.items() if k != "epoch"}, self.prefix)
        self.client.log_batch(
            self.run_id, metrics=[Metric(key, value, now, epoch) for key, value in sorted(values.items())]
        )


def log_model_dir(run: TrackedRun, report: Any, model_dir: Path, model_name: str) -> dict[str, Any]:
    """At the end of a tracked training: the final validation metrics, the calibration, ``metrics.json``,
    the model card and the model directory as artifacts of `run`, the directory registered as a new
    version of `model_name`, and the record written to the directory's :data:`MLFLOW_FILE` (returned)."""
    from mlflow.exceptions import MlflowException

    mlflow_client, run_id = run.client, run.start()
    final = numeric_metrics(
        {key: getattr(report, key) for key in ("accuracy", "macro_f1", "log_loss", "ece", "best_epoch")}
    )
    mlflow_client.log_batch(run_id, metrics=_metrics(final, step=int(report.best_epoch)))
    if report.calibration is not None:
        mlflow_client.log_dict(run_id, report.calibration.model_dump(), "calibration.json")
    for name in (METRICS_FILE, MODEL_CARD_FILE):
        if (model_dir / name).is_file():
            mlflow_client.log_artifact(run_id, str(model_dir / name))
    for entry in sorted(model_dir.iterdir()):
        if entry.name in NOT_MODEL_PARTS or entry.name.startswith("."):
            continue
        if entry.is_dir():
            mlflow_client.log_artifacts(run_id, str(entry), f"{MODEL_ARTIFACT_DIR}/{entry.name}")
        else:
            mlflow_client.log_artifact(run_id, str(entry), MODEL_ARTIFACT_DIR)
    try:
        mlflow_client.create_registered_model(model_name)
    except MlflowException as err:
        if not _already_exists(err):
            raise
    artifact_uri = mlflow_client.get_run(run_id).info.artifact_uri
    labels = json.loads((model_dir / LABELS_FILE).read_text(encoding="utf-8"))
    version = mlflow_client.create_model_version(
        model_name,
        source=f"{artifact_uri.rstrip('/')}/{MODEL_ARTIFACT_DIR}",
        run_id=run_id,
        tags={VERSION_TAG: str(labels.get("version", ""))},
    )
    record = {
        "tracking_uri": shown_uri(run.uri),
        "experiment": run.experiment,
        "experiment_id": run.experiment_id,
        "run_id": run_id,
        "registered_model": model_name,
        "registered_version": str(version.version),
        "model_version": str(labels.get("version", "")),
    }
    (model_dir / MLFLOW_FILE).write_text(json.dumps(record, indent=2), encoding="utf-8")
    logger.info("registered %s as version %s of MLflow model %r", model_dir, version.version, model_name)
    return record


def _metrics(values: dict[str, float], step: int) -> list[Any]:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(key, value, now, step) for key, value in sorted(values.items())]


def log_tune(run: TrackedRun, spec: Any, best: dict[str, Any], output: Path, files: list[str]) -> None:
    """The search of a tune parent run: its settings as params, the best trial's metric and the result
    files under `output` as artifacts."""
    from mlflow.entities import Param

    mlflow_client, run_id = run.client, run.start()
    params = {
        "search_space": json.dumps(spec.search_space, sort_keys=True),
        "metric": spec.metric,
        "num_samples": spec.num_samples,
        "grace_period": spec.grace_period,
        "reduction_factor": spec.reduction_factor,
        **{f"best.{key}": best.get(key) for key in spec.search_space},
    }
    mlflow_client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    mlflow_client.log_batch(
        run_id, metrics=_metrics(numeric_metrics({f"best_{spec.metric}": best[spec.metric]}), 0)
    )
    for name in files:
        if (output / name).is_file():
            mlflow_client.log_artifact(run_id, str(output / name))


TRIAL_TAG = "bm_ray.trial_id"
"""Tag of a tune trial's child run: the Tune trial id."""


def end_children(run: TrackedRun, trial_errors: dict[str, str | None] | None = None) -> int:
    """End the child runs of tune run `run` as their trials ended in Tune; returns how many it changed.

    `trial_errors` (trial id → Tune's error, None when the trial ended well) is the authority: a trial
    that ASHA stopped can be interrupted while its run is open (left RUNNING) or raise as it is stopped
    (its run FAILED), and neither is a failure. Without an entry (the search itself failed), a run still
    RUNNING is ended KILLED.
    """
    if run.run_id is None:
        return 0
    errors = trial_errors or {}
    mlflow_client = run.client
    children = mlflow_client.search_runs(
        [run.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{run.run_id}'",
        max_results=50000,  # every trial (the SQL store's cap; the default is 100)
    )
    changed = 0
    for child in children:
        run_id, status = child.info.run_id, child.info.status
        trial_id = child.data.tags.get(TRIAL_TAG)
        if trial_id in errors and errors[trial_id] is not None:
            if status != "FAILED":
                mlflow_client.set_tag(run_id, "bm_ray.error", str(errors[trial_id])[:5000])
                mlflow_client.set_terminated(run_id, status="FAILED")
                changed += 1
        elif trial_id in errors:
            if status != "FINISHED":
                mlflow_client.set_tag(run_id, "bm_ray.ended", f"stopped by the scheduler (was {status})")
                mlflow_client.set_terminated(run_id, status="FINISHED")
                changed += 1
        elif status == "RUNNING":
            mlflow_client.set_terminated(run_id, status="KILLED")
            changed += 1
    return changed


def read_model_record(model: str) -> dict[str, Any] | None:
    """The :data:`MLFLOW_FILE` record of model directory or URI `model`; None when it has none."""
    if is_remote(model):
        fs, root = resolve_uri(model)
        path = join(root, MLFLOW_FILE)
        return read_json(fs, path) if exists(fs, path) else None
    path = Path(model) / MLFLOW_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def set_alias(uri: str, record: dict[str, Any], alias: str, model_version: str) -> str | None:
    """Point `alias` of the registered model of `record` at its version, after checking the version holds
    `model_version` (the compared model); returns None when set, else why not."""
    mlflow_client = client(uri)
    name, version = record["registered_model"], record["registered_version"]
    registered = mlflow_client.get_model_version(name, version)
    held = (registered.tags or {}).get(VERSION_TAG)
    if held and model_version and held != model_version:
        return (
            f"version {version} of registered model {name!r} holds model version {held}, not the compared "
            f"model B's {model_version}"
        )
    mlflow_client.set_registered_model_alias(name, alias, version)
    return None
