"""Test support (never imported by bm_ray): a tiny randomly initialised BERT classifier saved as a real
bm-ray model directory, for fast tests that need the whole TF/Ray path but no trained weights."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bm_ray.model.registry import ModelInfo, save_model_dir


def make_tiny_model(
    out_dir: str | Path,
    labels: list[str],
    tokenizer_source: str,
    hidden: int = 32,
    layers: int = 2,
    seed: int = 0,
    spread_on: Sequence[str] = (),
    initializer_range: float = 0.02,
) -> Path:
    """A tiny randomly initialised BERT classifier with a real tokenizer (fast tests and smoke runs).

    With `spread_on` texts, the head is rewritten by :func:`spread_head` so those texts get varied labels
    and scores (a random head gives every text about 1/labels and the same label). A larger
    `initializer_range` than BERT's 0.02 makes the encoder itself text-dependent (non-uniform attention,
    [CLS] outputs that differ between texts), so its labels survive int8 quantization noise.
    """
    import tensorflow as tf
    from transformers import AutoTokenizer, BertConfig, TFBertForSequenceClassification

    tf.keras.utils.set_random_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=hidden * 2,
        max_position_embeddings=512,
        initializer_range=initializer_range,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    model = TFBertForSequenceClassification(config)
    model(model.dummy_inputs)
    if spread_on:
        spread_head(model, tokenizer, list(spread_on), seed)
    info = ModelInfo(labels=labels, max_length=64, name="tiny-bert", version="", base_model="random")
    return save_model_dir(model, tokenizer, info, out_dir)


def spread_head(model: Any, tokenizer: Any, texts: list[str], seed: int, logit_std: float = 2.0) -> None:
    """Centre and scale the classifier head on `texts`: logits = s·W·(pooled - mean pooled), W random (`seed`).

    A random tiny BERT's pooled output barely varies between texts (relative spread ~1e-3), so the head
    is aimed at that variation: the texts' logits get a spread of `logit_std`, i.e. top scores from about
    1/labels to near 1 and every label predicted. Deterministic across batchings (padding is masked).
    """
    import numpy as np

    encoded = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="tf")
    pooled = model.bert(
        input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"], training=False
    ).pooler_output.numpy()
    center = pooled.mean(axis=0)
    weights = np.random.default_rng(seed).normal(size=(pooled.shape[1], model.config.num_labels))
    scale = logit_std / ((pooled - center) @ weights).std()
    model.classifier.kernel.assign((scale * weights).astype(np.float32))
    model.classifier.bias.assign((-scale * center @ weights).astype(np.float32))
