"""`bm-ray bench ...`: side-by-side benchmarks (serve, train, ingest, classify, windows).

Each prints its figures (the result) on stdout as JSON, and `--json-file PATH` also writes them to a file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from bm_ray.cli.main import bench_app, fail
from bm_ray.cli.options import CORPUS_OPTIONS, corpus_options, option_group
from bm_ray.cli.output import JsonOpt, command_output, json_text
from bm_ray.specs import DEFAULT_MODEL, IngestSpec, TrainSpec, validate_spec

JsonFileOpt = Annotated[
    Path | None, typer.Option("--json-file", help="Also write the figures to this JSON file.")
]
ModelOpt = Annotated[str, typer.Option("--model", help="Model directory or URI.")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", help="Engine batch size.")]


@bench_app.command("serve")
@option_group({"text_fields": CORPUS_OPTIONS["text_fields"]}, "corpus_flags")
def bench_serve_cmd(
    model: ModelOpt,
    input: Annotated[str, typer.Option("--input", help="Corpus with the request texts (CSV/JSONL/...).")],
    mode: Annotated[
        Literal["perf", "load", "fault"],
        typer.Option(
            "--mode", help="perf: batching on/off at concurrency 1,8,32; load: 10% malformed; fault."
        ),
    ] = "perf",
    requests: Annotated[
        int | None,
        typer.Option("--requests", help="Requests per run (perf: 300 per level, load: 5000, fault: 1000)."),
    ] = None,
    port: Annotated[int, typer.Option("--port", help="Loopback port of the endpoint.")] = 8131,
    precision: Annotated[
        Literal["fp32", "int8"],
        typer.Option("--precision", help="perf with int8: the fp32 endpoint, then the int8 one, in one run."),
    ] = "fp32",
    json_file: JsonFileOpt = None,
    as_json: JsonOpt = False,
    corpus_flags: dict[str, Any] | None = None,
) -> None:
    """Benchmark the Serve endpoint over loopback HTTP (one text per request)."""
    import ray
    from ray import serve as ray_serve

    from bm_ray.bench.load import load_run, read_texts
    from bm_ray.bench.serve import bench_serve, bench_serve_precisions
    from bm_ray.bench.serve_faults import fault_run
    from bm_ray.runtime.ray_init import init_ray
    from bm_ray.specs import ServeSpec

    corpus = validate_spec(IngestSpec, {**(corpus_flags or {}), "input": input}, "command line")
    spec = ServeSpec(model=model, port=port, min_replicas=1, max_replicas=1, cpus_per_replica=2)
    with command_output(as_json) as out:
        init_ray("local")  # a fresh embedded Ray: the shutdown below must not touch anyone else's cluster
        try:
            texts = read_texts(input, corpus.text_fields)
            if mode == "perf" and precision == "int8":
                result: Any = bench_serve_precisions(model, texts, requests or 300, spec, json_file)
                out.result(result, text=json_text(result))
                return
            if mode == "perf":  # the perf run prints its own table; its fuller figures go to --json-file
                result = bench_serve(
                    model, texts, requests=requests or 300, json_path=json_file and str(json_file), spec=spec
                )
                out.result(result)
                return
            spec = spec.model_copy(update={"precision": precision})
            run = load_run if mode == "load" else fault_run
            result = run(model, texts, requests or (5000 if mode == "load" else 1000), spec=spec)
            if json_file:
                json_file.write_text(json_text(result), encoding="utf-8")
            out.result(result, text=json_text(result))
        finally:
            ray_serve.shutdown()
            ray.shutdown()


@bench_app.command("train")
@corpus_options()
def bench_train_cmd(
    data: Annotated[
        str, typer.Option("--data", help="Labelled corpus (the first --rows valid rows are used).")
    ],
    base_model: Annotated[
        str, typer.Option("--base-model", help=TrainSpec.model_fields["base_model"].description)
    ] = DEFAULT_MODEL,
    rows: Annotated[int, typer.Option("--rows", help="Valid rows of --data used.")] = 1024,
    workers: Annotated[int, typer.Option("--workers", help="Ray Train workers (and Keras fit cores).")] = 2,
    epochs: Annotated[int, typer.Option("--epochs", help="Epochs per path; the first is not timed.")] = 2,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Global batch size.")] = 32,
    quality: Annotated[
        bool,
        typer.Option(
            "--quality",
            help="Instead: accuracy of the seed recipe vs bm-ray's default training on the same (grouped) "
            "split of all rows, same cores, with 95% intervals and the paired interval of the difference "
            "(--rows, --epochs, --batch-size are not used).",
        ),
    ] = False,
    output: Annotated[
        str | None,
        typer.Option("--output", help="--quality: where bm-ray's model goes (default: a temp dir)."),
    ] = None,
    json_file: JsonFileOpt = None,
    as_json: JsonOpt = False,
    corpus_flags: dict[str, Any] | None = None,
) -> None:
    """Training rows/s: Ray Train (N workers x 1 CPU) vs plain Keras fit on N cores, plus padding waste."""
    from bm_ray.bench.train import bench_quality, bench_train

    flags = {**(corpus_flags or {}), "input": data}
    json_path = json_file and str(json_file)
    with command_output(as_json) as out:
        if quality:
            import tempfile

            spec = validate_spec(
                TrainSpec,
                {
                    "data": flags,
                    "base_model": base_model,
                    "workers": workers,
                    "output": output or tempfile.mkdtemp(prefix="bm-ray-bench-quality-"),
                },
                "command line",
            )
            result = bench_quality(spec, json_path)
            note = quality_line(result)
        else:
            ingest_spec = validate_spec(IngestSpec, flags, "command line")
            result = bench_train(ingest_spec, base_model, rows, workers, epochs, batch_size, json_path)
            note = (
                f"Ray Train {result['ray_rows_per_s']:.1f} rows/s vs Keras fit {result['keras_rows_per_s']:.1f} "
                f"rows/s: ratio {result['ratio']:.2f} (target >= 0.85); padding waste "
                f"{result['padding_waste']:.2f} vs {result['padding_waste_max_length']:.2f} padding to max_length"
            )
        out.result(result, note=note, text=json_text(result))


def quality_line(result: dict[str, Any]) -> str:
    """The summary line of `bench train --quality`: both recipes' figures with their 95% intervals and
    the paired interval of bm-ray's accuracy minus the seed's."""
    from bm_ray.model.uncertainty import figure_text
    from bm_ray.results import Interval

    ci = {k: Interval.model_validate(v) for k, v in result["intervals"].items() if isinstance(v, dict)}

    def shown(key: str, signed: bool = False) -> str:
        return figure_text(result[key], ci.get(key), 4, signed)  # the intervals are keyed as the figures

    return (
        f"seed recipe: accuracy {shown('seed_accuracy')}, macro-F1 {shown('seed_macro_f1')}, "
        f"fit {result['seed_train_s']:.0f}s; bm-ray: accuracy {shown('bm_ray_accuracy')}, macro-F1 "
        f"{shown('bm_ray_macro_f1')}, whole train {result['bm_ray_train_s']:.0f}s; bm-ray − seed "
        f"{shown('accuracy_difference', signed=True)} paired on {result['paired_rows']} of "
        f"{result['val_rows']} {result['split']}-split validation rows"
    )


@bench_app.command("ingest")
@option_group({"dedupe": CORPUS_OPTIONS["dedupe"]}, "corpus_flags")
def bench_ingest_cmd(
    rows: Annotated[
        str, typer.Option("--rows", help="Row counts, comma-separated (e.g. 1000000,5000000).")
    ] = "1000000,5000000",
    json_file: JsonFileOpt = None,
    as_json: JsonOpt = False,
    corpus_flags: dict[str, Any] | None = None,
) -> None:
    """Ingest rows/s and the largest process's peak RSS on synthetic corpora of growing size (2 CPUs)."""
    from bm_ray.bench.ingest import bench_ingest

    try:
        sizes = [int(n) for n in rows.split(",") if n.strip()]
    except ValueError:
        fail(f"--rows {rows!r}: give row counts, e.g. 1000000,5000000")
    with command_output(as_json) as out:
        result = bench_ingest(sizes, json_path=json_file and str(json_file), **(corpus_flags or {}))
        out.result(result, text=json_text(result))


