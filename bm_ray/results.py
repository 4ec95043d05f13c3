"""What every batch job returns: one pydantic model per job kind, shared blocks for the shapes they share.

A bottom-layer module (it imports nothing of bm-ray), so the jobs that build these results, the CLI
that prints them and anything that reads an output can all use them. Each result *is* the job's
output document: ``summary.json`` of ingest and classify, ``metrics.json`` of train and evaluate,
``compare.json`` of compare and ``results.json`` of tune hold :meth:`~pydantic.BaseModel.model_dump` of it.
The field order is the key order of those files, and a field that is ``None`` only where the job did
not compute it (the near-duplicate counts of an ingest without ``--near-duplicates``, the accuracy
block of an unlabelled compare, ...) is left out of the dump, as the files always left it out; a
``null`` a file always carried (e.g. ``min_score`` of a classify without a threshold) stays ``null``.
Floats that are NaN (metrics of zero rows) stay NaN in the JSON, as :func:`json.dumps` writes them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


def _absent(value: Any) -> bool:
    """Whether a field's value means "not computed by this job" (left out of the dump)."""
    return value is None


def _optional(description: str) -> Any:
    """A field that only some runs set: None by default, left out of the dump when None."""
    return Field(default=None, exclude_if=_absent, description=description)


class ResultModel(BaseModel):
    """Base of every result model: unknown keys are refused (a job's keys are all declared here), and
    NaN and infinities serialise as JSON's ``NaN`` / ``Infinity`` constants, as ``json.dumps`` writes them."""

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")


# --------------------------------------------------------------------------------------- shared blocks
class RowCounts(ResultModel):
    """A corpus read: every row read is ok or rejected, with the reason."""

    rows_read: int = Field(description="Rows read (records minus blank lines).")
    rows_ok: int = Field(description="Rows that passed validation.")
    rows_rejected: int = Field(description="Rows rejected (``rows_read = rows_ok + rows_rejected``).")
    rejected_by_reason: dict[str, int] = Field(description="Rejected rows by reason.")


class CommitAccounting(RowCounts):
    """The accounting of an exactly-once corpus output, added up from its commit records
    (``bm_ray.output.commit.summarize``)."""

    blank_lines: int = Field(description="Blank lines skipped (not rows).")
    label_counts: dict[str, int] = Field(
        description="Ok rows by label (the corpus's labels for ingest, the predicted ones for classify)."
    )
    rows_truncated: int = Field(description="Ok rows whose text was cut to the maximum length.")
    rows_utf8_repaired: int = Field(description="Ok rows whose invalid UTF-8 was repaired.")
    units: int = Field(description="Read units (files, or parts of files) committed.")
    commits: int = Field(description="Commit records of the output.")


class InputFile(ResultModel):
    """One input file of the input manifest (what a resume must find unchanged)."""

    path: str = Field(description="Path or URI of the file (credentials redacted).")
    name: str = Field(description="Its name relative to the common root of the inputs (as in row ids).")
    size: int = Field(description="Size in bytes.")
    mtime: str | None = Field(description="Modification time, ISO 8601 (None where the filesystem has none).")


class CorpusPass(CommitAccounting):
    """The accounting of one resumable pass of a corpus through a commit stage (ingest, classify), and
    what it read (``bm_ray.output.driver.commit_corpus``)."""

    format: str = Field(description="Corpus format (jsonl, csv, parquet, folders).")
    inputs: list[str] = Field(description="The inputs as given (credentials redacted).")
    files: int = Field(description="Input files listed.")
    ignored_files: list[str] = Field(description="Ignored (non-article) files, the first 100 by name.")
    ignored_files_count: int = Field(description="Ignored files, all counted.")
    rows_resumed: int = Field(description="Rows committed by earlier runs into this output (not read again).")
    inputs_manifest: list[InputFile] = Field(description="Every input file, in listing order.")


