"""AdamW with layer-wise learning-rate decay, for fine-tuning BERT-family encoders (imported in Ray Train workers).

Layer-wise decay (``layer_lr_decay`` d < 1) trains the layers near the input more gently than those near
the head: the classifier head and the pooler get the schedule's learning rate, encoder layer ``i``
(0-based, of ``L``) gets it times ``d ** (L - i)`` and the embeddings ``d ** (L + 1)``. It changes
how the model is trained, not its architecture: the saved model is the same plain Hugging Face one.

Scaling the gradients instead would do nothing here (Adam's step does not depend on the gradient's
scale), so the learning rate itself is scaled per variable, inside transformers' own
:class:`~transformers.AdamWeightDecay` (the weight decay step uses the scaled rate too).
"""

from __future__ import annotations

import re
from typing import Any

from transformers.optimization_tf import AdamWeightDecay

NO_WEIGHT_DECAY = ["LayerNorm", "layer_norm", "bias"]
"""Variables transformers' ``create_optimizer`` exempts from weight decay."""
ADAM_EPSILON = 1e-8
"""transformers' ``create_optimizer`` default."""
ENCODER_LAYER = re.compile(r"/layer_\._(\d+)/")
"""How transformers' TF BERT names the variables of encoder layer i (``.../encoder/layer_._3/...``)."""


def layer_lr_factor(variable_name: str, layer_decay: float, num_layers: int) -> float:
    """The factor on the learning rate of a variable (see the module docstring); 1 without decay."""
    if layer_decay == 1.0:
        return 1.0
    layer = ENCODER_LAYER.search(variable_name)
    if layer is not None:
        return layer_decay ** (num_layers - int(layer.group(1)))
    if "/embeddings/" in variable_name:
        return layer_decay ** (num_layers + 1)
    return 1.0


class LayerDecayAdamWeightDecay(AdamWeightDecay):
    """transformers' AdamWeightDecay with each variable's learning rate scaled by :func:`layer_lr_factor`."""

    def __init__(
        self,
        *args: Any,
        layer_decay: float = 1.0,
        num_layers: int = 0,
        exclude_from_weight_decay: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, exclude_from_weight_decay=exclude_from_weight_decay, **kwargs)
        self.layer_decay = layer_decay
        self.num_layers = num_layers
        self.exclude_from_weight_decay = exclude_from_weight_decay

    def get_config(self) -> dict[str, Any]:
        """The optimizer's config, with the decay and the weight-decay exemptions."""
        return {
            **super().get_config(),
            "layer_decay": self.layer_decay,
            "num_layers": self.num_layers,
            "exclude_from_weight_decay": self.exclude_from_weight_decay,
        }

    def _scaled_state(self, var: Any, apply_state: dict | None) -> dict | None:
        factor = layer_lr_factor(var.name, self.layer_decay, self.num_layers)
        if factor == 1.0 or apply_state is None:
            return apply_state
        key = (var.device, var.dtype.base_dtype)
        coefficients = apply_state.get(key) or self._fallback_apply_state(*key)
        # lr_t: the dense Adam kernel's rate (it applies the bias correction itself); lr: the sparse path's.
        scaled = {name: coefficients[name] * factor for name in ("lr_t", "lr") if name in coefficients}
        return {**apply_state, key: {**coefficients, **scaled}}

    def _resource_apply_dense(self, grad: Any, var: Any, apply_state: dict | None = None) -> Any:
        return super()._resource_apply_dense(grad, var, self._scaled_state(var, apply_state))

    def _resource_apply_sparse(
        self, grad: Any, var: Any, indices: Any, apply_state: dict | None = None
    ) -> Any:
        return super()._resource_apply_sparse(grad, var, indices, self._scaled_state(var, apply_state))


def create_optimizer(
    init_lr: float,
    num_train_steps: int,
    num_warmup_steps: int,
    weight_decay_rate: float = 0.0,
    layer_decay: float = 1.0,
    num_layers: int = 0,
) -> Any:
    """transformers' ``create_optimizer`` (AdamW, linear warm-up then linear decay), with layer-wise decay.

    Without decay (d = 1) it is transformers' own optimizer, unchanged; with it, a
    :class:`LayerDecayAdamWeightDecay` on the same schedule and the same Adam settings and
    weight-decay exemptions that transformers uses.
    """
    from transformers import create_optimizer as transformers_optimizer

    optimizer, schedule = transformers_optimizer(
        init_lr=init_lr,
        num_train_steps=num_train_steps,
        num_warmup_steps=num_warmup_steps,
        weight_decay_rate=weight_decay_rate,
        adam_epsilon=ADAM_EPSILON,
    )
    if layer_decay == 1.0:
        return optimizer
    return LayerDecayAdamWeightDecay(
        learning_rate=schedule,
        epsilon=ADAM_EPSILON,
        weight_decay_rate=weight_decay_rate,
        exclude_from_weight_decay=NO_WEIGHT_DECAY,
        layer_decay=layer_decay,
        num_layers=num_layers,
    )
