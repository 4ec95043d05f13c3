"""TensorFlow start-up for every bm-ray process: quiet on CPU-only machines, polite on shared GPUs.

Every module that needs TensorFlow gets it from :func:`import_tensorflow`, never by importing it
directly, so each process (CLI driver, Ray Train worker, Ray Data actor, Serve replica) starts TF the
same way:

- ``TF_USE_LEGACY_KERAS=1`` is set before the import (transformers' TF models need Keras 2).
- TF's native start-up lines that say nothing to a user (absl's "before InitializeLog" notice, the
  oneDNN notice, "Could not find cuda drivers", and ``failed call to cuInit`` where no GPU is meant
  to be used) are dropped. They are written by C++ before absl logging is initialised, so neither
  ``TF_CPP_MIN_LOG_LEVEL`` nor Python's logging can hide them: the start-up runs with file
  descriptor 2 pointed at a temporary file, and every other line is written back to stderr after.
- TF's Python logger keeps warnings and errors (its INFO lines on strategy set-up are for ``--verbose``).
- Each visible GPU gets memory growth, so TF allocates what it uses instead of the whole device:
  without it a second process on the GPU (a fractional-GPU Serve replica or actor) cannot start.

Libraries import TensorFlow themselves too (Ray Train's TensorFlow backend in its controller and
workers, transformers): :func:`route_tensorflow_import` makes whichever import comes first go through
:func:`import_tensorflow`; bm-ray's CLI and every Ray worker of a bm-ray job install it at start-up.

GPUs are hidden from processes that did not ask for one by Ray itself: ``RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO``
(:data:`bm_ray.runtime.ray_init.WORKER_ENV_VARS`) makes Ray set ``CUDA_VISIBLE_DEVICES=""`` for zero-GPU
actors and tasks.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

STARTUP_NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|oneDNN custom operations are on"
    r"|Could not find cuda drivers on your machine"
    r"|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|computation placer already registered"
    r"|TF-TRT Warning: Could not find TensorRT"
    r"|This TensorFlow binary is optimized to use available CPU instructions"
    r"|To enable the following instructions: .* rebuild TensorFlow"
)
"""Start-up lines that carry no information for a user; anything else TF writes is kept."""

NO_GPU_NOISE = re.compile(r"failed call to cuInit")
"""cuInit fails wherever no GPU is visible: an error only where a GPU was meant to be used."""

_tensorflow: ModuleType | None = None


def gpus_hidden(env: dict[str, str] | os._Environ[str] | None = None) -> bool:
    """Whether this process was meant to run without a GPU (`CUDA_VISIBLE_DEVICES` empty or -1, or no NVIDIA device)."""
    env = os.environ if env is None else env
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return True
    return not os.path.exists("/dev/nvidia0") and not os.path.exists("/proc/driver/nvidia")


@contextlib.contextmanager
def filtered_native_stderr(drop: Callable[[str], bool]) -> Iterator[None]:
    """Run the block with file descriptor 2 in a temporary file; then write back every line not `drop`ped.

    Native code (C++ logging) writes to the descriptor, not to ``sys.stderr``, so only this catches it.
    Lines are written back in order when the block ends, also when it raises.
    """
    with contextlib.suppress(AttributeError, ValueError):
        sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(AttributeError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [
                line
                for line in captured.read().decode("utf-8", "replace").splitlines(keepends=True)
                if not drop(line)
            ]
            if kept:
                os.write(2, "".join(kept).encode("utf-8"))


def import_tensorflow() -> ModuleType:
    """TensorFlow, imported once per process as the module docstring describes; later calls return it."""
    global _tensorflow
    if _tensorflow is not None:
        return _tensorflow
    if "torch" in sys.modules:
        # The two crash the process together; inside the filter below the crash would also go unexplained.
        raise RuntimeError(
            "PyTorch is already imported in this process, and TensorFlow and PyTorch in one process "
            "segfault: keep torch out of bm-ray's environment (pip uninstall torch) or import bm-ray "
            "in a separate process"
        )
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    no_gpu = gpus_hidden()

    def noise(line: str) -> bool:
        return bool(STARTUP_NOISE.search(line)) or (no_gpu and bool(NO_GPU_NOISE.search(line)))

    with filtered_native_stderr(noise):
        import tensorflow as tf

        # Listing devices initialises the GPU platform (cuInit) now, inside the filter, not at the first op.
        for gpu in tf.config.list_physical_devices("GPU"):
            with contextlib.suppress(RuntimeError):  # already initialised by someone else: keep theirs
                tf.config.experimental.set_memory_growth(gpu, True)
    from bm_ray.runtime.logs import verbose

    if not verbose():  # TF's Python INFO lines (strategy and collective set-up) are for debugging
        logging.getLogger("tensorflow").setLevel(logging.WARNING)
    _tensorflow = tf
    return tf


class _TensorFlowImportRoute(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finder for the top-level ``tensorflow`` package: imports it with :func:`import_tensorflow`, once.

    Python's import system asks each finder on ``sys.meta_path`` in turn; this one steps aside before
    importing (so the real import happens as usual, inside the filter) and hands back the loaded module.
    """

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname != "tensorflow":
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)
        import_tensorflow()
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: ModuleSpec) -> ModuleType:
        return sys.modules["tensorflow"]

    def exec_module(self, module: ModuleType) -> None:
        """Already executed by the real import."""


def route_tensorflow_import() -> None:
    """Make the first ``import tensorflow`` in this process, by any library, go through :func:`import_tensorflow`.

    Cheap (TensorFlow is not imported here); does nothing once TensorFlow is imported or the route is in place.
    """
    if "tensorflow" in sys.modules or any(isinstance(f, _TensorFlowImportRoute) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _TensorFlowImportRoute())
