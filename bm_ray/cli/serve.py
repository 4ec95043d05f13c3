"""`bm-ray serve`: the model over HTTP with Ray Serve, until Ctrl-C."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from bm_ray.cli.main import app
from bm_ray.cli.options import long_text_options, option_group, spec_options
from bm_ray.cli.output import JsonOpt, command_output
from bm_ray.specs import ServeSpec

SERVE_OPTIONS = spec_options(
    ServeSpec,
    [
        "model",
        "host",
        "port",
        "min_replicas",
        "max_replicas",
        "target_ongoing_requests",
        "max_batch_size",
        "forward_batch_size",
        "request_timeout_s",
        "downscale_delay_s",
        "max_queued_requests",
        "api_key_env",
        "api_key_file",
        "overload_status",
        "cors_allow_origin",
    ],
)
"""The ServeSpec fields `bm-ray serve` takes as flags (the rest only from a `--config` file)."""


@app.command()
@long_text_options()
@option_group(SERVE_OPTIONS, "flags")
def serve(
    address: Annotated[
        str | None,
        typer.Option(
            "--address", help="Ray cluster to deploy on (default: $RAY_ADDRESS, else an embedded Ray)."
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="ServeSpec YAML or Serve config (jobs/serve.yaml); flags win."),
    ] = None,
    as_json: JsonOpt = False,
    flags: dict[str, Any] | None = None,
    window_flags: dict[str, Any] | None = None,
) -> None:
    """Serve the model over HTTP with Ray Serve until Ctrl-C; on a running app, a new --model is a zero-downtime swap."""
    import time

    from ray import serve as ray_serve

    from bm_ray.serve import ApiKeyError, ModelRefError, load_serve_spec, run_serve

    spec = load_serve_spec(config, {**(flags or {}), **(window_flags or {})})
    with command_output(as_json) as out:
        try:
            url = run_serve(spec, address=address)
        except (ModelRefError, ApiKeyError) as err:
            err.add_note("refused before deploying: nothing was deployed or changed")
            raise
        out.result(
            {"model": spec.model, "url": url, "docs": f"{url}/docs", "status": "serving"},
            note=escape(f"bm-ray: serving {spec.model} at {url} (docs: {url}/docs); Ctrl-C to stop"),
        )
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            # An embedded Ray goes with this process; an app on a cluster keeps running (`serve delete`).
            if not (address or os.environ.get("RAY_ADDRESS")):
                ray_serve.shutdown()
