"""Ray start-up shared by every job: one runtime environment, embedded or remote cluster."""

from __future__ import annotations

import os
import random
import socket
import sys
from typing import Any

import ray

from bm_ray.runtime.logs import (
    LOG_LEVEL_ENV,
    quiet_ray_data_console,
    quiet_ray_serve_console,
)

# Variables every Ray worker needs before it imports TensorFlow.
WORKER_ENV_VARS = {
    "TF_USE_LEGACY_KERAS": "1",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_VERBOSITY": "error",
    # Ray leaves CUDA_VISIBLE_DEVICES alone for zero-GPU actors and tasks unless told otherwise; with it
    # they see no GPU, so TF in a CPU actor on a GPU node neither grabs device memory nor logs cuInit.
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1",
}


SERVE_NODE_ENV_VARS = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0",
}
"""Ray Serve's throughput mode (gRPC between deployments, user code and router on the replica's own
event loop, buffered request logs, GC frozen after start-up), keeping the HTTP proxy. They are read by
every Serve process (controller, proxies, replicas) at import, so they belong to the node's environment
(`ray start`, the container), not to a job's runtime_env. Measured in README → Performance."""


def node_env() -> dict[str, str]:
    """Environment for a Ray node started by bm-ray: the TF worker variables plus the Serve mode.

    Values already set in this process win, so either mode can be switched back by the user.
    """
    return {**WORKER_ENV_VARS, **SERVE_NODE_ENV_VARS} | {
        name: os.environ[name] for name in SERVE_NODE_ENV_VARS if name in os.environ
    }


def runtime_env(extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """The runtime_env every bm-ray driver and job uses (env vars for TF/Keras and bm-ray's log level in
    all workers)."""
    env = dict(WORKER_ENV_VARS)
    if os.environ.get(LOG_LEVEL_ENV):
        env[LOG_LEVEL_ENV] = os.environ[LOG_LEVEL_ENV]
    if extra_env:
        env.update(extra_env)
    return {"env_vars": env}


def ray_init_runtime_env(extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """:func:`runtime_env` plus the :data:`WORKER_SETUP_HOOK`, for a whole job (`ray.init`, job submission).

    Ray takes the setup hook in a job's runtime_env only, not in a task's or an actor's.
    """
    return {**runtime_env(extra_env), "worker_process_setup_hook": WORKER_SETUP_HOOK}


def free_port(low: int = 20000, high: int = 32000) -> int:
    """A loopback TCP port free right now, outside both Ray's worker ports (10002-19999) and the
    kernel's ephemeral range (from 32768), so Ray's own port-0 binds cannot take it before we do."""
    for port in random.sample(range(low, high), 200):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free TCP port in {low}-{high}")


def init_ray(address: str | None = None, num_cpus: int | None = None, **kwargs: Any) -> None:
    """Connect to `address` (or RAY_ADDRESS), else start an embedded local Ray (also for `address="local"`).

    Safe to call twice: an already-initialised Ray is kept. The embedded Ray runs its dashboard on a
    loopback port and tells its own workers where it is: Ray Train's placement-group cleaner asks the
    state API whether the controller is alive, and with several Ray instances on one machine its
    auto-detection could ask the wrong one and tear down a healthy run.
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    init_kwargs: dict[str, Any] = {
        "log_to_driver": True,
        "configure_logging": True,
        "logging_level": "WARNING",
    }
    if address and address != "local":
        init_kwargs["address"] = address
        # Inside a submitted Ray job the job's runtime env (bm_ray.deploy.submit sets the same variables) applies;
        # passing ours as well would be refused as a conflict.
        if "RAY_JOB_CONFIG_JSON_ENV_VAR" not in os.environ:
            init_kwargs["runtime_env"] = ray_init_runtime_env()
    else:
        # The embedded head's processes inherit this process's environment.
        for name, value in SERVE_NODE_ENV_VARS.items():
            os.environ.setdefault(name, value)
        port = free_port()
        init_kwargs.update(
            # "local", not None: with no address ray.init joins the cluster named in Ray's temp dir (the
            # last `ray start` on this machine) instead of starting the embedded Ray promised here.
            address="local",
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            dashboard_port=port,
            runtime_env=ray_init_runtime_env({"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}),
        )
        if num_cpus is not None:
            init_kwargs["num_cpus"] = num_cpus
    init_kwargs.update(kwargs)
    ray.init(**init_kwargs)
    # Off a terminal Ray Data would log a multi-line progress block every few seconds.
    ray.data.DataContext.get_current().enable_progress_bars = sys.stderr.isatty()
    quiet_ray_data_console()
    quiet_ray_serve_console()


WORKER_SETUP_HOOK = "bm_ray.runtime.setup_worker_process"
"""Ray's `worker_process_setup_hook` of every bm-ray job (by module path, so each worker imports it)."""
