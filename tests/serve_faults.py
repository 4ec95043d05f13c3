"""Test-only fault hooks for the model deployment: texts that poison, slow down or hang a forward pass.

Never imported by `bm_ray`; tests deploy :data:`FaultyClassifier` in place of ``Classifier``
(`bm_ray.serve.deploy(spec, model=FaultyClassifier)`) after registering this module to be pickled by value.
"""

from __future__ import annotations

import time
from typing import Any

from bm_ray.model.engine import Predictor
from bm_ray.serve.model import Classifier

POISON = "POISON-TEXT"
"""A forward pass holding this text raises (as a text the tokenizer or model cannot take would)."""
SLOW = "SLOW-TEXT"
SLOW_S = 1.0
HANG = "HANG-TEXT"
HANG_S = 4.0
PACE = "PACE-TEXT"
PACE_S = 0.2
"""A pass holding this text takes at least this long (5 passes/s): load that queues at the model, as a real model's would."""


class _FaultyClassifier(Classifier.func_or_class):  # type: ignore[name-defined,misc]
    """The real model replica whose predictor obeys the fault texts and records every pass."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.passes: list[list[str]] = []

    def _load(self, model_ref: str) -> Predictor:
        predictor = super()._load(model_ref)
        predict = predictor.predict

        def faulty_predict(texts: list[str]) -> list:
            self.passes.append(list(texts))
            if any(HANG in text for text in texts):
                time.sleep(HANG_S)
            if any(SLOW in text for text in texts):
                time.sleep(SLOW_S)
            if any(PACE in text for text in texts):
                time.sleep(PACE_S)
            if any(POISON in text for text in texts):
                raise ValueError("poisoned text")
            return predict(texts)

        predictor.predict = faulty_predict  # type: ignore[method-assign]
        return predictor

    async def recorded_passes(self) -> list[list[str]]:
        """The texts of every forward pass run so far (called through a deployment handle)."""
        return self.passes


FaultyClassifier = Classifier.options(func_or_class=_FaultyClassifier)