class NearDuplicateCounts(ResultModel):
    """Exact and near-duplicate clusters of a set of rows (``bm_ray.corpus.neardup``)."""

    clusters: int = Field(description="Clusters of two or more rows.")
    rows_in_clusters: int = Field(description="Rows in those clusters.")
    exact_pairs: int = Field(description="Pairs of rows with the same normalised text.")
    near_pairs: int = Field(description="Pairs at or above the Jaccard threshold, not exact.")
    threshold: float = Field(description="The Jaccard similarity threshold of a near duplicate.")
    method: str = Field(description="How the pairs were found (MinHash + LSH parameters).")


class LeakageReport(ResultModel):
    """Validation (or evaluation) rows with an exact or near duplicate among the training rows."""

    val_rows: int = Field(description="Validation rows compared.")
    exact: int = Field(description="Validation rows with an exact duplicate in training.")
    near: int = Field(description="Validation rows with a near duplicate (and no exact one) in training.")
    fraction: float = Field(description="(exact + near) / val_rows, rounded to 4 places.")
    method: str = Field(description="How the pairs were found (MinHash + LSH parameters).")


class ModelRef(ResultModel):
    """The model a job scored with."""

    name: str = Field(description="The model's name (labels.json).")
    version: str = Field(description="The model's version: the hash of its weights and a time stamp.")
    path: str = Field(description="Where the model was loaded from (credentials redacted).")


class EvaluatedModel(ModelRef):
    """The model an evaluation scored, with the calibration its scores went through."""

    temperature: float | None = Field(description="Temperature of the logits; None: plain softmax.")
    top_label_calibration: dict[str, str | float] | None = Field(
        description="The top-label map of the scores (labels.json form); None: not fitted."
    )


class LabelMatrix(ResultModel):
    """A square count matrix over labels (rows: first labelling, columns: second)."""

    labels: list[str] = Field(description="Labels of the rows and columns, in order.")
    matrix: list[list[int]] = Field(description="Counts: ``matrix[i][j]`` rows labelled i then j.")


class ClassMetrics(ResultModel):
    """Precision, recall and F1 of one class."""

    precision: float = Field(description="Precision (0 when the class was never predicted).")
    recall: float = Field(description="Recall (0 when the class has no rows).")
    f1: float = Field(description="F1 score.")
    support: int = Field(description="Rows of this class.")


class Interval(ResultModel):
    """A confidence interval of one reported figure (``bm_ray.model.uncertainty``)."""

    low: float = Field(description="Lower end (NaN: no rows).")
    high: float = Field(description="Upper end (NaN: no rows).")
    method: Literal["wilson", "bootstrap", "paired_bootstrap"] = Field(
        description="``wilson``: Wilson score interval of a proportion; ``bootstrap``: percentile bootstrap "
        "over rows; ``paired_bootstrap``: the same, both models' answers to a row resampled together."
    )
    resamples: int | None = _optional("Bootstrap resamples (bootstrap methods only).")
    seed: int | None = _optional("Seed of the resampling (bootstrap methods only): reruns draw the same.")


class MetricIntervals(ResultModel):
    """Intervals of a scored set of rows' figures (``bm_ray.model.uncertainty.scored_intervals``)."""

    confidence: float = Field(description="Their level (0.95).")
    accuracy: Interval = Field(description="Of the accuracy (Wilson).")
    macro_f1: Interval = Field(description="Of the macro-F1 (bootstrap over rows).")
    ece: Interval = Field(description="Of the ECE (bootstrap over rows).")
    accuracy_answered: Interval | None = _optional(
        "Of the accuracy of the answered rows (Wilson; evaluate, when some rows were answered)."
    )


class CompareIntervals(ResultModel):
    """Intervals of a compare on labelled rows (``bm_ray.model.uncertainty.compare_intervals``)."""

    confidence: float = Field(description="Their level (0.95).")
    accuracy_a: Interval = Field(description="Of model A's accuracy (Wilson).")
    accuracy_b: Interval = Field(description="Of model B's accuracy (Wilson).")
    accuracy_difference: Interval = Field(
        description="Of accuracy B − accuracy A (paired bootstrap over the labelled rows)."
    )


