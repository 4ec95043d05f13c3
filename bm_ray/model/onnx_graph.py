"""An ONNX graph of a bm-ray classifier, built from its weights with the ``onnx`` helper API.

Why not a converter: tf2onnx is not tested with bm-ray's TensorFlow (2.21) and would be one more
dependency pinned against our protobuf and numpy, while a BERT classifier is a short, fixed list of
operations. Building the graph from the weights also keeps its structure under bm-ray's control:
it is written in the shape ONNX Runtime's transformers optimizer recognises (so its fusions apply)
and :func:`onnxruntime.quantization.quantize_dynamic` quantizes (every dense layer is a plain
``MatMul`` + ``Add``).

The graph is the forward pass of ``TFBertForSequenceClassification`` at inference (dropout off):

- embeddings: word + position (``0..seq-1``) + token type (type 0 unless ``token_type_ids`` is an
  input), then LayerNorm;
- each layer: self-attention with the additive mask ``(1 - attention_mask) * -10000`` (what
  transformers' TF BERT adds), output dense + residual + LayerNorm, the FFN with exact (erf) GELU,
  dense + residual + LayerNorm;
- the pooler (``tanh`` dense over the [CLS] row) and the classifier: ``logits`` float32 ``[batch, labels]``.

Inputs are int32 ``[batch, seq]`` (the engine's :func:`~bm_ray.model.preprocess.pad_batch` dtype).
:func:`bert_weights` reads the arrays from a loaded Keras model, so either weight file
(safetensors or h5) works the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

OPSET = 17
"""Opset 17 has ``LayerNormalization`` as a standard op (one node instead of seven, and the form the
optimizer's SkipLayerNormalization fusion starts from)."""
MASK_VALUE = -10000.0
"""The additive attention-mask value of transformers' TF BERT (not dtype.min): matching it keeps
masked positions' softmax weights identical, not just negligible."""
SUPPORTED_ACTIVATIONS = ("gelu",)


@dataclass(frozen=True)
class BertShape:
    """The architecture numbers the graph needs (from the model's config)."""

    hidden: int
    heads: int
    layers: int
    labels: int
    layer_norm_eps: float

    @property
    def head_size(self) -> int:
        """Width of one attention head."""
        return self.hidden // self.heads


def bert_weights(model: Any) -> tuple[BertShape, dict[str, np.ndarray]]:
    """The shape and every weight (float32 numpy, Keras kernel layout ``[in, out]``) of a loaded
    ``TFBertForSequenceClassification``, under flat names the graph builder uses."""
    config = model.config
    if config.hidden_act not in SUPPORTED_ACTIVATIONS:
        raise ValueError(
            f"ONNX export: hidden_act {config.hidden_act!r} is not supported (only {SUPPORTED_ACTIVATIONS})"
        )
    bert = model.bert
    if bert.pooler is None:
        raise ValueError("ONNX export: the model has no pooler; bm-ray classifiers always do")

    def arr(variable: Any) -> np.ndarray:
        return np.asarray(variable.numpy(), dtype=np.float32)

    emb = bert.embeddings
    weights = {
        "emb.word": arr(emb.weight),
        "emb.position": arr(emb.position_embeddings),
        "emb.token_type": arr(emb.token_type_embeddings),
        "emb.ln.gamma": arr(emb.LayerNorm.gamma),
        "emb.ln.beta": arr(emb.LayerNorm.beta),
        "pooler.kernel": arr(bert.pooler.dense.kernel),
        "pooler.bias": arr(bert.pooler.dense.bias),
        "classifier.kernel": arr(model.classifier.kernel),
        "classifier.bias": arr(model.classifier.bias),
    }
    for i, layer in enumerate(bert.encoder.layer):
        attention = layer.attention.self_attention
        dense = {
            "q": attention.query,
            "k": attention.key,
            "v": attention.value,
            "attn_out": layer.attention.dense_output.dense,
            "ffn_in": layer.intermediate.dense,
            "ffn_out": layer.bert_output.dense,
        }
        for name, unit in dense.items():
            weights[f"l{i}.{name}.kernel"] = arr(unit.kernel)
            weights[f"l{i}.{name}.bias"] = arr(unit.bias)
        for name, norm in {
            "ln1": layer.attention.dense_output.LayerNorm,
            "ln2": layer.bert_output.LayerNorm,
        }.items():
            weights[f"l{i}.{name}.gamma"] = arr(norm.gamma)
            weights[f"l{i}.{name}.beta"] = arr(norm.beta)
    shape = BertShape(
        hidden=int(config.hidden_size),
        heads=int(config.num_attention_heads),
        layers=int(config.num_hidden_layers),
        labels=int(config.num_labels),
        layer_norm_eps=float(config.layer_norm_eps),
    )
    return shape, weights


class _Graph:
    """Accumulates nodes and initializers with unique names (a thin layer over ``onnx.helper``)."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._count = 0

    def const(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        # np.require, not np.ascontiguousarray: the latter turns 0-d scalars into shape [1].
        self.initializers.append(numpy_helper.from_array(np.require(value, requirements="C"), name))
        return name

    def op(self, op_type: str, inputs: list[str], name: str | None = None, **attrs: Any) -> str:
        from onnx import helper

        self._count += 1
        out = name or f"{op_type.lower()}_{self._count}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"{op_type}_{self._count}", **attrs))
        return out

    def dense(self, x: str, weights: dict[str, np.ndarray], key: str) -> str:
        """``x @ kernel + bias``: MatMul then Add, the pair quantize_dynamic and the fusions expect."""
        kernel = self.const(f"{key}.kernel", weights[f"{key}.kernel"])
        bias = self.const(f"{key}.bias", weights[f"{key}.bias"])
        return self.op("Add", [self.op("MatMul", [x, kernel]), bias])

    def layer_norm(self, x: str, weights: dict[str, np.ndarray], key: str, eps: float) -> str:
        gamma = self.const(f"{key}.gamma", weights[f"{key}.gamma"])
        beta = self.const(f"{key}.beta", weights[f"{key}.beta"])
        return self.op("LayerNormalization", [x, gamma, beta], axis=-1, epsilon=eps)


def build_bert_graph(
    shape: BertShape, weights: dict[str, np.ndarray], token_type_ids: bool = False, name: str = "bm-ray"
) -> Any:
    """The ``onnx.ModelProto`` of the classifier (inputs ``input_ids``, ``attention_mask`` and, with
    `token_type_ids`, ``token_type_ids``; output ``logits``)."""
    from onnx import TensorProto, helper

    g = _Graph()
    dims = ["batch", "seq"]
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT32, dims),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT32, dims),
    ]
    i64 = np.int64

    # Embeddings: positions are 0..seq-1, i.e. the first `seq` rows of the position table (a Slice
    # ending at the input's own length: no Range, no scalar shape arithmetic).
    word = g.op("Gather", [g.const("emb.word", weights["emb.word"]), "input_ids"], axis=0)
    seq_len = g.op("Shape", ["input_ids"], start=1, end=2)
    zero = g.const("zero_1d", np.array([0], i64))
    position = g.op("Slice", [g.const("emb.position", weights["emb.position"]), zero, seq_len, zero])
    summed = g.op("Add", [word, position])
    if token_type_ids:
        inputs.append(helper.make_tensor_value_info("token_type_ids", TensorProto.INT32, dims))
        token_type = g.op(
            "Gather", [g.const("emb.token_type", weights["emb.token_type"]), "token_type_ids"], axis=0
        )
    else:  # type 0 everywhere, as the engine (and TF BERT without token_type_ids) reads every text
        token_type = g.const("emb.token_type0", weights["emb.token_type"][0])
    x = g.layer_norm(g.op("Add", [summed, token_type]), weights, "emb.ln", shape.layer_norm_eps)

    # The additive mask [batch, 1, 1, seq], computed once for every layer, as Unsqueeze, Unsqueeze,
    # Cast, Sub, Mul: the chain the optimizer's attention fusion recognises as BERT's mask.
    mask = g.op("Unsqueeze", ["attention_mask", g.const("axis1", np.array([1], i64))])
    mask = g.op("Unsqueeze", [mask, g.const("axis2", np.array([2], i64))])
    mask = g.op("Cast", [mask], to=TensorProto.FLOAT)
    inverted = g.op("Sub", [g.const("one_f32", np.array(1.0, np.float32)), mask])
    mask_bias = g.op("Mul", [inverted, g.const("mask_value", np.array(MASK_VALUE, np.float32))])

    heads_shape = g.const("heads_shape", np.array([0, 0, shape.heads, shape.head_size], i64))
    merged_shape = g.const("merged_shape", np.array([0, 0, shape.hidden], i64))
    scale = g.const("sqrt_head", np.array(math.sqrt(shape.head_size), np.float32))
    sqrt2 = g.const("sqrt2", np.array(math.sqrt(2.0), np.float32))
    half = g.const("half", np.array(0.5, np.float32))
    one = "one_f32"

    for i in range(shape.layers):
        p = f"l{i}"
        q = g.op(
            "Transpose", [g.op("Reshape", [g.dense(x, weights, f"{p}.q"), heads_shape])], perm=[0, 2, 1, 3]
        )
        k = g.op(
            "Transpose", [g.op("Reshape", [g.dense(x, weights, f"{p}.k"), heads_shape])], perm=[0, 2, 3, 1]
        )
        v = g.op(
            "Transpose", [g.op("Reshape", [g.dense(x, weights, f"{p}.v"), heads_shape])], perm=[0, 2, 1, 3]
        )
        scores = g.op("Add", [g.op("Div", [g.op("MatMul", [q, k]), scale]), mask_bias])
        context = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])
        context = g.op("Reshape", [g.op("Transpose", [context], perm=[0, 2, 1, 3]), merged_shape])
        attended = g.dense(context, weights, f"{p}.attn_out")
        x1 = g.layer_norm(g.op("Add", [attended, x]), weights, f"{p}.ln1", shape.layer_norm_eps)
        inner = g.dense(x1, weights, f"{p}.ffn_in")
        # Exact GELU, x * 0.5 * (1 + erf(x / sqrt 2)): keras.activations.gelu's default, and the
        # Div/Erf/Add/Mul/Mul chain the optimizer fuses into one Gelu (BiasGelu with the Add before).
        erf = g.op("Erf", [g.op("Div", [inner, sqrt2])])
        gelu = g.op("Mul", [g.op("Mul", [inner, g.op("Add", [erf, one])]), half])
        out = g.dense(gelu, weights, f"{p}.ffn_out")
        x = g.layer_norm(g.op("Add", [out, x1]), weights, f"{p}.ln2", shape.layer_norm_eps)

    cls_row = g.op("Gather", [x, g.const("zero_i64", np.array(0, i64))], axis=1)  # [batch, hidden]
    pooled = g.op("Tanh", [g.dense(cls_row, weights, "pooler")])
    logits_raw = g.dense(pooled, weights, "classifier")
    g.op("Identity", [logits_raw], name="logits")

    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", shape.labels])]
    graph = helper.make_graph(g.nodes, name, inputs, outputs, initializer=g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="bm-ray")
    model.ir_version = 8  # what opset 17 needs; older runtimes refuse newer IR versions
    return model


def with_calibrated_scores(
    model: Any, labels: list[str], temperature: float | None, top_label: Any | None
) -> Any:
    """`model` (a graph with a ``logits`` output) with the engine's calibrated scores appended as ONNX ops:
    outputs ``scores`` (float32 ``[batch, labels]``: ``softmax(logits / T)`` in float64 rounded to float32,
    as :func:`~bm_ray.model.calibration.temperature_softmax`, then the top-label map of
    :meth:`~bm_ray.model.calibration.TopLabelMap.apply`), ``label_id`` (int64) and ``label`` (string).
    The same computation as :func:`bm_ray.model.export.calibrated_scores` in TF ops, for the SavedModel."""
    from onnx import TensorProto, helper

    from bm_ray.model.calibration import SCORE_EPS, TIE_MARGIN

    g = _Graph()
    f64 = np.float64
    scaled = g.op("Cast", ["logits"], to=TensorProto.DOUBLE)
    scaled = g.op("Div", [scaled, g.const("cal.temperature", np.array(float(temperature or 1.0), f64))])
    probs = g.op("Cast", [g.op("Softmax", [scaled], axis=-1)], to=TensorProto.FLOAT)
    scores = probs
    if top_label is not None:
        n = len(labels)
        p = g.op("Cast", [probs], to=TensorProto.DOUBLE)
        one = g.const("cal.one", np.array(1.0, f64))
        tiny = g.const("cal.tiny", np.array(1e-12, f64))
        axis1 = g.const("cal.axis1", np.array([1], np.int64))
        top = g.op("ArgMax", [p], axis=1, keepdims=0)
        score = g.op("ReduceMax", [p], axes=[1], keepdims=0)
        rest = g.op("Sub", [one, score])
        if n > 1:
            # TopK has two outputs (values, indices): a node of its own, the values used.
            g.nodes.append(
                helper.make_node(
                    "TopK",
                    [p, g.const("cal.k2", np.array([2], np.int64))],
                    ["cal.top2", "cal.top2_idx"],
                    axis=1,
                )
            )
            second = g.op("Gather", ["cal.top2", g.const("cal.second", np.array(1, np.int64))], axis=1)
        else:
            second = g.op("Mul", [score, g.const("cal.zero", np.array(0.0, f64))])
        keeps = g.op("Div", [second, g.op("Max", [g.op("Add", [rest, second]), tiny])])
        keeps = g.op("Add", [keeps, g.const("cal.tie", np.array(TIE_MARGIN, f64))])
        s = g.op(
            "Clip",
            [
                score,
                g.const("cal.lo", np.array(SCORE_EPS, f64)),
                g.const("cal.hi", np.array(1.0 - SCORE_EPS, f64)),
            ],
        )
        z = g.op("Mul", [g.const("cal.a", np.array(top_label.a, f64)), g.op("Log", [s])])
        z = g.op(
            "Sub",
            [
                z,
                g.op(
                    "Mul",
                    [g.const("cal.b", np.array(top_label.b, f64)), g.op("Log", [g.op("Sub", [one, s])])],
                ),
            ],
        )
        z = g.op("Add", [z, g.const("cal.c", np.array(top_label.c, f64))])
        new_score = g.op("Max", [g.op("Sigmoid", [z]), keeps])
        remainder = g.op("Sub", [one, new_score])
        empty = g.op("LessOrEqual", [rest, tiny])
        factor = g.op(
            "Where",
            [
                empty,
                g.const("cal.zero_d", np.array(0.0, f64)),
                g.op("Div", [remainder, g.op("Max", [rest, tiny])]),
            ],
        )
        out = g.op("Mul", [p, g.op("Unsqueeze", [factor, axis1])])
        shared = g.op("Div", [remainder, g.const("cal.others", np.array(max(n - 1, 1), f64))])
        out = g.op("Where", [g.op("Unsqueeze", [empty, axis1]), g.op("Unsqueeze", [shared, axis1]), out])
        is_top = g.op(
            "Equal",
            [g.const("cal.classes", np.arange(n, dtype=np.int64)[None, :]), g.op("Unsqueeze", [top, axis1])],
        )
        out = g.op("Where", [is_top, g.op("Unsqueeze", [new_score, axis1]), out])
        scores = g.op("Cast", [out], to=TensorProto.FLOAT)
    g.op("Identity", [scores], name="scores")
    g.op("ArgMax", [scores], name="label_id", axis=1, keepdims=0)
    names = helper.make_tensor(
        "cal.names", TensorProto.STRING, [len(labels)], [label.encode() for label in labels]
    )
    g.initializers.append(names)
    g.op("Gather", ["cal.names", "label_id"], name="label", axis=0)

    graph = model.graph
    graph.node.extend(g.nodes)
    graph.initializer.extend(g.initializers)
    del graph.output[:]
    graph.output.extend(
        [
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", len(labels)]),
            helper.make_tensor_value_info("label_id", TensorProto.INT64, ["batch"]),
            helper.make_tensor_value_info("label", TensorProto.STRING, ["batch"]),
        ]
    )
    return model
