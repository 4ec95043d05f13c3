"""CLI options made from the spec models (`bm_ray.specs`): each option is defined once, by its field.

:func:`spec_options` turns pydantic fields into Typer options: `--field-name` (`--x/--no-x` for a
bool), the type from the annotation (a `Literal` becomes a choice that `--help` lists and completion
offers; lists, mappings and nested models are given as the text the spec parses, e.g. `a,b`), the
help from the field's description, and the spec's default shown in `--help` ("[default: (3)]"). The
Python default of an option stays None: a flag not given is dropped (:func:`drop_none`) and so never
overrides a `--spec` file or the spec's own default; the spec applies its defaults when it validates.

Commands take a group of such options with :func:`option_group` (one dict parameter instead of a
parameter per option); the shared groups are the corpus options (:data:`CORPUS_OPTIONS`), the
long-text options (:data:`LONG_TEXT_OPTIONS`) and the predictor actor pool (:data:`ACTOR_POOL_OPTIONS`).
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import typer
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from bm_ray.specs import ClassifySpec, IngestSpec, LongTextOptions, load_spec_file, validate_spec

Command = Callable[..., None]

OPTION_SCALARS = (bool, int, float, str)
"""Field types a command-line option has as they are; any other is given as text the spec parses."""


def option_type(annotation: Any) -> Any:
    """The option type of a field annotation: `X | None` → X; a scalar or a `Literal` as is; else str."""
    if get_origin(annotation) in (Union, types.UnionType):
        members = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(members) != 1:
            return str
        annotation = members[0]
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if annotation in OPTION_SCALARS or get_origin(annotation) is Literal:
        return annotation
    return str


def default_text(kind: Any, name: str, default: Any) -> str | None:
    """How `--help` shows the spec's default of option `--name` of type `kind` (None: it has none)."""
    if default is None or default is PydanticUndefined or default == []:
        return None
    if kind is bool:
        return name if default else f"no-{name}"
    if isinstance(default, list):
        return ",".join(map(str, default))
    return str(default)


def spec_option(
    model: type[BaseModel], field: str, *, panel: str | None, required: bool
) -> inspect.Parameter:
    """The keyword parameter (an Annotated Typer option) of one field of `model`; see the module docstring."""
    info = model.model_fields[field]
    if not info.description:
        raise ValueError(f"{model.__name__}.{field} has no description, so its option would have no help")
    kind = option_type(info.annotation)
    name = field.replace("_", "-")
    shown = None if required else default_text(kind, name, info.get_default(call_default_factory=True))
    option = typer.Option(
        f"--{name}/--no-{name}" if kind is bool else f"--{name}",
        help=info.description,
        show_default=shown or False,
        rich_help_panel=panel,
    )
    return inspect.Parameter(
        field,
        inspect.Parameter.KEYWORD_ONLY,
        default=inspect.Parameter.empty if required else None,
        annotation=Annotated[kind if required else kind | None, option],
    )


def spec_options(
    model: type[BaseModel], fields: Iterable[str], *, panel: str | None = None, required: Iterable[str] = ()
) -> dict[str, inspect.Parameter]:
    """Options for `fields` of `model`, by field name; `required` ones must be given (no `--spec` has them)."""
    must = set(required)
    return {field: spec_option(model, field, panel=panel, required=field in must) for field in fields}


def drop_none(values: dict[str, Any]) -> dict[str, Any]:
    """Flags the user did not give are None: they must not override spec files or defaults."""
    return {k: v for k, v in values.items() if v is not None}


def option_group(
    options: dict[str, inspect.Parameter], into: str, leave_out: Iterable[str] = ()
) -> Callable[[Command], Command]:
    """Give a command a group of options (name → parameter, e.g. from :func:`spec_options`).

    The command declares a parameter named `into` (a dict) instead of the options; it receives the ones
    given on the command line (None = not given, dropped, so they never override a spec file or a
    default). Typer reads a command's parameters from its signature, so the wrapper's `__signature__`
    lists the command's own options followed by the group's.
    """
    skipped = set(leave_out)
    added = [parameter for name, parameter in options.items() if name not in skipped]

    def decorate(command: Command) -> Command:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != into]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> None:
            group = drop_none({p.name: kwargs.pop(p.name) for p in added})
            command(**kwargs, **{into: group})

        wrapper.__signature__ = signature.replace(parameters=own + added)  # type: ignore[attr-defined]
        return wrapper

    return decorate


CORPUS_PANEL = "Reading the corpus"
CORPUS_OPTIONS = spec_options(
    IngestSpec,
    [
        "format",
        "text_fields",
        "label_field",
        "id_field",
        "keep_fields",
        "clean_text",
        "csv_header",
        "csv_columns",
        "dedupe",
        "max_line_bytes",
        "max_reject_fraction",
    ],
    panel=CORPUS_PANEL,
)
"""IngestSpec fields (all but `input`) as options of every command that reads a corpus."""


def corpus_options(*, keep_fields: bool = False) -> Callable[[Command], Command]:
    """The shared corpus-reading options (:data:`CORPUS_OPTIONS`), passed as `corpus_flags`.

    `keep_fields=False` leaves `--keep-fields` out, for commands that write no per-row output.
    """
    return option_group(CORPUS_OPTIONS, "corpus_flags", () if keep_fields else ("keep_fields",))


def with_corpora(
    flags: dict[str, Any], corpus_flags: dict[str, Any] | None, main: str, *others: str
) -> dict[str, Any]:
    """`flags` with its corpus fields (`--data`, `--input`, ...: where a corpus is) as IngestSpec flags,
    each read with the corpus options.

    `main` always gets them (they apply to a `--spec` file's corpus too; when neither is given the spec
    file's corpus stays as it is); `others` (e.g. `--val-data`) only when given.
    """
    spec_flags = dict(flags)
    for field in (main, *others):
        if field == main or field in flags:
            spec_flags[field] = drop_none({**(corpus_flags or {}), "input": flags.get(field)}) or None
    return drop_none(spec_flags)


LONG_TEXT_PANEL = "Long texts"
LONG_TEXT_OPTIONS = spec_options(LongTextOptions, LongTextOptions.model_fields, panel=LONG_TEXT_PANEL)
"""LongTextOptions fields as options of the commands that run the engine."""


def long_text_options() -> Callable[[Command], Command]:
    """The shared long-text options (:data:`LONG_TEXT_OPTIONS`), passed as `window_flags`."""
    return option_group(LONG_TEXT_OPTIONS, "window_flags")


POOL_PANEL = "Predictor actors"
ACTOR_POOL_OPTIONS = spec_options(
    ClassifySpec, ["batch_size", "actors", "cpus_per_actor", "gpus_per_actor", "precision"], panel=POOL_PANEL
)
"""ClassifySpec's predictor actor pool fields (CompareSpec's are the same fields) as options."""


def bulk_engine_options() -> Callable[[Command], Command]:
    """The options of the commands that run the engine in a Ray Data actor pool (classify, compare): the
    long-text options and the actor pool (:data:`ACTOR_POOL_OPTIONS`), passed together as `engine_flags`."""
    return option_group({**LONG_TEXT_OPTIONS, **ACTOR_POOL_OPTIONS}, "engine_flags")


SpecOpt = Annotated[
    Path | None, typer.Option("--spec", help="YAML job spec (the same model as the flags; flags win).")
]


def build_spec(model: type[Any], spec_file: Path | None, flags: dict[str, Any]) -> Any:
    """The spec from `--spec FILE` (if any) with the given flags on top, validated."""
    if spec_file is not None:
        return load_spec_file(model, spec_file, flags)
    return validate_spec(model, flags, "command line")
