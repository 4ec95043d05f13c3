"""The model card (README.md of a trained model directory): built from a sample training result, read back
with huggingface_hub's own parser, metadata and sections checked. No TensorFlow, no Ray."""

from __future__ import annotations

from pathlib import Path

import pytest
import result_samples as samples
from huggingface_hub import ModelCard

from bm_ray.layout import MODEL_CARD_FILE
from bm_ray.model.calibration import TopLabelMap
from bm_ray.model.card import hub_base_model, write_model_card
from bm_ray.model.registry import ModelInfo, write_model_info
from bm_ray.results import TrainResult

MAP = TopLabelMap(a=0.9, b=1.1, c=0.05)


def model_dir(tmp_path: Path, base_model: str = "minilm-l6", **info: object) -> Path:
    """A directory with only labels.json: all the card reads besides the result."""
    values = {"temperature": 1.3, "raw_labels": ["1", "2"], **info}
    write_model_info(
        ModelInfo(
            ["Sports", "World"], 128, "news", "0123456789abcdef-20240501T100000Z", base_model, **values
        ),
        tmp_path,
    )
    return tmp_path


def test_the_card_parses_back_with_its_metadata(tmp_path: Path) -> None:
    result = TrainResult.model_validate(samples.train_metrics())
    path = write_model_card(model_dir(tmp_path), result)
    assert path == tmp_path / MODEL_CARD_FILE
    card = ModelCard.load(path)
    data = card.data
    assert data.pipeline_tag == "text-classification"
    assert data.base_model == "sentence-transformers/all-MiniLM-L6-v2"  # the preset's hub id
    assert data.library_name == "transformers" and "bm-ray" in data.tags
    block = data.to_dict()["bm_ray"]
    assert block["labels"] == ["Sports", "World"] and block["max_length"] == 128
    assert block["temperature"] == 1.3 and block["top_label_calibration"] is None
    assert block["version"] == "0123456789abcdef-20240501T100000Z"
    assert block["validation_rows"] == result.rows_evaluated
    metrics = {r.metric_type: r.metric_value for r in data.eval_results}
    assert metrics == {"accuracy": 0.75, "f1": 0.7, "ece": 0.1}
    assert {r.task_type for r in data.eval_results} == {"text-classification"}
    assert [r.metric_name for r in data.eval_results if r.metric_type == "f1"] == ["macro-F1"]


def test_the_card_says_labels_data_split_metrics_calibration_windows_and_limits(tmp_path: Path) -> None:
    doc = samples.train_metrics()
    doc["spec"].update(split="grouped", val_fraction=0.15)
    doc["calibration"].update(top_label_calibration=MAP.to_json(), note=None)
    text = ModelCard.load(
        write_model_card(model_dir(tmp_path, top_label_calibration=MAP), TrainResult.model_validate(doc))
    ).text
    for section in (
        "## Labels",
        "## Data",
        "## Split and leakage",
        "## Validation metrics",
        "## Calibration",
        "## Long texts",
        "## How to use",
        "## Intended use and limits",
    ):
        assert section in text, section
    assert "| 0 | `Sports` | `1` | 60 | 2 |" in text  # class, name, raw value, training rows, support
    assert "| training corpus | 120 | 118 | 2 | missing_label 2 |" in text
    assert "15% of the rows, split `grouped`" in text
    assert "7 have an exact and 5 a near duplicate" in text
    assert "On 4 validation rows" in text
    # every figure with its 95% interval from metrics.json, and how each was computed
    assert (
        "| accuracy | 0.7500 | [0.3006, 0.9544] |" in text
        and "| macro-F1 | 0.7000 | [0.2000, 1.0000] |" in text
    )
    assert "on this many rows) | [0.1500, 0.5750] |" in text  # the ECE's
    assert (
        "accuracy: Wilson score interval; macro-F1: percentile bootstrap over rows, 1,000 resamples" in text
    )
    assert "temperature T = 1.3000" in text and "a = 0.9000, b = 1.1000, c = 0.0500" in text
    assert "| plain softmax | 0.2000 | [0.0500, 0.3000] | 0.7000 |" in text
    assert "| as the model answers | 0.1000 | [0.0500, 0.3000] | 0.6000 |" in text
    assert "reads 128 tokens at a time" in text and "read one window" in text
    assert "top_label_calibration maps" in text  # the plain-transformers recipe names the map
    assert "Limits:" in text


def test_the_card_of_an_uncalibrated_model_with_validation_data(tmp_path: Path) -> None:
    doc = samples.train_metrics(val_data=True, calibrate=False, refit=True)
    path = write_model_card(
        model_dir(tmp_path, base_model="models/base", temperature=None), TrainResult.model_validate(doc)
    )
    card = ModelCard.load(path)
    assert card.data.base_model == "models/base"  # a local base model as labels.json records it
    assert card.data.to_dict()["bm_ray"]["temperature"] is None
    assert "| validation corpus | 30 | 30 | 0 | none |" in card.text
    assert "separate corpus (`val_data`)" in card.text
    assert "Not calibrated" in card.text and "Refit:" in card.text
    assert "/ 1.0, axis=-1)" in card.text  # plain softmax in the recipe


@pytest.mark.parametrize(
    ("ref", "expected"),
    [("minilm-l6", "sentence-transformers/all-MiniLM-L6-v2"), ("hf:org/name", "org/name")],
)
def test_hub_base_model(ref: str, expected: str) -> None:
    assert hub_base_model(ref) == expected


def test_nan_metrics_do_not_break_the_card(tmp_path: Path) -> None:
    doc = samples.train_metrics()
    doc.update({key: float("nan") for key in ("log_loss", "ece", "ece_floor", "ece_floor_std")})
    card = ModelCard.load(write_model_card(model_dir(tmp_path), TrainResult.model_validate(doc)))
    assert "n/a" in card.text
    assert "ece" not in {r.metric_type for r in card.data.eval_results}


def test_the_card_of_an_older_result_computes_the_accuracy_interval(tmp_path: Path) -> None:
    """metrics.json of a bm-ray without intervals: the card still gives the accuracy's Wilson interval
    (the same function as the jobs), and says n/a for the bootstrap ones it cannot redo without rows."""
    result = TrainResult.model_validate(samples.train_metrics(intervals=False))
    text = ModelCard.load(write_model_card(model_dir(tmp_path), result)).text
    assert "| accuracy | 0.7500 | [0.3006, 0.9544] |" in text and "| macro-F1 | 0.7000 | n/a |" in text
    assert "accuracy: Wilson score interval)" in text
    assert "| plain softmax | 0.2000 | n/a | 0.7000 |" in text
