"""Training output guards and resume state: what makes rerunning `bm-ray train` into an output safe.

- A finished output (a complete model directory) is never trained over silently: a rerun refuses
  unless `resume` (continue the stored run) or `overwrite` (start afresh; only over a bm-ray output).
- The run's identity (spec without operational keys and credentials, the input manifest of every
  training/validation file, the labels found) is stored in `OUTPUT/_job.json`; `resume` refuses
  when any of it differs and says what.
- Checkpoints carry the optimizer state (iterations and Adam slots) beside the weights, so a resumed
  run continues with the same moments and learning-rate step, not a cold optimizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs

from bm_ray.layout import (
    H5_WEIGHTS_FILE,
    JOB_FILE,
    LABELS_FILE,
    OPTIMIZER_STATE_FILE,
    SAFETENSORS_FILE,
    TRAIN_RUN_DIR,
)
from bm_ray.output.identity import identity_differences
from bm_ray.runtime.compat import build_optimizer_slots
from bm_ray.specs import TrainSpec
from bm_ray.storage import exists, join, read_json, redact, redact_uri, resolve_uri, write_json_atomic

FRESH_RUN_DIRS = ("tensorboard", "rejects")
"""Written during or after a run: a fresh (not resumed) run starts without them."""
FINISHED_FILES = (LABELS_FILE, SAFETENSORS_FILE)
"""Files that make an output a finished model directory (an output finished before safetensors has
:data:`~bm_ray.layout.H5_WEIGHTS_FILE` in place of the second)."""
OPERATIONAL_KEYS = {
    "resume",
    "overwrite",
    "address",
    "workers",
    "cpus_per_worker",
    "gpus_per_worker",
    "max_failures",
    "keep_checkpoints",
    "mlflow_tracking_uri",
    "mlflow_experiment",
    "mlflow_model_name",
}
"""Spec keys that change how a run executes or is tracked, not what it trains: they may differ on resume."""


class ResumeError(ValueError):
    """A rerun into a training output that would mix two different runs; the message says what differs."""


def train_identity(spec: TrainSpec) -> dict[str, Any]:
    """What a resumed run must share with the stored one: spec (no credentials) and input manifests."""
    from bm_ray.corpus import input_manifest

    manifest = {"data": input_manifest(spec.data)}
    if spec.val_data is not None:
        manifest["val_data"] = input_manifest(spec.val_data)
    return {
        "kind": "train",
        "spec": redact(spec.model_dump(mode="json", exclude=OPERATIONAL_KEYS)),
        "manifest": manifest,
    }


def _read_job(fs: pafs.FileSystem, root: str) -> dict[str, Any] | None:
    path = join(root, JOB_FILE)
    return read_json(fs, path) if exists(fs, path) else None


def _write_job(fs: pafs.FileSystem, root: str, job: dict[str, Any]) -> None:
    fs.create_dir(root, recursive=True)
    write_json_atomic(fs, join(root, JOB_FILE), job)


def prepare_train_output(spec: TrainSpec) -> None:
    """Check and prepare `spec.output` before a run; raises :class:`ResumeError` with what to do.

    Finished output: refused unless `resume` or `overwrite`. `overwrite` deletes the output (only a
    bm-ray training output or an empty directory). `resume` with a stored identity refuses when the
    spec or the inputs differ. Without `resume`, a stored unfinished run is discarded (fresh start).
    """
    fs, root = resolve_uri(spec.output)
    root = root.rstrip("/")
    shown = redact_uri(spec.output)
    exists = fs.get_file_info(root).type == pafs.FileType.Directory
    listing = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True)) if exists else []
    names = {info.base_name for info in listing}
    finished = set(FINISHED_FILES) <= names or {LABELS_FILE, H5_WEIGHTS_FILE} <= names
    if spec.overwrite and listing:
        if not ({JOB_FILE, TRAIN_RUN_DIR, LABELS_FILE} & names):
            raise ResumeError(
                f"{shown} is not empty and is not a bm-ray training output; refusing to delete it "
                "with overwrite: choose another output"
            )
        fs.delete_dir(root)
        finished, listing = False, []
    if finished and not spec.resume:
        version = _stored_version(fs, root)
        raise ResumeError(
            f"{shown} already holds a finished model (version {version}); pass --resume to continue "
            "its stored run, --overwrite to train afresh over it, or choose another output"
        )
    current = train_identity(spec)
    previous = _read_job(fs, root) if listing else None
    if spec.resume and previous is not None:
        diffs = identity_differences(previous, current)
        if diffs:
            raise ResumeError(
                f"cannot resume into {shown}: the stored run differs: "
                + "; ".join(diffs)
                + ". Rerun with the same spec and data, or pass --overwrite to train afresh"
            )
        return
    if not spec.resume:  # a fresh start: no old run, events or rejects
        for stale in sorted({TRAIN_RUN_DIR, *FRESH_RUN_DIRS} & names):
            fs.delete_dir(f"{root}/{stale}")
    _write_job(fs, root, current)


def record_labels(spec: TrainSpec, labels: list[str]) -> None:
    """Store the labels found in the data in `_job.json`; on resume, refuse labels that differ."""
    fs, root = resolve_uri(spec.output)
    root = root.rstrip("/")
    job = _read_job(fs, root) or train_identity(spec)
    stored = job.get("labels")
    if spec.resume and stored is not None and stored != labels:
        raise ResumeError(
            f"cannot resume into {redact_uri(spec.output)}: the labels differ: stored {stored}, "
            f"now {labels}. Pass --overwrite to train afresh"
        )
    if stored != labels:
        _write_job(fs, root, {**job, "labels": labels})


def _stored_version(fs: pafs.FileSystem, root: str) -> str:
    try:
        return str(read_json(fs, join(root, LABELS_FILE)).get("version", "unknown"))
    except (OSError, ValueError):
        return "unknown"


def save_optimizer_state(optimizer: Any, directory: str | Path) -> Path:
    """Write the optimizer's variables (iterations first, then every slot) with their names."""
    variables = optimizer.variables()
    path = Path(directory) / OPTIMIZER_STATE_FILE
    arrays = {f"v{i:05d}": np.asarray(v.numpy()) for i, v in enumerate(variables)}
    np.savez(path, names=np.array([v.name for v in variables]), **arrays)
    return path


def restore_optimizer_state(optimizer: Any, model: Any, directory: str | Path) -> bool:
    """Restore what :func:`save_optimizer_state` wrote into `optimizer` (call in the strategy scope).

    Returns False when the checkpoint has no optimizer state (an older checkpoint). Raises
    ValueError when the stored variables do not match this optimizer's (another model or optimizer).
    """
    path = Path(directory) / OPTIMIZER_STATE_FILE
    if not path.exists():
        return False
    build_optimizer_slots(optimizer, model.trainable_variables)  # slots are otherwise made on the first step
    variables = optimizer.variables()
    with np.load(path) as stored:
        values = [stored[f"v{i:05d}"] for i in range(len(stored["names"]))]
    # Names carry Keras' per-process layer numbering (..._1/...), so variables are matched by order and shape.
    if [value.shape for value in values] != [tuple(v.shape) for v in variables]:
        raise ValueError(
            f"{path}: the stored optimizer state ({len(values)} variables) does not match this "
            f"optimizer's ({len(variables)}); it belongs to another model or optimizer"
        )
    optimizer.set_weights(values)
    return True
