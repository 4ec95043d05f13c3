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
from pathlib import Path
from typing import Any

import numpy as np

from bm_ray.specs import IngestSpec, TrainSpec


def _sample_corpus(ingest: IngestSpec, rows: int, path: Path) -> Path:
    """Write the first `rows` valid labelled rows of a corpus as JSONL (both paths read this file)."""
    from bm_ray.corpus import ok_rows, read_corpus

    ds, _ = read_corpus(ingest, dedupe=False)
    with path.open("w", encoding="utf-8") as handle:
        for row in ok_rows(ds, ["id", "text", "label"]).filter(lambda r: r["label"] is not None).take(rows):
            handle.write(json.dumps(row) + "\n")
    return path


def _keras_fit_rows_per_s(
    corpus: str, spec: dict[str, Any], labels: list[str], max_length: int, cores: int
) -> dict[str, float]:
    """Plain Keras `model.fit` in one process with `cores` threads; rows/s of epochs after the first."""
    import tensorflow as tf

    from bm_ray.engine import configure_threads
    from bm_ray.models import resolve_model
    from bm_ray.preprocess import TextEncoder
    from bm_ray.train import batch_signature, compile_classifier, epoch_batches

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

    from bm_ray.models import resolve_model
    from bm_ray.preprocess import TextEncoder, padding_stats
    from bm_ray.runtime import init_ray
    from bm_ray.train import train

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
    steady = report["epochs"][1:] or report["epochs"]
    ray_rows_per_s = float(np.mean([epoch["train_rows_per_s"] for epoch in steady]))
    labels = list(report["confusion_matrix"]["labels"])
    max_length = int(report["data"]["max_length"])
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
