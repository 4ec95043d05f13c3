"""A bm-ray model directory as a TensorFlow SavedModel, for TF Serving and KServe's TensorFlow runtime.

The SavedModel holds the classifier's weights and one graph per signature:

- ``serving_default``: ``input_ids``, ``attention_mask``, ``token_type_ids``, int32 ``[batch, seq]``;
- ``serving_int64``: the same inputs as int64 (what numpy tokenisation and many gRPC clients produce).

Both return ``scores`` (float32 ``[batch, labels]``: the model's calibrated probabilities, i.e. the
softmax of the logits over ``labels.json``'s temperature and, where it has one, the top-label map,
:class:`~bm_ray.model.calibration.TopLabelMap`, reproduced as TF ops), ``label_id`` (int64
``[batch]``, the top label's class index) and ``label`` (its name). The tokenizer files and
``labels.json`` are written beside it, and ``export.json`` describes the signatures.

One row is one window: the caller tokenises with truncation to ``max_length``. Long texts read as
several windows and aggregated (:mod:`bm_ray.model.engine`) are bm-ray's engine's, not the export's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from bm_ray.layout import EXPORT_FILE, LABELS_FILE
from bm_ray.model.calibration import SCORE_EPS, TIE_MARGIN, TopLabelMap
from bm_ray.model.registry import ModelInfo, load_classifier
from bm_ray.runtime.tf import import_tensorflow

EXPORT_FORMATS = ("savedmodel", "onnx")
"""What `bm-ray export --format` writes. ``onnx`` (the ``bm-ray[int8]`` extra): ``model.onnx``, the fp32
graph built from the weights (:mod:`bm_ray.model.onnx_graph`; standard opset-17 ops only, so any ONNX
runtime loads it) with the calibration as ONNX ops; the same inputs and outputs as the SavedModel's
``serving_default`` (int32 inputs)."""
ONNX_FILE = "model.onnx"
SERVING_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
"""The inputs of every serving signature, in the tokenizer's names."""
SIGNATURES = {"serving_default": "int32", "serving_int64": "int64"}
"""Signature name → the integer type of its inputs."""


def calibrated_scores(logits: Any, temperature: float | None, top_label: TopLabelMap | None) -> Any:
    """TF ops of the engine's scores for logits ``[batch, labels]``: ``softmax(logits / T)`` in float64,
    rounded to float32 as :func:`~bm_ray.model.calibration.temperature_softmax` does, then the
    top-label map as :meth:`~bm_ray.model.calibration.TopLabelMap.apply` computes it."""
    tf = import_tensorflow()
    scaled = tf.cast(logits, tf.float64) / float(temperature or 1.0)
    probs = tf.cast(tf.nn.softmax(scaled, axis=-1), tf.float32)
    return probs if top_label is None else top_label_scores(probs, top_label)


def top_label_scores(probs: Any, mapping: TopLabelMap) -> Any:
    """:meth:`TopLabelMap.apply` as TF ops (float32 in, float32 out, float64 inside): the top score
    mapped, kept just above the runner-up's tie, the other labels rescaled to share the rest."""
    tf = import_tensorflow()
    p = tf.cast(probs, tf.float64)
    labels = int(p.shape[-1])
    top = tf.argmax(p, axis=1, output_type=tf.int32)
    score = tf.reduce_max(p, axis=1)
    rest = 1.0 - score
    second = tf.math.top_k(p, k=2).values[:, 1] if labels > 1 else tf.zeros_like(score)
    keeps_label = second / tf.maximum(rest + second, 1e-12) + TIE_MARGIN
    s = tf.clip_by_value(score, SCORE_EPS, 1.0 - SCORE_EPS)
    z = mapping.a * tf.math.log(s) - mapping.b * tf.math.log1p(-s) + mapping.c
    new_score = tf.maximum(1.0 / (1.0 + tf.exp(-z)), keeps_label)
    empty = rest <= 1e-12  # the other labels had no mass: they share the new remainder equally
    factor = tf.where(empty, tf.zeros_like(rest), (1.0 - new_score) / tf.maximum(rest, 1e-12))
    out = p * factor[:, None]
    out = tf.where(empty[:, None], ((1.0 - new_score) / max(labels - 1, 1))[:, None], out)
    is_top = tf.equal(tf.range(labels, dtype=tf.int32)[None, :], top[:, None])
    out = tf.where(is_top, new_score[:, None], out)
    return tf.cast(out, tf.float32)


