"""Ray Train fine-tuning: learnable task with a killed worker, checkpoint round trip, bad training data."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import ray
from huggingface_hub import ModelCard
from ray.util.state import list_actors
from trainings import LABELS, NAMES, spec_for, write_synthetic

from bm_ray.jobs.train.data import TrainError, prepare_data, resolve_label_names
from bm_ray.jobs.train.job import run_name, train
from bm_ray.jobs.train.resume import ResumeError, prepare_train_output, record_labels
from bm_ray.layout import H5_WEIGHTS_FILE, MODEL_CARD_FILE, OPTIMIZER_STATE_FILE, SAFETENSORS_FILE
from bm_ray.model.calibration import TOP_LABEL_MIN_ROWS
from bm_ray.model.engine import Predictor
from bm_ray.model.registry import load_classifier, read_model_info, save_model_dir, sha256_file
from bm_ray.specs import IngestSpec, TrainSpec


def _train_worker_pids() -> list[int]:
    """Pids of the alive Ray Train workers of this test session's Ray (not of other clusters on the machine)."""
    return sorted(
        actor.pid
        for actor in list_actors(
            address=ray.get_runtime_context().gcs_address,
            filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
        )
        if actor.pid
    )


def _kill_a_worker_after_first_checkpoint(run_dir: Path, killed: list[int], stop: threading.Event) -> None:
    """SIGKILL one Ray Train worker process a couple of seconds into epoch 2 (bounded wait).

    The workers are looked up while they warm up, before the first checkpoint: a state-API call can take
    seconds on a loaded machine, longer than the rest of this short training.
    """
    deadline = time.monotonic() + 600  # the head warm-up comes before the first checkpoint; loaded CI is slow
    workers: list[int] = []
    while not stop.is_set() and time.monotonic() < deadline:
        if not workers:
            workers = _train_worker_pids()
        if workers and any(run_dir.glob("checkpoint_*")):
            time.sleep(2)  # let Ray Train register the checkpoint; the kill then lands in epoch 2
            os.kill(workers[-1], signal.SIGKILL)
            killed.append(workers[-1])
            return
        time.sleep(0.25)


