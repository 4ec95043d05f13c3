"""Logging is configured once: the CLI's --quiet/--verbose set bm-ray's level here and in every Ray worker."""

from __future__ import annotations

import logging

import pytest
from typer.testing import CliRunner

from bm_ray.cli.main import app
from bm_ray.runtime.logs import LOG_LEVEL_ENV
from bm_ray.runtime.ray_init import runtime_env


@pytest.mark.parametrize(("flag", "level"), [("--quiet", "WARNING"), ("--verbose", "DEBUG"), (None, "INFO")])
def test_log_level_flag_reaches_the_logger_and_the_workers_env(
    monkeypatch: pytest.MonkeyPatch, flag: str | None, level: str
) -> None:
    monkeypatch.setenv(LOG_LEVEL_ENV, "INFO")  # restored after the test: the CLI writes it
    result = CliRunner().invoke(app, [*([flag] if flag else []), "model", "list"])
    assert result.exit_code == 0, result.output
    logger = logging.getLogger("bm_ray")
    assert logger.level == getattr(logging, level)
    assert runtime_env()["env_vars"][LOG_LEVEL_ENV] == level
    assert sum(getattr(h, "bm_ray_handler", False) for h in logger.handlers) == 1  # configured once


def test_quiet_and_verbose_together_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LOG_LEVEL_ENV, "INFO")
    result = CliRunner().invoke(app, ["--quiet", "--verbose", "model", "list"])
    assert result.exit_code == 2 and "choose one" in result.output


def test_ray_data_prints_no_progress_or_info_lines_off_a_terminal(ray_local, capfd) -> None:
    """Off a terminal (as here), Ray Data's progress blocks and INFO lines stay out of the console;
    its warnings still reach it."""
    import logging

    import ray

    from bm_ray.runtime.logs import quiet_ray_data_console

    quiet_ray_data_console()  # what init_ray does in every bm-ray driver
    ray.data.range(2000, override_num_blocks=4).map_batches(lambda b: b).materialize()
    seen = "".join(capfd.readouterr())
    assert "logging_progress" not in seen and "Running Dataset" not in seen
    assert "Starting execution" not in seen and "Execution plan" not in seen
    ray_data = logging.getLogger("ray.data")
    console = [h for h in ray_data.handlers if type(h).__module__.startswith("ray.") and hasattr(h, "stream")]
    assert console and all(h.level == logging.WARNING for h in console)  # warnings and errors still shown
    assert ray_data.isEnabledFor(logging.INFO)  # and everything still goes to ray-data.log


def test_ray_workers_of_a_bm_ray_job_keep_ray_data_info_lines_off_the_console(ray_local) -> None:
    """The job's worker_process_setup_hook points Ray Data at bm-ray's logging config in every worker."""
    import logging

    import ray

    @ray.remote(num_cpus=0.01)
    def ray_data_console() -> tuple[str | None, list[tuple[str, int, list[str]]]]:
        import os

        import ray.data  # noqa: F401  (configures the "ray.data" logger in this worker)

        handlers = logging.getLogger("ray.data").handlers
        described = [(type(h).__name__, h.level, [type(f).__name__ for f in h.filters]) for h in handlers]
        return os.environ.get("RAY_DATA_LOGGING_CONFIG"), described

    config, handlers = ray.get(ray_data_console.remote(), timeout=120)
    assert config is not None and config.endswith("ray_data_logging.yaml")
    console = [h for h in handlers if h[0] == "PlainRayHandler"]
    assert console == [
        ("PlainRayHandler", logging.WARNING, ["HiddenRecordFilter", "DropRayDataProgressNotice"])
    ]
    assert any(h[0] == "SessionFileHandler" and h[1] == logging.NOTSET for h in handlers)


@pytest.mark.parametrize(("level", "logger_level"), [("INFO", logging.WARNING), ("DEBUG", logging.NOTSET)])
def test_ray_train_report_lines_are_dropped_unless_verbose(
    monkeypatch: pytest.MonkeyPatch, level: str, logger_level: int
) -> None:
    """Ray Train's per-report INFO line comes from the logger its module really uses (named by its file)."""
    from ray.train.v2._internal.execution import context

    from bm_ray.runtime.logs import quiet_ray_train_reports

    monkeypatch.setenv(LOG_LEVEL_ENV, level)
    monkeypatch.setattr(context.logger, "level", logging.NOTSET)  # restored after the test
    quiet_ray_train_reports()
    assert context.logger.level == logger_level  # --verbose leaves Ray's logger as it is


@pytest.mark.parametrize(("level", "logger_level"), [("INFO", logging.WARNING), ("DEBUG", logging.NOTSET)])
def test_ray_serve_driver_info_lines_are_dropped_unless_verbose(
    monkeypatch: pytest.MonkeyPatch, level: str, logger_level: int
) -> None:
    """Serve's driver-side logger (what `serve.start`/`serve.run` log through) is at WARNING unless --verbose."""
    from ray.serve._private.constants import SERVE_LOGGER_NAME

    from bm_ray.runtime.logs import quiet_ray_serve_console

    serve_logger = logging.getLogger(SERVE_LOGGER_NAME)
    monkeypatch.setenv(LOG_LEVEL_ENV, level)
    monkeypatch.setattr(serve_logger, "level", logging.NOTSET)  # restored after the test
    quiet_ray_serve_console()
    assert serve_logger.level == logger_level
