"""The predictor engine: one compiled, length-bucketed forward pass shared by every inference path.

It knows no Ray, so the same object runs inside a Ray Data actor (bulk classification), a Serve
replica, `bm-ray evaluate`, the training loop's validation, tests and benchmarks.

Long texts (``long_text="window"``, the default): each text is tokenised once, untruncated, and cut
into overlapping windows of the model's ``max_length`` (:meth:`~bm_ray.model.preprocess.TextEncoder.encode_windows`);
all windows of a call go through the same length-bucketed forward passes, each capped at
``batch_size`` rows and ``max_batch_tokens`` padded tokens, and :func:`aggregate_windows` turns each
text's window probabilities into one. A text that fits the window gives exactly the truncate-mode
probabilities.

Calibration: a model with a fitted ``temperature`` in its labels.json (:mod:`bm_ray.model.calibration`)
has every forward pass's logits divided by it before the softmax, so ``score``/``scores`` are
calibrated probabilities in every path (classify, evaluate, serve). In window mode the temperature
applies to each window's logits, before aggregation: the aggregation rules (and the confidence
weights) then see the same calibrated window probabilities the temperature was fitted through
(training fits it on the aggregated probabilities, :meth:`Predictor.unit_logits`). A model with a
``top_label_calibration`` map then has each text's top score mapped by it, after aggregation
(:meth:`Predictor.text_probs`): the second calibration stage, fitted on those same aggregated
probabilities. A model without either gives the plain softmax, as before.

Backends: the forward pass (``input_ids, attention_mask -> logits``) is the only part that depends on
the precision. fp32/bf16/fp16 run the compiled TF function of :func:`tf_forward`; ``int8`` runs an ONNX
Runtime session over the dynamically quantized graph (:mod:`bm_ray.model.int8`, built, gated against
this engine in fp32 and cached on the first int8 load by :func:`load_int8`). Tokenisation, buckets,
windows, aggregation and calibration are this module's, the same for every backend.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bm_ray.model.calibration import temperature_softmax
from bm_ray.model.preprocess import PaddingStats, TextEncoder, length_batches, pad_batch, padded_length
from bm_ray.model.registry import (
    READY_MARKER,
    ModelInfo,
    fill_cache_entry,
    load_classifier,
    read_model_info,
    resolve_model,
)
from bm_ray.runtime.tf import import_tensorflow
from bm_ray.specs import LongTextOptions, Precision, WindowAggregation


@dataclass(frozen=True)
class Prediction:
    """One classified text: the top label, its probability and the probability of every label."""

    label: str
    score: float
    scores: dict[str, float]
    windows: int = 1
    """Windows the text was read as (1 when it fits the model's window or in truncate mode)."""


@dataclass(frozen=True)
class TextScores:
    """Per-text results of one engine call: aggregated probabilities [n, labels] and window accounting."""

    probs: np.ndarray
    windows: np.ndarray
    """Windows read per text (int64)."""
    capped: np.ndarray
    """True where a text had more windows than ``max_windows`` and its tail was left unread."""


def window_confidence(probs: np.ndarray) -> np.ndarray:
    """1 - normalised entropy of each row of `probs`: 1 for a one-hot row, 0 for a uniform one."""
    labels = probs.shape[1]
    if labels < 2:
        return np.ones(len(probs))
    p = np.clip(probs.astype(np.float64), 1e-12, 1.0)
    return 1.0 - (-(p * np.log(p)).sum(axis=1)) / np.log(labels)


def aggregate_windows(probs: np.ndarray, counts: np.ndarray, rule: WindowAggregation) -> np.ndarray:
    """One probability row per text from its window rows (`counts[i]` consecutive rows for text i).

    - ``confidence``: the windows' mean weighted by :func:`window_confidence`, so flat, uncertain
      windows (boilerplate the model cannot place) count little; all-flat texts fall back to the mean.
    - ``mean``: the plain mean of the windows.
    - ``max``: the probabilities of the single most confident window (highest top probability).

    A text with one window keeps that window's probabilities under every rule.
    """
    counts = np.asarray(counts, dtype=np.int64)
    if int(counts.sum()) != len(probs):
        raise ValueError(f"window counts sum to {int(counts.sum())} but {len(probs)} window rows were given")
    if np.all(counts == 1):
        return probs.astype(np.float32, copy=True)
    owner = np.repeat(np.arange(len(counts)), counts)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    if rule == "max":
        top = probs.max(axis=1)
        best = np.array(
            [start + int(np.argmax(top[start : start + n])) for start, n in zip(starts, counts, strict=True)]
        )
        return probs[best].astype(np.float32)
    weights = np.ones(len(probs)) if rule == "mean" else window_confidence(probs)
    totals = np.bincount(owner, weights=weights, minlength=len(counts))
    flat = totals <= 1e-9
    if flat.any():  # every window uniform: weigh them equally rather than divide by zero
        weights = np.where(flat[owner], 1.0, weights)
        totals = np.bincount(owner, weights=weights, minlength=len(counts))
    summed = np.zeros((len(counts), probs.shape[1]))
    np.add.at(summed, owner, probs * weights[:, None])
    return (summed / totals[:, None]).astype(np.float32)


def configure_threads(num_threads: int | None) -> None:
    """Pin TF's thread pools (must run before TF executes anything; later calls are ignored).

    Two 1-CPU actors on a 2-core node would otherwise each start a pool as wide as the machine.
    """
    if not num_threads:
        return
    tf = import_tensorflow()

    with contextlib.suppress(RuntimeError):
        tf.config.threading.set_intra_op_parallelism_threads(int(num_threads))
        tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, int(num_threads))))


