"""The batch jobs' specs: train, tune, classify, compare and evaluate."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, model_validator

from bm_ray.specs.common import (
    DEFAULT_MODEL,
    CommaList,
    IngestSpec,
    LabelNames,
    LongTextOptions,
    MinScore,
    ModelLocation,
    Precision,
    StrictModel,
)


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
    mlflow_tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking URI (e.g. sqlite:///mlflow.db, http://host:5000): log the run's params, "
        "per-epoch metrics and artifacts there and register the model (needs bm-ray[mlflow]); none when omitted.",
    )
    mlflow_experiment: str = Field(
        default="bm-ray", min_length=1, description="MLflow experiment of the run (created when missing)."
    )
    mlflow_model_name: str | None = Field(
        default=None,
        min_length=1,
        description="Registered model the trained model becomes a version of; the output directory's name when omitted.",
    )

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


class ClassifySpec(LongTextOptions):
    """`bm-ray classify`: bulk classification of a corpus with Ray Data."""

    kind: Literal["classify"] = "classify"
    model: ModelLocation
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
        description="Inference precision: auto (fp16 on a GPU, fp32 on CPU), fp32, bf16, fp16, or int8 (ONNX "
        "Runtime on CPU; needs the bm-ray[int8] extra; built, checked against fp32 and cached on first use).",
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
    promote: str | None = Field(
        default=None,
        description="MLflow registry alias to set on model B's registered version (its mlflow.json) when "
        "McNemar's test says B is significantly more accurate (p < 0.05, labelled rows); never otherwise.",
    )
    mlflow_tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking URI of the registry for --promote; the one in model B's mlflow.json when omitted.",
    )

    @model_validator(mode="after")
    def _check_ids(self) -> CompareSpec:
        if self.input.dedupe != "ids":
            raise ValueError(
                "input.dedupe: compare joins the two models' predictions by id, so ids must be unique; "
                "use dedupe ids (the default)"
            )
        if self.promote is not None and not re.fullmatch(r"[A-Za-z0-9_-]+", self.promote):
            raise ValueError(f"promote: {self.promote!r} is not an MLflow alias (letters, digits, _ and -)")
        return self


class EvaluateSpec(LongTextOptions):
    """`bm-ray evaluate`: metrics and plots of a model on a labelled corpus."""

    kind: Literal["evaluate"] = "evaluate"
    model: ModelLocation
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
    precision: Precision = ClassifySpec.model_fields["precision"]
    min_score: MinScore = None
    target_accuracy: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Report the smallest min_score whose kept rows reach this accuracy on the data (and its coverage).",
    )
