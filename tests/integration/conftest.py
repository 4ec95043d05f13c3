"""Session fixtures of the integration tests: the tiny base model and the one tracked training that the
train and tracking modules share (every Ray Train launch costs ~25 s of start-up on 2 cores)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_model import make_tiny_model
from trainings import LABELS, MODEL_NAME, NAMES, spec_for, write_synthetic

from bm_ray.jobs.train.job import train


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: str) -> Path:
    """A tiny random BERT used as the base model (never trained in place)."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny-base"), LABELS, tokenizer_dir, hidden=32)


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite tracking + registry store for the session's tracked runs."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="session")
def tracked_named(
    ray_local: None, tiny_base: Path, mlflow_store: str, tmp_path_factory: pytest.TempPathFactory
) -> dict:
    """One MLflow-tracked 1-worker training of 4 epochs on 360 learnable rows, with label names, the
    default calibration and a refit on all rows.

    It serves the label-name, calibration and refit tests (test_train) and the tracking and promotion
    tests (test_tracking): 360 rows is what the tiny model needs to learn the task, so that a compare
    finds it clearly better than an untrained model. `named_data` is the same corpus with the names as
    labels (what a compare against the named model scores on)."""
    tmp = tmp_path_factory.mktemp("tracked-named")
    data = write_synthetic(tmp / "train.jsonl", 360)
    named_data = write_synthetic(tmp / "named.jsonl", 360, labels=list(NAMES.values()))
    output = tmp / "model"
    label_names = ",".join(f"{raw}={name}" for raw, name in NAMES.items())  # the CLI flag's form
    spec = spec_for(
        data,
        output,
        tiny_base,
        workers=1,
        label_names=label_names,
        refit=True,
        mlflow_tracking_uri=mlflow_store,
        mlflow_model_name=MODEL_NAME,
    )
    return {"report": train(spec), "output": output, "data": data, "named_data": named_data, "spec": spec}
