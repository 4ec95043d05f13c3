"""Temperature scaling (#12 item 2) and label names (#12 item 5) in every inference path: the fit
itself on constructed cases, labels.json round trips, and the same calibrated, named scores from the
engine, `bm-ray classify`, `bm-ray evaluate` and the Serve model replica."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from tiny_model import make_tiny_model

from bm_ray.jobs.classify import classify
from bm_ray.jobs.evaluate import evaluate
from bm_ray.layout import LABELS_FILE
from bm_ray.model.calibration import (
    TopLabelMap,
    calibration_report,
    ece_noise_floor,
    expected_calibration_error,
    fit_temperature,
    fit_top_label_map,
    negative_log_likelihood,
    temperature_softmax,
)
from bm_ray.model.engine import Predictor, aggregate_windows
from bm_ray.model.metrics import reliability_bins
from bm_ray.model.registry import ModelInfo, read_model_info, write_model_info
from bm_ray.serve.model import Classifier
from bm_ray.specs import ClassifySpec, EvaluateSpec, IngestSpec, ServeSpec

RAW = ["1", "2", "3", "4"]
NAMES = ["World", "Sports", "Business", "Sci/Tech"]
TEMPERATURE = 0.25
"""Far from 1 so a path that forgot the temperature gives visibly different scores (tiny random
models answer nearly flat; T < 1 sharpens them)."""
TOP_LABEL = TopLabelMap(a=0.5, b=2.0, c=0.5)
"""A map that moves the tiny model's top scores well away from their tempered values (0.5 -> 0.82)."""
TEXTS = [
    "Rebels and government forces agreed to a ceasefire after weeks of fighting.",
    "The striker scored twice as the home side won the cup final.",
    "Stocks rallied on Wall Street after the Federal Reserve held interest rates steady.",
    "NASA's new telescope sends back its first images of distant galaxies.",
    "A short one.",
    "Chip maker posts record quarterly profit on strong demand for servers. " * 30,  # several windows
]


def overconfident_logits(rows: int, accuracy: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a classifier right `accuracy` of the time but (almost) certain every time."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, rows)
    wrong = rng.random(rows) > accuracy
    predicted = np.where(wrong, (labels + rng.integers(1, 4, rows)) % 4, labels)
    logits = rng.normal(0, 0.5, (rows, 4))
    logits[np.arange(rows), predicted] += 8.0
    return logits, labels


def test_fitted_temperature_reduces_log_loss_of_an_overconfident_model() -> None:
    logits, labels = overconfident_logits(3000, accuracy=0.7)
    before = negative_log_likelihood(temperature_softmax(logits), labels)
    t = fit_temperature(logits, labels)
    after = negative_log_likelihood(temperature_softmax(logits, t), labels)
    assert t > 1.5, t  # over-confident: the fit flattens
    assert after < 0.5 * before, (before, after)
    # The minimum: nearby temperatures do no better.
    for other in (t * 0.8, t * 1.25):
        assert negative_log_likelihood(temperature_softmax(logits, other), labels) > after
    report = calibration_report(logits, labels, t)
    assert report["before"]["ece"] > 0.25 > 0.05 > report["after"]["ece"]
    assert report["after"]["log_loss"] == pytest.approx(after)
    assert report["ece_bins"] == 15 and report["rows"] == 3000
    # Accuracy is untouched: the ranking of labels within a row does not change.
    assert (temperature_softmax(logits, t).argmax(1) == logits.argmax(1)).all()


def test_fit_leaves_calibrated_logits_alone_and_sharpens_underconfident_ones() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2.0, (4000, 4))
    probs = temperature_softmax(logits)
    labels = np.array([rng.choice(4, p=p / p.sum()) for p in probs.astype(np.float64)])  # drawn from them
    assert fit_temperature(logits, labels) == pytest.approx(1.0, abs=0.1)
    assert fit_temperature(logits / 3.0, labels) == pytest.approx(1 / 3.0, rel=0.15)  # under-confident
    assert fit_temperature(np.zeros((0, 4)), np.zeros(0, int)) == 1.0


def test_fit_through_window_aggregation_minimises_the_aggregated_loss() -> None:
    """With `combine`, T is fitted for the per-text probabilities the engine answers with."""
    logits, labels = overconfident_logits(1000, accuracy=0.75, seed=2)
    counts = np.array([1, 2, 3, 4] * 100)  # 1000 window rows → 400 texts
    text_labels = labels[np.cumsum(counts) - 1]

    def combine(probs: np.ndarray) -> np.ndarray:
        return aggregate_windows(probs, counts, "confidence")

    t = fit_temperature(logits, text_labels, combine)
    best = negative_log_likelihood(combine(temperature_softmax(logits, t)), text_labels)
    for grid in np.geomspace(0.2, 20, 25):
        assert best <= negative_log_likelihood(combine(temperature_softmax(logits, grid)), text_labels) + 1e-9
    assert expected_calibration_error(combine(temperature_softmax(logits, t)), text_labels) < 0.1


