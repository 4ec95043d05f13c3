"""`export`: a trained model as a TensorFlow SavedModel for TF Serving / KServe, or as ONNX (``--format
onnx``) for ONNX Runtime and other ONNX runtimes (:mod:`bm_ray.model.export`).

The model reference is resolved as everywhere (a model directory, an ``s3://`` / ``gs://`` URI); the
output is a local directory or an object-store URI. An output that holds anything but an earlier
export is refused; an earlier export is replaced only with ``overwrite``. A local export is written
into a temporary sibling and renamed into place, so a failed export leaves no half-written output.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from bm_ray.layout import EXPORT_FILE
from bm_ray.model.export import EXPORT_FORMATS, export_onnx, export_savedmodel
from bm_ray.model.registry import read_model_info, resolve_model
from bm_ray.output.commit import OutputRefusedError
from bm_ray.storage import exists, is_remote, join, redact_uri, resolve_uri, upload_dir


def _prepare_output(output: str, overwrite: bool) -> bool:
    """Check `output` before any work; True when it holds an earlier export to replace (``overwrite``)."""
    fs, root = resolve_uri(output)
    root = root.rstrip("/")
    shown = redact_uri(output)
    kind = fs.get_file_info(root).type
    if kind == pafs.FileType.File:
        raise OutputRefusedError(f"--output {shown} is a file, not a directory")
    entries = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    if not entries:
        return False
    if not exists(fs, join(root, EXPORT_FILE)):
        raise OutputRefusedError(
            f"refusing to export into {shown}: it is not empty and holds no bm-ray export ({EXPORT_FILE}); "
            "choose an empty or new --output"
        )
    if not overwrite:
        raise OutputRefusedError(
            f"{shown} already holds an export; pass --overwrite to replace it, or choose another --output"
        )
    return True


def export(model: str, output: str, fmt: str = "savedmodel", overwrite: bool = False) -> dict[str, Any]:
    """Export `model` in format `fmt` into `output`; returns ``export.json``'s content plus ``output``."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"export format {fmt!r}: bm-ray exports {', '.join(EXPORT_FORMATS)}")
    output = output.removeprefix("file://")
    model_dir = resolve_model(model)
    read_model_info(model_dir)  # not a trained bm-ray model: a clear error before TensorFlow loads
    replace = _prepare_output(output, overwrite)
    write = export_onnx if fmt == "onnx" else export_savedmodel
    shown_model, shown_output = redact_uri(model), redact_uri(output)
    if is_remote(output):
        with tempfile.TemporaryDirectory(prefix="bm-ray-export-") as work:
            description = write(model_dir, work, shown_model)
            fs, root = resolve_uri(output)
            if replace:
                fs.delete_dir_contents(root.rstrip("/"))
            upload_dir(work, output)
        return {**description, "output": shown_output}
    target = Path(output).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-export-"))
    try:
        description = write(model_dir, work, shown_model)
        if replace or target.is_dir():  # an earlier export, or an empty directory
            shutil.rmtree(target)
        os.replace(work, target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return {**description, "output": shown_output}
