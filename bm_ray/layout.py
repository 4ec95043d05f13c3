"""The on-disk contract of bm-ray's outputs, defined once: every file and directory a job writes, the
columns of its row tables, and the reject vocabulary. A bottom-layer module: it imports nothing of bm-ray.

The docs' output reference (docs/reference/outputs.md) describes each of these; readers of an output
(reports, resumes, the tests) name files through these constants, never through literals.
"""

from __future__ import annotations

# ------------------------------------------------------------------------------ every corpus job output
JOB_FILE = "_job.json"
"""A job's identity (kind, spec fields that decide its rows, inputs manifest): a resume must match it."""
SUMMARY_FILE = "summary.json"
"""The job's accounting: rows read = ok + rejected, by reason; written at the end of every run."""
LEASE_FILE = "_lease.json"
"""The output lease: one live job per output directory."""
COMMITS_DIR = "_commits"
"""Commit records of the exactly-once protocol (a part file counts only once its record exists)."""
REJECTS_DIR = "rejects"
"""Reject tables (:data:`REJECT_COLUMNS`)."""
REPORT_FILE = "report.html"
"""The self-contained HTML report of any job output."""
MANIFEST_KEY = "inputs_manifest"
"""Key of the input manifest in :data:`JOB_FILE` and :data:`SUMMARY_FILE`."""

REJECT_COLUMNS = ("id", "source", "reason", "raw")
"""Columns of the rejects tables."""

REJECT_REASONS = (
    "empty_text",
    "not_a_string",
    "missing_field",
    "malformed_record",
    "invalid_utf8",
    "too_long",
    "duplicate_id",
)
"""Fixed vocabulary of `reason` for rejected rows (blank lines carry ``"blank_line"``, not a reject)."""

# ------------------------------------------------------------------------------------------------ ingest
OK_DIR = "ok"
"""Validated rows of `bm-ray ingest` (:data:`OK_COLUMNS` + keep_fields)."""
OK_COLUMNS = ("id", "text", "label", "source", "truncated", "utf8_repaired")
"""Columns of ``output/ok/`` (+ keep_fields)."""
NEAR_DUPLICATES_DIR = "near_duplicates"
"""Subdirectory of an ingest output holding (id, cluster) of every ok row (``--near-duplicates``)."""

# ------------------------------------------------------------------------------------- classify, compare
PREDICTIONS_DIR = "predictions"
"""Prediction tables of `bm-ray classify` (under the output directory)."""
COMPARE_LEGS = ("a", "b")
"""Subdirectories of a compare output: one classify output per model."""
FLIPS_DIR = "flips"
FLIPS_FILE = "flips.parquet"
"""Rows whose label differs between the two models of a compare."""
COMPARE_FILE = "compare.json"
"""Agreement, flips and McNemar's test of a compare."""

# ---------------------------------------------------------------------- evaluate and training validation
METRICS_FILE = "metrics.json"
"""Accuracy, macro-F1, per-class metrics, calibration and selective prediction of a scored model."""
PREDICTIONS_FILE = "predictions.parquet"
"""Per-row predictions of `bm-ray evaluate` and of training's validation (id, label, predicted, score, text)."""
CURVE_FILE = "risk_coverage.json"
"""The accuracy-vs-coverage (risk-coverage) curve of a scored model."""

# ------------------------------------------------------------------------------------- the model directory
LABELS_FILE = "labels.json"
"""Labels, names, max length, version and calibration of a bm-ray model directory."""
SAFETENSORS_FILE = "model.safetensors"
"""The weights of a model directory bm-ray writes (``save_pretrained(safe_serialization=True)``)."""
H5_WEIGHTS_FILE = "tf_model.h5"
"""The TF h5 weights of model directories written before safetensors; they still load."""
WEIGHT_FILES = (SAFETENSORS_FILE, H5_WEIGHTS_FILE, "pytorch_model.bin")
"""Weight files a model directory may hold; their content hash is the model version."""
MODEL_CARD_FILE = "README.md"
"""The Hugging Face model card of a trained model directory (:mod:`bm_ray.model.card`)."""
EXPORT_FILE = "export.json"
"""What `bm-ray export` wrote beside a SavedModel: its signatures, labels and the calibration baked in."""
MLFLOW_FILE = "mlflow.json"
"""The MLflow run and registered model version of a model trained with ``--mlflow-tracking-uri``
(:mod:`bm_ray.jobs.tracking`); `bm-ray compare --promote` finds model B's version by it."""
TRAIN_STATE_FILE = "train_state.json"
"""Training progress of a run (epochs done, the best epoch), read by ``--resume``."""
TRAIN_RUN_DIR = "_ray_train"
"""Ray Train's storage (checkpoints) under a training output."""
OPTIMIZER_STATE_FILE = "optimizer_state.npz"
"""The optimizer's slots saved with a checkpoint, so a resumed run continues its schedule."""

# ---------------------------------------------------------------------------------------------- serving
SERVE_IMPORT_PATH = "bm_ray.serve:build_app"
"""The Ray Serve application builder: the import path of Serve config files and KubeRay's serveConfigV2."""
