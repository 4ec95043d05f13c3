"""MLflow tracking against a real SQLite store: the shared tracked tiny training of
tests/integration/conftest.py (params, per-epoch metrics, the refit's, artifacts, the registered
version) and `compare --promote` setting the alias only when model B is significantly better. Tune trials as child runs: tests/integration/test_tune.py (the one tune run)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from rich.console import Console
from tiny_model import make_tiny_model
from trainings import MODEL_NAME, NAMES
from typer.testing import CliRunner

from bm_ray.cli.main import app
from bm_ray.jobs.compare import compare, promotion_verdict, summary_table
from bm_ray.jobs.tracking import INSTALL_HINT, TrackingError, absolute_uri, numeric_metrics, require_mlflow
from bm_ray.layout import METRICS_FILE, MLFLOW_FILE, MODEL_CARD_FILE
from bm_ray.specs import CompareSpec, IngestSpec


@pytest.fixture(scope="module")
def untrained_named(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: str) -> Path:
    """An untrained tiny model with the named labels: model A of a compare against the trained one."""
    return make_tiny_model(
        tmp_path_factory.mktemp("untrained"), list(NAMES.values()), tokenizer_dir, hidden=32
    )


def test_a_tracked_training_logs_params_epochs_and_artifacts(
    tracked_named: dict, mlflow_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    report, output, spec = tracked_named["report"], tracked_named["output"], tracked_named["spec"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)
    runs = mlflow.search_runs(experiment_names=["bm-ray"], output_format="list")
    [run] = [r for r in runs if r.info.run_id == report.mlflow_run_id]
    assert run.info.status == "FINISHED" and run.data.tags["bm_ray.kind"] == "train"
    params = run.data.params
    assert params["learning_rate"] == str(spec.learning_rate) and params["epochs"] == "4"
    assert (
        params["seed"] == "42"
        and params["num_labels"] == "3"
        and params["base_model"] == str(spec.base_model)
    )

    client = MlflowClient(mlflow_store)
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_macro_f1"):
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == [1, 2, 3, 4], key
    # The refit's epochs go into the same run, prefixed, for the selected epoch count (no validation).
    refit_steps = list(range(1, report.refit.epochs + 1))
    assert (
        sorted(m.step for m in client.get_metric_history(run.info.run_id, "refit_train_loss")) == refit_steps
    )
    assert not client.get_metric_history(run.info.run_id, "refit_val_accuracy")
    val_accuracy = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_accuracy")}
    assert val_accuracy == {e["epoch"]: pytest.approx(e["val_accuracy"]) for e in report.epochs}
    assert run.data.metrics["accuracy"] == pytest.approx(report.accuracy) and report.accuracy > 0.6

    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {METRICS_FILE, "calibration.json", "model"} <= top
    if (output / MODEL_CARD_FILE).exists():
        assert MODEL_CARD_FILE in top
    model = {a.path.split("/", 1)[1] for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"labels.json", "config.json", METRICS_FILE} <= model
    assert not model & {"_ray_train", "tensorboard", "_job.json", MLFLOW_FILE}, model
    calibration = json.loads(Path(mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="calibration.json", tracking_uri=mlflow_store
    )).read_text())  # fmt: skip
    assert calibration["temperature"] == pytest.approx(report.calibration.temperature)

    metrics = json.loads((output / METRICS_FILE).read_text())
    assert metrics["mlflow_run_id"] == run.info.run_id
    record = json.loads((output / MLFLOW_FILE).read_text())
    assert record["run_id"] == run.info.run_id and record["registered_model"] == MODEL_NAME
    assert record["tracking_uri"] == mlflow_store and record["experiment"] == "bm-ray"
    version = client.get_model_version(MODEL_NAME, record["registered_version"])
    assert version.run_id == run.info.run_id
    labels = json.loads((output / "labels.json").read_text())
    assert version.tags["bm_ray.version"] == labels["version"] == record["model_version"]


def test_compare_promotes_a_significantly_better_model_b(
    tracked_named: dict, mlflow_store: str, untrained_named: Path, tmp_path: Path
) -> None:
    """Untrained A (one label for every row: 1/3 right) against trained B on B's training rows."""
    args = ["compare", "--model", str(untrained_named), "--model", str(tracked_named["output"])]
    args += ["--input", str(tracked_named["named_data"]), "--output", str(tmp_path / "cmp"), "--actors", "1"]
    result = CliRunner().invoke(app, [*args, "--promote", "champion", "--json"])
    assert result.exit_code == 0, result.output
    promotion = json.loads(result.stdout)["promotion"]
    record = json.loads((tracked_named["output"] / MLFLOW_FILE).read_text())
    assert promotion["promoted"] is True, promotion
    assert promotion["registered_version"] == record["registered_version"]
    assert "significantly more accurate" in promotion["reason"]
    got = MlflowClient(mlflow_store).get_model_version_by_alias(MODEL_NAME, "champion")
    assert str(got.version) == record["registered_version"]
    stored = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert stored["promotion"] == promotion and stored["mcnemar_p"] < 0.05


