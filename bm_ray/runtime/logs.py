"""bm-ray's logging, configured once per process, and the console levels of Ray's own libraries.

A leaf module (no Ray, no TensorFlow import; of bm_ray only :mod:`bm_ray.runtime.compat`, itself a leaf):
every other layer may log through it."""

from __future__ import annotations

import logging
import os

from bm_ray.runtime.compat import RAY_TRAIN_REPORT_MODULE

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
