"""The `bm-ray` command line as a click object, for sphinx-click's ``.. click:: cli_click:cli`` directive.

Typer builds its click command on demand; the docs need a module-level object, and the package keeps
none (the CLI's entry point is ``bm_ray.cli:run_cli``), so it lives here beside ``conf.py``.

Typer (0.2x) no longer builds on the ``click`` package: it carries its own trimmed copy of Click's core
(``typer._click``) whose classes sphinx-click's ``isinstance`` checks against ``click`` do not accept.
:func:`adapt_sphinx_click` points sphinx-click at Typer's classes, which keep Click's attributes
(``params``, ``opts``, ``help``, ``default``, ``commands``, ...), so the directive renders them unchanged;
every parameter gets the ``type`` attribute sphinx-click reads (None: Typer's help text names choices).
"""

from __future__ import annotations

import types

import typer.core
import typer.main
from typer import _click

from bm_ray.cli import app


class _Never:
    """A class no Typer object is an instance of (Click types Typer does not have)."""


def adapt_sphinx_click() -> None:
    """Make ``sphinx_click.ext`` recognise Typer's commands, groups, options and arguments."""
    import sphinx_click.ext as ext

    if isinstance(ext.click, types.SimpleNamespace):
        return
    ext.click = types.SimpleNamespace(
        Context=_click.Context,
        Command=_click.Command,
        Group=typer.core.TyperGroup,
        MultiCommand=typer.core.TyperGroup,
        BaseCommand=_click.Command,
        Argument=typer.core.TyperArgument,
        Option=typer.core.TyperOption,
        Choice=_Never,
        CommandCollection=_Never,
        core=types.SimpleNamespace(Option=typer.core.TyperOption),
        formatting=_click.formatting,
    )


def _with_click_types(command: _click.Command) -> _click.Command:
    """`command` with the Click attributes sphinx-click reads and Typer's copy dropped, recursively: a
    ``type`` on every parameter (Typer keeps a ``type_descriptor``; the help text names the choices) and
    an argument's ``human_readable_name`` (its metavar, as Click has it)."""
    for param in command.params:
        if not hasattr(param, "type"):
            param.type = None
        if param.default in ([], ()):
            param.default = None  # an empty list default would render as an empty literal
        if not hasattr(param, "human_readable_name"):
            param.human_readable_name = (param.metavar or param.name or "").upper()
    for sub in getattr(command, "commands", {}).values():
        _with_click_types(sub)
    return command


adapt_sphinx_click()
cli = _with_click_types(typer.main.get_command(app))
