"""The `bm-ray` command line, the top layer: a thin Typer face over the jobs, Serve, deploy and bench layers.

Each command builds a spec (`bm_ray.specs`) from its flags and calls one library function.
"""

from bm_ray.cli.main import app, run_cli

__all__ = ["app", "run_cli"]