def test_ece_noise_floor_is_what_perfect_scores_measure_at_that_size() -> None:
    """ECE of calibrated-by-construction scores is sampling noise: the floor predicts it and shrinks as
    1/sqrt(rows)."""
    # One bin (every score 0.5): ECE = |mean of n fair coins - 0.5|, whose mean is 0.5 * sqrt(2 / (pi n)).
    for rows in (400, 3600):
        floor = ece_noise_floor(np.full(rows, 0.5))
        assert floor["mean"] == pytest.approx(0.5 * np.sqrt(2 / (np.pi * rows)), rel=0.1), (rows, floor)
    assert ece_noise_floor(np.ones(500)) == {"mean": 0.0, "std": 0.0, "draws": 200}  # never wrong, no noise
    # Scores like a real model's: labels drawn from them measure an ECE inside the floor's spread.
    rng = np.random.default_rng(3)
    scores = 1 - rng.beta(0.5, 6.0, 3000) * 0.75  # most rows confident, a tail down to 0.25
    floor = ece_noise_floor(scores)
    measured = [reliability_bins(scores, rng.random(len(scores)) < scores, bins=15)["ece"] for _ in range(40)]
    assert abs(np.mean(measured) - floor["mean"]) < floor["std"], (np.mean(measured), floor)
    assert 0.004 < floor["mean"] < 0.02, floor
    # A miscalibrated model (right 10 points less often than it says) lies far above the floor.
    wrong = reliability_bins(scores, rng.random(len(scores)) < scores - 0.1, bins=15)["ece"]
    assert wrong > floor["mean"] + 10 * floor["std"], (wrong, floor)


