"""Bulk-classification benchmark: the naive recipe vs the engine vs the Ray Data classify job.

All three paths run in one process tree on the same rows and model:

1. naive: tokenise the whole corpus with ``padding=True, truncation=True`` (every row padded to the
   longest row of the corpus, capped at the model's max_length) and call Keras ``model.predict``
   (batch_size 32), TF using every core;
2. engine: :meth:`bm_ray.model.engine.Predictor.predict_proba` in this process (length-bucketed, dynamic
   padding, compiled forward pass), TF using every core;
3. ray: :func:`bm_ray.jobs.classify.classify` into a temporary output, an actor pool of one 1-CPU actor per
   core; its wall time includes starting the actors and loading the model in each.

Useful model FLOPs count real tokens only (padding is waste, not work). For a row of ``n`` tokens
through ``L`` layers of width ``h`` and feed-forward width ``i``::

    flops(n) = 2·n·L·(4·h² + 2·h·i)     Q, K, V, output projections and the two FFN matmuls (2 FLOPs/MAC)
             + 4·L·n²·h                 attention scores QKᵀ and the weighted sum of V (2·n²·h each)

Embedding lookups, layer norms, softmax, the pooler and the head are left out (under 1% here).
``gflops`` is the sum over rows divided by the Ray job's wall time; ``matmul_peak_gflops`` is the best
of a few large fp32 numpy GEMMs (2·N³ FLOPs each) on this machine.

With ``precision="int8"`` two more paths run on the same rows: 4. the int8 engine (the same Predictor
on its ONNX Runtime backend, :mod:`bm_ray.model.int8`; built and gated before it is timed) and 5. the
classify job with ``precision: int8``. Their ratios against the fp32 engine and the fp32 job are the
issue's targets; ``int8_gops`` (useful operations per second of the int8 job) is set against
``int8_matmul_peak_gops``, the best of a few large uint8×int8 ``MatMulInteger`` GEMMs on ONNX Runtime —
the kernel the quantized model's projections run on — so the next limit is known.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from bm_ray.bench.memory import PeakMemory
from bm_ray.specs import ClassifySpec, IngestSpec, Precision

NAIVE_BATCH_SIZE = 32
AGREEMENT_ROWS = 500
MEMORY_FACTOR = 10


def read_rows(spec: IngestSpec, rows: int) -> list[str]:
    """The texts of the first `rows` ok rows of a corpus (cycled when the corpus has fewer)."""
    from bm_ray.corpus import first_ok_rows

    texts = [row["text"] for row in first_ok_rows(spec, ["text"], rows)]
    return [texts[i % len(texts)] for i in range(rows)]


def write_jsonl(texts: Sequence[str], path: Path) -> Path:
    """The texts as a JSONL corpus with ids r0, r1, ... (the classify job's input)."""
    with path.open("w", encoding="utf-8") as f:
        for i, text in enumerate(texts):
            f.write(json.dumps({"id": f"r{i}", "text": text}) + "\n")
    return path


def flops_per_row(lengths: np.ndarray, config: dict[str, Any]) -> np.ndarray:
    """Useful forward FLOPs of each row with `lengths` real tokens (formula in the module docstring)."""
    layers, hidden = config["num_hidden_layers"], config["hidden_size"]
    inner = config["intermediate_size"]
    n = lengths.astype(np.float64)
    return 2 * n * layers * (4 * hidden**2 + 2 * hidden * inner) + 4 * layers * n**2 * hidden


def matmul_peak_gflops(size: int = 2048, repeats: int = 5) -> float:
    """fp32 GEMM GFLOP/s of this machine: the best of `repeats` numpy `size`² matmuls."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    a @ b  # warm the BLAS thread pool
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def int8_matmul_peak_gops(size: int = 2048, repeats: int = 5, threads: int | None = None) -> float:
    """uint8×int8 GEMM giga-operations/s of this machine on ONNX Runtime (``MatMulInteger``, the kernel of
    the int8 model's dense layers; VNNI where the CPU has it): the best of `repeats` `size`² products."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["c"])],
        "int8_gemm",
        [
            helper.make_tensor_value_info("a", TensorProto.UINT8, [size, size]),
            helper.make_tensor_value_info("b", TensorProto.INT8, [size, size]),
        ],
        [helper.make_tensor_value_info("c", TensorProto.INT32, [size, size])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {
        "a": rng.integers(0, 255, (size, size), dtype=np.uint8),
        "b": rng.integers(-127, 127, (size, size), dtype=np.int8),
    }
    session.run(None, feeds)  # warm the thread pool
    best = min(_timed(lambda: session.run(None, feeds)) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def precision_agreement(
    model: str, texts: Sequence[str], precision: Precision, batch_size: int = 32
) -> float:
    """Fraction of `texts` whose predicted label at `precision` equals the fp32 one (1.0 when no texts)."""
    from bm_ray.model.engine import Predictor

    if not texts:
        return 1.0
    reference = Predictor.load(model, batch_size, "fp32").predict_proba(texts).argmax(axis=1)
    reduced = Predictor.load(model, batch_size, precision).predict_proba(texts).argmax(axis=1)
    return float(np.mean(reference == reduced))


def _classify_spec(
    model: str,
    corpus: Path,
    output: Path,
    batch_size: int,
    rows_per_block: int,
    precision: Precision = "auto",
) -> ClassifySpec:
    cpus = os.cpu_count() or 1
    return ClassifySpec(
        model=model,
        input=IngestSpec(input=[str(corpus)], rows_per_block=rows_per_block),
        output=str(output),
        batch_size=batch_size,
        actors=cpus,
        cpus_per_actor=1,
        overwrite=True,
        precision=precision,
    )


@contextmanager
def _workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="bm-ray-bench-") as tmp:
        yield Path(tmp)


def bench_classify(
    model: str,
    data: IngestSpec | str,
    rows: int = 2000,
    *,
    batch_size: int = 32,
    rows_per_block: int = 1000,
    memory: bool = False,
    json_path: str | None = None,
    precision: Precision = "fp32",
    **ingest_options: Any,
) -> dict[str, Any]:
    """Run the three paths on the same `rows` rows and print rows/s, ratios and GFLOP/s.

    `data` is an IngestSpec, or a path with `ingest_options` (text_fields=..., label_field=...).
    `memory` also measures the classify job's peak RSS at `rows` and 10× `rows`; ``precision="int8"``
    adds the int8 engine and job (module docstring) and their int8_* keys. Returns (and writes to
    `json_path`) naive/engine/ray rows/s, ray_vs_naive, ray_vs_engine, gflops, matmul_peak_gflops,
    gflops_vs_peak, padding_waste (engine; ray_padding_waste for the job), bf16_agreement and, with
    `memory`, peak_rss_mb_n, peak_rss_mb_10n and rss_ratio.
    """
    from bm_ray.jobs.classify import classify
    from bm_ray.model.engine import Predictor
    from bm_ray.model.preprocess import PaddingStats
    from bm_ray.model.registry import load_classifier, resolve_model
    from bm_ray.runtime.ray_init import init_ray

    spec = data if isinstance(data, IngestSpec) else IngestSpec(input=[data], **ingest_options)
    init_ray()
    texts = read_rows(spec, rows)
    model_dir = resolve_model(model)
    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    result: dict[str, Any] = {"rows": rows, "model": model, "batch_size": batch_size, "cpus": os.cpu_count()}

    keras_model, tokenizer, info = load_classifier(model_dir)
    start = time.perf_counter()
    encoded = tokenizer(texts, padding=True, truncation=True, max_length=info.max_length, return_tensors="np")
    keras_model.predict(dict(encoded), batch_size=NAIVE_BATCH_SIZE, verbose=0)
    result["naive_rows_per_s"] = rows / (time.perf_counter() - start)
    result["naive_padded_length"] = int(encoded["input_ids"].shape[1])
    del keras_model, encoded

    predictor = Predictor.load(model_dir, batch_size=batch_size, precision="fp32", num_threads=os.cpu_count())
    predictor.warmup()
    predictor.padding = PaddingStats()
    start = time.perf_counter()
    predictor.predict_proba(texts)
    result["engine_rows_per_s"] = rows / (time.perf_counter() - start)
    result["padding_waste"] = round(predictor.padding.waste, 4)
    lengths = np.asarray([len(ids) for ids in predictor.encoder.encode(texts)])
    useful_flops = float(flops_per_row(lengths, config).sum())
    result["mean_tokens"] = round(float(lengths.mean()), 1)
    result["bf16_agreement"] = precision_agreement(model_dir, texts[:AGREEMENT_ROWS], "bf16", batch_size)
    fp32_labels = predictor.predict_proba(texts).argmax(axis=1) if precision == "int8" else None
    del predictor
    if precision == "int8":
        int8 = Predictor.load(model_dir, batch_size=batch_size, precision="int8", num_threads=os.cpu_count())
        int8.warmup()  # built and gated (or read from the cache) above, timed from here
        start = time.perf_counter()
        int8_probs = int8.predict_proba(texts)
        result["int8_engine_rows_per_s"] = rows / (time.perf_counter() - start)
        result["int8_agreement"] = float(np.mean(int8_probs.argmax(axis=1) == fp32_labels))
        del int8

    with _workdir() as tmp:
        corpus = write_jsonl(texts, tmp / "rows.jsonl")
        summary = classify(_classify_spec(model_dir, corpus, tmp / "out", batch_size, rows_per_block))
        if summary.rows_classified != rows:
            raise RuntimeError(f"classify classified {summary.rows_classified} of {rows} rows")
        result["ray_rows_per_s"] = rows / summary.elapsed_s
        result["ray_padding_waste"] = summary.padding_waste
        result["ray_actors"] = summary.actors.max
        if precision == "int8":
            spec = _classify_spec(model_dir, corpus, tmp / "out-int8", batch_size, rows_per_block, "int8")
            summary = classify(spec)
            if summary.rows_classified != rows:
                raise RuntimeError(f"int8 classify classified {summary.rows_classified} of {rows} rows")
            result["int8_ray_rows_per_s"] = rows / summary.elapsed_s
        if memory:
            result.update(_memory(model_dir, texts, tmp, batch_size, rows_per_block))

    result["ray_vs_naive"] = result["ray_rows_per_s"] / result["naive_rows_per_s"]
    result["ray_vs_engine"] = result["ray_rows_per_s"] / result["engine_rows_per_s"]
    result["gflops"] = useful_flops / 1e9 / (rows / result["ray_rows_per_s"])
    result["matmul_peak_gflops"] = matmul_peak_gflops()
    result["gflops_vs_peak"] = result["gflops"] / result["matmul_peak_gflops"]
    if precision == "int8":
        result["int8_ray_vs_engine"] = result["int8_ray_rows_per_s"] / result["engine_rows_per_s"]
        result["int8_ray_vs_ray"] = result["int8_ray_rows_per_s"] / result["ray_rows_per_s"]
        result["int8_gops"] = useful_flops / 1e9 / (rows / result["int8_ray_rows_per_s"])
        result["int8_matmul_peak_gops"] = int8_matmul_peak_gops()
        result["int8_gops_vs_peak"] = result["int8_gops"] / result["int8_matmul_peak_gops"]
    result = {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}
    _print(result)
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


def _memory(
    model_dir: str, texts: list[str], tmp: Path, batch_size: int, rows_per_block: int
) -> dict[str, Any]:
    """Peak RSS of the process tree while classifying N and 10·N rows (streaming: should barely grow)."""
    from bm_ray.jobs.classify import classify

    peaks = {}
    for factor in (1, MEMORY_FACTOR):
        corpus = write_jsonl(texts * factor, tmp / f"rows-x{factor}.jsonl")
        with PeakMemory() as rss:
            classify(_classify_spec(model_dir, corpus, tmp / f"out-x{factor}", batch_size, rows_per_block))
        peaks[factor] = rss.peak_bytes / 2**20
    return {
        "peak_rss_mb_n": round(peaks[1], 1),
        "peak_rss_mb_10n": round(peaks[MEMORY_FACTOR], 1),
        "rss_ratio": round(peaks[MEMORY_FACTOR] / peaks[1], 3),
    }


def _print(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"bulk classification, {result['rows']} rows, {result['cpus']} CPUs")
    for column in ("path", "rows/s", "vs naive"):
        table.add_column(column, justify="right" if column != "path" else "left")
    for name in ("naive", "engine", "ray"):
        rate = result[f"{name}_rows_per_s"]
        table.add_row(name, f"{rate:.1f}", f"{rate / result['naive_rows_per_s']:.2f}×")
    console = Console(stderr=True)
    console.print(table)
    console.print(
        f"ray/engine {result['ray_vs_engine']:.2f} (target ≥ 0.9), ray/naive {result['ray_vs_naive']:.2f} "
        f"(≥ 4); {result['gflops']:.1f} GFLOP/s = {result['gflops_vs_peak']:.2f} of the "
        f"{result['matmul_peak_gflops']:.1f} GFLOP/s GEMM peak; padding ×{result['padding_waste']:.2f}; "
        f"bf16 agreement {result['bf16_agreement']:.4f}"
    )
    if "int8_ray_rows_per_s" in result:
        console.print(
            f"int8: engine {result['int8_engine_rows_per_s']:.1f} rows/s, ray {result['int8_ray_rows_per_s']:.1f} "
            f"rows/s = {result['int8_ray_vs_engine']:.2f}× the fp32 engine (target ≥ 2.0), "
            f"{result['int8_ray_vs_ray']:.2f}× the fp32 job (≥ 1.8); label agreement with fp32 "
            f"{result['int8_agreement']:.4f}; {result['int8_gops']:.1f} GOP/s = {result['int8_gops_vs_peak']:.2f} "
            f"of the {result['int8_matmul_peak_gops']:.1f} GOP/s int8 GEMM peak"
        )
    if "rss_ratio" in result:
        console.print(
            f"peak RSS {result['peak_rss_mb_n']:.0f} MB at N, {result['peak_rss_mb_10n']:.0f} MB at 10N: "
            f"×{result['rss_ratio']:.2f} (target ≤ 1.3)"
        )
