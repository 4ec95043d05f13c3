"""`bm-ray bench train`: Ray Train (N workers) vs a plain single-process Keras `fit`, side by side.

Both paths train the same model on the same rows with the same optimizer, batch size and
length-bucketed batches, on the same total number of cores; throughput is taken from the epochs
after the first (the first one pays for tracing). The padding waste of the bucketed batches is
reported next to that of padding every batch to `max_length`.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bm_ray.model.preprocess import PaddingStats, length_batches, padded_length
from bm_ray.model.uncertainty import (
    CONFIDENCE,
    accuracy_interval,
    macro_f1_interval,
    paired_difference_interval,
)
from bm_ray.results import Interval, TrainResult
from bm_ray.runtime.tf import import_tensorflow
from bm_ray.specs import IngestSpec, TrainSpec


def _sample_corpus(ingest: IngestSpec, rows: int, path: Path) -> Path:
    """Write the first `rows` valid labelled rows of a corpus as JSONL (both paths read this file)."""
    from bm_ray.corpus import first_ok_rows

    with path.open("w", encoding="utf-8") as handle:
        for row in first_ok_rows(ingest, ["id", "text", "label"], rows, labelled=True):
            handle.write(json.dumps(row) + "\n")
    return path


def _keras_fit_rows_per_s(
    corpus: str, spec: dict[str, Any], labels: list[str], max_length: int, cores: int
) -> dict[str, float]:
    """Plain Keras `model.fit` in one process with `cores` threads; rows/s of epochs after the first."""
    tf = import_tensorflow()

    from bm_ray.jobs.train.batches import batch_signature, epoch_batches
    from bm_ray.jobs.train.loop import compile_classifier
    from bm_ray.model.engine import configure_threads
    from bm_ray.model.preprocess import TextEncoder
    from bm_ray.model.registry import resolve_model

    configure_threads(cores)
    rows = [json.loads(line) for line in Path(corpus).read_text(encoding="utf-8").splitlines()]
    encoder = TextEncoder.from_dir(resolve_model(spec["base_model"]), max_length)
    block = {
        "input_ids": np.array(encoder.encode([r["text"] for r in rows]), dtype=object),
        "label_id": np.asarray([labels.index(r["label"]) for r in rows], dtype=np.int32),
    }
    steps = -(-len(rows) // spec["batch_size"])
    model = compile_classifier(resolve_model(spec["base_model"]), labels, steps * spec["epochs"], spec)
    dataset = tf.data.Dataset.from_generator(
        lambda: epoch_batches([block], spec["batch_size"], steps), output_signature=batch_signature()
    )
    seconds = []
    for _ in range(spec["epochs"]):
        started = time.perf_counter()
        model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0)
        seconds.append(time.perf_counter() - started)
    steady = seconds[1:] or seconds
    return {"keras_rows_per_s": steps * spec["batch_size"] * len(steady) / sum(steady)}


def padding_stats(
    lengths: Sequence[int] | np.ndarray, batch_size: int, fixed_width: int | None = None
) -> PaddingStats:
    """Padding of our bucketed batches, or of in-order batches padded to `fixed_width` when given."""
    lengths = np.asarray(lengths)
    stats = PaddingStats()
    if fixed_width is not None:
        for start in range(0, len(lengths), batch_size):
            stats.add(lengths[start : start + batch_size], fixed_width)
        return stats
    for batch in length_batches(lengths, batch_size):
        stats.add(lengths[batch], padded_length(lengths[batch].max()))
    return stats


def bench_train(
    data: IngestSpec,
    base_model: str = "minilm-l6",
    rows: int = 1024,
    workers: int = 2,
    epochs: int = 2,
    batch_size: int = 32,
    json_path: str | None = None,
) -> dict[str, Any]:
    """Measure training rows/s of Ray Train (`workers` × 1 CPU) against Keras `fit` on `workers` cores."""
    import ray

    from bm_ray.jobs.train.job import train
    from bm_ray.model.preprocess import TextEncoder
    from bm_ray.model.registry import resolve_model
    from bm_ray.runtime.ray_init import init_ray

    init_ray()
    work = Path(tempfile.mkdtemp(prefix="bm-ray-bench-train-"))
    corpus = _sample_corpus(data, rows, work / "rows.jsonl")
    spec = TrainSpec(
        data=IngestSpec(input=[str(corpus)]),
        output=str(work / "model"),
        base_model=base_model,
        workers=workers,
        cpus_per_worker=1,
        epochs=epochs,
        batch_size=batch_size,
        val_fraction=0.05,
        keep_checkpoints=1,
    )
    report = train(spec)
    steady = report.epochs[1:] or report.epochs
    ray_rows_per_s = float(np.mean([epoch["train_rows_per_s"] for epoch in steady]))
    labels = list(report.confusion_matrix.labels)
    max_length = report.data.max_length
    keras_task = ray.remote(num_cpus=workers)(_keras_fit_rows_per_s)
    keras = ray.get(keras_task.remote(str(corpus), spec.model_dump(), labels, max_length, workers))

    texts = [json.loads(line)["text"] for line in corpus.read_text(encoding="utf-8").splitlines()]
    lengths = TextEncoder.from_dir(resolve_model(base_model), max_length).token_lengths(texts, max_length)
    result = {
        "rows": len(texts),
        "workers": workers,
        "epochs": epochs,
        "batch_size": batch_size,
        "max_length": max_length,
        "ray_rows_per_s": round(ray_rows_per_s, 2),
        "keras_rows_per_s": round(keras["keras_rows_per_s"], 2),
        "ratio": round(ray_rows_per_s / keras["keras_rows_per_s"], 3),
        "padding_waste": round(padding_stats(lengths, batch_size).waste, 3),
        "padding_waste_max_length": round(
            padding_stats(lengths, batch_size, fixed_width=max_length).waste, 3
        ),
    }
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


SEED_RECIPE = {"learning_rate": 5e-5, "batch_size": 32, "epochs": 2, "max_length": 128}
"""The seed project's recipe: single-process Keras fit, Adam 5e-5, batch 32, 2 epochs, every batch padded to 128."""


