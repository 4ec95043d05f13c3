"""Bulk commands on Ray Data: `classify` a corpus, and `compare` two models on one."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from bm_ray.cli.main import app
from bm_ray.cli.options import (
    SpecOpt,
    build_spec,
    bulk_engine_options,
    corpus_options,
    option_group,
    spec_options,
    with_corpora,
)
from bm_ray.cli.output import JsonOpt, command_output
from bm_ray.specs import ClassifySpec, CompareSpec
from bm_ray.storage import join_uri, redact_uri


@app.command()
@corpus_options(keep_fields=True)
@bulk_engine_options()
@option_group(
    spec_options(ClassifySpec, ["model", "input", "output", "min_score", "overwrite", "address"]), "flags"
)
def classify(
    spec: SpecOpt = None,
    as_json: JsonOpt = False,
    flags: dict[str, Any] | None = None,
    corpus_flags: dict[str, Any] | None = None,
    engine_flags: dict[str, Any] | None = None,
) -> None:
    """Classify a corpus with Ray Data: every row ends once in predictions/ or rejects/; resumable."""
    from bm_ray.jobs.classify import classify as run_classify
    from bm_ray.jobs.classify import summary_table

    given = {**with_corpora(flags or {}, corpus_flags, "input"), **(engine_flags or {})}
    classify_spec = build_spec(ClassifySpec, spec, given)
    with command_output(as_json) as out:
        summary = run_classify(classify_spec)
        path = join_uri(redact_uri(classify_spec.output), "summary.json")
        out.result(summary, note=summary_table(summary), text=path)


@app.command()
@corpus_options()
@bulk_engine_options()
@option_group(
    spec_options(CompareSpec, ["input", "output", "overwrite", "address", "promote", "mlflow_tracking_uri"]),
    "flags",
)
def compare(
    model: Annotated[
        list[str] | None,
        typer.Option("--model", help=f"{CompareSpec.model_fields['models'].description} Give --model twice."),
    ] = None,
    spec: SpecOpt = None,
    as_json: JsonOpt = False,
    flags: dict[str, Any] | None = None,
    corpus_flags: dict[str, Any] | None = None,
    engine_flags: dict[str, Any] | None = None,
) -> None:
    """Classify a corpus with two models (bulk, exactly once, resumable); write the flips and compare.json."""
    from bm_ray.jobs.compare import compare as run_compare
    from bm_ray.jobs.compare import summary_table

    given = {
        **with_corpora({**(flags or {}), "models": model or None}, corpus_flags, "input"),
        **(engine_flags or {}),
    }
    compare_spec = build_spec(CompareSpec, spec, given)
    with command_output(as_json) as out:
        result = run_compare(compare_spec)
        path = join_uri(redact_uri(compare_spec.output), "compare.json")
        out.result(result, note=summary_table(result), text=path)
