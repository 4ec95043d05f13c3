"""Pydantic spec models: the one source of truth for every option and default.

The CLI builds these from flags, `jobs/*.yaml` are these models as YAML, and the Helm chart's
values render the same YAML into ConfigMaps. Unknown keys and wrong types are errors that name the
key (and the file, when loaded through :func:`load_spec_file`).

Import from here (`from bm_ray.specs import TrainSpec`); the submodules are the layout, not the API:
:mod:`~bm_ray.specs.common` (field types, the base model, the corpus and long-text options),
:mod:`~bm_ray.specs.jobs` (the batch jobs), :mod:`~bm_ray.specs.serve` (the endpoint) and
:mod:`~bm_ray.specs.loading` (YAML, flags, `--set`).
"""

from __future__ import annotations

from bm_ray.specs.common import (
    DEFAULT_MODEL,
    CommaList,
    CorpusFormat,
    IngestSpec,
    LabelNames,
    LongTextMode,
    LongTextOptions,
    MinScore,
    ModelLocation,
    Precision,
    StrictModel,
    WindowAggregation,
)
from bm_ray.specs.jobs import (
    ActorsSpec,
    ClassifySpec,
    CompareSpec,
    EvaluateSpec,
    TrainSpec,
    TuneParam,
    TuneSpec,
)
from bm_ray.specs.loading import (
    SpecError,
    SpecT,
    deep_merge,
    format_validation_error,
    load_spec_file,
    parse_set_option,
    read_yaml,
    validate_spec,
)
from bm_ray.specs.serve import ServeSpec

__all__ = [
    "DEFAULT_MODEL",
    "ActorsSpec",
    "ClassifySpec",
    "CommaList",
    "CompareSpec",
    "CorpusFormat",
    "EvaluateSpec",
    "IngestSpec",
    "LabelNames",
    "LongTextMode",
    "LongTextOptions",
    "MinScore",
    "ModelLocation",
    "Precision",
    "ServeSpec",
    "SpecError",
    "SpecT",
    "StrictModel",
    "TrainSpec",
    "TuneParam",
    "TuneSpec",
    "WindowAggregation",
    "deep_merge",
    "format_validation_error",
    "load_spec_file",
    "parse_set_option",
    "read_yaml",
    "validate_spec",
]