def _seed_recipe_fit(
    base_model: str, labels: list[str], train: list[dict], val: list[dict], cores: int, seed: int
) -> dict[str, float]:
    """Train and score the seed recipe in one process on `cores` threads (a Ray task of that size)."""
    tf = import_tensorflow()
    from transformers import AutoTokenizer

    from bm_ray.model.engine import configure_threads
    from bm_ray.model.metrics import ConfusionMatrix
    from bm_ray.model.registry import build_classifier, resolve_model

    configure_threads(cores)
    tf.keras.utils.set_random_seed(seed)
    base = resolve_model(base_model)
    tokenizer = AutoTokenizer.from_pretrained(base)
    index = {label: i for i, label in enumerate(labels)}

    def encode(rows: list[dict]) -> tuple[dict[str, Any], np.ndarray]:
        enc = tokenizer(
            [r["text"] for r in rows],
            padding="max_length",
            truncation=True,
            max_length=SEED_RECIPE["max_length"],
            return_tensors="np",
        )
        return (
            {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]},
            np.asarray([index[r["label"]] for r in rows], dtype=np.int32),
        )

    (x_train, y_train), (x_val, y_val) = encode(train), encode(val)
    started = time.perf_counter()
    model = build_classifier(base, labels)
    model.compile(
        optimizer=tf.keras.optimizers.Adam(SEED_RECIPE["learning_rate"]),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(
        x_train,
        y_train,
        batch_size=SEED_RECIPE["batch_size"],
        epochs=SEED_RECIPE["epochs"],
        shuffle=True,
        verbose=0,
    )
    train_s = time.perf_counter() - started
    logits = model.predict(x_val, batch_size=64, verbose=0).logits
    matrix = ConfusionMatrix(labels)
    matrix.add_indices(y_val.astype(np.int64), logits.argmax(axis=1))
    report = matrix.report()
    return {
        "accuracy": report["accuracy"],
        "macro_f1": report["macro_f1"],
        "train_s": train_s,
        "matrix": matrix.matrix,
        "right": logits.argmax(axis=1) == y_val,
    }


def _bm_ray_right(model_dir: str) -> dict[str, bool]:
    """Whether bm-ray's model got each validation row right, by id, from the per-row log of its final
    validation (``predictions.parquet`` of the model directory)."""
    import pyarrow.parquet as pq

    from bm_ray.layout import PREDICTIONS_FILE
    from bm_ray.storage import join_uri, resolve_uri

    fs, path = resolve_uri(join_uri(model_dir, PREDICTIONS_FILE))
    logged = pq.read_table(path, filesystem=fs, columns=["id", "label", "predicted"]).to_pydict()
    return {i: a == b for i, a, b in zip(logged["id"], logged["label"], logged["predicted"], strict=True)}


def quality_intervals(
    seed: dict[str, Any], report: TrainResult, bm_ray_right: np.ndarray, seed_right: np.ndarray
) -> dict[str, Any]:
    """95% intervals of `bench train --quality`'s figures: each recipe's accuracy (Wilson) and macro-F1
    (bootstrap over rows), and the paired bootstrap interval of bm-ray's accuracy minus the seed's on
    the same validation rows (the one resampling of :mod:`bm_ray.model.uncertainty`)."""
    matrix = np.asarray(seed["matrix"])
    intervals = {
        "confidence": CONFIDENCE,
        "seed_accuracy": accuracy_interval(int(np.trace(matrix)), int(matrix.sum())),
        "seed_macro_f1": macro_f1_interval(matrix),
        "bm_ray_accuracy": report.intervals.accuracy if report.intervals else None,
        "bm_ray_macro_f1": report.intervals.macro_f1 if report.intervals else None,
        "accuracy_difference": paired_difference_interval(seed_right, bm_ray_right),
    }
    return {k: v.model_dump() if isinstance(v, Interval) else v for k, v in intervals.items()}


def bench_quality(spec: TrainSpec, json_path: str | None = None) -> dict[str, Any]:
    """The seed recipe and bm-ray's training (`spec`, normally the defaults) on the same split of the
    same rows, on the same cores: validation accuracy, macro-F1 and wall time, side by side, with their
    95% intervals and the paired interval of bm-ray's accuracy minus the seed's (:func:`quality_intervals`).

    bm-ray's time is its whole `train` call (ingest, split, tokenise, fit, validate, write); the seed's
    is its `fit` alone (tokenising beforehand, no split search), so the comparison favours the seed.
    """
    import ray

    from bm_ray.jobs.train.data import read_labelled_corpus, split_rows
    from bm_ray.jobs.train.job import train
    from bm_ray.runtime.ray_init import init_ray

    init_ray(spec.address)
    started = time.perf_counter()
    report = train(spec)
    bm_ray_s = time.perf_counter() - started
    labels = list(report.confusion_matrix.labels)
    ok = read_labelled_corpus(spec.data, "data")[0].select_columns(["id", "text", "label"])
    train_rows, val_rows, _, leakage = split_rows(ok, spec)  # deterministic: the split bm-ray used
    val = val_rows.take_all()
    seed_task = ray.remote(num_cpus=spec.workers * spec.cpus_per_worker)(_seed_recipe_fit)
    seed = ray.get(
        seed_task.remote(
            spec.base_model,
            labels,
            train_rows.take_all(),
            val,
            int(spec.workers * spec.cpus_per_worker),
            spec.seed,
        )
    )
    # Paired on the rows both scored (all of them, unless bm-ray's validation did not score a row).
    logged = _bm_ray_right(spec.output)
    paired = [i for i, row in enumerate(val) if row["id"] in logged]
    bm_ray_right = np.asarray([logged[val[i]["id"]] for i in paired], dtype=bool)
    seed_right = np.asarray(seed["right"])[paired]
    result = {
        "split": spec.split,
        "train_rows": report.data.train_rows,
        "val_rows": report.rows_evaluated,
        "leakage_fraction": leakage["fraction"],
        "cores": spec.workers * spec.cpus_per_worker,
        "seed_recipe": SEED_RECIPE,
        "seed_accuracy": round(seed["accuracy"], 4),
        "seed_macro_f1": round(seed["macro_f1"], 4),
        "seed_train_s": round(seed["train_s"], 1),
        "bm_ray_accuracy": round(report.accuracy, 4),
        "bm_ray_macro_f1": round(report.macro_f1, 4),
        "bm_ray_train_s": round(bm_ray_s, 1),
        "paired_rows": len(paired),
        "accuracy_difference": round(float(bm_ray_right.mean() - seed_right.mean()), 4) if paired else None,
        "intervals": quality_intervals(seed, report, bm_ray_right, seed_right),
        "bm_ray_recipe": spec.model_dump(
            include={"epochs", "batch_size", "learning_rate", "head_warmup", "label_smoothing", "dropout"}
        ),
    }
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result