@bench_app.command("classify")
@corpus_options()
def bench_classify_cmd(
    model: ModelOpt,
    input: Annotated[str, typer.Option("--input", help="Corpus with the texts (the first --rows ok rows).")],
    rows: Annotated[
        int, typer.Option("--rows", help="Rows per path (cycled if the corpus is smaller).")
    ] = 2000,
    batch_size: BatchSizeOpt = 32,
    memory: Annotated[
        bool, typer.Option("--memory", help="Also peak RSS of the Ray job at --rows and 10x --rows.")
    ] = False,
    precision: Annotated[
        Literal["fp32", "int8"],
        typer.Option("--precision", help="int8: also the int8 engine and the int8 Ray job, beside fp32."),
    ] = "fp32",
    json_file: JsonFileOpt = None,
    as_json: JsonOpt = False,
    corpus_flags: dict[str, Any] | None = None,
) -> None:
    """Bulk classification rows/s: naive Keras predict vs the engine vs the Ray Data job, plus GFLOP/s
    (with --precision int8 also the int8 engine and job, and the int8 GEMM peak)."""
    import ray

    from bm_ray.bench.classify import bench_classify
    from bm_ray.runtime.ray_init import init_ray

    corpus = validate_spec(IngestSpec, {**(corpus_flags or {}), "input": input}, "command line")
    with command_output(as_json) as out:
        init_ray("local")  # a fresh embedded Ray sized to this machine, never someone else's cluster
        try:
            result = bench_classify(
                model,
                corpus,
                rows=rows,
                batch_size=batch_size,
                memory=memory,
                json_path=json_file and str(json_file),
                precision=precision,
            )
        finally:
            ray.shutdown()
        out.result(result, text=json_text(result))


