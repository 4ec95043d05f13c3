"""`bm-ray export --format savedmodel`: the SavedModel, loaded with plain `tf.saved_model.load` and fed the
tokenizer written beside it, answers bm-ray's engine's calibrated scores (temperature and top-label map baked
in) on 200 one-window texts; the CLI's --json, refusals and --overwrite. Tiny random models, no Ray."""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tiny_model import make_tiny_model
from typer.testing import CliRunner

from bm_ray.cli import app
from bm_ray.cli.main import DONE, REFUSED, USAGE
from bm_ray.jobs.export import export
from bm_ray.layout import EXPORT_FILE, LABELS_FILE
from bm_ray.model.calibration import TopLabelMap, temperature_softmax
from bm_ray.model.engine import Predictor
from bm_ray.model.export import SERVING_INPUTS
from bm_ray.model.registry import read_model_info, write_model_info

LABELS = ["World", "Sports", "Business", "Sci/Tech"]
WORDS = [
    "football",
    "market",
    "bank",
    "chip",
    "robot",
    "league",
    "earnings",
    "satellite",
    "coach",
    "merger",
    "laptop",
    "goal",
    "profit",
    "internet",
    "striker",
    "investors",
    "election",
    "minister",
    "troops",
    "summit",
    "oil",
    "prices",
    "shares",
    "software",
    "research",
    "season",
]
FILLER = ["the", "a", "of", "and", "today", "report", "said", "new", "after", "week"]


def make_texts(n: int = 200, seed: int = 0) -> list[str]:
    """Short headlines (3 to 14 words): every one fits the tiny model's 64-token window."""
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS if rng.random() < 0.6 else FILLER) for _ in range(rng.randint(3, 14)))
        for _ in range(n)
    ]


TEXTS = make_texts()
TOP_LABEL = TopLabelMap(a=0.5, b=2.0, c=0.5)  # a map with a slope: it moves every top score


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: str) -> dict[str, Path]:
    """The same tiny weights three times: uncalibrated, with a temperature, with a temperature and a map."""
    root = tmp_path_factory.mktemp("export-models")
    plain = make_tiny_model(root / "plain", LABELS, tokenizer_dir, seed=7, spread_on=TEXTS)
    info = read_model_info(plain)
    variants = {
        "plain": info,
        "temperature": replace(info, temperature=1.7),
        "top_label": replace(info, temperature=0.8, top_label_calibration=TOP_LABEL),
    }
    paths = {"plain": plain}
    for name, variant in variants.items():
        if name != "plain":
            paths[name] = Path(shutil.copytree(plain, root / name))
            write_model_info(variant, paths[name])
    return paths


def serve_export(export_dir: Path, texts: list[str], signature: str = "serving_default") -> dict[str, Any]:
    """What a TF Serving user does: load the SavedModel and its tokenizer, tokenise (one window), call."""
    import tensorflow as tf
    from transformers import AutoTokenizer

    loaded = tf.saved_model.load(str(export_dir))
    serve = loaded.signatures[signature]
    tokenizer = AutoTokenizer.from_pretrained(str(export_dir))
    max_length = json.loads((export_dir / LABELS_FILE).read_text())["max_length"]
    encoded = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="np")
    dtype = np.int64 if signature == "serving_int64" else np.int32
    outputs = serve(**{key: tf.constant(encoded[key].astype(dtype)) for key in SERVING_INPUTS})
    return {key: value.numpy() for key, value in outputs.items()}


@pytest.mark.parametrize("variant", ["plain", "temperature", "top_label"])
def test_the_savedmodel_answers_the_engines_calibrated_scores(
    models: dict[str, Path], tmp_path: Path, variant: str
) -> None:
    model_dir = models[variant]
    described = export(str(model_dir), str(tmp_path / "export" / "1"))
    export_dir = tmp_path / "export" / "1"
    assert (export_dir / "saved_model.pb").exists() and (export_dir / "vocab.txt").exists()
    assert json.loads((export_dir / EXPORT_FILE).read_text()) == {
        k: v for k, v in described.items() if k != "output"
    }
    engine = Predictor.load(str(model_dir), precision="fp32")
    scored = engine.score_texts(TEXTS)
    assert (scored.windows == 1).all(), "every text must fit one window"
    got = serve_export(export_dir, TEXTS)
    assert got["scores"].shape == (len(TEXTS), len(LABELS)) and got["scores"].dtype == np.float32
    assert float(np.abs(got["scores"] - scored.probs).max()) <= 1e-4
    assert (got["label_id"] == scored.probs.argmax(axis=1)).all()
    assert [label.decode() for label in got["label"]] == [LABELS[i] for i in got["label_id"]]
    assert len(set(got["label_id"].tolist())) > 1, "the spread head predicts several labels"
    int64 = serve_export(export_dir, TEXTS[:20], "serving_int64")
    np.testing.assert_allclose(int64["scores"], got["scores"][:20], atol=1e-6)

    info = read_model_info(model_dir)
    assert described["calibration"] == {
        "temperature": info.temperature,
        "top_label_calibration": None if variant != "top_label" else TOP_LABEL.to_json(),
    }
    assert described["labels"] == LABELS and described["max_length"] == info.max_length
    if variant == "top_label":  # the map really is in the graph: the tempered softmax alone differs
        tempered = temperature_softmax(engine.predict_logits(engine.encoder.encode(TEXTS)), 0.8)
        assert float(np.abs(got["scores"] - tempered).max()) > 1e-2


def test_cli_export_json_refusals_and_overwrite(models: dict[str, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    output = tmp_path / "exported"
    args = ["export", str(models["top_label"]), "--format", "savedmodel", "--output", str(output)]
    done = runner.invoke(app, [*args, "--json"])
    assert done.exit_code == DONE, done.output
    result = json.loads(done.stdout)
    assert result["output"] == str(output) and result["format"] == "savedmodel"
    assert set(result["signatures"]) == {"serving_default", "serving_int64"}
    assert result["model"]["version"] == read_model_info(models["top_label"]).version

    again = runner.invoke(app, args)
    assert again.exit_code == REFUSED and "--overwrite" in again.stderr
    replaced = runner.invoke(app, [*args, "--overwrite"])
    assert replaced.exit_code == DONE, replaced.output
    assert replaced.stdout.strip() == str(output)  # without --json: the output path

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    refused = runner.invoke(app, [*args[:-1], str(foreign), "--overwrite"])
    assert refused.exit_code == REFUSED and "holds no bm-ray export" in refused.stderr
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]

    not_trained = tmp_path / "untrained"
    shutil.copytree(models["plain"], not_trained)
    (not_trained / LABELS_FILE).unlink()
    usage = runner.invoke(app, ["export", str(not_trained), "--output", str(tmp_path / "x")])
    assert usage.exit_code == USAGE and "not a trained bm-ray model" in usage.stderr
    assert not (tmp_path / "x").exists()
    assert (
        runner.invoke(app, [*args, "--format", "tflite"]).exit_code == USAGE
    )  # onnx: tests/unit/test_int8.py