def gpu_available() -> bool:
    """Whether TF sees a GPU."""
    tf = import_tensorflow()

    return bool(tf.config.list_physical_devices("GPU"))


def resolve_precision(precision: Precision) -> str:
    """`auto` → fp16 on GPU, fp32 on CPU (bf16 on CPU measured slower here; it stays opt-in, and so
    does int8: it has quality gates to pass, :mod:`bm_ray.model.int8`)."""
    if precision == "auto":
        return "fp16" if gpu_available() else "fp32"
    return precision


@contextlib.contextmanager
def keras_precision(precision: str) -> Iterator[None]:
    """Build models under a Keras mixed-precision policy, restoring the previous policy after."""
    tf = import_tensorflow()

    policy = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}[precision]
    previous = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy(policy)
    try:
        yield
    finally:
        tf.keras.mixed_precision.set_global_policy(previous)


Forward = Callable[[np.ndarray, np.ndarray], Any]
"""A backend's forward pass: int32 ``(input_ids, attention_mask)`` ``[batch, seq]`` → logits
``[batch, labels]`` (anything ``np.asarray`` turns into float32: a TF tensor or a numpy array)."""


def tf_forward(model: Any) -> Forward:
    """The compiled TF forward pass of a Keras classifier (the fp32/bf16/fp16 backend)."""
    tf = import_tensorflow()

    # One trace for every (batch, length) shape: no retracing per batch or per bucket.
    # No Python control flow to convert: AutoGraph would only fail on the closure and warn.
    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32)] * 2, reduce_retracing=True)
    @tf.autograph.experimental.do_not_convert
    def forward(input_ids: tf.Tensor, attention_mask: tf.Tensor) -> tf.Tensor:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, training=False).logits
        return tf.cast(logits, tf.float32)

    return forward


