"""Behavioural tests of the trained demo model (Made-With-ML's tests/model): what users rely on.

The model is the one `bm-ray demo` trains: MiniLM fine-tuned with Ray Train on the bundled sample
corpus. Training takes minutes on two cores, so the module is marked slow (`make test-slow`).
- Minimum functionality: plain, unambiguous headlines get their topic.
- Invariance: changing names, places and numbers does not change the topic.
- Directional: changing the topical words changes the topic to the one they name.
- Reduced precision: bf16 predictions agree with fp32 on at least 99.5% of real texts.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from bm_ray.bench.classify import precision_agreement
from bm_ray.cli.demo import sample_corpus_spec
from bm_ray.model.engine import Predictor
from bm_ray.specs import TrainSpec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory: pytest.TempPathFactory, ray_local: None) -> str:
    """The demo's model: minilm-l6, 2 Ray Train workers, 3 epochs on the bundled sample corpus."""
    from bm_ray.jobs.train.job import train

    output = tmp_path_factory.mktemp("demo") / "model"
    spec = TrainSpec(
        data=sample_corpus_spec(), output=str(output), base_model="minilm-l6", workers=2, epochs=3
    )
    report = train(spec)
    assert report.accuracy >= 0.8, f"the demo model trained badly (val accuracy {report.accuracy:.3f})"
    return str(output)


@pytest.fixture(scope="module")
def predictor(demo_model: str) -> Predictor:
    return Predictor.load(demo_model, batch_size=32, precision="fp32")


def labels_of(predictor: Predictor, texts: list[str]) -> list[str]:
    return [p.label for p in predictor.predict(texts)]


MINIMUM_FUNCTIONALITY = [
    ("Striker scores twice as the home side wins the cup final", "Sports"),
    ("Tennis champion advances to the semi-finals after a five-set match", "Sports"),
    ("Central bank raises interest rates to curb inflation", "Business"),
    ("Shares of the retailer fall after quarterly profit misses forecasts", "Business"),
    ("New smartphone chip doubles battery life, engineers say", "Sci/Tech"),
    ("Astronomers discover a planet orbiting a nearby star", "Sci/Tech"),
    ("Prime minister meets foreign leaders to discuss border ceasefire", "World"),
    ("Thousands flee as flooding hits the capital; the government declares an emergency", "World"),
]


@pytest.mark.parametrize(("text", "expected"), MINIMUM_FUNCTIONALITY)
def test_minimum_functionality(predictor: Predictor, text: str, expected: str) -> None:
    assert labels_of(predictor, [text]) == [expected]


INVARIANCE = [
    [
        "Riverside United beat Port Alder 3-1 as Mateo Ibarra scores twice in the second half",
        "Northgate City beat Lakeview Rovers 2-0 as Tom Okafor scores twice in the second half",
        "Eastbrook Town beat Hillcrest 4-2 as Anna Lindqvist scores twice in the second half",
    ],
    [
        "Acme Corp shares jump 12% after the company reports record quarterly revenue",
        "Globex shares jump 3% after the company reports record quarterly revenue",
        "Initech shares jump 40% after the company reports record quarterly revenue",
    ],
]


@pytest.mark.parametrize("variants", INVARIANCE, ids=["sports-names", "business-names"])
def test_invariance_to_names_and_numbers(predictor: Predictor, variants: list[str]) -> None:
    labels = labels_of(predictor, variants)
    assert len(set(labels)) == 1, dict(zip(variants, labels, strict=True))


DIRECTIONAL = [
    ("The team won the championship final after extra time", "Sports"),
    ("The company won the contract and its shares rose on the stock market", "Business"),
    ("The researchers won the race to sequence the genome with a new software tool", "Sci/Tech"),
    ("The rebels won control of the city as the government fled the capital", "World"),
]


def test_directional_topic_words_move_the_label(predictor: Predictor) -> None:
    texts = [text for text, _ in DIRECTIONAL]
    assert labels_of(predictor, texts) == [label for _, label in DIRECTIONAL]


def real_texts(limit: int) -> list[str]:
    """AG News development texts when ../shared/data is there, else the bundled sample corpus."""
    from conftest import SHARED_DATA

    agnews = SHARED_DATA / "ag_news_dev" / "val.csv"
    if agnews.is_file():
        with agnews.open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))[:limit]
        return [f"{row['Title']}\n{row['Description']}" for row in rows]
    import json

    path = Path(sample_corpus_spec().input[0])
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [f"{r.get('title', '')}\n{r.get('body', '')}" for r in rows if isinstance(r, dict)][:limit]


def test_bf16_agrees_with_fp32_on_real_text(demo_model: str) -> None:
    texts = real_texts(2000)
    assert len(texts) >= 300
    assert precision_agreement(demo_model, texts, "bf16") >= 0.995
