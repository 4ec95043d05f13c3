"""TensorFlow start-up: no native noise on a CPU-only machine, real errors kept, GPUs hidden from CPU workers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import ray

from bm_ray.runtime.ray_init import WORKER_ENV_VARS
from bm_ray.runtime.tf import NO_GPU_NOISE, STARTUP_NOISE, filtered_native_stderr, gpus_hidden

SCRIPT_OP = "tf.constant([1.0]) + 1.0; print('ok')"


def _stderr_of(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["TF_USE_LEGACY_KERAS"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env, check=True
    )
    assert done.stdout.strip().endswith("ok")
    return done.stderr


def _noise(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if STARTUP_NOISE.search(line) or NO_GPU_NOISE.search(line)]


def test_tensorflow_starts_without_native_noise_on_a_cpu_only_machine() -> None:
    if not gpus_hidden():
        pytest.skip("this machine has a GPU: cuInit succeeds and the CPU-only start-up is not what runs")
    bare = _stderr_of(f"import tensorflow as tf; {SCRIPT_OP}")
    if not _noise(bare):
        pytest.skip("this TensorFlow build prints no start-up noise here: nothing to filter")
    ours = _stderr_of(
        f"from bm_ray.runtime.tf import import_tensorflow; tf = import_tensorflow(); {SCRIPT_OP}"
    )
    assert _noise(ours) == [], ours
    # A library importing TF first (Ray Train's TensorFlow backend does) goes the same way once routed.
    routed = _stderr_of(
        "from bm_ray.runtime.tf import route_tensorflow_import; route_tensorflow_import(); "
        f"import ray.train.tensorflow; import tensorflow as tf; {SCRIPT_OP}"
    )
    assert _noise(routed) == [], routed


def test_lines_that_are_not_noise_are_written_back_in_order(capfd: pytest.CaptureFixture[str]) -> None:
    with filtered_native_stderr(lambda line: "noise" in line):
        os.write(2, b"E0000 real error one\n")
        os.write(2, b"I0000 startup noise\n")
        os.write(2, b"W0000 real warning two\n")
    assert capfd.readouterr().err == "E0000 real error one\nW0000 real warning two\n"


def test_lines_are_written_back_when_the_block_raises(capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RuntimeError), filtered_native_stderr(lambda line: False):
        os.write(2, b"F0000 why it failed\n")
        raise RuntimeError("import failed")
    assert capfd.readouterr().err == "F0000 why it failed\n"


def test_cuinit_failure_counts_as_noise_only_where_no_gpu_is_meant() -> None:
    assert gpus_hidden({"CUDA_VISIBLE_DEVICES": ""})
    assert gpus_hidden({"CUDA_VISIBLE_DEVICES": "-1"})
    if os.path.exists("/dev/nvidia0"):
        assert not gpus_hidden({"CUDA_VISIBLE_DEVICES": "0"})


def test_zero_gpu_ray_workers_see_no_gpu(ray_local: None) -> None:
    """With bm-ray's worker environment, Ray hides GPUs from an actor that asked for none."""

    @ray.remote(num_gpus=0, num_cpus=0.01)
    def visible_devices() -> str | None:
        return os.environ.get("CUDA_VISIBLE_DEVICES")

    assert WORKER_ENV_VARS["RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"] == "1"
    env = {"env_vars": dict(WORKER_ENV_VARS)}
    assert ray.get(visible_devices.options(runtime_env=env).remote(), timeout=120) == ""


def test_tensorflow_refuses_to_start_beside_pytorch() -> None:
    """TF and PyTorch in one process segfault: a clear error instead (checked in a fresh process)."""
    code = (
        "import sys, types; sys.modules['torch'] = types.ModuleType('torch')\n"
        "from bm_ray.runtime.tf import import_tensorflow\n"
        "try:\n    import_tensorflow()\nexcept RuntimeError as err:\n    print('refused:', err)\n"
        "print('tensorflow' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert "refused: PyTorch is already imported" in done.stdout
    assert done.stdout.strip().endswith("False")  # TF was never imported
