"""Job files (`jobs/*.yaml`): validation, and submission to a Ray cluster's job server.

A job file is a bm-ray spec with a `kind` (train, classify, tune, compare), submitted as a Ray job whose entrypoint is the
matching `bm-ray <kind> --spec spec.yaml`, or a Ray Serve config (it has `applications`). Serve configs are
not jobs: they are deployed through the Serve REST API of the dashboard, exactly as `serve deploy FILE`
does and as KubeRay does with a RayService's serveConfigV2. A job would only wrap that same HTTP call, and
Serve applications cannot inherit a job's uploaded working_dir / py_modules, so nothing would be gained.
A Serve config replaces every application on the cluster, so one that would remove others is refused unless
the caller says `replace_all`.

Every call presents the Ray auth token found by Ray's own conventions (`RAY_AUTH_TOKEN`, the file
`RAY_AUTH_TOKEN_PATH`, or `~/.ray/auth_token` with `RAY_AUTH_MODE=token`; see bm_ray.runtime.auth.ray_auth_token).
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from ray.job_submission import JobStatus, JobSubmissionClient
from ray.serve.schema import ServeApplicationSchema, ServeDeploySchema

import bm_ray
from bm_ray.layout import SERVE_IMPORT_PATH
from bm_ray.runtime.auth import RayAuthError, ray_auth_headers
from bm_ray.runtime.compat import serve_submission_client
from bm_ray.runtime.ray_init import WORKER_ENV_VARS, WORKER_SETUP_HOOK
from bm_ray.specs import (
    ClassifySpec,
    CompareSpec,
    ServeSpec,
    SpecError,
    TrainSpec,
    TuneSpec,
    format_validation_error,
    read_yaml,
    validate_spec,
)

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
SPEC_FILE = "spec.yaml"
JOB_KINDS: dict[str, type[TrainSpec | ClassifySpec | TuneSpec | CompareSpec]] = {
    "train": TrainSpec,
    "classify": ClassifySpec,
    "tune": TuneSpec,
    "compare": CompareSpec,
}
TERMINAL = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
LOG_TAIL_LINES = 40
AUTH_HINT = (
    "the cluster requires its Ray auth token: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH=<token file> "
    "(or RAY_AUTH_TOKEN); `bm-ray cluster up` prints them, on KubeRay the token is the Secret's auth_token"
)

JobFile = TrainSpec | ClassifySpec | TuneSpec | CompareSpec | ServeDeploySchema


class JobsError(RuntimeError):
    """A job server that cannot be reached or refuses a request; the message is one line for the user."""


class JobFailedError(JobsError):
    """A job that ended FAILED or STOPPED (or a Serve deploy that failed); carries its log tail."""

    def __init__(self, message: str, status: str, log_tail: str) -> None:
        super().__init__(message)
        self.status = status
        self.log_tail = log_tail


def resolve_address(address: str | None) -> str:
    """The job server address: `address`, else `RAY_ADDRESS`, else the local default."""
    return address or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS


def _unknown_keys(data: dict[str, Any], model: type[BaseModel], where: str) -> list[str]:
    # Ray's Serve schemas accept unknown keys (forward compatibility); a typo must not pass silently.
    known = set(model.model_fields) | {f.alias for f in model.model_fields.values() if f.alias}
    return [f"{where}{key}: unknown key" for key in data if key not in known]


def _validate_serve_config(data: dict[str, Any], source: str) -> ServeDeploySchema:
    problems = _unknown_keys(data, ServeDeploySchema, "")
    for index, app in enumerate(data.get("applications") or []):
        if isinstance(app, dict):
            problems += _unknown_keys(app, ServeApplicationSchema, f"applications.{index}.")
    if problems:
        raise SpecError("\n".join(f"{source}: {problem}" for problem in problems))
    try:
        config = ServeDeploySchema.model_validate(data)
    except ValidationError as err:
        raise SpecError(format_validation_error(err, source)) from None
    for index, app in enumerate(config.applications):
        if app.import_path == SERVE_IMPORT_PATH:
            validate_spec(ServeSpec, app.args, f"{source}: applications.{index}.args")
    return config


def validate_job_data(data: dict[str, Any], source: str) -> JobFile:
    """Validate a job mapping: a spec with `kind` of JOB_KINDS, or a Serve config (`applications`)."""
    if "applications" in data:
        return _validate_serve_config(data, source)
    kind = data.get("kind")
    if kind not in JOB_KINDS:
        raise SpecError(
            f"{source}: kind: expected one of {', '.join(JOB_KINDS)} (got {kind!r}), "
            "or a Ray Serve config with `applications`"
        )
    return validate_spec(JOB_KINDS[kind], data, source)


def validate_job_file(path: str | Path) -> JobFile:
    """Validate a job file; :class:`SpecError` names the file and the key of every problem."""
    return validate_job_data(read_yaml(path), str(path))


def merge_overrides(base: Any, override: Any) -> Any:
    """`deep_merge` that also reaches into lists by index, so `--set applications.0.args.max_replicas=8`
    changes one application of a Serve config instead of replacing the list."""
    if isinstance(base, dict) and isinstance(override, dict):
        return {**base, **{k: merge_overrides(base[k], v) if k in base else v for k, v in override.items()}}
    if isinstance(base, list) and isinstance(override, dict) and all(str(k).isdigit() for k in override):
        items = list(base)
        for key, value in override.items():
            if int(key) >= len(items):
                raise SpecError(f"--set: index {key} is past the end of a list of {len(items)}")
            items[int(key)] = merge_overrides(items[int(key)], value)
        return items
    return override


def load_job(path: str | Path, overrides: dict[str, Any] | None = None) -> tuple[dict[str, Any], JobFile]:
    """Read a job file, apply `--set` overrides and validate; returns the merged mapping and its model."""
    data = merge_overrides(read_yaml(path), overrides or {})
    return data, validate_job_data(data, str(path))


def _auth_headers() -> dict[str, str]:
    try:
        return ray_auth_headers()
    except RayAuthError as err:
        raise JobsError(str(err)) from None


def _client(address: str) -> JobSubmissionClient:
    headers = _auth_headers()
    try:
        return JobSubmissionClient(address, headers=headers)
    except Exception as err:  # Ray raises ConnectionError, ValueError or RuntimeError depending on the cause
        line = _first_line(err)
        if _is_auth_refusal(line):
            raise JobsError(f"the Ray job server at {address} refused the request: {line}") from None
        raise JobsError(f"cannot reach the Ray job server at {address}: {line}") from None


def _is_auth_refusal(line: str) -> bool:
    # Ray's SDK words its 401 / 403 answers so (a private wording: see bm_ray.runtime.compat).
    return line.startswith(("Authentication required", "Authentication failed"))


def _first_line(err: BaseException) -> str:
    """The first line of an error; for Ray's 401/403 answers, plus what to set."""
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    return f"{line} ({AUTH_HINT})" if _is_auth_refusal(line) else line


