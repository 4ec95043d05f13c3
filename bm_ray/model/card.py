"""The model card: ``README.md`` of a trained model directory, a Hugging Face model card.

Written by `bm-ray train` once the model directory is final (:func:`write_model_card`), from the typed
training result (:class:`~bm_ray.results.TrainResult`, the content of ``metrics.json``) and the model's
``labels.json`` (:class:`~bm_ray.model.registry.ModelInfo`). The YAML front matter is
:class:`huggingface_hub.ModelCardData` (``base_model``, ``pipeline_tag: text-classification``, the
validation results as a ``model-index``, and a ``bm_ray`` block with the labels, version, window and
calibration); the body says what a user of the model needs to know: labels, data, split and leakage,
validation metrics with their 95% intervals, calibration, long-text behaviour, how to use it, intended
use and limits.

It imports neither TensorFlow nor Ray: a card is built from plain values.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bm_ray import __version__
from bm_ray.layout import MODEL_CARD_FILE
from bm_ray.model.registry import HUB_PREFIX, PRESETS, ModelInfo, read_model_info
from bm_ray.model.uncertainty import CONFIDENCE, accuracy_interval, method_text
from bm_ray.results import Interval, TrainResult
from bm_ray.specs import LongTextOptions

CARD_TAGS = ["bm-ray", "text-classification", "bert", "tensorflow"]
"""Tags of every bm-ray model card."""


def hub_base_model(base_model: str) -> str:
    """The ``base_model`` of the card's metadata: a preset's or an ``hf:`` reference's hub id, else the
    reference as the model records it (a local path or URI, without credentials)."""
    if base_model in PRESETS and PRESETS[base_model].hub_id:
        return PRESETS[base_model].hub_id
    return base_model.removeprefix(HUB_PREFIX)


def _num(value: float | None, digits: int = 4) -> str:
    """A metric for the card's text: rounded, NaN and None as "n/a"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def card_metadata(result: TrainResult, info: ModelInfo) -> Any:
    """The card's YAML front matter as :class:`huggingface_hub.ModelCardData`."""
    from huggingface_hub import EvalResult, ModelCardData

    dataset = {"dataset_type": "custom", "dataset_name": "validation split"}
    task = {"task_type": "text-classification", "task_name": "Text Classification"}
    results = [
        EvalResult(**task, **dataset, metric_type="accuracy", metric_value=result.accuracy),
        EvalResult(**task, **dataset, metric_type="f1", metric_name="macro-F1", metric_value=result.macro_f1),
    ]
    if not math.isnan(result.ece):
        results.append(EvalResult(**task, **dataset, metric_type="ece", metric_value=result.ece))
    return ModelCardData(
        base_model=hub_base_model(info.base_model),
        pipeline_tag="text-classification",
        library_name="transformers",
        tags=list(CARD_TAGS),
        model_name=info.name,
        eval_results=results,
        bm_ray={
            "version": info.version,
            "labels": list(info.labels),
            "max_length": info.max_length,
            "temperature": info.temperature,
            "top_label_calibration": (
                None if info.top_label_calibration is None else info.top_label_calibration.to_json()
            ),
            "validation_rows": result.rows_evaluated,
        },
    )


def _labels_section(result: TrainResult, info: ModelInfo) -> str:
    raw = info.raw_labels or info.labels
    support = {name: metrics.support for name, metrics in result.per_class.items()}
    rows = [
        [i, f"`{label}`", f"`{value}`", result.data.labels.get(value, 0), support.get(label, 0)]
        for i, (label, value) in enumerate(zip(info.labels, raw, strict=True))
    ]
    header = ["class", "label", "label in the data", "training-corpus rows", "validation rows"]
    return (
        f"{len(info.labels)} labels, in the model's output order (`config.json`'s `id2label`, "
        f"`labels.json`'s `labels`):\n\n{_table(header, rows)}"
    )


def _data_section(result: TrainResult) -> str:
    data = result.data

    def counts(name: str, read: Any) -> list[Any]:
        rejected = ", ".join(f"{reason} {n}" for reason, n in sorted(read.rejected_by_reason.items()))
        return [name, read.rows_read, read.rows_ok, read.rows_rejected, rejected or "none"]

    rows = [counts("training corpus", data.train_data)]
    if data.val_data is not None:
        rows.append(counts("validation corpus", data.val_data))
    text = _table(["corpus", "rows read", "rows ok", "rows rejected", "rejected by reason"], rows)
    text += f"\n\nTrained on {data.train_rows:,} rows, validated on {data.val_rows:,}."
    if data.background_rows or data.boilerplate_rows:
        text += (
            f" Training added {data.background_rows:,} background (non-topical) rows and set "
            f"{data.boilerplate_rows:,} rows behind page boilerplate."
        )
    if data.duplicates is not None:
        dup = data.duplicates
        text += (
            f" The training corpus had {dup.clusters:,} clusters of exact or near-duplicate rows "
            f"({dup.rows_in_clusters:,} rows; Jaccard ≥ {dup.threshold:g})."
        )
    return text


