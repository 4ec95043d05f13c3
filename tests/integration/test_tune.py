"""`bm-ray tune` end to end: Ray Tune (ASHA) trials of the real train loop with a tiny model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow import MlflowClient
from tiny_model import make_tiny_model
from trainings import LABELS, write_synthetic
from typer.testing import CliRunner

from bm_ray.cli.main import app
from bm_ray.specs import TrainSpec, load_spec_file


def test_tune_runs_asha_trials_and_writes_the_best_train_spec(
    ray_local: None, tokenizer_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = make_tiny_model(tmp_path / "base", LABELS, tokenizer_dir, hidden=32)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"  # the search tracked in a real MLflow store
    data = write_synthetic(tmp_path / "train.jsonl", 240)
    spec = {
        "kind": "tune",
        "train": {
            "data": {"input": [str(data)]},
            "output": str(tmp_path / "final-model"),
            "base_model": str(base),
            "workers": 1,
            "epochs": 2,
            "batch_size": 16,
            "learning_rate": 1e-3,
            "val_fraction": 0.2,
            "mlflow_tracking_uri": store,
            "mlflow_experiment": "bm-ray-tune",
        },
        "search_space": {"learning_rate": [5e-3, 1e-5]},
        "grace_period": 1,
        "max_concurrent_trials": 2,  # both 1-CPU trials at once on the 2-CPU test Ray
        "output": str(tmp_path / "tune"),
    }
    spec_path = tmp_path / "tune.yaml"
    spec_path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    result = CliRunner().invoke(app, ["tune", "--spec", str(spec_path)])
    assert result.exit_code == 0, result.output

    rows = list(csv.DictReader((tmp_path / "tune" / "results.csv").open(encoding="utf-8")))
    assert sorted(float(r["learning_rate"]) for r in rows) == [1e-5, 5e-3]
    for row in rows:
        assert 1 <= int(row["epochs_run"]) <= 2 and not row["error"], row
    best_row = max(rows, key=lambda r: float(r["val_accuracy"]))
    best = load_spec_file(TrainSpec, tmp_path / "tune" / "best_train.yaml")
    assert best.learning_rate == float(best_row["learning_rate"])
    assert best.output == str(tmp_path / "final-model") and best.epochs == 2 and best.split == "grouped"
    summary = json.loads((tmp_path / "tune" / "results.json").read_text(encoding="utf-8"))
    assert summary["leakage"]["val_rows"] > 0 and len(summary["trials"]) == 2

    # MLflow: the search is a parent run, each trial a child run with its epochs
    parent_id = summary["mlflow_run_id"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    [parent] = mlflow.search_runs(
        experiment_names=["bm-ray-tune"], filter_string="tags.`bm_ray.kind` = 'tune'", output_format="list"
    )
    assert parent.info.run_id == parent_id and parent.info.status == "FINISHED"
    assert parent.data.params["metric"] == "val_accuracy" and "best_val_accuracy" in parent.data.metrics
    client = MlflowClient(store)
    assert {"results.csv", "results.json", "best_train.yaml"} <= {
        a.path for a in client.list_artifacts(parent_id)
    }
    children = mlflow.search_runs(
        experiment_names=["bm-ray-tune"],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'",
        output_format="list",
    )
    assert sorted(float(c.data.params["learning_rate"]) for c in children) == [1e-5, 5e-3]
    epochs_run = {float(r["learning_rate"]): int(r["epochs_run"]) for r in rows}
    for child in children:
        assert child.info.status == "FINISHED", child.data.tags
        assert child.data.tags["bm_ray.kind"] == "trial"
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_accuracy")]
        assert steps == list(range(1, epochs_run[float(child.data.params["learning_rate"])] + 1))