def serving_module(model: Any, info: ModelInfo) -> tuple[Any, dict[str, Any]]:
    """A ``tf.Module`` tracking the classifier's weights (not the Keras model: no Keras call traces
    are saved) and the concrete function of every :data:`SIGNATURES` entry."""
    tf = import_tensorflow()
    module = tf.Module()
    module.weights = list(model.weights)
    names = tf.constant(info.labels)

    def serve(input_ids: Any, attention_mask: Any, token_type_ids: Any) -> dict[str, Any]:
        logits = model(
            input_ids=tf.cast(input_ids, tf.int32),
            attention_mask=tf.cast(attention_mask, tf.int32),
            token_type_ids=tf.cast(token_type_ids, tf.int32),
            training=False,
        ).logits
        scores = calibrated_scores(tf.cast(logits, tf.float32), info.temperature, info.top_label_calibration)
        label_id = tf.argmax(scores, axis=1, output_type=tf.int64)
        return {"scores": scores, "label_id": label_id, "label": tf.gather(names, label_id)}

    signatures = {}
    for name, dtype in SIGNATURES.items():
        specs = [tf.TensorSpec([None, None], getattr(tf, dtype), name=key) for key in SERVING_INPUTS]
        function = tf.function(tf.autograph.experimental.do_not_convert(serve), input_signature=specs)
        setattr(module, name, function)
        signatures[name] = function.get_concrete_function()
    return module, signatures


def export_description(info: ModelInfo, shown_path: str, tokenizer_files: list[str]) -> dict[str, Any]:
    """The content of ``export.json`` (and of `bm-ray export --json`, with the output added)."""
    inputs = {key: "[batch, seq]" for key in SERVING_INPUTS}
    outputs = {"scores": "float32 [batch, labels]", "label_id": "int64 [batch]", "label": "string [batch]"}
    return {
        "format": "savedmodel",
        "model": {"name": info.name, "version": info.version, "path": shown_path},
        "signatures": {
            name: {"inputs": {key: f"{dtype} {shape}" for key, shape in inputs.items()}, "outputs": outputs}
            for name, dtype in SIGNATURES.items()
        },
        "labels": list(info.labels),
        "max_length": info.max_length,
        "calibration": {
            "temperature": info.temperature,
            "top_label_calibration": (
                None if info.top_label_calibration is None else info.top_label_calibration.to_json()
            ),
        },
        "tokenizer": sorted(tokenizer_files),
        "long_text": (
            f"one row is one window: tokenise with truncation to max_length ({info.max_length}); longer "
            "texts read as several windows and aggregated are bm-ray's engine's (classify, serve), not the export's"
        ),
    }


def export_onnx(model_dir: str | Path, out_dir: str | Path, shown_path: str | None = None) -> dict[str, Any]:
    """Write ``model.onnx`` of the local model directory `model_dir` into `out_dir`, the tokenizer files,
    ``labels.json`` and ``export.json`` beside it (as :func:`export_savedmodel`); returns ``export.json``'s content."""
    import onnx

    from bm_ray.model.onnx_graph import bert_weights, build_bert_graph, with_calibrated_scores

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer, info = load_classifier(model_dir)
    shape, weights = bert_weights(model)
    graph = build_bert_graph(shape, weights, token_type_ids=True, name=info.name)
    graph = with_calibrated_scores(graph, info.labels, info.temperature, info.top_label_calibration)
    onnx.checker.check_model(graph)
    onnx.save(graph, str(out / ONNX_FILE))
    written = tokenizer.save_pretrained(str(out))
    shutil.copyfile(Path(model_dir) / LABELS_FILE, out / LABELS_FILE)
    description = export_description(
        info, str(model_dir) if shown_path is None else shown_path, [Path(path).name for path in written]
    )
    dims = "[batch, seq]"
    description["format"] = "onnx"
    del description["signatures"]
    description["onnx"] = {
        "file": ONNX_FILE,
        "opset": graph.opset_import[0].version,
        "inputs": {key: f"int32 {dims}" for key in SERVING_INPUTS},
        "outputs": {
            "scores": "float32 [batch, labels]",
            "label_id": "int64 [batch]",
            "label": "string [batch]",
        },
    }
    (out / EXPORT_FILE).write_text(json.dumps(description, indent=2), encoding="utf-8")
    return description


def export_savedmodel(
    model_dir: str | Path, out_dir: str | Path, shown_path: str | None = None
) -> dict[str, Any]:
    """Write the SavedModel of the local model directory `model_dir` into `out_dir` (created; any
    files there are overwritten), the tokenizer files, ``labels.json`` and ``export.json`` beside it;
    returns ``export.json``'s content (`shown_path` names the model there, default `model_dir`)."""
    tf = import_tensorflow()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer, info = load_classifier(model_dir)
    module, signatures = serving_module(model, info)
    tf.saved_model.save(module, str(out), signatures=signatures)
    written = tokenizer.save_pretrained(str(out))
    shutil.copyfile(Path(model_dir) / LABELS_FILE, out / LABELS_FILE)
    description = export_description(
        info, str(model_dir) if shown_path is None else shown_path, [Path(path).name for path in written]
    )
    (out / EXPORT_FILE).write_text(json.dumps(description, indent=2), encoding="utf-8")
    return description
