"""Pydantic spec models: the one source of truth for every option and default.

The CLI builds these from flags, `jobs/*.yaml` are these models as YAML, and the Helm chart's
values render the same YAML into ConfigMaps. Unknown keys and wrong types are errors that name the
key (and the file, when loaded through :func:`load_spec_file`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

CorpusFormat = Literal["jsonl", "csv", "parquet", "folders"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
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


class TrainSpec(StrictModel):
    """`bm-ray train`: fine-tune TFBertForSequenceClassification with Ray Train."""

    kind: Literal["train"] = "train"
    data: IngestSpec = Field(
        description="Training corpus: files, directories, globs or URIs (comma-separated), read with the "
        "corpus options."
    )
    val_data: IngestSpec | None = Field(
        default=None, description="Validation corpus; else a stratified split."
    )
    val_fraction: float = Field(default=0.1, gt=0, lt=0.5, description="Held-out fraction when no val_data.")
    split: Literal["grouped", "random"] = Field(
        default="grouped",
        description="grouped: exact/near-duplicate clusters stay on one side of the split (stratified by "
        "label); random: a stratified random split (duplicates may leak into validation).",
    )
    duplicate_threshold: float = Field(
        default=0.3, gt=0, le=1, description="Word-5-gram Jaccard at which two rows are near-duplicates."
    )
    base_model: str = Field(
        default=DEFAULT_MODEL, description="Preset name, local dir, s3:// / gs:// URI or hf:ORG/NAME hub id."
    )
    output: str = Field(description="Model directory to write (local path, s3:// or gs://).")
    workers: int = Field(
        default=2, ge=1, description="Ray Train workers (data-parallel replicas of the model)."
    )
    cpus_per_worker: float = Field(default=1, gt=0, description="CPUs each Ray Train worker holds.")
    gpus_per_worker: float = Field(default=0, ge=0, description="GPUs each Ray Train worker holds.")
    epochs: int = Field(default=3, ge=1, description="Passes over the training rows.")
    batch_size: int = Field(default=32, ge=1, description="Global batch size (split across workers).")
    learning_rate: float = Field(
        default=1e-4, gt=0, description="Peak learning rate of the fine-tuning (AdamW)."
    )
    warmup_fraction: float = Field(
        default=0.1, ge=0, lt=1, description="Fraction of the steps the learning rate warms up linearly."
    )
    weight_decay: float = Field(default=0.01, ge=0, description="AdamW weight decay.")
    layer_lr_decay: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="Layer-wise learning-rate decay d: encoder layer i of L trains at d**(L-i) times the "
        "rate, the embeddings at d**(L+1), the head at 1 (1: one rate for all).",
    )
    max_length: int | None = Field(
        default=None,
        ge=8,
        le=512,
        description="Token window; chosen from the data (99th percentile) when omitted.",
    )
    head_warmup: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Fraction of an epoch's steps that first train the classifier head alone (encoder "
        "frozen) at head_learning_rate, before the full fine-tuning (0: none).",
    )
    head_learning_rate: float = Field(default=1e-3, gt=0, description="Learning rate of the head warm-up.")
    label_smoothing: float = Field(
        default=0.0, ge=0, lt=1, description="Label smoothing of the cross-entropy loss (0: none)."
    )
    dropout: float | None = Field(
        default=None,
        ge=0,
        lt=1,
        description="Hidden, attention and classifier dropout; the base's when omitted.",
    )
    refit: bool = Field(
        default=False,
        description="After selecting the best epoch on the validation split, retrain that configuration on "
        "train + validation rows for the final model (metrics.json keeps the selection run's metrics).",
    )
    seed: int = Field(default=42, description="Seed of the split, the shuffling and the initialisation.")
    mixed_precision: bool = Field(default=False, description="mixed_float16 on GPU, mixed_bfloat16 on CPU.")
    keep_checkpoints: int = Field(default=2, ge=1, description="Best checkpoints kept (by val macro-F1).")
    background_rows: int = Field(
        default=0,
        ge=0,
        description="Generic non-topical texts (site boilerplate written into bm-ray) added to the training rows "
        "with a uniform target, so the model answers flat on text that is not news (see bm_ray.jobs.train.background).",
    )
    boilerplate_rows: int = Field(
        default=0,
        ge=0,
        description="Training rows (at most all of them) also trained on behind generic page boilerplate, with "
        "their own label, so a window holding page furniture and the article is read by the article "
        "(see bm_ray.jobs.train.background.behind_boilerplate). Validation rows are never changed.",
    )
    label_names: LabelNames | None = Field(
        default=None,
        description="Names for the data's label values, answered by every output: RAW=NAME pairs "
        "(1=World,2=Sports,...), or names in class order (the raw labels sorted naturally: 1 < 2 < 10).",
    )
    label_names_file: str | None = Field(
        default=None,
        description="File (path or URI) with one label name per line, in class order (as AG News ships "
        "classes.txt); instead of label_names.",
    )
    calibrate: bool = Field(
        default=True,
        description="Fit temperature scaling on the validation split after model selection, then a top-label "
        "map of the top score when there are >= 200 validation rows, and store them in labels.json "
        "(temperature, top_label_calibration), so scores are calibrated probabilities.",
    )
    max_failures: int = Field(default=3, ge=0, description="Worker/node failures survived (FailureConfig).")
    resume: bool = Field(
        default=False,
        description="Continue the run stored under output (after a driver crash); refused when the spec, "
        "the input files or the labels differ from the stored run's.",
    )
    overwrite: bool = Field(
        default=False,
        description="Train afresh over output, deleting a finished bm-ray model there (a finished output "
        "is refused otherwise).",
    )
    address: str | None = Field(default=None, description="Ray address; embedded local Ray when omitted.")

    @model_validator(mode="after")
    def _check_batch(self) -> TrainSpec:
        if self.batch_size < self.workers:
            raise ValueError(f"batch_size ({self.batch_size}) must be >= workers ({self.workers})")
        if self.resume and self.overwrite:
            raise ValueError(
                "resume and overwrite exclude each other: continue the stored run or start afresh"
            )
        if self.label_names is not None and self.label_names_file is not None:
            raise ValueError("label_names and label_names_file: give the names one way, not both")
        return self


TuneParam = Literal[
    "epochs",
    "batch_size",
    "learning_rate",
    "warmup_fraction",
    "weight_decay",
    "layer_lr_decay",
    "head_warmup",
    "head_learning_rate",
    "label_smoothing",
    "dropout",
]


class TuneSpec(StrictModel):
    """`bm-ray tune`: Ray Tune (ASHA) over recipe options of a train spec, on the same (grouped) split."""

    kind: Literal["tune"] = "tune"
    train: TrainSpec = Field(description="The base train spec; every trial is this spec with its values.")
    search_space: dict[TuneParam, list[float | int | None]] = Field(
        description="Values to try per option; trials are the grid of all combinations (x num_samples)."
    )
    num_samples: int = Field(default=1, ge=1, description="Repeats of the grid.")
    metric: Literal["val_accuracy", "val_macro_f1"] = Field(
        default="val_accuracy", description="Validation metric the search maximises."
    )
    grace_period: int = Field(
        default=1, ge=1, description="ASHA: epochs every trial runs before it can be stopped."
    )
    reduction_factor: float = Field(default=2, gt=1, description="ASHA: keep 1/reduction_factor per rung.")
    max_concurrent_trials: int = Field(
        default=1, ge=1, description="Trials at once (each holds workers x cpus_per_worker CPUs)."
    )
    output: str = Field(description="Directory for results.csv, results.json and best_train.yaml.")

    @model_validator(mode="after")
    def _check_space(self) -> TuneSpec:
        for key, values in self.search_space.items():
            if not values:
                raise ValueError(f"search_space.{key}: give at least one value")
            TrainSpec.model_validate({**self.train.model_dump(), key: values[0]})  # a value must be valid
        return self


class ActorsSpec(StrictModel):
    """Size of the predictor actor pool: fixed (min == max) or autoscaling."""

    min: int = Field(default=1, ge=1, description="Predictor actors at least.")
    max: int = Field(default=1, ge=1, description="Predictor actors at most.")

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if isinstance(value, int):
            return {"min": value, "max": value}
        if isinstance(value, str):
            parts = [int(p) for p in value.split(",")]
            return {"min": parts[0], "max": parts[-1]}
        return value

    @model_validator(mode="after")
    def _check(self) -> ActorsSpec:
        if self.max < self.min:
            raise ValueError(f"actors: max ({self.max}) < min ({self.min})")
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


class ClassifySpec(LongTextOptions):
    """`bm-ray classify`: bulk classification of a corpus with Ray Data."""

    kind: Literal["classify"] = "classify"
    model: str = Field(description="Model directory or URI (a `bm-ray train` output).")
    input: IngestSpec = Field(
        description="Corpus to classify: files, directories, globs or URIs (comma-separated), read with "
        "the corpus options."
    )
    output: str = Field(description="Output directory (predictions/, rejects/, summary.json).")
    batch_size: int = Field(default=32, ge=1, description="Rows per forward pass (length-bucketed).")
    actors: ActorsSpec | None = Field(
        default=None, description="N or MIN,MAX; sized to the cluster when omitted."
    )
    cpus_per_actor: float = Field(default=1, gt=0, description="CPUs each predictor actor holds.")
    gpus_per_actor: float = Field(default=0, ge=0, description="GPUs each predictor actor holds.")
    precision: Precision = Field(
        default="auto",
        description="Inference precision: auto (fp16 on a GPU, fp32 on CPU), fp32, bf16 or fp16.",
    )
    overwrite: bool = Field(default=False, description="Start afresh instead of resuming into output.")
    address: str | None = Field(default=None, description="Ray address; embedded local Ray when omitted.")
    min_score: MinScore = None


class CompareSpec(LongTextOptions):
    """`bm-ray compare`: classify one corpus with two models (bulk, exactly once, resumable) and report flips."""

    kind: Literal["compare"] = "compare"
    models: CommaList = Field(
        min_length=2,
        max_length=2,
        description="Model A (e.g. the serving one), then model B (the candidate): directories or URIs.",
    )
    input: IngestSpec = Field(
        description="Corpus both models classify: files, directories, globs or URIs (comma-separated), read "
        "with the corpus options."
    )
    output: str = Field(description="a/ and b/ (each a classify output), flips/ and compare.json.")
    # Both legs are classify jobs: these are ClassifySpec's own fields (same defaults and checks).
    batch_size: int = ClassifySpec.model_fields["batch_size"]
    actors: ActorsSpec | None = ClassifySpec.model_fields["actors"]
    cpus_per_actor: float = ClassifySpec.model_fields["cpus_per_actor"]
    gpus_per_actor: float = ClassifySpec.model_fields["gpus_per_actor"]
    precision: Precision = ClassifySpec.model_fields["precision"]
    overwrite: bool = ClassifySpec.model_fields["overwrite"]
    address: str | None = ClassifySpec.model_fields["address"]

    @model_validator(mode="after")
    def _check_ids(self) -> CompareSpec:
        if self.input.dedupe != "ids":
            raise ValueError(
                "input.dedupe: compare joins the two models' predictions by id, so ids must be unique; "
                "use dedupe ids (the default)"
            )
        return self


class EvaluateSpec(LongTextOptions):
    """`bm-ray evaluate`: metrics and plots of a model on a labelled corpus."""

    kind: Literal["evaluate"] = "evaluate"
    model: str = Field(description="Model directory or URI (a `bm-ray train` output).")
    data: IngestSpec = Field(
        description="Labelled corpus to evaluate on: files, directories, globs or URIs (comma-separated), "
        "read with the corpus options."
    )
    train_data: IngestSpec | None = Field(
        default=None,
        description="Training corpus: report evaluation rows with an exact or near duplicate in it (leakage).",
    )
    duplicate_threshold: float = Field(
        default=0.3, gt=0, le=1, description="Word-5-gram Jaccard at which two rows are near-duplicates."
    )
    output: str | None = Field(
        default=None,
        description="Where metrics.json, predictions.parquet and the plots go; none when omitted.",
    )
    batch_size: int = Field(default=32, ge=1, description="Rows per forward pass (length-bucketed).")
    min_score: MinScore = None
    target_accuracy: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Report the smallest min_score whose kept rows reach this accuracy on the data (and its coverage).",
    )


class ServeSpec(LongTextOptions):
    """Arguments of the Ray Serve application (`bm_ray.serve:build_app`) and `bm-ray serve`."""

    model: str = Field(description="Model directory or URI (a `bm-ray train` output).")
    host: str = Field(default="127.0.0.1", description="HTTP host the endpoint listens on.")
    port: int = Field(default=8000, ge=1, le=65535, description="HTTP port of the endpoint.")
    route_prefix: str = Field(default="/", description="URL path the application is served under.")
    min_replicas: int = Field(default=1, ge=0, description="Model replicas at least (autoscaling).")
    max_replicas: int = Field(default=2, ge=1, description="Model replicas at most (autoscaling).")
    target_ongoing_requests: float = Field(
        default=16,
        gt=0,
        description="Requests per model replica (running or queued) the autoscaler aims for.",
    )
    upscale_delay_s: float = Field(default=10, ge=0, description="Load above target this long adds replicas.")
    downscale_delay_s: float = Field(
        default=120, ge=0, description="Load below target this long removes replicas (plus a 15 s average)."
    )
    gateway_replicas: int = Field(
        default=2, ge=1, description="Ingress replicas (two: no single point of failure)."
    )
    request_timeout_s: float = Field(default=30, gt=0, description="Longer requests get 504.")
    max_ongoing_requests: int = Field(
        default=64, ge=1, description="Requests one model replica takes at once; more wait in the queue."
    )
    max_queued_requests: int = Field(default=256, ge=-1, description="Beyond this, 503 with Retry-After.")
    retry_after_s: int = Field(default=1, ge=0, description="Retry-After (seconds) sent with 503 answers.")
    max_batch_size: int = Field(
        default=32,
        ge=1,
        description="The most texts a model replica runs in one pass (the calls queued behind the "
        "previous pass are merged up to this).",
    )
    forward_batch_size: int = Field(
        default=8,
        ge=1,
        description="Rows per forward pass: a model pass is sorted by token length and run this many rows "
        "at a time, so short texts are not padded to the pass's longest.",
    )
    max_texts_per_request: int = Field(
        default=256, ge=1, description="A request with more texts is refused with 422."
    )
    max_text_chars: int = Field(default=100_000, ge=1, description="Longer texts are refused with 422.")
    max_body_bytes: int = Field(
        default=10 * 1024 * 1024, ge=1024, description="Larger request bodies are refused with 413."
    )
    api_key_env: str | None = Field(default=None, description="Env var holding the Bearer API key.")
    api_key_file: str | None = Field(
        default=None,
        description="File holding the Bearer API key (e.g. a mounted Kubernetes Secret); a missing file fails "
        "the replica instead of opening the endpoint.",
    )
    cpus_per_replica: float = Field(default=1, gt=0, description="CPUs each model replica holds.")
    gpus_per_replica: float = Field(default=0, ge=0, description="GPUs each model replica holds.")
    precision: Precision = ClassifySpec.model_fields["precision"]
    min_score: MinScore = Field(
        default=None, description="Default abstention threshold of a request (a request's min_score wins)."
    )

    @model_validator(mode="after")
    def _check(self) -> ServeSpec:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) < min_replicas ({self.min_replicas})")
        if self.api_key_env and self.api_key_file:
            raise ValueError("api_key_env and api_key_file: give one source of the API key, not both")
        return self


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
