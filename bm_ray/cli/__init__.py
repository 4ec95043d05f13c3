"""The `bm-ray` command line, the top layer: a thin Typer face over the jobs, Serve, deploy and bench layers.

Each command builds a spec (`bm_ray.specs`) from its flags and calls one library function.

- :mod:`~bm_ray.cli.main`: the Typer apps, `--verbose/--quiet`, errors and the exit codes;
- :mod:`~bm_ray.cli.options`: options generated from the spec models, and the shared option groups;
- :mod:`~bm_ray.cli.output`: printing a result (the `--json` convention);
- the commands, by what they drive: :mod:`~bm_ray.cli.corpus` (ingest), :mod:`~bm_ray.cli.model`
  (train, tune, evaluate, report, model fetch/list), :mod:`~bm_ray.cli.bulk` (classify, compare),
  :mod:`~bm_ray.cli.demo`, :mod:`~bm_ray.cli.serve`, :mod:`~bm_ray.cli.cluster` (submit, jobs, cluster)
  and :mod:`~bm_ray.cli.bench`.

Importing the CLI imports no TensorFlow and starts no Ray: the commands import the library lazily.
"""

# Imported for their side effect: each registers its commands on the apps of `main`, in this order
# (the order `bm-ray --help` lists them in).
from bm_ray.cli import corpus, model, demo, bulk, serve, cluster, bench  # noqa: F401, I001
from bm_ray.cli.main import app, run_cli

__all__ = ["app", "run_cli"]
