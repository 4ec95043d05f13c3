"""The predictor engine: one compiled, length-bucketed forward pass shared by every inference path.

It knows no Ray, so the same object runs inside a Ray Data actor (bulk classification), a Serve
replica, `bm-ray evaluate`, the training loop's validation, tests and benchmarks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bm_ray.models import ModelInfo, load_classifier, resolve_model
from bm_ray.preprocess import PaddingStats, TextEncoder, length_batches, pad_batch, padded_length
from bm_ray.specs import Precision


@dataclass(frozen=True)
class Prediction:
    """One classified text: the top label, its probability and the probability of every label."""

    label: str
    score: float
    scores: dict[str, float]


def configure_threads(num_threads: int | None) -> None:
    """Pin TF's thread pools (must run before TF executes anything; later calls are ignored).

    Two 1-CPU actors on a 2-core node would otherwise each start a pool as wide as the machine.
    """
    if not num_threads:
        return
    import tensorflow as tf

    with contextlib.suppress(RuntimeError):
        tf.config.threading.set_intra_op_parallelism_threads(int(num_threads))
        tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, int(num_threads))))


def gpu_available() -> bool:
    """Whether TF sees a GPU."""
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def resolve_precision(precision: Precision) -> str:
    """`auto` → fp16 on GPU, fp32 on CPU (bf16 on CPU measured slower here; it stays opt-in)."""
    if precision == "auto":
        return "fp16" if gpu_available() else "fp32"
    return precision


@contextlib.contextmanager
def keras_precision(precision: str) -> Iterator[None]:
    """Build models under a Keras mixed-precision policy, restoring the previous policy after."""
    import tensorflow as tf

    policy = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}[precision]
    previous = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy(policy)
    try:
        yield
    finally:
        tf.keras.mixed_precision.set_global_policy(previous)


class Predictor:
    """Length-bucketed, dynamically padded, compiled inference over a TF BERT classifier."""

    def __init__(self, model: Any, tokenizer: Any, info: ModelInfo, batch_size: int = 64) -> None:
        import tensorflow as tf

        self.model = model
        self.info = info
        self.labels = list(info.labels)
        self.batch_size = int(batch_size)
        self.encoder = TextEncoder(tokenizer, info.max_length)
        self.padding = PaddingStats()

        # One trace for every (batch, length) shape: no retracing per batch or per bucket.
        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32)] * 2, reduce_retracing=True)
        def forward(input_ids: tf.Tensor, attention_mask: tf.Tensor) -> tf.Tensor:
            logits = model(input_ids=input_ids, attention_mask=attention_mask, training=False).logits
            return tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)

        self._forward = forward

    @classmethod
    def load(
        cls,
        model_ref: str,
        batch_size: int = 64,
        precision: Precision = "auto",
        num_threads: int | None = None,
    ) -> Predictor:
        """Load a model directory / URI with the given precision and thread budget."""
        configure_threads(num_threads)
        with keras_precision(resolve_precision(precision)):
            model, tokenizer, info = load_classifier(resolve_model(model_ref))
        return cls(model, tokenizer, info, batch_size)

    def warmup(self) -> None:
        """Trace the forward pass once so the first real request does not pay for it."""
        self.predict_proba(["warm-up"])

    def predict_tokens(self, sequences: Sequence[np.ndarray]) -> np.ndarray:
        """Probabilities [n, labels] for pre-tokenised rows, in input order."""
        probs = np.zeros((len(sequences), len(self.labels)), dtype=np.float32)
        if not sequences:
            return probs
        lengths = np.fromiter((len(seq) for seq in sequences), dtype=np.int64, count=len(sequences))
        for batch in length_batches(lengths, self.batch_size):
            ids, mask = pad_batch([sequences[i] for i in batch], self.encoder.pad_id)
            self.padding.add(lengths[batch], padded_length(lengths[batch].max()))
            probs[batch] = self._forward(ids, mask).numpy()
        return probs

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Probabilities [n, labels] for raw texts (tokenised by the shared encoder)."""
        return self.predict_tokens(self.encoder.encode(texts))

    def to_predictions(self, probs: np.ndarray) -> list[Prediction]:
        """Turn a probability matrix into labelled predictions."""
        top = probs.argmax(axis=1)
        return [
            Prediction(
                label=self.labels[k],
                score=float(row[k]),
                scores={label: float(p) for label, p in zip(self.labels, row, strict=True)},
            )
            for row, k in zip(probs, top, strict=True)
        ]

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        """Classify raw texts."""
        return self.to_predictions(self.predict_proba(texts))