def miscalibrated_scores(rows: int, truth: TopLabelMap, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """4-label probability rows whose top label is right with probability ``truth.top_score(top)``:
    the shape of fine-tuned BERT (calibrated near 1, over-confident in the middle) when `truth` has a
    slope above 1."""
    rng = np.random.default_rng(seed)
    top = 0.3 + 0.7 * rng.beta(4.0, 1.0, rows)  # mostly confident, a tail down to 0.3
    rest = rng.dirichlet(np.ones(3), rows) * (1 - top)[:, None]
    rest = np.minimum(rest, top[:, None] - 1e-3)  # the top label stays on top
    probs = np.concatenate([top[:, None], rest], axis=1)
    probs /= probs.sum(axis=1, keepdims=True)
    correct = rng.random(rows) < truth.top_score(probs.max(axis=1))
    return probs, correct


def test_top_label_map_fixes_a_slope_that_one_temperature_cannot() -> None:
    truth = TopLabelMap(a=0.5, b=1.6, c=-1.2)  # what the rows' correctness follows
    probs, correct = miscalibrated_scores(20000, truth, seed=4)
    recovered = fit_top_label_map(probs.max(axis=1), correct)
    assert recovered is not None
    grid = np.linspace(0.5, 0.995, 200)  # a and c trade off; the curve they draw is what is identified
    assert np.abs(recovered.top_score(grid) - truth.top_score(grid)).max() < 0.03
    # As training does it: the temperature first, then the map fitted on the tempered scores.
    labels = np.where(correct, probs.argmax(axis=1), (probs.argmax(axis=1) + 1) % 4)
    logits = np.log(probs)
    t = fit_temperature(logits, labels)
    tempered = temperature_softmax(logits, t)
    fitted = fit_top_label_map(tempered.max(axis=1), tempered.argmax(axis=1) == labels)
    assert fitted is not None
    mapped = fitted.apply(tempered)
    floor = ece_noise_floor(mapped.max(axis=1))["mean"]
    assert expected_calibration_error(tempered, labels) > 3 * floor  # the best single T is still off
    assert expected_calibration_error(mapped, labels) < floor * 1.5, floor
    assert negative_log_likelihood(mapped, labels) < negative_log_likelihood(tempered, labels)
    # The predicted label never changes, rows still sum to 1, the map itself is monotone.
    assert (mapped.argmax(axis=1) == probs.argmax(axis=1)).all()
    np.testing.assert_allclose(mapped.sum(axis=1), 1.0, atol=1e-5)
    assert (np.diff(fitted.top_score(np.linspace(0.26, 0.999, 200))) > 0).all()
    report = calibration_report(logits, labels, t, top_label=fitted)
    assert report["after"]["ece"] < min(report["after_temperature"]["ece"], report["before"]["ece"])
    assert report["top_label_calibration"] == {"method": "beta", **vars(fitted)}


def test_top_label_map_keeps_the_label_when_it_softens_a_close_call() -> None:
    softening = TopLabelMap(a=0.0, b=1.0, c=-3.0)  # pulls every top score far down
    probs = np.array([[0.55, 0.44, 0.01, 0.0], [0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0]], np.float32)
    mapped = softening.apply(probs)
    assert mapped.argmax(axis=1).tolist() == [0, 0, 0]
    assert mapped[0, 0] > mapped[0, 1] and mapped[0, 0] < 0.55  # softened, never overtaken
    assert mapped[2, 1] == mapped[2, 2] == mapped[2, 3] > 0  # no mass: the remainder shared equally
    np.testing.assert_allclose(mapped.sum(axis=1), 1.0, atol=1e-6)


def test_top_label_fit_degenerate_cases() -> None:
    rng = np.random.default_rng(5)
    scores = rng.uniform(0.3, 1.0, 2000)
    assert fit_top_label_map(scores, rng.random(2000) < 1.3 - scores) is None  # scores rank wrong above right
    always = fit_top_label_map(scores, np.ones(2000, bool))  # every row right: finite, and more confident
    assert always is not None and np.isfinite([always.a, always.b, always.c]).all()
    assert (always.top_score(scores) > scores).all()


def test_labels_json_round_trip_and_old_models_unchanged(tmp_path: Path, tokenizer_dir: str) -> None:
    model = make_tiny_model(tmp_path / "m", RAW, tokenizer_dir)
    old = json.loads((model / LABELS_FILE).read_text())
    info = read_model_info(model)
    assert (info.temperature, info.raw_labels) == (None, None)
    assert info.to_json() == old  # a model without them writes back the labels.json it had
    assert info.label_lookup() == {label: label for label in RAW}
    assert "temperature" not in old and "raw_labels" not in old
    named = ModelInfo(NAMES, 64, "tiny", "v1", "random", temperature=1.7, raw_labels=RAW)
    write_model_info(named, model)
    assert read_model_info(model) == named
    assert named.label_lookup() == {**dict(zip(RAW, NAMES, strict=True)), **{n: n for n in NAMES}}
    bad = {**named.to_json(), "raw_labels": ["1", "2"]}
    (model / LABELS_FILE).write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="raw_labels has 2 values for 4 labels"):
        read_model_info(model)
    (model / LABELS_FILE).write_text(json.dumps({**named.to_json(), "temperature": 0}))
    with pytest.raises(ValueError, match="temperature 0 must be a positive number"):
        read_model_info(model)
    mapped = ModelInfo(NAMES, 64, "tiny", "v1", "random", temperature=1.7, top_label_calibration=TOP_LABEL)
    write_model_info(mapped, model)
    assert json.loads((model / LABELS_FILE).read_text())["top_label_calibration"] == {
        "method": "beta",
        "a": 0.5,
        "b": 2.0,
        "c": 0.5,
    }
    assert read_model_info(model) == mapped
    for broken, says in (
        ({"method": "isotonic"}, "is not a beta map"),
        ({"method": "beta", "a": -1, "b": 1, "c": 0}, "a, b >= 0"),
    ):
        (model / LABELS_FILE).write_text(json.dumps({**mapped.to_json(), "top_label_calibration": broken}))
        with pytest.raises(ValueError, match=f"{LABELS_FILE}: top_label_calibration.*{says}"):
            read_model_info(model)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: str) -> dict[str, str]:
    """The same tiny weights twice: as trained on raw labels (no calibration), and with label names,
    a temperature and a top-label map in labels.json."""
    root = tmp_path_factory.mktemp("calibrated")
    plain = make_tiny_model(root / "plain", RAW, tokenizer_dir, seed=3)
    calibrated = root / "calibrated"
    shutil.copytree(plain, calibrated)
    info = read_model_info(plain)
    write_model_info(ModelInfo(NAMES, info.max_length, info.name, info.version, info.base_model,
                               temperature=TEMPERATURE, top_label_calibration=TOP_LABEL, raw_labels=RAW),
                     calibrated)  # fmt: skip
    return {"plain": str(plain), "calibrated": str(calibrated)}


