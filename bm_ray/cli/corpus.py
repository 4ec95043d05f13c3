"""`bm-ray ingest`: validate a corpus into ok/ and rejects/."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from bm_ray.cli.main import app
from bm_ray.cli.options import corpus_options, option_group, spec_options
from bm_ray.cli.output import JsonOpt, command_output, json_text
from bm_ray.specs import IngestSpec, validate_spec


@app.command()
@corpus_options(keep_fields=True)
@option_group(spec_options(IngestSpec, ["input"], required=["input"]), "flags")
def ingest(
    output: Annotated[str, typer.Option("--output", help="Output directory (ok/, rejects/, summary.json).")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start afresh instead of resuming.")] = False,
    near_duplicates: Annotated[
        bool,
        typer.Option(
            "--near-duplicates", help="Also write near_duplicates/ (cluster id per ok row) and count them."
        ),
    ] = False,
    as_json: JsonOpt = False,
    flags: dict[str, Any] | None = None,
    corpus_flags: dict[str, Any] | None = None,
) -> None:
    """Validate a corpus: every row ends in ok/ or rejects/ (with a reason); summary.json accounts for all."""
    from bm_ray.jobs.ingest import ingest as run_ingest

    spec = validate_spec(IngestSpec, {**(corpus_flags or {}), **(flags or {})}, "command line")
    with command_output(as_json) as out:
        summary = run_ingest(spec, output, overwrite=overwrite, near_duplicates=near_duplicates)
        out.result(summary, text=json_text(summary))
