"""Specs from YAML files, flags and `--set`: validation with errors that name the file and key."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import ValidationError

from bm_ray.specs.common import StrictModel

SpecT = TypeVar("SpecT", bound=StrictModel)


class SpecError(ValueError):
    """A spec file or flag set that does not validate; the message names the file and key."""


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line per problem: `source: key.path: message`."""
    lines = []
    for problem in err.errors():
        key = ".".join(str(p) for p in problem["loc"]) or "<root>"
        lines.append(f"{source}: {key}: {problem['msg']}")
    return "\n".join(lines)


def validate_spec(model: type[SpecT], data: dict[str, Any], source: str) -> SpecT:
    """Validate `data` as `model`, raising :class:`SpecError` that names `source` and the key."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise SpecError(format_validation_error(err, source)) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"{path}: no such spec file") from None
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping of options at the top level")
    return data


def load_spec_file(model: type[SpecT], path: str | Path, overrides: dict[str, Any] | None = None) -> SpecT:
    """Load a YAML spec as `model`; `overrides` (e.g. CLI flags) win over the file, key by key."""
    data = read_yaml(path)
    return validate_spec(model, deep_merge(data, overrides or {}), str(path))


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Merge nested mappings; values in `overrides` replace those in `base`."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_set_option(assignment: str) -> dict[str, Any]:
    """Turn `a.b=value` (value parsed as YAML) into `{"a": {"b": value}}` for `--set`."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise SpecError(f"--set {assignment!r}: expected key=value (e.g. epochs=2 or input.format=csv)")
    value: Any = yaml.safe_load(raw) if raw else ""
    for part in reversed(key.split(".")):
        value = {part: value}
    return value
