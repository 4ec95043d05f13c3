"""`local_cluster`: a real head + 1 worker-node Ray cluster for the tests that import this fixture."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bm_ray.cluster import ClusterInfo, cluster_down, cluster_up

# Ports away from Ray's defaults (6379/8265) so a developer's own cluster keeps running.
HEAD_PORT = 6393
DASHBOARD_PORT = 8269


@pytest.fixture(scope="module")
def local_cluster() -> Iterator[ClusterInfo]:
    """A local cluster (head with dashboard + one worker node) for one test module, stopped after it."""
    info = cluster_up(
        workers=1, cpus_per_worker=1, head_cpus=1, port=HEAD_PORT, dashboard_port=DASHBOARD_PORT
    )
    try:
        yield info
    finally:
        cluster_down(info.temp_dir)