def test_compare_refuses_to_promote_a_model_that_is_not_better(
    ray_local: None, tracked_named: dict, mlflow_store: str, tmp_path: Path
) -> None:
    """B the same model as A: McNemar's p is 1 and B is not more accurate, so the alias stays unset."""
    rows = tracked_named["named_data"].read_text().splitlines()[:60]
    corpus = tmp_path / "rows.jsonl"
    corpus.write_text("\n".join(rows) + "\n")
    spec = CompareSpec(
        models=[str(tracked_named["output"])] * 2,
        input=IngestSpec(input=[str(corpus)]),
        output=str(tmp_path / "cmp"),
        actors=1,
        promote="staging",
    )
    result = compare(spec)
    assert result.promotion is not None and result.promotion.promoted is False
    assert "not more accurate" in result.promotion.reason and result.mcnemar_p == 1.0
    with pytest.raises(MlflowException):
        MlflowClient(mlflow_store).get_model_version_by_alias(MODEL_NAME, "staging")
    console = Console(record=True, width=300)
    console.print(summary_table(result))
    shown = console.export_text()
    assert "not promoted" in shown and "not more accurate" in shown


# ---------------------------------------------------------------------------- without Ray or a store
def labelled(accuracy_a: float, accuracy_b: float, p: float) -> dict[str, Any]:
    return {"rows_labelled": 100, "accuracy_a": accuracy_a, "accuracy_b": accuracy_b, "mcnemar_p": p}


@pytest.mark.parametrize(
    ("result", "promoted", "why"),
    [
        (labelled(0.5, 0.9, 1e-6), True, "significantly more accurate"),
        (labelled(0.5, 0.55, 0.2), False, "not significantly: McNemar p = 0.2 >= 0.05"),
        (labelled(0.9, 0.5, 1e-6), False, "not more accurate"),
        (labelled(0.7, 0.7, 1.0), False, "not more accurate"),
        ({"rows": 10}, False, "no labels"),
    ],
)
def test_promotion_needs_b_significantly_more_accurate(result: dict, promoted: bool, why: str) -> None:
    verdict, reason = promotion_verdict(result)
    assert verdict is promoted and why in reason


def test_without_the_extra_tracking_is_a_clear_usage_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` raises ImportError
    with pytest.raises(TrackingError, match=r"bm-ray\[mlflow\]"):
        require_mlflow()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    train_args = ["train", "--data", str(tmp_path / "x.jsonl"), "--output", str(tmp_path / "m")]
    done = CliRunner().invoke(app, [*train_args, "--mlflow-tracking-uri", uri])
    assert done.exit_code == 2 and INSTALL_HINT in done.output, done.output
    compare_args = ["compare", "--model", "a", "--model", "b", "--input", str(tmp_path / "x.jsonl")]
    done = CliRunner().invoke(app, [*compare_args, "--output", str(tmp_path / "c"), "--promote", "champion"])
    assert done.exit_code == 2 and INSTALL_HINT in done.output, done.output
    assert not (tmp_path / "m").exists() and not (tmp_path / "c").exists()  # nothing was started


def test_relative_stores_become_absolute_and_metrics_numeric(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    assert absolute_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert absolute_uri(f"sqlite:///{tmp_path}/x.db") == f"sqlite:///{tmp_path}/x.db"
    assert absolute_uri("mlruns") == str(tmp_path.resolve() / "mlruns")
    assert absolute_uri("http://mlflow:5000") == "http://mlflow:5000"
    got = numeric_metrics({"a": 1, "b": 0.5, "c": float("nan"), "d": True, "e": [1]}, "refit_")
    assert got == {"refit_a": 1.0, "refit_b": 0.5}
    with pytest.raises(ValueError, match="not an MLflow alias"):
        CompareSpec(models=["a", "b"], input=IngestSpec(input=["x"]), output="o", promote="no spaces")


@pytest.mark.parametrize(("end_on_error", "status"), [(True, "FAILED"), (False, "RUNNING")])
def test_a_raising_block_ends_its_run_failed_unless_another_process_ends_it(
    tmp_path: Path, end_on_error: bool, status: str
) -> None:
    """A tune trial's block leaves its run open when it raises (Tune stopping it must not overwrite the
    driver's verdict, which can come first); every other run ends FAILED with the error as a tag."""
    from bm_ray.jobs.tracking import TrackedRun
    from bm_ray.jobs.tracking import tracked as tracked_block

    run = TrackedRun(f"sqlite:///{tmp_path / 'mlflow.db'}", "blocks", "block", "trial")
    with pytest.raises(RuntimeError, match="stopped"), tracked_block(run, end_on_error=end_on_error):
        run.start()
        raise RuntimeError("stopped")
    record = run.client.get_run(run.run_id)
    assert record.info.status == status
    assert ("bm_ray.error" in record.data.tags) is end_on_error