def _job_command(kind: str, ship_package: bool) -> str:
    # Shipped as py_modules, bm_ray is importable but its `bm-ray` console script is not installed.
    program = "python -c 'from bm_ray.cli import run_cli; run_cli()'" if ship_package else "bm-ray"
    return f"{program} {kind} --spec {SPEC_FILE}"


def job_runtime_env(
    working_dir: str | Path | None = None, ship_package: bool = False, pip: list[str] | None = None
) -> dict[str, Any]:
    """runtime_env of a submitted job: worker env vars, optional working_dir, bm_ray package and pip extras."""
    env: dict[str, Any] = {"env_vars": dict(WORKER_ENV_VARS), "worker_process_setup_hook": WORKER_SETUP_HOOK}
    if working_dir is not None:
        env["working_dir"] = str(working_dir)
    if ship_package:
        env["py_modules"] = [str(Path(bm_ray.__file__).parent)]
    if pip:
        env["pip"] = list(pip)
    return env


def submit_entrypoint(
    entrypoint: str, address: str | None = None, runtime_env: dict[str, Any] | None = None
) -> str:
    """Submit a raw entrypoint as a Ray job; returns its submission id."""
    address = resolve_address(address)
    client = _client(address)
    try:
        return client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
    except Exception as err:  # the job server's refusal comes back as a RuntimeError with the HTTP body
        raise JobsError(f"the job server at {address} refused the job: {_first_line(err)}") from None


