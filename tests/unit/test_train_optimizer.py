"""Layer-wise learning-rate decay: each variable of a real TF BERT steps at its layer's rate."""

from __future__ import annotations

import numpy as np
import pytest

from bm_ray.jobs.train.optimizer import LayerDecayAdamWeightDecay, create_optimizer, layer_lr_factor

LAYERS = 3
DECAY = 0.5


def _group(name: str) -> str:
    if "/layer_._" in name:
        return "layer_" + name.split("/layer_._", 1)[1].split("/", 1)[0]
    if "/embeddings/" in name:
        return "embeddings"
    return "head" if "classifier" in name else "pooler"


def test_one_step_moves_each_layer_at_its_decayed_rate() -> None:
    """Adam's first step moves a weight by about the learning rate whatever its gradient, so with equal
    gradients everywhere the step size of each variable shows the rate it got."""
    import tensorflow as tf
    from transformers import BertConfig, TFBertForSequenceClassification

    tf.keras.utils.set_random_seed(0)
    config = BertConfig(
        vocab_size=100,
        hidden_size=16,
        num_hidden_layers=LAYERS,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
    )
    model = TFBertForSequenceClassification(config)
    model(model.dummy_inputs)
    optimizer = create_optimizer(
        init_lr=1e-2, num_train_steps=10, num_warmup_steps=0, layer_decay=DECAY, num_layers=LAYERS
    )
    assert isinstance(optimizer, LayerDecayAdamWeightDecay)

    variables = model.trainable_variables
    before = [v.numpy().copy() for v in variables]
    optimizer.apply_gradients(zip([tf.ones_like(v) for v in variables], variables, strict=True))
    steps: dict[str, list[float]] = {}
    for variable, old in zip(variables, before, strict=True):
        steps.setdefault(_group(variable.name), []).append(float(np.abs(variable.numpy() - old).max()))
    step = {group: max(values) for group, values in steps.items()}

    # every group was found under the names transformers gives the variables
    assert set(step) == {"embeddings", "layer_0", "layer_1", "layer_2", "pooler", "head"}
    lr = step["head"]
    assert lr == pytest.approx(1e-2, rel=1e-3)
    assert step["pooler"] == pytest.approx(lr, rel=1e-3)
    for i in range(LAYERS):
        assert step[f"layer_{i}"] == pytest.approx(lr * DECAY ** (LAYERS - i), rel=1e-3)
    assert step["embeddings"] == pytest.approx(lr * DECAY ** (LAYERS + 1), rel=1e-3)


def test_no_decay_keeps_transformers_optimizer_and_factors_are_one() -> None:
    plain = create_optimizer(init_lr=1e-3, num_train_steps=10, num_warmup_steps=1, weight_decay_rate=0.01)
    assert type(plain).__name__ == "AdamWeightDecay"  # transformers' own, unchanged
    assert layer_lr_factor("bert/encoder/layer_._0/attention/self/query/kernel:0", 1.0, 6) == 1.0
    assert layer_lr_factor("bert/encoder/layer_._5/output/dense/kernel:0", 0.8, 6) == pytest.approx(0.8)
    assert layer_lr_factor("bert/embeddings/word_embeddings/weight:0", 0.8, 6) == pytest.approx(0.8**7)
    assert layer_lr_factor("classifier/kernel:0", 0.8, 6) == 1.0


def test_weight_decay_exemptions_survive_the_conversion() -> None:
    """LayerNorm weights and biases stay exempt from weight decay, as in transformers' optimizer."""
    optimizer = create_optimizer(
        init_lr=1e-3,
        num_train_steps=10,
        num_warmup_steps=1,
        weight_decay_rate=0.01,
        layer_decay=0.8,
        num_layers=6,
    )
    assert optimizer.weight_decay_rate == 0.01
    assert not optimizer._do_use_weight_decay("bert/encoder/layer_._0/output/LayerNorm/gamma:0")
    assert not optimizer._do_use_weight_decay("classifier/bias:0")
    assert optimizer._do_use_weight_decay("bert/encoder/layer_._0/output/dense/kernel:0")
