"""`local_cluster` (a real head + 1 worker-node Ray cluster, token auth on, for the tests that import it)
and `running_cluster`, the same with any number and size of nodes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from bm_ray.deploy.cluster import ClusterInfo, cluster_down, cluster_up
from bm_ray.runtime.ray_init import free_port

AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


@contextmanager
def running_cluster(workers: int = 1, cpus_per_worker: int = 1, head_cpus: int = 1) -> Iterator[ClusterInfo]:
    """A local cluster (head with dashboard + `workers` worker nodes), stopped (only it) at the end.

    Its token auth is on; while it runs, this process presents the token the way a user would, through
    Ray's variables (`RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=...`, as `bm-ray cluster up` prints), and
    no RAY_ADDRESS points elsewhere. Free ports, so that clusters of other checkouts on the machine keep
    running.
    """
    with pytest.MonkeyPatch.context() as env:
        for name in (*AUTH_VARS, "RAY_ADDRESS"):
            env.delenv(name, raising=False)
        # A generous timeout: `ray start` takes minutes when other test runs load the machine.
        info = cluster_up(
            workers=workers,
            cpus_per_worker=cpus_per_worker,
            head_cpus=head_cpus,
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


@pytest.fixture(scope="module")
def local_cluster() -> Iterator[ClusterInfo]:
    """A head + one 1-CPU worker-node cluster (:func:`running_cluster`) for one test module."""
    with running_cluster() as info:
        yield info