def plain_softmax_scores(model_dir: str, texts: list[str], max_length: int) -> np.ndarray:
    """Probabilities from plain transformers (no bm-ray engine): what the model answered before calibration."""
    import tensorflow as tf
    from transformers import AutoTokenizer, TFBertForSequenceClassification

    model = TFBertForSequenceClassification.from_pretrained(model_dir)
    encoded = AutoTokenizer.from_pretrained(model_dir)(
        texts, padding=True, truncation=True, max_length=max_length, return_tensors="tf"
    )
    return tf.nn.softmax(model(**encoded).logits, axis=-1).numpy()


def test_engine_without_temperature_scores_as_before_and_with_it_per_window(models: dict[str, str]) -> None:
    short = TEXTS[:5]
    plain = Predictor.load(models["plain"], precision="fp32")
    before = plain_softmax_scores(models["plain"], short, plain.info.max_length)
    np.testing.assert_allclose(plain.predict_proba(short), before, atol=1e-5)

    calibrated = Predictor.load(models["calibrated"], precision="fp32")
    logits, counts = calibrated.unit_logits(TEXTS)
    assert counts.tolist()[:5] == [1] * 5 and counts[5] > 1
    np.testing.assert_allclose(logits, plain.unit_logits(TEXTS)[0], atol=1e-5)  # same weights
    np.testing.assert_allclose(
        calibrated.predict_proba(short),
        TOP_LABEL.apply(temperature_softmax(np.log(before), TEMPERATURE)),
        atol=1e-4,
    )
    # Long text: the temperature scales each window's logits, the windows are aggregated, then the
    # top-label map moves each text's top score.
    tempered = aggregate_windows(temperature_softmax(logits, TEMPERATURE), counts, "confidence")
    expected = TOP_LABEL.apply(tempered)
    np.testing.assert_allclose(calibrated.predict_proba(TEXTS), expected, atol=1e-5)
    assert np.abs(expected.max(axis=1) - tempered.max(axis=1)).min() > 0.05  # the map is visible
    assert not np.allclose(calibrated.predict_proba(TEXTS), plain.predict_proba(TEXTS), atol=1e-3)
    assert [p.label for p in calibrated.predict(TEXTS)] == [NAMES[int(k)] for k in expected.argmax(1)]


def test_training_calibration_fits_the_map_only_with_enough_validation_rows(
    ray_local: None, models: dict[str, str], tmp_path: Path
) -> None:
    """`calibrate_model` (training's last step) with the real engine: the temperature, then the top-label
    map from TOP_LABEL_MIN_ROWS validation rows, stored in labels.json and answered with on reload."""
    import ray

    from bm_ray.jobs.train.calibrate import calibrate_model
    from bm_ray.model.calibration import TOP_LABEL_MIN_ROWS

    words = ["market", "team", "vote", "rocket", "bank", "season", "minister", "chip", "rally", "court"]  # fmt: skip
    rng = np.random.default_rng(6)
    texts = [" ".join(rng.choice(words, 12)) for _ in range(TOP_LABEL_MIN_ROWS)]
    probs = Predictor.load(models["plain"]).predict_proba(texts)
    # Right exactly where the model is most sure: scores that rank right above wrong, too flat as they are.
    sure = probs.max(axis=1) >= np.median(probs.max(axis=1))
    labels = [RAW[k if ok else (k + 1) % 4] for k, ok in zip(probs.argmax(axis=1), sure, strict=True)]
    rows = [{"id": f"v{i}", "text": t, "label": y, "reason": None} for i, (t, y) in enumerate(zip(texts, labels, strict=True))]  # fmt: skip
    reports = {}
    for name, count in (("fitted", TOP_LABEL_MIN_ROWS), ("too_few", TOP_LABEL_MIN_ROWS - 1)):
        model_dir = tmp_path / name
        shutil.copytree(models["plain"], model_dir)
        predictor = Predictor.load(str(model_dir))
        reports[name] = calibrate_model(
            predictor, ray.data.from_items(rows[:count], override_num_blocks=2), model_dir
        )
        stored = json.loads((model_dir / LABELS_FILE).read_text())
        assert stored["temperature"] == reports[name]["temperature"]
        assert stored.get("top_label_calibration") == reports[name]["top_label_calibration"]
        # Reloaded, the engine answers exactly what the fit measured.
        logits, counts = Predictor.load(str(model_dir)).unit_logits(texts[:count])
        tempered = aggregate_windows(temperature_softmax(logits, stored["temperature"]), counts, "confidence")
        info = read_model_info(model_dir)
        expected = (
            tempered if info.top_label_calibration is None else info.top_label_calibration.apply(tempered)
        )
        np.testing.assert_allclose(
            Predictor.load(str(model_dir)).predict_proba(texts[:count]), expected, atol=1e-5
        )
    fitted, too_few = reports["fitted"], reports["too_few"]
    assert fitted["top_label_calibration"]["method"] == "beta" and "note" not in fitted
    assert (
        fitted["after"]["log_loss"] < fitted["after_temperature"]["log_loss"] < fitted["before"]["log_loss"]
    )
    assert fitted["after"]["ece"] < fitted["after_temperature"]["ece"]
    assert too_few["top_label_calibration"] is None and too_few["after"] == too_few["after_temperature"]
    assert f"{TOP_LABEL_MIN_ROWS - 1} validation rows, it needs {TOP_LABEL_MIN_ROWS}" in too_few["note"]


