"""Commands for Ray clusters: job files (`jobs validate`, `submit`, `jobs status/logs/stop`) and a local
development cluster (`cluster up/down`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from bm_ray.cli.main import app, cluster_app, fail, jobs_app
from bm_ray.cli.output import JsonOpt, command_output, console, json_text

JobServerOpt = Annotated[
    str | None, typer.Option("--address", help="Job server (dashboard); default $RAY_ADDRESS or :8265.")
]
SubmissionIdArg = Annotated[str, typer.Argument(help="Submission id (printed by `bm-ray submit`).")]


@jobs_app.command("validate")
def jobs_validate(
    files: Annotated[list[Path], typer.Argument(help="Job files (jobs/*.yaml).")],
    as_json: JsonOpt = False,
) -> None:
    """Validate job files: train/classify specs, and Serve configs (Ray's schema + ServeSpec args)."""
    from bm_ray.deploy.submit import validate_job_file
    from bm_ray.specs import SpecError

    with command_output(as_json) as out:
        checked: list[dict[str, Any]] = []
        for path in files:
            try:
                job = validate_job_file(path)
            except SpecError as err:  # every file is checked: all problems are reported at once
                checked.append({"path": str(path), "ok": False, "error": str(err)})
                continue
            checked.append({"path": str(path), "ok": True, "kind": getattr(job, "kind", "serve")})
        lines = [f"ok\t{c['path']}\t{c['kind']}" for c in checked if c["ok"]]
        out.result(checked, text="\n".join(lines) if lines else None)
    problems = [c["error"] for c in checked if not c["ok"]]
    if problems:
        fail("\n".join(problems))


@app.command()
def submit(
    file: Annotated[Path, typer.Argument(help="Job file: a train/classify spec or a Serve config.")],
    address: JobServerOpt = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait for the end; exit 0 on SUCCEEDED, else 1.")
    ] = False,
    follow: Annotated[bool, typer.Option("--follow", help="Stream the logs until it ends.")] = False,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a key: --set epochs=2.")] = None,
    ship_package: Annotated[
        bool, typer.Option("--ship-package", help="Upload bm_ray (image lacks it).")
    ] = False,
    pip: Annotated[
        list[str] | None, typer.Option("--pip", help="Extra pip requirement for the job (repeatable).")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Give up waiting after this many seconds.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate and print the equivalent Ray command.")
    ] = False,
    replace_all: Annotated[
        bool,
        typer.Option(
            "--replace-all", help="Serve config: remove the cluster's applications it does not contain."
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Submit a job file to a Ray cluster's job server; prints the submission id.

    Specs run as Ray jobs; the equivalent plain command (without --set) is
    `ray job submit --address A --working-dir DIR --runtime-env-json ENV -- bm-ray <kind> --spec FILE`.
    Serve configs are deployed like `serve deploy FILE --address A` (Serve REST API).
    """
    from bm_ray.deploy.submit import JobFailedError, load_job, ray_job_submit_command
    from bm_ray.deploy.submit import submit as submit_job
    from bm_ray.specs import deep_merge, parse_set_option

    overrides: dict[str, Any] = {}
    for assignment in set_ or []:
        overrides = deep_merge(overrides, parse_set_option(assignment))
    with command_output(as_json) as out:
        if dry_run:
            load_job(file, overrides)
            command = ray_job_submit_command(file, address)
            out.result({"command": command}, text=command)
            return
        try:
            submission_id = submit_job(
                file,
                address,
                overrides,
                wait,
                follow,
                ship_package,
                pip or [],
                timeout,
                echo=lambda chunk: typer.echo(chunk, nl=False),  # today's stdout: stderr under --json
                replace_all=replace_all,
            )
        except JobFailedError as err:
            console.print(err.log_tail, markup=False, highlight=False)
            raise
        out.result({"submission_id": submission_id}, text=submission_id)


@jobs_app.command("status")
def jobs_status(
    submission_id: SubmissionIdArg, address: JobServerOpt = None, as_json: JsonOpt = False
) -> None:
    """Status of a submitted job (JSON)."""
    from bm_ray.deploy.submit import job_status

    with command_output(as_json) as out:
        status = job_status(submission_id, address)
        out.result(status, text=json_text(status))


@jobs_app.command("logs")
def jobs_logs(submission_id: SubmissionIdArg, address: JobServerOpt = None) -> None:
    """Logs of a submitted job so far."""
    from bm_ray.deploy.submit import job_logs

    typer.echo(job_logs(submission_id, address), nl=False)


@jobs_app.command("stop")
def jobs_stop(submission_id: SubmissionIdArg, address: JobServerOpt = None, as_json: JsonOpt = False) -> None:
    """Stop a running job."""
    from bm_ray.deploy.submit import stop_job

    with command_output(as_json) as out:
        stopped = stop_job(submission_id, address)
        out.result(
            {"submission_id": submission_id, "stopping": stopped},
            text="stopping" if stopped else "already finished",
        )


@cluster_app.command("up")
def cluster_up_command(
    workers: Annotated[int, typer.Option(help="Worker nodes (each a separate `ray start`).")] = 2,
    cpus_per_worker: Annotated[int, typer.Option(help="CPUs per worker node.")] = 1,
    head_cpus: Annotated[int, typer.Option(help="CPUs of the head node.")] = 1,
    port: Annotated[int, typer.Option(help="GCS port of the head.")] = 6379,
    dashboard_port: Annotated[int, typer.Option(help="Dashboard / job server port.")] = 8265,
    temp_dir: Annotated[Path | None, typer.Option(help="Temp dir (default /tmp/bm-ray-PORT).")] = None,
    auth: Annotated[
        bool, typer.Option("--auth/--no-auth", help="Ray token auth (a fresh token per cluster).")
    ] = True,
    as_json: JsonOpt = False,
) -> None:
    """Start a head and N worker nodes on this machine; wait until all are alive."""
    from bm_ray.deploy.cluster import cluster_up

    with command_output(as_json) as out:
        info = cluster_up(workers, cpus_per_worker, head_cpus, port, dashboard_port, temp_dir, auth=auth)
        env = {**info.auth_env, "RAY_ADDRESS": info.dashboard_url}
        lines = [f"cluster up: {workers + 1} nodes, temp dir {info.temp_dir}"]
        if not auth:
            lines.append("  no token auth: anyone who reaches its ports can run code on it")
        lines.append(
            f"  export {' '.join(f'{k}={v}' for k, v in env.items())}   # bm-ray submit / jobs / serve, ray job submit"
        )
        lines.append(f"  bm-ray train --spec jobs/train.yaml --set address={info.address}")
        result = {
            "nodes": workers + 1,
            "address": info.address,
            "dashboard_url": info.dashboard_url,
            "temp_dir": info.temp_dir,
            "auth": auth,
            "env": env,
        }
        out.result(result, text="\n".join(lines))


@cluster_app.command("down")
def cluster_down_command(
    port: Annotated[int, typer.Option(help="GCS port the cluster was started with.")] = 6379,
    temp_dir: Annotated[Path | None, typer.Option(help="Its temp dir (default /tmp/bm-ray-PORT).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Stop exactly the cluster started by `bm-ray cluster up` (other Ray clusters are left alone)."""
    from bm_ray.deploy.cluster import cluster_down, default_temp_dir

    with command_output(as_json) as out:
        stopped = cluster_down(temp_dir or default_temp_dir(port))
        out.result({"processes_stopped": stopped}, text=f"stopped {stopped} processes")