@pytest.fixture(scope="module")
def trained_with_fault(ray_local: None, tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Train with 2 workers and kill one of them after the first epoch's checkpoint."""
    tmp = tmp_path_factory.mktemp("train")
    data = write_synthetic(tmp / "train.jsonl", 360)
    output = tmp / "model"
    # The recipe's optional levers ride along, so the recovery path is exercised with them.
    spec = spec_for(
        data, output, tiny_base, head_warmup=0.25, label_smoothing=0.1, dropout=0.1, layer_lr_decay=0.8
    )
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(
        target=_kill_a_worker_after_first_checkpoint,
        args=(output / "_ray_train" / run_name(str(output)), killed, stop),
        daemon=True,
    )
    killer.start()
    try:
        report = train(spec)
    finally:
        stop.set()
        killer.join(timeout=5)
    return {"report": report, "output": output, "killed": killed}


def test_training_survives_a_killed_worker_and_learns(trained_with_fault: dict) -> None:
    report, output = trained_with_fault["report"], trained_with_fault["output"]
    assert trained_with_fault["killed"], "no training worker was found to kill"
    assert report.recovered_after_epochs, "the run did not restart from a checkpoint"
    assert [h["epoch"] for h in report.epochs] == [1, 2, 3, 4]
    assert report.accuracy > 0.6, report.accuracy  # chance is 1/3
    for name in (SAFETENSORS_FILE, "config.json", "vocab.txt", "labels.json", "metrics.json"):
        assert (output / name).exists(), name
    assert not (output / H5_WEIGHTS_FILE).exists(), "the weights are safetensors only"
    card = ModelCard.load(output / MODEL_CARD_FILE)  # the model card, Hugging Face's own parser
    assert (
        card.data.pipeline_tag == "text-classification"
        and card.data.base_model == read_model_info(output).base_model
    )
    assert card.data.to_dict()["bm_ray"]["labels"] == LABELS
    assert {r.metric_type: r.metric_value for r in card.data.eval_results}["accuracy"] == report.accuracy
    assert "## Calibration" in card.text and f"On {report.rows_evaluated} validation rows" in card.text
    assert (output / "confusion_matrix.png").stat().st_size > 0
    assert (output / "training_curves.png").stat().st_size > 0
    assert any((output / "tensorboard").iterdir())
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["confusion_matrix"]["labels"] == LABELS
    assert set(metrics["per_class"]) == set(LABELS)
    assert metrics["spec"]["split"] == "grouped"
    leakage = metrics["leakage"]
    assert leakage["val_rows"] == metrics["rows_evaluated"]
    assert set(leakage) == {"val_rows", "exact", "near", "fraction", "method"}


REAL_HEADLINES = [
    "Man Utd striker scores twice as United beat Arsenal",
    "Oil prices rise as OPEC signals output cut",
    "Intel unveils faster laptop chip",
    "Wall Street shares slip on profit warning",
]


def test_plain_transformers_predicts_like_the_engine_on_real_text(trained_with_fault: dict) -> None:
    """The model directory is plain Hugging Face: from_pretrained + AutoTokenizer + softmax of the logits
    over labels.json's temperature give the same labels and probabilities as the engine `bm-ray classify` runs."""
    import tensorflow as tf
    from transformers import AutoTokenizer, TFBertForSequenceClassification

    output = str(trained_with_fault["output"])
    engine = Predictor.load(output)
    model = TFBertForSequenceClassification.from_pretrained(output)
    tokenizer = AutoTokenizer.from_pretrained(output)
    encoded = tokenizer(
        REAL_HEADLINES, padding=True, truncation=True, max_length=engine.info.max_length, return_tensors="tf"
    )
    assert (
        int(tf.reduce_sum(encoded["attention_mask"], axis=1).numpy().max()) < engine.info.max_length
    )  # one window
    temperature = json.loads((trained_with_fault["output"] / "labels.json").read_text())["temperature"]
    plain = tf.nn.softmax(model(**encoded).logits / temperature, axis=-1).numpy()
    ours = engine.predict_proba(REAL_HEADLINES)
    np.testing.assert_allclose(plain, ours, atol=1e-5)
    labels = [model.config.id2label[i] for i in plain.argmax(axis=1)]
    assert labels == [engine.labels[i] for i in ours.argmax(axis=1)]


def test_model_dir_loads_with_plain_transformers(trained_with_fault: dict) -> None:
    from transformers import AutoTokenizer, TFBertForSequenceClassification

    output = trained_with_fault["output"]
    model = TFBertForSequenceClassification.from_pretrained(str(output))
    tokenizer = AutoTokenizer.from_pretrained(str(output))
    assert model.config.num_labels == len(LABELS)
    assert tokenizer("football goal")["input_ids"][0] == tokenizer.cls_token_id


def test_checkpoint_round_trip_keeps_logits(trained_with_fault: dict, tmp_path: Path) -> None:
    model, tokenizer, info = load_classifier(trained_with_fault["output"])
    texts = ["football goal coach", "bank shares merger", "robot chip research"]
    before = Predictor(model, tokenizer, info).predict_proba(texts)
    save_model_dir(model, tokenizer, info, tmp_path / "copy")
    after = Predictor.load(str(tmp_path / "copy")).predict_proba(texts)
    np.testing.assert_allclose(before, after, atol=1e-6)


def test_trained_model_is_versioned_and_checkpoints_carry_the_optimizer(trained_with_fault: dict) -> None:
    output = trained_with_fault["output"]
    version = json.loads((output / "labels.json").read_text())["version"]
    assert re.match(r"^[0-9a-f]{16}-\d{8}T\d{6}Z$", version), version
    weights_hash = hashlib.sha256(sha256_file(output / SAFETENSORS_FILE).encode()).hexdigest()[:16]
    assert version.startswith(weights_hash)
    assert trained_with_fault["report"].recovered_after_epochs  # restored weights and optimizer state
    assert list((output / "_ray_train").rglob(OPTIMIZER_STATE_FILE)), "checkpoints must carry it"
    assert not (output / OPTIMIZER_STATE_FILE).exists(), "resume state is not part of the model"
    job = json.loads((output / "_job.json").read_text())
    assert job["labels"] == LABELS and job["manifest"]["data"][0]["size"] > 0


def test_rerun_into_a_finished_output_refuses(trained_with_fault: dict, tiny_base: Path) -> None:
    output = trained_with_fault["output"]
    weights = (output / SAFETENSORS_FILE).stat().st_mtime_ns
    with pytest.raises(ResumeError, match=r"already holds a finished model \(version [0-9a-f]{16}-"):
        train(spec_for(output.parent / "train.jsonl", output, tiny_base))
    assert (output / SAFETENSORS_FILE).stat().st_mtime_ns == weights


def test_an_output_finished_with_h5_weights_counts_as_finished(tmp_path: Path, tiny_base: Path) -> None:
    """A model directory trained before safetensors (`tf_model.h5`) is refused like one with them."""
    data = write_synthetic(tmp_path / "d.jsonl", 30)
    output = tmp_path / "old-model"
    output.mkdir()
    (output / H5_WEIGHTS_FILE).write_bytes(b"h5")
    (output / "labels.json").write_text(json.dumps({"labels": LABELS, "version": "0123456789abcdef-old"}))
    with pytest.raises(ResumeError, match=r"already holds a finished model \(version 0123456789abcdef-old"):
        prepare_train_output(spec_for(data, output, tiny_base))


def test_resume_refuses_a_changed_spec_or_changed_data(trained_with_fault: dict, tiny_base: Path) -> None:
    output = trained_with_fault["output"]
    data = output.parent / "train.jsonl"
    with pytest.raises(ResumeError, match=r"spec\.epochs: 4 → 5"):
        train(spec_for(data, output, tiny_base, resume=True, epochs=5))
    original = data.read_bytes()
    try:
        data.write_bytes(original + b'{"id": "extra", "text": "one more row", "label": "alpha"}\n')
        with pytest.raises(ResumeError, match=r"manifest\.data: .*train\.jsonl changed \("):
            train(spec_for(data, output, tiny_base, resume=True))
    finally:
        data.write_bytes(original)


def test_record_labels_refuses_other_labels_on_resume(tmp_path: Path, tiny_base: Path) -> None:
    data = write_synthetic(tmp_path / "d.jsonl", 30)
    spec = spec_for(data, tmp_path / "out", tiny_base)
    prepare_train_output(spec)
    record_labels(spec, LABELS)
    with pytest.raises(
        ResumeError, match=r"labels differ: stored \['alpha', 'beta', 'gamma'\], now \['alpha', 'beta'\]"
    ):
        record_labels(spec.model_copy(update={"resume": True}), ["alpha", "beta"])


def test_overwrite_refuses_a_directory_that_is_not_a_training_output(tmp_path: Path, tiny_base: Path) -> None:
    data = write_synthetic(tmp_path / "d.jsonl", 30)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    with pytest.raises(ResumeError, match="not a bm-ray training output"):
        prepare_train_output(spec_for(data, foreign, tiny_base, overwrite=True))
    assert (foreign / "precious.txt").read_text() == "keep me"


def test_rows_without_label_are_rejected_not_fatal(ray_local: None, tiny_base: Path, tmp_path: Path) -> None:
    data = write_synthetic(tmp_path / "d.jsonl", 60)
    with data.open("a") as handle:
        handle.write(json.dumps({"id": "nolabel", "text": "football goal"}) + "\n")
        handle.write(json.dumps({"id": "empty", "text": "", "label": "alpha"}) + "\n")
    prepared = prepare_data(spec_for(data, tmp_path / "out", tiny_base))
    counts = prepared.counts["train_data"]
    assert counts["rows_read"] == 62
    assert counts["rejected_by_reason"] == {"missing_label": 1, "empty_text": 1}
    assert prepared.counts["train_rows"] + prepared.counts["val_rows"] == 60


def test_unknown_validation_labels_are_rejected(ray_local: None, tiny_base: Path, tmp_path: Path) -> None:
    data = write_synthetic(tmp_path / "d.jsonl", 60)
    val = write_synthetic(tmp_path / "v.jsonl", 12)
    with val.open("a") as handle:
        handle.write(json.dumps({"id": "odd", "text": "weather rain", "label": "delta"}) + "\n")
    spec = spec_for(data, tmp_path / "out", tiny_base, val_data={"input": [str(val)]})
    prepared = prepare_data(spec)
    assert prepared.counts["val_data"]["rejected_by_reason"] == {"unknown_label": 1}
    assert prepared.counts["val_rows"] == 12
    assert prepared.counts["rejects"].count() == 1


@pytest.mark.parametrize(
    ("rows", "labels", "message"),
    [(30, ["alpha"], "at least 2 labels"), (3, LABELS, "too few"), (0, LABELS, "no rows")],
)
def test_bad_training_data_gives_clear_errors(
    ray_local: None, tiny_base: Path, tmp_path: Path, rows: int, labels: list[str], message: str
) -> None:
    data = write_synthetic(tmp_path / "d.jsonl", rows, labels=labels)
    spec = spec_for(data, tmp_path / "out", tiny_base, workers=4)
    with pytest.raises(TrainError, match=message):
        prepare_data(spec)


def test_corpus_without_any_label_is_a_clear_error(ray_local: None, tiny_base: Path, tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": f"news {i}"}) + "\n" for i in range(10)))
    with pytest.raises(TrainError, match="--label-field"):
        prepare_data(spec_for(data, tmp_path / "out", tiny_base))


def test_spec_rejects_batch_smaller_than_workers(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        TrainSpec(data=IngestSpec(input=["x.jsonl"]), output=str(tmp_path), workers=4, batch_size=2)


def test_train_job_imports_without_tensorflow() -> None:
    """`import bm_ray.jobs.train` and its job module leave TensorFlow unimported (it starts in the workers)."""
    probe = "import sys, bm_ray.jobs.train.job, bm_ray.jobs.train; print('tensorflow' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_background_rows_join_training_only_with_the_flat_target_id(
    ray_local: None, tiny_base: Path, tmp_path: Path
) -> None:
    from bm_ray.jobs.train.background import BACKGROUND_LABEL_ID

    data = write_synthetic(tmp_path / "d.jsonl", 60)
    mixed = prepare_data(spec_for(data, tmp_path / "out", tiny_base, background_rows=25))
    train_ids = [row["label_id"] for row in mixed.train.take_all()]
    val_ids = [row["label_id"] for row in mixed.val.take_all()]
    assert train_ids.count(BACKGROUND_LABEL_ID) == 25 and BACKGROUND_LABEL_ID not in val_ids
    # every corpus row on one side, the 25 background rows on the training side only
    assert (len(train_ids), len(val_ids)) == (mixed.counts["train_rows"], mixed.counts["val_rows"])
    assert mixed.counts["train_rows"] - 25 + mixed.counts["val_rows"] == 60
    assert mixed.counts["background_rows"] == 25


def test_boilerplate_rows_are_training_copies_in_a_page_with_their_own_label(
    ray_local: None, tiny_base: Path, tmp_path: Path
) -> None:
    from bm_ray.jobs.train.background import BACKGROUND_PHRASES, behind_boilerplate
    from bm_ray.jobs.train.data import with_boilerplate

    rows = [{"id": f"r{i}", "text": f"story number {i}", "label": LABELS[i % len(LABELS)]} for i in range(40)]
    spec = spec_for(tmp_path / "d.jsonl", tmp_path / "out", tiny_base, boilerplate_rows=15)
    out, copies = with_boilerplate(ray.data.from_items(rows), spec)
    got = {row["id"]: row for row in out.take_all()}
    assert copies == 15 and len(got) == 55
    originals = {r["id"]: r for r in rows}
    paged = {k: v for k, v in got.items() if k.endswith("#page")}
    assert len(paged) == 15 and all(got[k] == v for k, v in originals.items())  # originals untouched
    for key, row in paged.items():
        source = originals[key.removesuffix("#page")]
        assert row["label"] == source["label"] and source["text"] in row["text"]
        before = row["text"].split(source["text"])[0].strip().split("\n")
        assert 3 <= len(before) <= 8 and all(line in BACKGROUND_PHRASES for line in before)
    table = pa.table({"id": ["a"], "text": ["the article"], "label": ["x"]})
    assert behind_boilerplate(table, seed=1) == behind_boilerplate(table, seed=1)  # seeded
    capped, n = with_boilerplate(ray.data.from_items(rows[:5]), spec)
    assert n == 5 and capped.count() == 10  # at most every training row once


def test_refit_trains_on_all_rows_and_keeps_selection_metrics(tracked_named: dict) -> None:
    report, output = tracked_named["report"], tracked_named["output"]
    refit = report.refit
    assert refit is not None
    assert refit.rows == report.data.train_rows + report.data.val_rows == 360
    assert refit.epochs == report.best_epoch
    metrics = json.loads((output / "metrics.json").read_text())
    # the selection metrics are kept
    assert metrics["refit"] == refit.model_dump() and metrics["accuracy"] == report.accuracy
    assert Predictor.load(str(output)).predict_proba(["football goal"]).shape == (1, len(LABELS))
    assert not (output / "train_state.json").exists()
    # The selection run's temperature survives the refit's checkpoint copy.
    assert read_model_info(output).temperature == metrics["calibration"]["temperature"] > 0
    assert "refit" in metrics["calibration"]["note"]


def test_label_names_are_stored_and_answered(tracked_named: dict) -> None:
    from transformers import AutoConfig

    output = tracked_named["output"]
    labels_json = json.loads((output / "labels.json").read_text())
    assert labels_json["labels"] == ["Sports", "Business", "Sci/Tech"]
    assert labels_json["raw_labels"] == LABELS
    config = AutoConfig.from_pretrained(str(output))
    assert config.id2label == {0: "Sports", 1: "Business", 2: "Sci/Tech"}
    assert config.label2id == {"Sports": 0, "Business": 1, "Sci/Tech": 2}
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["confusion_matrix"]["labels"] == labels_json["labels"]
    assert metrics["rows_evaluated"] == tracked_named["report"].data.val_rows  # raw val labels mapped
    predictions = Predictor.load(str(output)).predict(["football match goal league", "bank shares profit"])
    assert {p.label for p in predictions} <= set(NAMES.values())
    assert set(predictions[0].scores) == set(NAMES.values())


def test_training_fits_and_reports_a_temperature(tracked_named: dict) -> None:
    output = tracked_named["output"]
    metrics = json.loads((output / "metrics.json").read_text())
    calibration = metrics["calibration"]
    temperature = json.loads((output / "labels.json").read_text())["temperature"]
    assert calibration["temperature"] == temperature > 0
    assert calibration["rows"] == metrics["rows_evaluated"] and calibration["ece_bins"] == 15
    for side in ("before", "after_temperature", "after"):
        assert set(calibration[side]) == {"ece", "log_loss", "ece_interval"}
        interval = calibration[side]["ece_interval"]
        assert interval["method"] == "bootstrap" and interval["low"] <= interval["high"]
    # 360 rows leave ~70 validation rows: too few for the top-label map, and the report says why.
    assert calibration["rows"] < TOP_LABEL_MIN_ROWS and calibration["top_label_calibration"] is None
    assert "top_label_calibration" not in json.loads((output / "labels.json").read_text())
    assert f"it needs {TOP_LABEL_MIN_ROWS}" in calibration["note"]
    # Fitted on these rows: the log-loss cannot get worse, and the metrics are the calibrated model's.
    assert calibration["after"]["log_loss"] <= calibration["before"]["log_loss"] + 1e-9
    assert metrics["log_loss"] == pytest.approx(calibration["after"]["log_loss"], abs=1e-4)
    assert metrics["ece"] == pytest.approx(calibration["after"]["ece"], abs=1e-4)
    # the same scores, the same bootstrap: the calibrated ECE's interval is the reported one's
    after = calibration["after"]["ece_interval"]
    assert (after["low"], after["high"]) == pytest.approx(
        (metrics["intervals"]["ece"]["low"], metrics["intervals"]["ece"]["high"]), abs=1e-4
    )


def test_evaluate_takes_raw_or_named_labels(tracked_named: dict, tmp_path: Path) -> None:
    from bm_ray.jobs.evaluate import evaluate
    from bm_ray.specs import EvaluateSpec

    raw = write_synthetic(tmp_path / "raw.jsonl", 60, seed=5)
    named = tmp_path / "named.jsonl"
    named.write_text(
        "".join(
            json.dumps({**row, "label": NAMES[row["label"]]}) + "\n"
            for row in map(json.loads, raw.read_text().splitlines())
        )
    )
    model = str(tracked_named["output"])
    reports = [evaluate(EvaluateSpec(model=model, data=IngestSpec(input=[str(d)]))) for d in (raw, named)]
    assert reports[0].rows_evaluated == reports[1].rows_evaluated == 60
    assert reports[0].rows_rejected == 0
    for key in ("accuracy", "macro_f1", "log_loss", "ece", "confusion_matrix"):
        assert getattr(reports[0], key) == getattr(reports[1], key), key


def test_label_names_from_a_file_in_class_order(tmp_path: Path, tiny_base: Path) -> None:
    classes = tmp_path / "classes.txt"
    classes.write_text("Sports\nBusiness\n\nSci/Tech\n")
    spec = spec_for(tmp_path / "d.jsonl", tmp_path / "out", tiny_base, label_names_file=str(classes))
    assert resolve_label_names(spec, LABELS) == ["Sports", "Business", "Sci/Tech"]
    listed = spec_for(
        tmp_path / "d.jsonl", tmp_path / "out", tiny_base, label_names="Sports,Business,Sci/Tech"
    )
    assert resolve_label_names(listed, LABELS) == ["Sports", "Business", "Sci/Tech"]
    assert resolve_label_names(spec_for(tmp_path / "d.jsonl", tmp_path / "out", tiny_base), LABELS) is None
    # Natural class order: "2" < "10", as training orders the raw labels.
    numeric = spec_for(tmp_path / "d.jsonl", tmp_path / "out", tiny_base, label_names={10: "Ten", 2: "Two"})
    assert resolve_label_names(numeric, ["2", "10"]) == ["Two", "Ten"]


@pytest.mark.parametrize(
    ("names", "message"),
    [
        ("alpha=A,beta=B", r"label_names: no name for label\(s\) 'gamma'"),
        (
            "alpha=A,beta=B,gamma=C,delta=D",
            r"label_names: 'delta' is not a label of the data \(labels found: alpha, beta, gamma\)",
        ),
        ("alpha=A,beta=A,gamma=C", r"name 'A' is given to labels 'alpha' and 'beta'; names must be unique"),
        ("alpha=beta,beta=B,gamma=C", r"name 'beta' of label 'alpha' is also the raw value of another label"),
        (
            "A,B",
            r"label_names: 2 names for 3 labels; give one name per label in class order \(alpha, beta, gamma\)",
        ),
    ],
)
def test_bad_label_names_are_clear_errors(tmp_path: Path, tiny_base: Path, names: str, message: str) -> None:
    spec = spec_for(tmp_path / "d.jsonl", tmp_path / "out", tiny_base, label_names=names)
    with pytest.raises(TrainError, match=message):
        resolve_label_names(spec, LABELS)


def test_label_names_spec_errors_name_the_value(tmp_path: Path, tiny_base: Path) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"label '1' is named twice \('World' and 'Sports'\)"):
        spec_for(tmp_path / "d", tmp_path / "o", tiny_base, label_names="1=World,1=Sports")
    with pytest.raises(ValidationError, match=r"'2': expected RAW=NAME"):
        spec_for(tmp_path / "d", tmp_path / "o", tiny_base, label_names="1=World,2")
    with pytest.raises(ValidationError, match="give the names one way, not both"):
        spec_for(tmp_path / "d", tmp_path / "o", tiny_base, label_names="1=W", label_names_file="c.txt")
    missing = spec_for(tmp_path / "d", tmp_path / "o", tiny_base, label_names_file=str(tmp_path / "none.txt"))
    with pytest.raises(TrainError, match=r"label_names_file .*none\.txt: no such file"):
        resolve_label_names(missing, LABELS)
