"""`local_cluster`: a real head + 1 worker-node Ray cluster, token auth on, for the tests that import it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bm_ray.deploy.cluster import ClusterInfo, cluster_down, cluster_up
from bm_ray.runtime.ray_init import free_port

AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


@pytest.fixture(scope="module")
def local_cluster() -> Iterator[ClusterInfo]:
    """A local cluster (head with dashboard + one worker node) for one test module, stopped after it.

    Its token auth is on; while the module runs, this process presents the token the way a user would,
    through Ray's variables (`RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=...`, as `bm-ray cluster up` prints).
    Free ports, so that clusters of other checkouts on the machine keep running.
    """
    with pytest.MonkeyPatch.context() as env:
        for name in AUTH_VARS:
            env.delenv(name, raising=False)
        # A generous timeout: `ray start` takes minutes when other test runs load the machine.
        info = cluster_up(
            workers=1,
            cpus_per_worker=1,
            head_cpus=1,
            port=free_port(),
            dashboard_port=free_port(),
            timeout_s=300,
        )
        try:
            for name, value in info.auth_env.items():
                env.setenv(name, value)
            yield info
        finally:
            cluster_down(info.temp_dir)
