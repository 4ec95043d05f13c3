"""Ray start-up shared by every job: one runtime environment, embedded or remote cluster."""

from __future__ import annotations

import os
from typing import Any

import ray

# Variables every Ray worker needs before it imports TensorFlow.
WORKER_ENV_VARS = {
    "TF_USE_LEGACY_KERAS": "1",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_VERBOSITY": "error",
}


def runtime_env(extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """The runtime_env every bm-ray driver and job uses (env vars for TF/Keras in all workers)."""
    env = dict(WORKER_ENV_VARS)
    if extra_env:
        env.update(extra_env)
    return {"env_vars": env}


def init_ray(address: str | None = None, num_cpus: int | None = None, **kwargs: Any) -> None:
    """Connect to `address` (or RAY_ADDRESS), else start an embedded local Ray.

    Safe to call twice: an already-initialised Ray is kept.
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    init_kwargs: dict[str, Any] = {
        "runtime_env": runtime_env(),
        "log_to_driver": True,
        "include_dashboard": False,
        "configure_logging": True,
        "logging_level": "WARNING",
    }
    if address:
        init_kwargs["address"] = address
        init_kwargs.pop("include_dashboard")
    elif num_cpus is not None:
        init_kwargs["num_cpus"] = num_cpus
    init_kwargs.update(kwargs)
    ray.init(**init_kwargs)
    ray.data.DataContext.get_current().enable_progress_bars = True