def _split_section(result: TrainResult) -> str:
    spec, leakage = result.spec, result.leakage
    if result.data.val_data is not None:
        split = "Validation rows come from a separate corpus (`val_data`)."
    else:
        how = spec.get("split")
        fraction = spec.get("val_fraction")
        share = f"{fraction:.0%} of the rows" if isinstance(fraction, int | float) else "a share of the rows"
        if how == "grouped":
            split = (
                f"Validation rows are {share}, split `grouped`: exact and near-duplicate clusters stay "
                "on one side of the split (stratified by label)."
            )
        elif how == "random":
            split = (
                f"Validation rows are {share}, split `random` (stratified by label): duplicates may "
                "sit on both sides."
            )
        else:
            split = f"Validation rows are {share} of the training corpus."
    return (
        f"{split}\n\nLeakage: of {leakage.val_rows:,} validation rows, {leakage.exact:,} have an exact and "
        f"{leakage.near:,} a near duplicate among the training rows ({leakage.fraction:.2%}; "
        f"{leakage.method}). The validation metrics below are only as independent as this is low."
    )


def _metrics_section(result: TrainResult) -> str:
    intervals = result.intervals
    if intervals is None:  # a result of a bm-ray that wrote no intervals: the accuracy's is computable
        correct = round(result.accuracy * result.rows_evaluated)
        accuracy, macro, ece = accuracy_interval(correct, result.rows_evaluated), None, None
    else:
        accuracy, macro, ece = intervals.accuracy, intervals.macro_f1, intervals.ece
    rows = [
        ["accuracy", _num(result.accuracy), _ci(accuracy)],
        ["macro-F1", _num(result.macro_f1), _ci(macro)],
        ["log-loss", _num(result.log_loss), "n/a"],
        [
            f"ECE ({result.ece_bins} bins)",
            f"{_num(result.ece)} (a perfectly calibrated model would show "
            f"{_num(result.ece_floor)} ± {_num(result.ece_floor_std)} on this many rows)",
            _ci(ece),
        ],
    ]
    methods = "; ".join(
        f"{name}: {method_text(interval)}"
        for name, interval in (("accuracy", accuracy), ("macro-F1", macro), ("ECE", ece))
        if interval is not None
    )
    text = (
        f"On {result.rows_evaluated:,} validation rows ({result.rows_rejected:,} not scored), the "
        f"selected model (epoch {result.best_epoch} of {len(result.epochs)}) with its calibration:\n\n"
        + _table(["metric", "value", f"{CONFIDENCE:.0%} interval"], rows)
        + f"\n\nIntervals ({methods}) say how far the figures could move on another "
        f"{result.rows_evaluated:,} rows like these; they do not cover a shift in the data.\n\n"
    )
    per_class = [
        [f"`{label}`", _num(m.precision), _num(m.recall), _num(m.f1), m.support]
        for label, m in result.per_class.items()
    ]
    text += _table(["label", "precision", "recall", "F1", "rows"], per_class)
    if result.refit is not None:
        text += f"\n\nRefit: {result.refit.note} ({result.refit.rows:,} rows, {result.refit.epochs} epochs)."
    return text


def _ci(interval: Interval | None) -> str:
    """An interval for the card's tables, "[low, high]" to 4 places ("n/a" when absent or NaN)."""
    if interval is None or math.isnan(interval.low) or math.isnan(interval.high):
        return "n/a"
    return f"[{_num(interval.low)}, {_num(interval.high)}]"


def _calibration_section(result: TrainResult, info: ModelInfo) -> str:
    fit = result.calibration
    if fit is None:
        return (
            "Not calibrated (`calibrate: false`): scores are the plain softmax of the logits."
            if info.temperature is None
            else f"Temperature {info.temperature:.4f} (`labels.json`); no fit report in `metrics.json`."
        )
    mapping = (
        "a top-label beta map "
        + ", ".join(f"{k} = {v:.4f}" for k, v in fit.top_label_calibration.items() if k != "method")
        if fit.top_label_calibration
        else "no top-label map"
    )
    rows = [
        [name, _num(scores.ece), _ci(scores.ece_interval), _num(scores.log_loss)]
        for name, scores in (
            ("plain softmax", fit.before),
            ("after the temperature", fit.after_temperature),
            ("as the model answers", fit.after),
        )
    ]
    text = (
        f"Fitted on {fit.rows:,} validation rows: temperature T = {fit.temperature:.4f} and {mapping}. "
        "Scores are `softmax(logits / T)`, then (with the map) the top score mapped and the other labels "
        "rescaled; the predicted label never changes.\n\n"
        + _table(
            [f"scores (ECE, {fit.ece_bins} bins)", "ECE", f"ECE {CONFIDENCE:.0%} interval", "log-loss"], rows
        )
    )
    if fit.note:
        text += f"\n\n{fit.note[:1].upper()}{fit.note[1:].rstrip('.')}."
    return text