class ScoredMetrics(ResultModel):
    """A model scored on labelled rows (``bm_ray.jobs.scoring.evaluate_batches``): the metrics
    block that starts ``metrics.json`` of both training's validation and `bm-ray evaluate`."""

    accuracy: float = Field(description="Share of rows predicted right.")
    macro_f1: float = Field(description="Mean F1 over the labels that occur in the rows.")
    per_class: dict[str, ClassMetrics] = Field(description="Per-class metrics, by label.")
    confusion_matrix: LabelMatrix = Field(description="True label (rows) × predicted label (columns).")
    rows_evaluated: int = Field(description="Rows scored.")
    rows_rejected: int = Field(
        description="Rows not scored (no label, a label the model does not know, ...)."
    )
    rejected_by_reason: dict[str, int] = Field(description="Rows not scored, by reason.")
    unknown_labels: dict[str, int] = Field(description="Labels the model does not know, with their rows.")
    log_loss: float = Field(description="Mean negative log-likelihood of the true labels (NaN: no rows).")
    ece: float = Field(description="Expected calibration error of the top score (NaN: no rows).")
    ece_bins: int = Field(description="Equal-width bins of the ECE.")
    ece_floor: float = Field(description="The ECE perfectly calibrated scores would show on this many rows.")
    ece_floor_std: float = Field(description="Standard deviation of that floor.")
    intervals: MetricIntervals | None = _optional(
        "95% intervals of accuracy, macro-F1 and ECE (absent from outputs written before bm-ray had them)."
    )
    windows: int = Field(description="Windows read in all (long texts read as several).")
    rows_windows_capped: int = Field(description="Texts longer than max_windows windows (tails unread).")


# ------------------------------------------------------------------------------------------------- ingest
class IngestResult(CorpusPass):
    """`bm-ray ingest`: the content of the output's ``summary.json``."""

    elapsed_s: float = Field(description="Wall time of this run, in seconds.")
    near_duplicates: NearDuplicateCounts | None = _optional(
        "Duplicate clusters of the ok rows (with ``--near-duplicates`` only)."
    )


# ----------------------------------------------------------------------------------------------- classify
class ActorPool(ResultModel):
    """The predictor actor pool of a classify run."""

    min: int = Field(description="Smallest pool size.")
    max: int = Field(description="Largest pool size.")
    cpus_per_actor: int | float = Field(description="CPUs each actor holds.")


class ClassifyCounts(CommitAccounting):
    """The counts classify adds to the commit accounting (they follow it in ``summary.json``)."""

    rows_abstained: int | None = _optional(
        "Committed predictions below min_score, resumed commits included (only with a min_score)."
    )
    rows_classified: int = Field(description="Rows predicted (the ok rows).")


class ClassifyResult(CorpusPass, ClassifyCounts):
    """`bm-ray classify`: the content of the output's ``summary.json``."""

    elapsed_s: float = Field(description="Wall time of this run, in seconds.")
    rows_this_run: int = Field(description="Rows this run committed (resumed ones excluded).")
    rows_per_s: float = Field(description="rows_this_run / elapsed_s.")
    padding_waste: float = Field(description="Padded tokens / real tokens of this run's forward passes.")
    real_tokens: int = Field(description="Real (not padding) tokens of this run's forward passes.")
    long_text: dict[str, str | int | float | None] = Field(
        description="The long-text options (:class:`~bm_ray.specs.common.LongTextOptions`)."
    )
    min_score: float | None = Field(description="The abstention threshold; None: never abstain.")
    windows: int = Field(description="Windows this run read.")
    rows_windows_capped: int = Field(description="Rows of this run longer than max_windows (tails unread).")
    model: ModelRef = Field(description="The model.")
    precision: str = Field(description="Inference precision asked for (auto, fp32, bf16, fp16).")
    actors: ActorPool = Field(description="The actor pool.")
    batch_size: int = Field(description="Rows per forward pass.")
    output: str = Field(description="The output directory (credentials redacted).")


