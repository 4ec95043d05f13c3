"""The `bm-ray` Typer apps, the global `--verbose/--quiet` options, errors and exit codes.

The command modules (`corpus`, `model`, `bulk`, `demo`, `serve`, `cluster`, `bench`) register their
commands on the apps defined here; `bm_ray.cli` imports them all, so its `app` is the whole CLI.

Exit codes, the same for every command:

- 0 done.
- 1 the job failed: the library raised a job-level error at run time (:class:`TrainError`,
  :class:`TooManyRejectsError`, a submitted job that ended FAILED/STOPPED (:class:`JobFailedError`), a
  Serve deployment that failed, a Ray error, any other ``RuntimeError`` or ``OSError``).
- 2 usage error: a bad flag or value (Typer's own exit code for usage), a spec that does not validate
  (:class:`SpecError`), a model reference, file or output that is not what the command line says
  (``FileNotFoundError``, :class:`ModelRefError`, :class:`ReportError`, :class:`ApiKeyError`, any
  other ``ValueError``), a job server that refuses or cannot be reached (:class:`JobsError`).
- 3 refused to overwrite or resume: the output exists and belongs to another job or a different run
  (:class:`OutputRefusedError`: a foreign directory, another job's output, changed inputs;
  :class:`OutputInUseError`: a live job holds its lease; :class:`ResumeError`: a training output).

:func:`exit_code` is the one mapping from an exception to its code; the root group applies it to
whatever a command raises, and prints the message as one line on stderr (no traceback). An exception
it does not know is a bug: it propagates with its traceback (and Python's exit code 1).
"""

from __future__ import annotations

import os
from typing import Annotated, Any, NoReturn

import typer
from rich.markup import escape
from typer.core import TyperGroup

from bm_ray.cli.output import console

DONE = 0
JOB_FAILED = 1
USAGE = 2
REFUSED = 3

EXIT_CODES: dict[tuple[str, str], int] = {
    ("bm_ray", "OutputRefusedError"): REFUSED,
    ("bm_ray", "OutputInUseError"): REFUSED,
    ("bm_ray", "ResumeError"): REFUSED,
    ("bm_ray", "TrainError"): JOB_FAILED,
    ("bm_ray", "TooManyRejectsError"): JOB_FAILED,
    ("bm_ray", "JobFailedError"): JOB_FAILED,
    ("bm_ray", "DeployFailedError"): JOB_FAILED,
    ("ray", "RayError"): JOB_FAILED,
    ("bm_ray", "SpecError"): USAGE,
    ("bm_ray", "ModelRefError"): USAGE,
    ("bm_ray", "ReportError"): USAGE,
    ("bm_ray", "ApiKeyError"): USAGE,
    ("bm_ray", "JobsError"): USAGE,
    ("builtins", "FileNotFoundError"): USAGE,
    ("builtins", "ValueError"): USAGE,
    ("builtins", "RuntimeError"): JOB_FAILED,
    ("builtins", "OSError"): JOB_FAILED,
}
"""(top-level package, class name) → exit code. Keyed by name, not by class, so that the CLI imports no
library module (TensorFlow, Ray) to map an error, and a class moving between modules keeps its code."""


def exit_code(err: BaseException) -> int | None:
    """The exit code of an error: its most specific class (first in its MRO) listed in :data:`EXIT_CODES`.

    None for an error the table does not know (a bug, shown with its traceback).
    """
    for cls in type(err).__mro__:
        code = EXIT_CODES.get((cls.__module__.partition(".")[0], cls.__name__))
        if code is not None:
            return code
    return None


def fail(message: str, code: int = USAGE) -> NoReturn:
    """Print a one-line error on stderr and exit with `code` (no traceback for user errors).

    The message is printed as given: not wrapped (paths in it stay whole, to be copied) and not read as
    rich markup (a `[...]` in a file name or label is text).
    """
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


class ExitCodeGroup(TyperGroup):
    """The root command group: an error raised by any (sub)command exits with its :func:`exit_code`."""

    def invoke(self, ctx: typer.Context) -> Any:
        """Run the command line; a known error becomes its message (and notes) on stderr and its code."""
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise  # Typer's own exits and usage errors keep their codes and messages
        except Exception as err:
            code = exit_code(err)
            if code is None:
                raise
            fail("\n".join([str(err), *getattr(err, "__notes__", [])]), code)


app = typer.Typer(
    cls=ExitCodeGroup, help="Distributed batch text classification on Ray.", no_args_is_help=True
)
model_app = typer.Typer(help="Pretrained model presets.", no_args_is_help=True)
jobs_app = typer.Typer(help="Job specs and submitted Ray jobs.", no_args_is_help=True)
cluster_app = typer.Typer(help="A local multi-node Ray cluster for development.", no_args_is_help=True)
bench_app = typer.Typer(help="Side-by-side benchmarks.", no_args_is_help=True)
app.add_typer(model_app, name="model")
app.add_typer(jobs_app, name="jobs")
app.add_typer(cluster_app, name="cluster")
app.add_typer(bench_app, name="bench")


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


def run_cli() -> None:
    """The `bm-ray` console entry point."""
    app(prog_name="bm-ray")