def write_labelled(path: Path, labels: list[str]) -> Path:
    """TEXTS as JSONL with the given labels (one per text), ids t0..."""
    path.write_text(
        "".join(
            json.dumps({"id": f"t{i}", "text": t, "label": label}) + "\n"
            for i, (t, label) in enumerate(zip(TEXTS, labels, strict=True))
        )
    )
    return path


def test_classify_evaluate_and_serve_answer_the_same_calibrated_named_scores(
    ray_local: None, models: dict[str, str], tmp_path: Path
) -> None:
    model = models["calibrated"]
    engine = {f"t{i}": p for i, p in enumerate(Predictor.load(model, batch_size=4).predict(TEXTS))}
    true_raw = ["1", "2", "3", "4", "1", "3"]
    raw_data = write_labelled(tmp_path / "raw.jsonl", true_raw)

    classify(ClassifySpec(model=model, input=IngestSpec(input=[str(raw_data)]), output=str(tmp_path / "c")))
    predictions = pq.read_table(tmp_path / "c" / "predictions").to_pylist()
    assert len(predictions) == len(TEXTS)
    for row in predictions:
        expected = engine[row["id"]]
        assert row["label"] == expected.label and row["label"] in NAMES
        assert row["score"] == pytest.approx(expected.score, abs=1e-5)
        assert dict(row["scores"]) == pytest.approx(expected.scores, abs=1e-5)
        assert set(dict(row["scores"])) == set(NAMES)

    # evaluate: labelled with raw values, with names, or a mix — the same metrics, names in the report.
    named_data = write_labelled(tmp_path / "named.jsonl", [NAMES[RAW.index(r)] for r in true_raw])
    mixed_data = write_labelled(
        tmp_path / "mixed.jsonl", [*true_raw[:3], *(NAMES[RAW.index(r)] for r in true_raw[3:])]
    )
    reports = {}
    for name, data in (("raw", raw_data), ("named", named_data), ("mixed", mixed_data)):
        reports[name] = evaluate(
            EvaluateSpec(model=model, data=IngestSpec(input=[str(data)]), output=str(tmp_path / name))
        )
    for report in reports.values():
        assert report.rows_evaluated == len(TEXTS) and report.rows_rejected == 0
        for key in ("accuracy", "macro_f1", "log_loss", "ece", "confusion_matrix"):
            assert getattr(report, key) == getattr(reports["raw"], key), key
    assert reports["raw"].confusion_matrix.labels == NAMES
    accuracy = np.mean([engine[f"t{i}"].label == NAMES[RAW.index(r)] for i, r in enumerate(true_raw)])
    assert reports["raw"].accuracy == pytest.approx(accuracy)
    logged = pq.read_table(tmp_path / "raw" / "predictions.parquet").to_pylist()
    for row in logged:
        assert row["predicted"] == engine[row["id"]].label and row["label"] in NAMES
        assert row["score"] == pytest.approx(engine[row["id"]].score, abs=1e-5)
    top = np.array([engine[f"t{i}"].score for i in range(len(TEXTS))])
    hits = np.array([engine[f"t{i}"].label == NAMES[RAW.index(r)] for i, r in enumerate(true_raw)])
    from bm_ray.model.metrics import reliability_bins

    assert reports["raw"].ece == pytest.approx(reliability_bins(top, hits, bins=15)["ece"])

    # serve: the deployment's own class, as the endpoint calls it.
    replica = Classifier.func_or_class(ServeSpec(model=model, forward_batch_size=4))

    async def served() -> dict:
        await replica.reconfigure({"model": model})
        return await replica.classify(TEXTS)

    answer = asyncio.run(served())
    for i, got in enumerate(answer["predictions"]):
        expected = engine[f"t{i}"]
        assert got["label"] == expected.label
        assert got["score"] == pytest.approx(expected.score, abs=1e-5)
        assert got["scores"] == pytest.approx(expected.scores, abs=1e-5)