# ----------------------------------------------------------------------------------------------- evaluate
class EvaluateResult(ScoredMetrics):
    """`bm-ray evaluate`: the content of ``metrics.json`` (ingest rejects counted among rows_rejected)."""

    min_score: float | None = Field(description="The abstention threshold; None: never abstain.")
    rows_abstained: int = Field(description="Rows whose top score is below min_score.")
    coverage: float = Field(description="Share of rows answered (not abstained).")
    accuracy_answered: float | None = Field(description="Accuracy of the answered rows; None: none answered.")
    target_accuracy: dict[str, float | None] | None = _optional(
        "The smallest threshold reaching ``--target-accuracy`` (target, threshold, coverage, accuracy), or "
        "``threshold: null`` with the best reachable (best_accuracy, best_threshold, best_coverage); "
        "only with a target."
    )
    model: EvaluatedModel = Field(description="The model.")
    data: list[str] = Field(description="The evaluated corpus's inputs (credentials redacted).")
    long_text: dict[str, str | int | float | None] = Field(
        description="The long-text options (:class:`~bm_ray.specs.common.LongTextOptions`)."
    )
    elapsed_s: float = Field(description="Wall time, in seconds.")
    leakage: LeakageReport | None = _optional("Leakage against the training corpus (with train_data only).")


# ------------------------------------------------------------------------------------------------ compare
class LegCounts(ResultModel):
    """One number for each model of a compare."""

    a: int = Field(description="Model A's.")
    b: int = Field(description="Model B's.")


class CompareLeg(ResultModel):
    """One leg of a compare: the classify output of one model."""

    output: str = Field(description="The leg's classify output (credentials redacted).")
    rows_read: int = Field(description="Rows the leg read.")
    rows_rejected: int = Field(description="Rows the leg rejected.")
    rows_resumed: int = Field(description="Rows the leg resumed from an earlier run.")


class Promotion(ResultModel):
    """`bm-ray compare --promote ALIAS`: whether model B's registered MLflow version got the alias, and why."""

    alias: str = Field(description="The registry alias asked for.")
    promoted: bool = Field(description="Whether the alias now points at model B's registered version.")
    reason: str = Field(description="Why it was set, or why not (not significant, not more accurate, ...).")
    registered_model: str | None = Field(
        description="Model B's registered model (its mlflow.json); None: none."
    )
    registered_version: str | None = Field(description="Model B's registered version; None: none.")


class CompareResult(ResultModel):
    """`bm-ray compare`: the content of ``compare.json``."""

    models: dict[str, ModelRef] = Field(description="Model A (``a``) and model B (``b``).")
    rows: int = Field(description="Rows both legs classified.")
    rows_agree: int = Field(description="Rows both models gave the same label.")
    rows_flipped: int = Field(description="Rows whose labels differ (written to flips/).")
    agreement: float = Field(description="rows_agree / rows (1.0 with no rows).")
    flip_matrix: LabelMatrix = Field(description="Label of A (rows) × label of B (columns).")
    label_counts: dict[str, LegCounts] = Field(description="Rows each model gave each label.")
    rows_labelled: int | None = _optional(
        "Rows with a true label (labelled corpora only, as the rest below)."
    )
    accuracy_a: float | None = _optional("Model A's accuracy on the labelled rows.")
    accuracy_b: float | None = _optional("Model B's accuracy on the labelled rows.")
    accuracy_difference: float | None = _optional(
        "accuracy_b − accuracy_a (written since bm-ray had intervals)."
    )
    only_a_correct: int | None = _optional("Labelled rows only A got right.")
    only_b_correct: int | None = _optional("Labelled rows only B got right.")
    mcnemar_p: float | None = _optional("McNemar's exact test of the accuracy difference.")
    intervals: CompareIntervals | None = _optional(
        "95% intervals of both accuracies and of their difference (labelled corpora; absent from older outputs)."
    )
    promotion: Promotion | None = _optional(
        "What ``--promote`` did to model B's registered version (with it only)."
    )
    legs: dict[str, CompareLeg] = Field(description="The two legs (``a``, ``b``).")
    elapsed_s: float = Field(description="Wall time of both legs and the comparison, in seconds.")
    output: str = Field(description="The output directory (credentials redacted).")