def _long_text_section(result: TrainResult, info: ModelInfo) -> str:
    defaults = LongTextOptions()
    return (
        f"The model reads {info.max_length} tokens at a time (`max_length`, with `[CLS]` and `[SEP]`). "
        f"bm-ray's engine (`classify`, `evaluate`, `serve`) reads a longer text as overlapping windows "
        f"of that length (by default a stride of half a window, at most {defaults.max_windows} windows, "
        f"probabilities aggregated by `{defaults.window_aggregation}`); the validation above read "
        f"{result.windows:,} windows for {result.rows_evaluated:,} rows ({result.rows_windows_capped:,} "
        "texts longer than the window cap). Plain transformers, `bm-ray export` and a TF Serving "
        "deployment of it read one window: the text truncated to `max_length` tokens."
    )


def _usage_section(info: ModelInfo) -> str:
    temperature = info.temperature or 1.0
    mapped = (
        "\n# then labels.json's top_label_calibration maps each row's top score (bm_ray.model.calibration)"
        if info.top_label_calibration is not None
        else ""
    )
    return (
        "With bm-ray: `bm-ray classify --model DIR ...`, `bm-ray serve --model DIR`, "
        "`bm-ray evaluate --model DIR --data ...`. With plain transformers (one window):\n\n"
        "```python\n"
        "import tensorflow as tf\n"
        "from transformers import AutoTokenizer, TFBertForSequenceClassification\n\n"
        'model = TFBertForSequenceClassification.from_pretrained("DIR")\n'
        'tokenizer = AutoTokenizer.from_pretrained("DIR")\n'
        f'encoded = tokenizer(texts, padding=True, truncation=True, max_length={info.max_length}, return_tensors="tf")\n'
        f"scores = tf.nn.softmax(model(**encoded).logits / {temperature!r}, axis=-1){mapped}\n"
        "```"
    )


def _limits_section(info: ModelInfo) -> str:
    labels = ", ".join(f"`{label}`" for label in info.labels)
    return (
        f"Intended use: assigning one of {labels} to texts like the training corpus, in batch "
        "(`bm-ray classify`) or online (`bm-ray serve`), with the score as a calibrated probability for "
        "thresholds and abstention (`--min-score`).\n\n"
        "Limits: the model knows only these labels and answers one of them for any text, in or out of "
        "its domain; its accuracy and calibration are measured on the validation rows above, drawn "
        "from the training data, and hold for data like it; a shift in sources, time or label "
        "definitions needs a new evaluation (`bm-ray evaluate`). It inherits the biases of its base "
        "model and of its training data. The data's licence and the base model's licence apply."
    )


def card_text(result: TrainResult, info: ModelInfo) -> str:
    """The card's Markdown body (after the front matter)."""
    base = info.base_model
    sections = [
        ("Labels", _labels_section(result, info)),
        ("Data", _data_section(result)),
        ("Split and leakage", _split_section(result)),
        ("Validation metrics", _metrics_section(result)),
        ("Calibration", _calibration_section(result, info)),
        ("Long texts", _long_text_section(result, info)),
        ("How to use", _usage_section(info)),
        ("Intended use and limits", _limits_section(info)),
    ]
    intro = (
        f"# {info.name}\n\nA text classifier fine-tuned from `{base}` "
        + (
            f"([{hub_base_model(base)}](https://huggingface.co/{hub_base_model(base)})) "
            if base in PRESETS
            else ""
        )
        + f"by bm-ray {__version__} "
        "(TFBertForSequenceClassification, Ray Train), version "
        f"`{info.version}`. The weights are `model.safetensors` (TensorFlow); `labels.json` holds the "
        "labels, the window and the calibration, `metrics.json` every number below."
    )
    return "\n\n".join([intro, *(f"## {title}\n\n{body}" for title, body in sections)]) + "\n"


def model_card(result: TrainResult, info: ModelInfo) -> Any:
    """The :class:`huggingface_hub.ModelCard` of a trained model."""
    from huggingface_hub import ModelCard

    return ModelCard(f"---\n{card_metadata(result, info).to_yaml()}\n---\n\n{card_text(result, info)}")


def write_model_card(model_dir: str | Path, result: TrainResult) -> Path:
    """Write ``README.md`` into the local model directory `model_dir` from its training result and its
    ``labels.json``; returns its path."""
    path = Path(model_dir) / MODEL_CARD_FILE
    model_card(result, read_model_info(model_dir)).save(path)
    return path