@bench_app.command("windows")
def bench_windows_cmd(
    model: Annotated[
        str, typer.Option("--model", help="Model directory or URI (trained on AG News labels).")
    ],
    data: Annotated[
        str, typer.Option("--data", help="AG News CSV (header Class Index,Title,Description).")
    ] = "../shared/data/ag_news_dev/val.csv",
    skip_rows: Annotated[
        int,
        typer.Option("--skip-rows", help="Rows the model trained on: skipped, and their descriptions too."),
    ] = 0,
    rows: Annotated[int, typer.Option("--rows", help="Articles (and pages) scored.")] = 1000,
    bbc: Annotated[
        str | None,
        typer.Option("--bbc", help="Also BBC full articles from this folder (../shared/data/bbc)."),
    ] = None,
    bbc_labels: Annotated[
        str, typer.Option("--bbc-labels", help="BBC folder=model label pairs.")
    ] = "business=3,sport=2,tech=4,politics=1",
    batch_size: BatchSizeOpt = 32,
    throughput_rows: Annotated[
        int, typer.Option("--throughput-rows", help="Short texts per throughput round.")
    ] = 2000,
    rounds: Annotated[int, typer.Option("--rounds", help="Interleaved throughput rounds per mode.")] = 5,
    json_file: JsonFileOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Articles vs boilerplate-laden pages, truncated vs windowed (every aggregation rule); short-text speed."""
    from bm_ray.bench.windows import bench_windows, summary_table

    with command_output(as_json) as out:
        result = bench_windows(
            model,
            data,
            skip_rows=skip_rows,
            rows=rows,
            bbc=bbc,
            bbc_labels=bbc_labels,
            batch_size=batch_size,
            throughput_rows=throughput_rows,
            rounds=rounds,
        )
        if json_file:
            json_file.write_text(json_text(result), encoding="utf-8")
        out.result(result, note=summary_table(result), text=json_text(result))
