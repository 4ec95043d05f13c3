"""Test support (never imported by bm_ray): a tiny randomly initialised BERT classifier saved as a real
bm-ray model directory, for fast tests that need the whole TF/Ray path but no trained weights."""

from __future__ import annotations

from pathlib import Path

from bm_ray.models import ModelInfo, save_model_dir


def make_tiny_model(
    out_dir: str | Path,
    labels: list[str],
    tokenizer_source: str,
    hidden: int = 32,
    layers: int = 2,
    seed: int = 0,
) -> Path:
    """A tiny randomly initialised BERT classifier with a real tokenizer (fast tests and smoke runs)."""
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
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    model = TFBertForSequenceClassification(config)
    model(model.dummy_inputs)
    info = ModelInfo(labels=labels, max_length=64, name="tiny-bert", version="", base_model="random")
    return save_model_dir(model, tokenizer, info, out_dir)
