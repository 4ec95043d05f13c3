"""`bm-ray tune`: Ray Tune with the ASHA scheduler over recipe options of a train spec.

The data are read, split (the train spec's split: grouped by default) and tokenised once; every trial
is the same TensorflowTrainer run as `bm-ray train` (same train loop, same workers and CPUs per worker
from the spec) on those same datasets, reporting validation metrics every epoch. ASHA stops trials
that fall behind after `grace_period` epochs. The best trial's values are written as a train spec.
"""

from __future__ import annotations

import csv
import itertools
import json
import time
from pathlib import Path
from typing import Any

import yaml

from bm_ray.results import TuneResult
from bm_ray.specs import TrainSpec, TuneSpec


def trial_values(space: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the search space's values, in a stable order."""
    keys = sorted(space)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(space[k] for k in keys))]


def _trial(
    params: dict[str, Any],
    spec_json: dict[str, Any],
    data: Any,
    storage_path: str,
    parent_run_id: str | None = None,
) -> None:
    """Tune function trainable: one train run with this trial's values; epochs are reported to Tune.

    With tracking (`parent_run_id`, the search's MLflow run) the trial is a child run of it.
    """
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from bm_ray.jobs.tracking import TRIAL_TAG, TrackedRun, tracked
    from bm_ray.jobs.train.job import fit_trainer, train_config

    spec = TrainSpec.model_validate({**spec_json, **params["values"]})
    trial_id = tune.get_context().get_trial_id()
    config = train_config(spec, data, f"{storage_path}/tensorboard/{trial_id}")
    name = f"trial-{trial_id}"
    run = None
    if parent_run_id is not None and spec.mlflow_tracking_uri is not None:
        run = TrackedRun(
            spec.mlflow_tracking_uri,
            spec.mlflow_experiment,
            name,
            "trial",
            tags={TRIAL_TAG: trial_id},
            parent_run_id=parent_run_id,
        )
        config["mlflow"] = run.worker_config()
    # A trial that Tune stops raises as its Train controller is killed, at times after the driver has
    # ended its run as stopped: only the driver (`end_children`) ends a trial run that did not return.
    with tracked(run, end_on_error=False):
        fit_trainer(
            spec, config, {"train": data.train, "val": data.val}, name, storage_path, [TuneReportCallback()]
        )


def tune(spec: TuneSpec) -> TuneResult:
    """Run the search; writes results.csv/results.json (one row per trial) and best_train.yaml.

    With the train spec's ``mlflow_tracking_uri`` the search is an MLflow run and each trial a child run
    of it (:mod:`bm_ray.jobs.tracking`).
    """
    from bm_ray.jobs.tracking import TrackedRun, end_children, tracked

    run = None
    if spec.train.mlflow_tracking_uri is not None:  # fails here, before any work, without the mlflow extra
        run = TrackedRun(
            spec.train.mlflow_tracking_uri,
            spec.train.mlflow_experiment,
            f"tune-{Path(spec.output).name}",
            "tune",
            tags={"bm_ray.output": str(Path(spec.output).resolve())},
        )
    with tracked(run):
        try:
            return _tune(spec, run)
        finally:
            if run is not None:  # trials still open when the search failed
                end_children(run)


def _tune(spec: TuneSpec, run: Any) -> TuneResult:
    """:func:`tune`, with `run` (a :class:`~bm_ray.jobs.tracking.TrackedRun`, or None) its parent run."""
    from ray import tune as ray_tune
    from ray.tune.schedulers import ASHAScheduler

    from bm_ray.jobs.train.job import prepare_data
    from bm_ray.runtime.ray_init import init_ray

    started = time.time()
    init_ray(spec.train.address)
    out = Path(spec.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = prepare_data(spec.train)
    data.counts.pop("rejects")
    grid = trial_values(spec.search_space)
    max_epochs = max([spec.train.epochs, *(int(v["epochs"]) for v in grid if "epochs" in v)])
    trainable = ray_tune.with_parameters(
        _trial,
        # the store as the driver resolved it (a relative sqlite:/// path means the driver's directory)
        spec_json={**spec.train.model_dump(), **({} if run is None else {"mlflow_tracking_uri": run.uri})},
        data=data,
        storage_path=str(out / "trials"),
        parent_run_id=None if run is None else run.start(),
    )
    tuner = ray_tune.Tuner(
        # The trial itself only drives a Ray Train run, whose workers hold the CPUs of the spec
        # (Tune refuses an empty bundle, hence a token share).
        ray_tune.with_resources(trainable, {"CPU": 0.01}),
        param_space={"values": ray_tune.grid_search(grid)},
        tune_config=ray_tune.TuneConfig(
            scheduler=ASHAScheduler(
                time_attr="training_iteration",
                metric=spec.metric,
                mode="max",
                max_t=max_epochs,
                grace_period=spec.grace_period,
                reduction_factor=spec.reduction_factor,
            ),
            num_samples=spec.num_samples,
            max_concurrent_trials=spec.max_concurrent_trials,
        ),
        run_config=ray_tune.RunConfig(name="bm-ray-tune", storage_path=str(out / "tune")),
    )
    grid_result = tuner.fit()
    if run is not None:  # each trial's child run ends as Tune says the trial did
        from bm_ray.jobs.tracking import end_children

        end_children(
            run,
            {
                str(result.metrics["trial_id"]): None if result.error is None else str(result.error)
                for result in grid_result
                if result.metrics and "trial_id" in result.metrics
            },
        )
    rows = []
    for result in grid_result:
        history = result.metrics_dataframe
        best = history[spec.metric].max() if history is not None and spec.metric in history else float("nan")
        rows.append(
            {
                **result.config["values"],
                "epochs_run": len(history) if history is not None else 0,
                spec.metric: float(best),
                "error": str(result.error) if result.error else "",
            }
        )
    scored = [row for row in rows if row[spec.metric] == row[spec.metric]]  # NaN: failed trial
    if not scored:
        raise RuntimeError(f"tune: no trial reported {spec.metric}; see {out / 'tune'}")
    best = max(scored, key=lambda row: row[spec.metric])
    columns = sorted({key for row in rows for key in row}, key=lambda k: (k in ("epochs_run", "error"), k))
    with (out / "results.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    best_values = {key: best[key] for key in spec.search_space}
    best_spec = TrainSpec.model_validate({**spec.train.model_dump(), **best_values})
    (out / "best_train.yaml").write_text(
        yaml.safe_dump(
            {"kind": "train", **best_spec.model_dump(mode="json", exclude_defaults=True)}, sort_keys=False
        ),
        encoding="utf-8",
    )
    summary = TuneResult(
        trials=rows,
        best=best,
        metric=spec.metric,
        split=spec.train.split,
        leakage=data.counts["leakage"],
        elapsed_s=round(time.time() - started, 1),
        mlflow_run_id=None if run is None else run.run_id,
    )
    (out / "results.json").write_text(
        json.dumps(summary.model_dump(), indent=2, default=str), encoding="utf-8"
    )
    if run is not None:
        from bm_ray.jobs.tracking import log_tune

        log_tune(run, spec, best, out, ["results.csv", "results.json", "best_train.yaml"])
    return summary
