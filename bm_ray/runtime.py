"""Ray start-up shared by every job: one runtime environment, embedded or remote cluster."""

from __future__ import annotations

import logging
import os
import random
import socket
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ray

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


DEFAULT_TOKEN_PATH = Path.home() / ".ray" / "auth_token"
"""Ray's default token file (`ray get-auth-token --generate` writes it)."""


class RayAuthError(RuntimeError):
    """A Ray auth token that was asked for but cannot be read; the message names the variable or file."""


def ray_auth_token(env: Mapping[str, str] | None = None) -> str | None:
    """The Ray token a client presents, by Ray's own conventions; None when there is none to send.

    `RAY_AUTH_MODE=disabled` sends none; else `RAY_AUTH_TOKEN`, else the file `RAY_AUTH_TOKEN_PATH`, else, with
    `RAY_AUTH_MODE=token`, `~/.ray/auth_token` (Ray's precedence). A token given by either variable is sent even
    without `RAY_AUTH_MODE`; the default file is not, so a local token never goes to a server that did not ask.
    """
    env = os.environ if env is None else env
    mode = env.get("RAY_AUTH_MODE", "").lower()
    if mode == "disabled":
        return None
    if env.get("RAY_AUTH_TOKEN", "").strip():
        return env["RAY_AUTH_TOKEN"].strip()
    path = env.get("RAY_AUTH_TOKEN_PATH") or (str(DEFAULT_TOKEN_PATH) if mode == "token" else None)
    if path is None:
        return None
    try:
        token = Path(path).expanduser().read_text(encoding="utf-8").strip()
    except OSError as err:
        raise RayAuthError(f"cannot read the Ray auth token file {path}: {err.strerror}") from None
    if not token:
        raise RayAuthError(f"the Ray auth token file {path} is empty")
    return token


def ray_auth_headers(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`Authorization: Bearer <token>` for Ray's dashboard / job server / Serve API, or {} (see ray_auth_token)."""
    token = ray_auth_token(env)
    return {"Authorization": f"Bearer {token}"} if token else {}


LOG_LEVEL_ENV = "BM_RAY_LOG_LEVEL"
"""Level of bm-ray's own log lines (DEBUG, INFO, WARNING, ...): set by the CLI's --verbose/--quiet and
passed to every Ray worker through the runtime_env, so progress logged in a worker obeys it too."""
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
PROGRESS_LOG_S = 10.0
"""Least seconds between two progress lines of one job (rows committed, training steps)."""


def configure_logging(level: str | None = None) -> None:
    """Give the ``bm_ray`` loggers one handler and format, at `level` (else $BM_RAY_LOG_LEVEL, else INFO).

    Called once by the CLI and at the start of worker-side code that logs (the train loop); only the
    ``bm_ray`` logger is touched, never the root logger of an application embedding bm-ray.
    """
    chosen = (level or os.environ.get(LOG_LEVEL_ENV) or "INFO").upper()
    logger = logging.getLogger("bm_ray")
    logger.setLevel(chosen)
    if not any(getattr(h, "bm_ray_handler", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT, "%H:%M:%S"))
        handler.bm_ray_handler = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False  # Ray's own handlers on the root logger would print every line twice


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
        # Inside a submitted Ray job the job's runtime env (bm_ray.jobs sets the same variables) applies;
        # passing ours as well would be refused as a conflict.
        if "RAY_JOB_CONFIG_JSON_ENV_VAR" not in os.environ:
            init_kwargs["runtime_env"] = ray_init_runtime_env()
    else:
        # The embedded head's processes inherit this process's environment.
        for name, value in SERVE_NODE_ENV_VARS.items():
            os.environ.setdefault(name, value)
        port = free_port()
        init_kwargs.update(
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


def verbose() -> bool:
    """Whether bm-ray runs at DEBUG (`--verbose`): then Ray Data and TF keep their INFO lines."""
    return (os.environ.get(LOG_LEVEL_ENV) or "INFO").upper() == "DEBUG"


class DropRayDataProgressNotice(logging.Filter):
    """Drops Ray Data's "Progress bars disabled" notice: bm-ray turns the bars off on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Progress bars disabled")


def quiet_ray_data_console() -> None:
    """Ray Data in this process: its INFO lines (each dataset's start, plan, finish) in ray-data.log only.

    bm-ray's own log says what each stage does; Ray Data's warnings and errors still reach the console,
    and ``--verbose`` keeps everything. Ray Data has no setting for its console level, so the level of
    its console handler (the "ray.data" logger's stream handler) is set; its session-file handler, read
    for debugging, is left as it is. Worker processes get the same from :func:`setup_worker_process`.
    """
    if verbose():
        return
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler) and type(handler).__module__.startswith("ray."):
            handler.setLevel(logging.WARNING)
            if not any(isinstance(f, DropRayDataProgressNotice) for f in handler.filters):
                handler.addFilter(DropRayDataProgressNotice())


def quiet_ray_serve_console() -> None:
    """In the driver: Ray Serve's INFO lines off the console unless ``--verbose`` (warnings and errors stay).

    They narrate what bm-ray already says (Serve started, the app is ready at the URL bm-ray prints).
    The Serve controller's own start-up notice (the throughput-optimised settings) is logged in its actor
    before Serve configures its logging, and still shows.
    """
    if not verbose():
        logging.getLogger("ray.serve").setLevel(logging.WARNING)


RAY_TRAIN_REPORT_MODULE = "ray.train.v2._internal.execution.context"
"""The Ray Train module that logs every ``ray.train.report`` call (see :func:`quiet_ray_train_reports`)."""


def quiet_ray_train_reports() -> None:
    """In a Ray Train worker: drop Ray Train's "Reporting training result ..." INFO line per report.

    Ray Train 2.60 logs it under a logger named by its source file's path, outside the ``ray.train``
    tree that ``ray.train.LoggingConfig`` filters, so the whole metrics dict of every epoch reached the
    console twice (once per worker). There is no public setting for it: the logger is found by that
    module's file. ``--verbose`` keeps the line.
    """
    import importlib.util

    if verbose():
        return
    spec = importlib.util.find_spec(RAY_TRAIN_REPORT_MODULE)
    if spec is not None and spec.origin:
        logging.getLogger(spec.origin).setLevel(logging.WARNING)


WORKER_SETUP_HOOK = "bm_ray.runtime.setup_worker_process"
"""Ray's `worker_process_setup_hook` of every bm-ray job (by module path, so each worker imports it)."""


def setup_worker_process() -> None:
    """Runs first in every Ray worker process of a bm-ray job: Ray Data's console as in the driver.

    Ray Data configures its logging when a process first imports it, from ``RAY_DATA_LOGGING_CONFIG``
    when set: bm-ray's copy of Ray Data's default with the console at WARNING
    (``bm_ray/data/ray_data_logging.yaml``). Processes Ray Train or Ray Data start themselves (the
    dataset split coordinator, shuffle actors) log through it too. TensorFlow, whoever imports it first,
    starts as :mod:`bm_ray.tf_runtime` describes. Only light imports run here (no TF, no Ray Data).
    """
    from importlib import resources

    from bm_ray.tf_runtime import route_tensorflow_import

    route_tensorflow_import()  # Ray Train's backend imports TF itself, before any bm-ray code runs here
    if not verbose():
        # Deprecation notices Ray's own modules raise about Ray's own calls: nothing a user can act on.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray\.")
        config = resources.files("bm_ray") / "data" / "ray_data_logging.yaml"
        os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", str(config))
