"""`init_ray` without an address starts the embedded Ray it promises, whatever cluster the machine records."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# A child process: this one may already hold the session's Ray. It reports the GCS it joined.
CHILD = """
import json, sys
import ray
from bm_ray.runtime.ray_init import init_ray
init_ray(num_cpus=1, _temp_dir=sys.argv[1])
print(json.dumps({"gcs": ray.get_runtime_context().gcs_address}))
ray.shutdown()
"""


def test_embedded_ray_ignores_the_cluster_recorded_by_ray_start() -> None:
    # `ray start` records its GCS in <temp dir>/ray_current_cluster and a plain ray.init() joins it; here
    # the record points at a port nobody serves, so joining it would fail instead of starting a Ray.
    # A short temp dir: Ray's socket paths beneath it must stay under the 107-byte AF_UNIX limit.
    temp_dir = tempfile.mkdtemp(prefix="bmr-init-", dir="/tmp")
    try:
        recorded = "127.0.0.1:1"
        (Path(temp_dir) / "ray_current_cluster").write_text(recorded, encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        done = subprocess.run(
            [sys.executable, "-c", CHILD, temp_dir], env=env, capture_output=True, text=True, timeout=180
        )
        assert done.returncode == 0, done.stderr[-3000:]
        gcs = json.loads(done.stdout.strip().splitlines()[-1])["gcs"]
        assert gcs and gcs != recorded, gcs
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
