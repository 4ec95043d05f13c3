"""What every spec shares: the field types and their parsers, the strict base model, the corpus
block (:class:`IngestSpec`) each job embeds, and the long-text options of the jobs that score."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

CorpusFormat = Literal["jsonl", "csv", "parquet", "folders"]
Precision = Literal["auto", "fp32", "bf16", "fp16", "int8"]
LongTextMode = Literal["window", "truncate"]
WindowAggregation = Literal["confidence", "mean", "max"]

DEFAULT_MODEL = "minilm-l6"


def _split_csv_list(value: Any) -> Any:
    """Accept `a,b` strings (CLI flags) as well as YAML lists."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


CommaList = Annotated[list[str], BeforeValidator(_split_csv_list)]

MinScore = Annotated[
    float | None,
    Field(
        ge=0,
        le=1,
        description="Abstain below this top score: the prediction keeps its label and scores but is marked "
        "abstained (and counted as rows_abstained); null: never abstain.",
    ),
]


def _parse_label_names(value: Any) -> Any:
    """`1=World,2=Sports` (CLI flag) → mapping raw label → name; YAML mappings get string keys; a
    `World,Sports` string or a YAML list names the labels in class order."""
    if isinstance(value, str):
        items = [part.strip() for part in value.split(",") if part.strip()]
        if not any("=" in item for item in items):
            return items
        mapping: dict[str, str] = {}
        for item in items:
            raw, sep, name = (part.strip() for part in item.partition("="))
            if not sep or not raw or not name:
                raise ValueError(f"{item!r}: expected RAW=NAME (e.g. 1=World,2=Sports)")
            if raw in mapping:
                raise ValueError(f"label {raw!r} is named twice ({mapping[raw]!r} and {name!r})")
            mapping[raw] = name
        return mapping
    if isinstance(value, dict):
        return {str(raw): name for raw, name in value.items()}
    return value


LabelNames = Annotated[dict[str, str] | list[str], BeforeValidator(_parse_label_names)]


ModelLocation = Annotated[str, Field(description="Model directory or URI (a `bm-ray train` output).")]
"""The `model` of a job or an endpoint: a local directory or an object-storage URI of a trained model."""


class StrictModel(BaseModel):
    """Base for all specs: unknown keys are refused, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)


class IngestSpec(StrictModel):
    """Where a corpus is and how its records map onto the normalised row (`id`, `text`, `label`)."""

    input: CommaList = Field(
        description="Files, directories, globs or URIs (s3://, gs://, local); several are comma-separated."
    )
    format: CorpusFormat | None = Field(
        default=None, description="Corpus format; inferred from the file extension when omitted."
    )
    text_fields: CommaList = Field(
        default_factory=lambda: ["text"],
        description="Fields joined (in order) into the text. Headerless CSV: column names or 0-based indices.",
    )
    text_separator: str = Field(default="\n", description="Separator placed between text fields.")
    label_field: str | None = Field(
        default=None, description="Label field; when omitted, `label` is used if the record has it."
    )
    id_field: str | None = Field(
        default=None,
        description="Id field; when omitted, `id` is used if present, else `<relative-path>:<line-or-row>`.",
    )
    keep_fields: CommaList = Field(
        default_factory=list, description="Extra fields passed through to outputs."
    )
    clean_text: bool = Field(
        default=False,
        description="Repair scraped-news artefacts: HTML entities (also with the & stripped, e.g. #39; quot;), "
        "\\$, stray backslashes, control and zero-width characters.",
    )
    csv_header: bool = Field(default=True, description="Whether CSV files start with a header line.")
    csv_columns: CommaList | None = Field(
        default=None, description="Column names for headerless CSV (e.g. class,title,description)."
    )
    csv_delimiter: str = Field(
        default=",", min_length=1, max_length=1, description="Field delimiter of CSV files (one character)."
    )
    max_text_chars: int = Field(
        default=100_000,
        gt=0,
        description="Texts longer than this are truncated to it (counted as truncated).",
    )
    reject_text_chars: int = Field(
        default=1_000_000, gt=0, description="Texts longer than this are rejected as too_long."
    )
    rows_per_block: int = Field(default=1000, gt=0, description="Rows per block emitted by a read task.")
    dedupe: Literal["ids", "none"] = Field(
        default="ids",
        description="ids: the first row with an id (listing order) wins, later ones are duplicate_id; none: keep all.",
    )
    max_line_bytes: int = Field(
        default=16 * 1024 * 1024,
        gt=0,
        description="A JSONL/CSV line (or JSON array element) longer than this is a too_long reject, never read whole.",
    )
    max_reject_fraction: float | None = Field(
        default=0.99,
        gt=0,
        le=1,
        description="Stop ingest/classify when more than this fraction of the rows read so far are rejected "
        "(checked from 1,000 rows on, and at the end); null: never.",
    )

    @model_validator(mode="after")
    def _check_caps(self) -> IngestSpec:
        if self.reject_text_chars < self.max_text_chars:
            raise ValueError("reject_text_chars must be >= max_text_chars")
        if not self.input:
            raise ValueError("input: give at least one file, directory, glob or URI")
        return self


class LongTextOptions(StrictModel):
    """How the engine reads texts longer than the model's window (shared by classify, evaluate, serve)."""

    long_text: LongTextMode = Field(
        default="window",
        description="window: read the whole text as overlapping windows of the model's max_length tokens, "
        "one aggregated prediction per text; truncate: read only the first max_length tokens.",
    )
    window_stride: int | None = Field(
        default=None,
        ge=1,
        description="Content tokens between window starts; default half a window (max_length - 2) // 2.",
    )
    max_windows: int = Field(
        default=64,
        ge=1,
        description="Windows read per text at most; a longer text's tail is unread and counted "
        "(rows_windows_capped).",
    )
    window_aggregation: WindowAggregation = Field(
        default="confidence",
        description="How window probabilities become one: confidence (weighted by 1 - normalised entropy), "
        "mean, or max (the most confident window).",
    )
    max_batch_tokens: int = Field(
        default=4096,
        ge=8,
        description="Padded tokens per forward pass at most (rows × padded length), besides batch_size.",
    )

    def long_text_options(self) -> LongTextOptions:
        """Only these options (of a ClassifySpec, EvaluateSpec or ServeSpec), e.g. to ship to a Ray actor."""
        return LongTextOptions.model_validate(self.model_dump(include=set(LongTextOptions.model_fields)))
