"""`bm-ray tune` end to end: Ray Tune (ASHA) trials of the real train loop with a tiny model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import yaml
from test_train import LABELS, write_synthetic
from tiny_model import make_tiny_model
from typer.testing import CliRunner

from bm_ray.cli.main import app
from bm_ray.specs import TrainSpec, load_spec_file


def test_tune_runs_asha_trials_and_writes_the_best_train_spec(
    ray_local: None, tokenizer_dir: str, tmp_path: Path
) -> None:
    base = make_tiny_model(tmp_path / "base", LABELS, tokenizer_dir, hidden=32)
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