def _log_tail(logs: str) -> str:
    return "\n".join(logs.rstrip().splitlines()[-LOG_TAIL_LINES:])


async def _stream_logs(client: JobSubmissionClient, submission_id: str, echo: Callable[[str], None]) -> None:
    async for chunk in client.tail_job_logs(submission_id):
        echo(chunk)


def wait_job(
    submission_id: str,
    address: str | None = None,
    follow: bool = False,
    timeout_s: float | None = None,
    poll_s: float = 1.0,
    echo: Callable[[str], None] = sys.stdout.write,
) -> JobStatus:
    """Wait until the job is terminal (streaming its logs through `echo` with `follow`).

    Returns SUCCEEDED; raises :class:`JobFailedError` (with the log tail) for FAILED/STOPPED and
    :class:`JobsError` when `timeout_s` passes first.
    """
    address = resolve_address(address)
    client = _client(address)
    if follow:
        asyncio.run(_stream_logs(client, submission_id, echo))
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while (status := _call(client.get_job_status, submission_id)) not in TERMINAL:
        if deadline is not None and time.monotonic() > deadline:
            raise JobsError(f"job {submission_id} still {status} after {timeout_s:.0f}s")
        time.sleep(poll_s)
    if status == JobStatus.SUCCEEDED:
        return status
    info = _call(client.get_job_info, submission_id)
    tail = _log_tail(_call(client.get_job_logs, submission_id))
    raise JobFailedError(f"job {submission_id} {status}: {info.message or ''}".rstrip(": "), status, tail)


def _call(method: Callable[[str], Any], submission_id: str) -> Any:
    try:
        return method(submission_id)
    except Exception as err:  # unknown ids and server errors arrive as RuntimeError("Request failed ...")
        raise JobsError(f"job {submission_id}: {_first_line(err)}") from None


def _serve_call(address: str, method: str, *args: Any) -> Any:
    try:
        return getattr(serve_submission_client(address, _auth_headers()), method)(*args)
    except Exception as err:  # connection errors and RuntimeError("... status code ...") alike
        raise JobsError(f"Serve API at {address}: {_first_line(err)}") from None


def serve_applications(address: str | None = None) -> list[str]:
    """Names of the Serve applications deployed on the cluster (none when Serve is not running)."""
    details = _serve_call(resolve_address(address), "get_serve_details")
    return sorted(details.get("applications") or {})


def wait_serve(
    names: list[str], address: str | None = None, timeout_s: float = 600, poll_s: float = 2
) -> None:
    """Wait until the Serve applications `names` are RUNNING; :class:`JobFailedError` when one fails."""
    address = resolve_address(address)
    deadline = time.monotonic() + timeout_s
    while True:
        apps = _serve_call(address, "get_serve_details").get("applications", {})
        statuses = {name: apps.get(name, {}).get("status", "NOT_STARTED") for name in names}
        failed = {n: s for n, s in statuses.items() if s in ("DEPLOY_FAILED", "UNHEALTHY")}
        if failed:
            detail = "\n".join(f"{n}: {apps[n].get('message', '')}" for n in failed)
            raise JobFailedError(f"Serve applications failed: {failed}", "FAILED", detail)
        if all(s == "RUNNING" for s in statuses.values()):
            return
        if time.monotonic() > deadline:
            raise JobsError(f"Serve applications not RUNNING after {timeout_s:.0f}s: {statuses}")
        time.sleep(poll_s)