# -------------------------------------------------------------------------------------------------- train
class CalibrationScores(ResultModel):
    """Calibration of one set of scores on the validation rows."""

    ece: float = Field(description="Expected calibration error of the top score.")
    log_loss: float = Field(description="Mean negative log-likelihood of the true labels.")
    ece_interval: Interval | None = _optional(
        "95% interval of the ECE (bootstrap; absent from older outputs)."
    )


class CalibrationFit(ResultModel):
    """The calibration fitted on the validation rows (``bm_ray.jobs.train.calibrate.calibrate_model``)."""

    temperature: float = Field(description="The fitted temperature of the logits.")
    top_label_calibration: dict[str, str | float] | None = Field(
        description="The fitted top-label map (labels.json form); None: not fitted."
    )
    rows: int = Field(description="Validation rows it was fitted on.")
    ece_bins: int = Field(description="Equal-width bins of the ECE.")
    before: CalibrationScores = Field(description="The plain softmax's scores.")
    after_temperature: CalibrationScores = Field(description="The scores after the temperature alone.")
    after: CalibrationScores = Field(description="The scores the model answers with.")
    note: str | None = _optional("Why the top-label map was not fitted, or how a refit uses the calibration.")


class TrainData(ResultModel):
    """The rows a training run read, split and trained on."""

    train_data: RowCounts = Field(description="The training corpus's read.")
    val_data: RowCounts | None = _optional("The validation corpus's read (with val_data only).")
    duplicates: NearDuplicateCounts | None = _optional(
        "Duplicate clusters of the training corpus (split from it, i.e. without val_data)."
    )
    labels: dict[str, int] = Field(description="Ok training-corpus rows by (raw) label.")
    background_rows: int = Field(description="Background rows added to training.")
    boilerplate_rows: int = Field(description="Training rows set behind page boilerplate.")
    train_rows: int = Field(description="Rows trained on.")
    val_rows: int = Field(description="Rows validated on.")
    max_length: int = Field(description="The model's maximum length in tokens.")


class RefitInfo(ResultModel):
    """The refit (``refit: true``): the selected configuration retrained on training + validation rows."""

    rows: int = Field(description="Rows the refit trained on.")
    epochs: int = Field(description="Epochs it trained (the selection run's best).")
    train_s: float = Field(description="Its wall time, in seconds.")
    note: str = Field(description="What the metrics above describe once the weights are the refit's.")


class TrainResult(ScoredMetrics):
    """`bm-ray train`: the content of the model directory's ``metrics.json`` (the validation metrics of
    the selected, calibrated model)."""

    calibration: CalibrationFit | None = Field(description="The calibration fit; None: ``calibrate: false``.")
    epochs: list[dict[str, Any]] = Field(
        description="Every epoch's reported metrics (train loss and accuracy, validation metrics, ...)."
    )
    best_epoch: int = Field(description="The selected epoch (1-based).")
    recovered_after_epochs: list[int] = Field(
        description="Epochs after which a lost worker group was restored."
    )
    leakage: LeakageReport = Field(description="Validation rows with a duplicate among the training rows.")
    data: TrainData = Field(description="The rows read, split and trained on.")
    spec: dict[str, Any] = Field(description="The train spec (credentials redacted).")
    elapsed_s: float = Field(description="Wall time, in seconds.")
    refit: RefitInfo | None = _optional("The refit (with ``refit: true`` only).")
    mlflow_run_id: str | None = _optional(
        "The MLflow run of the training (with ``mlflow_tracking_uri`` only)."
    )


# --------------------------------------------------------------------------------------------------- tune
class TuneResult(ResultModel):
    """`bm-ray tune`: the content of ``results.json``."""

    trials: list[dict[str, Any]] = Field(
        description="One row per trial: its search-space values, epochs_run, the metric (NaN: failed), error."
    )
    best: dict[str, Any] = Field(description="The trial row with the best metric.")
    metric: str = Field(description="The metric maximised.")
    split: str = Field(description="The train spec's split (grouped or random).")
    leakage: LeakageReport = Field(description="Validation rows with a duplicate among the training rows.")
    elapsed_s: float = Field(description="Wall time, in seconds.")
    mlflow_run_id: str | None = _optional(
        "The MLflow parent run of the search (with the train spec's ``mlflow_tracking_uri`` only)."
    )
