"""Test support: a learnable synthetic corpus and a fast tiny-model training spec, for the Ray Train tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

from bm_ray.specs import TrainSpec

LABELS = ["alpha", "beta", "gamma"]
NAMES = {"alpha": "Sports", "beta": "Business", "gamma": "Sci/Tech"}
"""Display names of :data:`LABELS` (the label-name tests and the shared tracked training)."""
MODEL_NAME = "news"
"""The registered MLflow model name of the shared tracked training (tests/integration/conftest.py)."""
TOPIC_WORDS = {
    "alpha": "football match goal league coach striker season",
    "beta": "shares profit market bank earnings investors merger",
    "gamma": "software chip satellite research laptop internet robot",
}
FILLER = ["the", "a", "of", "and", "today", "report", "said", "new", "after", "week"]


def write_synthetic(path: Path, rows: int, seed: int = 0, labels: list[str] = LABELS) -> Path:
    """A learnable corpus: each text mixes its label's topic words with common filler (the i-th of
    `labels` takes the i-th topic, so any up to three label names make the same task)."""
    rng = random.Random(seed)
    topics = list(TOPIC_WORDS.values())
    with path.open("w", encoding="utf-8") as handle:
        for i in range(rows):
            label = labels[i % len(labels)]
            words = rng.sample(topics[i % len(labels)].split(), 3) + rng.sample(FILLER, 4)
            rng.shuffle(words)
            handle.write(json.dumps({"id": f"r{i}", "text": " ".join(words), "label": label}) + "\n")
    return path


def spec_for(data: Path, output: Path, base: Path, **overrides: object) -> TrainSpec:
    """A fast tiny-model training spec."""
    values: dict[str, object] = {
        "data": {"input": [str(data)]},
        "output": str(output),
        "base_model": str(base),
        "workers": 2,
        "epochs": 4,
        "batch_size": 16,
        "learning_rate": 5e-3,
        "val_fraction": 0.2,
        "warmup_fraction": 0.05,
        "max_failures": 2,
        "keep_checkpoints": 1,
        **overrides,
    }
    return TrainSpec.model_validate(values)
