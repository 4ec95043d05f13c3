"""Printing a command's result: the one `--json` convention of every `bm-ray` command.

A command that produces a result takes `--json` (:data:`JsonOpt`) and runs its body inside
:func:`command_output`, which hands it an :class:`Output`:

- with `--json`, stdout carries exactly one JSON document, the result; everything else the command and
  the library print while it runs (logs, rich tables, Ray's worker output, a benchmark's progress)
  goes to stderr;
- without it, the command prints what it always has: human text (a table, a line) on stderr and, on
  stdout, what a script reads (a path, an id, or the result's JSON where the result is a document).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from typing import Annotated, Any, TextIO

import typer
from pydantic import BaseModel
from rich.console import Console, RenderableType

console = Console(stderr=True)
"""Human text: always stderr, so stdout holds only what scripts read."""

JsonOpt = Annotated[
    bool,
    typer.Option(
        "--json", help="Print the result as one JSON document on stdout (logs and messages go to stderr)."
    ),
]


def json_text(data: Any) -> str:
    """The JSON document of a result (indented; values JSON has no type for, e.g. paths, as strings).

    A job's result model (:mod:`bm_ray.results`) prints as its dump: the keys of the file it wrote."""
    if isinstance(data, BaseModel):
        data = data.model_dump()
    return json.dumps(data, indent=2, default=str)


class Output:
    """Where one command's result goes (see the module docstring); made by :func:`command_output`."""

    def __init__(self, as_json: bool, stdout: TextIO) -> None:
        self.as_json = as_json
        self._stdout = stdout
        self._printed = False

    def result(self, data: Any, *, note: RenderableType | None = None, text: str | None = None) -> None:
        """Print the command's result: `note` (human text) on stderr either way; on stdout, the JSON of
        `data` with `--json`, else `text` (nothing when None). Flushed at once: `serve` keeps running."""
        if self._printed:
            raise RuntimeError("a command prints one result: --json promises one JSON document")
        self._printed = True
        if note is not None:
            console.print(
                note, soft_wrap=isinstance(note, str)
            )  # a line stays whole; tables fit the terminal
        shown = json_text(data) if self.as_json else text
        if shown is not None:
            self._stdout.write(shown + "\n")
            self._stdout.flush()


@contextlib.contextmanager
def command_output(as_json: bool) -> Iterator[Output]:
    """The :class:`Output` of a command's body; with `--json`, anything else printed to stdout while the
    body runs goes to stderr (the result itself is written to the real stdout)."""
    output = Output(as_json, sys.stdout)
    if not as_json:
        yield output
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield output