class Predictor:
    """Length-bucketed, dynamically padded inference over a BERT classifier, on a TF or int8 backend.

    `model` is the Keras classifier (None for the int8 backend); `forward` the backend's forward pass
    (default: :func:`tf_forward` of `model`).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        info: ModelInfo,
        batch_size: int = 64,
        long_text: LongTextOptions | None = None,
        forward: Forward | None = None,
        precision: str = "fp32",
    ) -> None:
        if model is None and forward is None:
            raise ValueError("Predictor needs a Keras model or a forward pass")
        self.model = model
        self.info = info
        self.labels = list(info.labels)
        self.batch_size = int(batch_size)
        # Any spec holding the options (ClassifySpec, EvaluateSpec, ServeSpec) may be passed as is.
        self.long_text = long_text or LongTextOptions()
        self.encoder = TextEncoder(tokenizer, info.max_length)
        self.padding = PaddingStats()
        self.precision = precision
        """The backend's precision (fp32, bf16, fp16 or int8)."""
        self.int8_info: dict[str, Any] | None = None
        """int8 only: the cache entry's ``int8.json`` (recipe, versions, the gate report it passed)."""
        self._forward = forward if forward is not None else tf_forward(model)

    @classmethod
    def load(
        cls,
        model_ref: str,
        batch_size: int = 64,
        precision: Precision = "auto",
        num_threads: int | None = None,
        long_text: LongTextOptions | None = None,
    ) -> Predictor:
        """Load a model directory / URI with the given precision, thread budget and long-text options.

        ``int8`` builds (and gates) the int8 model on first use: :func:`load_int8`, which also takes
        the gate rows a caller holds out.
        """
        if precision == "int8":
            return load_int8(model_ref, batch_size, num_threads, long_text)
        configure_threads(num_threads)
        resolved = resolve_precision(precision)
        with keras_precision(resolved):
            model, tokenizer, info = load_classifier(resolve_model(model_ref))
        return cls(model, tokenizer, info, batch_size, long_text, precision=resolved)

    def warmup(self) -> None:
        """Trace the forward pass once so the first real request does not pay for it."""
        self.predict_proba(["warm-up"])

    def predict_logits(self, sequences: Sequence[np.ndarray]) -> np.ndarray:
        """Untempered logits [n, labels] (float32) for pre-tokenised rows, in input order."""
        logits = np.zeros((len(sequences), len(self.labels)), dtype=np.float32)
        if not sequences:
            return logits
        lengths = np.fromiter((len(seq) for seq in sequences), dtype=np.int64, count=len(sequences))
        for batch in length_batches(lengths, self.batch_size, max_tokens=self.long_text.max_batch_tokens):
            ids, mask = pad_batch([sequences[i] for i in batch], self.encoder.pad_id)
            self.padding.add(lengths[batch], padded_length(lengths[batch].max()))
            logits[batch] = np.asarray(self._forward(ids, mask))
        return logits

    def predict_tokens(self, sequences: Sequence[np.ndarray]) -> np.ndarray:
        """Calibrated probabilities [n, labels] for pre-tokenised rows (the model's temperature applied)."""
        return temperature_softmax(self.predict_logits(sequences), self.info.temperature)

    def _units(self, texts: Sequence[str]) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        """(token sequences the model reads, sequences per text, capped per text) by the long-text options."""
        options = self.long_text
        if options.long_text == "truncate":
            return self.encoder.encode(texts), np.ones(len(texts), np.int64), np.zeros(len(texts), bool)
        windows = self.encoder.encode_windows(texts, options.window_stride, options.max_windows)
        return windows.sequences, windows.counts, windows.capped

    def combine_windows(self, probs: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """One probability row per text from its windows' rows, by this predictor's aggregation rule
        (before the model's top-label map: what the temperature is fitted through)."""
        return aggregate_windows(probs, counts, self.long_text.window_aggregation)

    def text_probs(self, window_probs: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """The probabilities the model answers with per text: windows aggregated, then the top-label map."""
        probs = self.combine_windows(window_probs, counts)
        mapping = self.info.top_label_calibration
        return probs if mapping is None else mapping.apply(probs)

    def unit_logits(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Untempered logits of every window read for `texts` (one per text in truncate mode) and the
        windows per text: what fitting a temperature needs (see :mod:`bm_ray.model.calibration`)."""
        sequences, counts, _ = self._units(texts)
        return self.predict_logits(sequences), counts

    def score_texts(self, texts: Sequence[str]) -> TextScores:
        """Probabilities and window counts for raw texts, by this predictor's long-text options."""
        sequences, counts, capped = self._units(texts)
        return TextScores(self.text_probs(self.predict_tokens(sequences), counts), counts, capped)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Probabilities [n, labels] for raw texts (one aggregated row per text in window mode)."""
        return self.score_texts(texts).probs

    def to_predictions(self, probs: np.ndarray, windows: Sequence[int] | None = None) -> list[Prediction]:
        """Turn a probability matrix (and the texts' window counts) into labelled predictions."""
        top = probs.argmax(axis=1)
        counts = [1] * len(probs) if windows is None else [int(n) for n in windows]
        return [
            Prediction(
                label=self.labels[k],
                score=float(row[k]),
                scores={label: float(p) for label, p in zip(self.labels, row, strict=True)},
                windows=n,
            )
            for row, k, n in zip(probs, top, counts, strict=True)
        ]

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        """Classify raw texts (each with the number of windows it was read as)."""
        scored = self.score_texts(texts)
        return self.to_predictions(scored.probs, scored.windows)


def _label_index(info: ModelInfo) -> dict[str, int]:
    """Class index of every value gate rows may be labelled with (label names and raw values)."""
    return {value: info.labels.index(name) for value, name in info.label_lookup().items()}


def load_int8(
    model_ref: str,
    batch_size: int = 64,
    num_threads: int | None = None,
    long_text: LongTextOptions | None = None,
    gate_texts: Sequence[str] | None = None,
    gate_labels: Sequence[str] | None = None,
    quantizer: Any = None,
    cache_dir: str | Path | None = None,
) -> Predictor:
    """The int8 predictor of a model: its cached int8 model, built and gated first when there is none.

    Building (once per weights, recipe and runtime versions; a file lock keeps concurrent actors from
    building twice): the fp32 engine is loaded, the graph built, fused and quantized
    (:mod:`bm_ray.model.int8`), and both engines score the gate rows with the default long-text options:
    `gate_texts` (and `gate_labels`: names or raw values) where the caller holds out rows, else the
    model's own validation rows, else the bundled news sample. A model that fails the gates raises
    :class:`~bm_ray.model.int8.Int8GateError` with the numbers, and nothing is cached. Gate rows a
    caller gives are used only when the entry is built: a cached entry has passed its gates.
    `quantizer` replaces :func:`~bm_ray.model.int8.quantize_int8` (tests break it on purpose).
    """
    from transformers import AutoTokenizer

    from bm_ray.model import int8

    int8.require_onnxruntime()
    model_dir = resolve_model(model_ref)
    entry = int8.int8_cache_dir(model_dir, cache_dir)
    if not (entry / READY_MARKER).exists():

        def fill(tmp: Path) -> None:
            _build_int8(model_dir, model_ref, tmp, num_threads, gate_texts, gate_labels, quantizer)

        fill_cache_entry(entry, fill, {"model": str(model_dir), "kind": "int8"})
    info = read_model_info(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    forward = int8.OnnxForward(entry / int8.INT8_MODEL_FILE, num_threads)
    predictor = Predictor(None, tokenizer, info, batch_size, long_text, forward=forward, precision="int8")
    predictor.int8_info = int8.read_info(entry)
    return predictor


def _build_int8(
    model_dir: str,
    model_ref: str,
    out: Path,
    num_threads: int | None,
    gate_texts: Sequence[str] | None,
    gate_labels: Sequence[str] | None,
    quantizer: Any,
) -> None:
    """Write the int8 model and its ``int8.json`` into `out`, or raise the gates' refusal."""
    from bm_ray.model import int8

    seconds: dict[str, float] = {}
    started = time.perf_counter()
    configure_threads(num_threads)
    with keras_precision("fp32"):
        model, tokenizer, info = load_classifier(model_dir)
    reference = Predictor(model, tokenizer, info, batch_size=32)
    fused = int8.fused_fp32_graph(model)
    seconds["graph"] = time.perf_counter() - started
    (quantizer or int8.quantize_int8)(fused, out / int8.INT8_MODEL_FILE)
    seconds["quantize"] = time.perf_counter() - started - seconds["graph"]
    forward = int8.OnnxForward(out / int8.INT8_MODEL_FILE, num_threads)
    candidate = Predictor(None, tokenizer, info, batch_size=32, forward=forward, precision="int8")
    index = _label_index(info)
    if gate_texts is not None:
        rows = int8.labelled_gate_rows(gate_texts, gate_labels, index)
    else:
        rows = int8.model_gate_rows(model_dir, index)
    mark = time.perf_counter()
    report = int8.gate_report(reference.predict_proba(rows.texts), candidate.predict_proba(rows.texts), rows)
    seconds["gates"] = time.perf_counter() - mark
    if not report.passed:
        raise int8.refuse(report, model_ref)
    int8.write_info(out, report, {key: round(value, 2) for key, value in seconds.items()})