def submit(
    path: str | Path,
    address: str | None = None,
    overrides: dict[str, Any] | None = None,
    wait: bool = False,
    follow: bool = False,
    ship_package: bool = False,
    pip: list[str] | None = None,
    timeout_s: float | None = None,
    echo: Callable[[str], None] = sys.stdout.write,
    replace_all: bool = False,
) -> str:
    """Validate a job file (with `--set` overrides) and submit it; returns the submission id.

    Specs run as Ray jobs (`bm-ray <kind> --spec spec.yaml` in a working_dir holding just the merged spec);
    Serve configs are deployed through the Serve REST API and return `serve:<app>,...`; one that would remove
    applications running on the cluster is refused, naming them, unless `replace_all`. With `wait` or
    `follow` this returns only on success; failures raise :class:`JobFailedError`.
    """
    address = resolve_address(address)
    data, job = load_job(path, overrides)
    if isinstance(job, ServeDeploySchema):
        if ship_package or pip:
            raise JobsError(
                "--ship-package/--pip do not apply to Serve configs: Serve needs remote URIs in an "
                "application's runtime_env; run the cluster image (cluster/Dockerfile) instead"
            )
        names = [app.name for app in job.applications]
        removed = sorted(set(serve_applications(address)) - set(names))
        if removed and not replace_all:
            raise JobsError(
                f"the cluster at {address} runs Serve applications that {Path(path).name} does not contain: "
                f"{', '.join(removed)}; deploying it would remove them. Add them to the config, or pass "
                "--replace-all to replace every application"
            )
        if removed:
            echo(f"replacing the cluster's Serve applications: removing {', '.join(removed)}\n")
        _serve_call(address, "deploy_applications", job.model_dump(mode="json", exclude_unset=True))
        if wait or follow:
            wait_serve(names, address, timeout_s=timeout_s or 600)
        return "serve:" + ",".join(names)
    with tempfile.TemporaryDirectory(prefix="bm-ray-job-") as workdir:
        (Path(workdir) / SPEC_FILE).write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        submission_id = submit_entrypoint(
            _job_command(job.kind, ship_package), address, job_runtime_env(workdir, ship_package, pip)
        )
    if wait or follow:
        wait_job(submission_id, address, follow=follow, timeout_s=timeout_s, echo=echo)
    return submission_id


def ray_job_submit_command(path: str | Path, address: str | None = None) -> str:
    """The plain Ray CLI command equivalent to `bm-ray submit PATH` (without `--set` overrides).

    `ray job submit --address A --working-dir DIR --runtime-env-json ENV -- bm-ray <kind> --spec FILE`, or
    `serve deploy FILE --address A` for a Serve config.
    """
    address = resolve_address(address)
    path = Path(path)
    job = validate_job_file(path)
    if isinstance(job, ServeDeploySchema):
        return shlex.join(["serve", "deploy", str(path), "--address", address])
    command = ["ray", "job", "submit", "--address", address, "--working-dir", str(path.parent)]
    command += ["--runtime-env-json", json.dumps(job_runtime_env()), "--"]
    return shlex.join(command) + f" bm-ray {job.kind} --spec {shlex.quote(path.name)}"


def job_status(submission_id: str, address: str | None = None) -> dict[str, Any]:
    """Status, message, entrypoint and times of a submitted job."""
    info = _call(_client(resolve_address(address)).get_job_info, submission_id)
    return {
        "submission_id": info.submission_id,
        "status": str(info.status),
        "message": info.message,
        "entrypoint": info.entrypoint,
        "start_time": info.start_time,
        "end_time": info.end_time,
    }


def job_logs(submission_id: str, address: str | None = None) -> str:
    """All logs of a submitted job so far."""
    return _call(_client(resolve_address(address)).get_job_logs, submission_id)


def stop_job(submission_id: str, address: str | None = None) -> bool:
    """Ask the job server to stop a job; False when it had already finished."""
    return _call(_client(resolve_address(address)).stop_job, submission_id)
