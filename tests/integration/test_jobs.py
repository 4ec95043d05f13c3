"""Job files and submission: validation offline, then real jobs on a local head + worker-node cluster."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
import yaml
from cluster_fixtures import local_cluster  # noqa: F401  (pytest fixture)
from tiny_model import make_tiny_model
from typer.testing import CliRunner

from bm_ray.cli.main import app
from bm_ray.deploy.submit import (
    JobFailedError,
    JobsError,
    job_logs,
    job_runtime_env,
    job_status,
    load_job,
    merge_overrides,
    ray_job_submit_command,
    serve_applications,
    stop_job,
    submit,
    submit_entrypoint,
    validate_job_file,
    wait_job,
)
from bm_ray.runtime.ray_init import free_port
from bm_ray.specs import ClassifySpec, CompareSpec, ServeSpec, SpecError, TrainSpec, parse_set_option

JOBS = Path(__file__).resolve().parents[2] / "jobs"
SAMPLE = Path(__file__).resolve().parents[2] / "bm_ray" / "data" / "sample_news.jsonl"
WAIT_S = 120


def _write(tmp_path: Path, name: str, data: dict) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _overrides(*assignments: str) -> dict:
    """`--set` assignments merged into one override mapping."""
    overrides: dict = {}
    for assignment in assignments:
        overrides = merge_overrides(overrides, parse_set_option(assignment))
    return overrides


def _load(name: str) -> dict:
    return yaml.safe_load((JOBS / name).read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    ("name", "model"),
    [
        ("train.yaml", TrainSpec),
        ("classify.yaml", ClassifySpec),
        ("compare.yaml", CompareSpec),
        ("serve.yaml", None),
    ],
)
def test_every_job_file_validates(name: str, model: type | None) -> None:
    job = validate_job_file(JOBS / name)
    if model is not None:
        assert isinstance(job, model)
    else:
        assert job.applications[0].import_path == "bm_ray.serve:build_app"
        ServeSpec.model_validate(job.applications[0].args)


@pytest.mark.parametrize(
    ("name", "change", "key"),
    [
        ("train.yaml", {"epoch": 2}, "epoch"),
        ("train.yaml", {"epochs": "many"}, "epochs"),
        ("classify.yaml", {"input": {"formt": "csv"}}, "input.formt"),
        ("serve.yaml", {"proxy_locaton": "HeadOnly"}, "proxy_locaton"),
        ("serve.yaml", {"applications": {"0": {"route_prefx": "/x"}}}, "applications.0.route_prefx"),
        (
            "serve.yaml",
            {"applications": {"0": {"args": {"max_replicas": -1}}}},
            "applications.0.args: max_replicas",
        ),
        ("serve.yaml", {"applications": {"0": {"args": {"batch": 1}}}}, "applications.0.args: batch"),
        ("serve.yaml", {"http_options": {"port": "eighty"}}, "http_options.port"),
    ],
)
def test_bad_job_file_names_file_and_key(tmp_path: Path, name: str, change: dict, key: str) -> None:
    data, _ = load_job(JOBS / name)
    bad = _write(tmp_path, name, merge_overrides(data, change))
    with pytest.raises(SpecError) as err:
        validate_job_file(bad)
    assert f"{bad}: {key}" in str(err.value)


def test_unknown_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"kind: expected one of train, classify"):
        validate_job_file(_write(tmp_path, "x.yaml", {"kind": "evaluat"}))


def test_set_overrides_reach_list_items_and_are_validated() -> None:
    data, job = load_job(JOBS / "serve.yaml", parse_set_option("applications.0.args.max_replicas=8"))
    assert job.applications[0].args["max_replicas"] == 8
    assert data["applications"][0]["import_path"] == "bm_ray.serve:build_app"
    with pytest.raises(SpecError, match="past the end"):
        load_job(JOBS / "serve.yaml", parse_set_option("applications.3.name=x"))
    with pytest.raises(SpecError, match="epochs"):
        load_job(JOBS / "train.yaml", parse_set_option("epochs=0"))


def test_ray_job_submit_command() -> None:
    command = ray_job_submit_command(JOBS / "train.yaml", "http://head:8265")
    assert command.startswith(
        f"ray job submit --address http://head:8265 --working-dir {JOBS} --runtime-env-json"
    )
    assert "TF_USE_LEGACY_KERAS" in command
    assert command.endswith("-- bm-ray train --spec train.yaml")
    assert ray_job_submit_command(JOBS / "serve.yaml", "http://head:8265") == (
        f"serve deploy {JOBS / 'serve.yaml'} --address http://head:8265"
    )


def test_unreachable_address_is_one_line_error() -> None:
    with pytest.raises(JobsError, match=r"cannot reach the Ray job server at http://127.0.0.1:9") as err:
        submit(JOBS / "train.yaml", address="http://127.0.0.1:9")
    assert "\n" not in str(err.value)


def test_serve_config_refuses_ship_package() -> None:
    with pytest.raises(JobsError, match="do not apply to Serve configs"):
        submit(JOBS / "serve.yaml", address="http://127.0.0.1:9", ship_package=True)


def test_cli_validate_and_dry_run(tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["jobs", "validate", *(str(p) for p in sorted(JOBS.glob("*.yaml")))])
    assert ok.exit_code == 0, ok.output
    bad = _write(tmp_path, "bad.yaml", {**_load("train.yaml"), "epoch": 1})
    refused = runner.invoke(app, ["jobs", "validate", str(bad)])
    assert refused.exit_code == 2
    assert "epoch" in refused.output
    dry = runner.invoke(
        app, ["submit", str(JOBS / "classify.yaml"), "--dry-run", "--address", "http://h:8265"]
    )
    assert dry.exit_code == 0, dry.output
    assert "ray job submit --address http://h:8265" in dry.output


# --- real jobs on a local multi-node cluster -------------------------------------------------------------


def test_job_succeeds_with_real_bm_ray_entrypoint(local_cluster, tmp_path: Path) -> None:  # noqa: F811
    workdir = tmp_path / "job"
    workdir.mkdir()
    shutil.copy(JOBS / "train.yaml", workdir / "spec.yaml")
    job_id = submit_entrypoint(
        "bm-ray jobs validate spec.yaml", local_cluster.dashboard_url, job_runtime_env(workdir)
    )
    chunks: list[str] = []
    assert wait_job(job_id, local_cluster.dashboard_url, follow=True, timeout_s=WAIT_S, echo=chunks.append)
    assert job_status(job_id, local_cluster.dashboard_url)["status"] == "SUCCEEDED"
    assert "spec.yaml" in "".join(chunks)
    assert "spec.yaml" in job_logs(job_id, local_cluster.dashboard_url)


def test_failed_job_reports_log_tail(local_cluster) -> None:  # noqa: F811
    job_id = submit_entrypoint(
        "python -c 'import sys; print(\"boom-42\"); sys.exit(3)'",
        local_cluster.dashboard_url,
        job_runtime_env(),
    )
    with pytest.raises(JobFailedError) as err:
        wait_job(job_id, local_cluster.dashboard_url, timeout_s=WAIT_S)
    assert err.value.status == "FAILED"
    assert "boom-42" in err.value.log_tail


def test_stop_job_stops_a_running_job(local_cluster) -> None:  # noqa: F811
    address = local_cluster.dashboard_url
    job_id = submit_entrypoint("python -c 'import time; time.sleep(120)'", address, job_runtime_env())
    deadline = time.monotonic() + WAIT_S
    while job_status(job_id, address)["status"] != "RUNNING":
        assert time.monotonic() < deadline, "job never started"
        time.sleep(0.5)
    assert stop_job(job_id, address)
    with pytest.raises(JobFailedError) as err:
        wait_job(job_id, address, timeout_s=WAIT_S)
    assert err.value.status == "STOPPED"


def test_token_auth_submit_needs_the_token(local_cluster, monkeypatch) -> None:  # noqa: F811
    """The cluster runs with token auth: a submit with the token (Ray's variables) runs, one without is refused."""
    address = local_cluster.dashboard_url
    job_id = submit_entrypoint("python -c 'print(\"authed\")'", address, job_runtime_env())
    assert wait_job(job_id, address, timeout_s=WAIT_S) == "SUCCEEDED"
    assert local_cluster.auth_env["RAY_AUTH_MODE"] == "token"
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name)
    assert httpx.get(f"{address}/api/jobs/", timeout=60).status_code == 401
    # Ray's client may still present its default token file (~/.ray/auth_token, written by any local Ray
    # 2.60 start on this machine), which is not this cluster's token: either way the call is refused.
    refused_without_token = r"Authentication (required|failed)"
    with pytest.raises(JobsError, match=refused_without_token + r".*RAY_AUTH_TOKEN_PATH"):
        submit_entrypoint("python -c 'print(1)'", address, job_runtime_env())
    with pytest.raises(JobsError, match=refused_without_token):
        job_status(job_id, address)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "not-the-token")
    with pytest.raises(JobsError, match="Authentication failed"):
        submit(JOBS / "train.yaml", address)
    refused = CliRunner().invoke(app, ["jobs", "logs", job_id, "--address", address])
    assert refused.exit_code != 0
    assert "refused the request: Authentication failed" in " ".join(refused.output.split())
    monkeypatch.setenv("RAY_AUTH_TOKEN", Path(local_cluster.token_path).read_text(encoding="utf-8"))
    assert "authed" in job_logs(job_id, address)  # the token alone, without RAY_AUTH_MODE, is presented


def test_unknown_job_id_is_one_line_error(local_cluster) -> None:  # noqa: F811
    with pytest.raises(JobsError, match="no-such-job"):
        job_status("no-such-job", local_cluster.dashboard_url)


def test_submit_classify_spec_succeeds_with_complete_outputs(
    local_cluster,  # noqa: F811
    tmp_path: Path,
    tokenizer_dir: str,
) -> None:
    """jobs/classify.yaml, pointed at a tiny model and the bundled sample corpus, runs to SUCCEEDED."""
    model = make_tiny_model(tmp_path / "model", ["World", "Sports", "Business", "Sci/Tech"], tokenizer_dir)
    output = tmp_path / "labels"
    overrides = _overrides(
        f"model={model}",
        f"input.input={SAMPLE}",
        "input.format=jsonl",
        "input.text_fields=[title, body]",
        "input.keep_fields=[]",
        f"output={output}",
        "actors=1",
        "cpus_per_actor=1",
    )
    job_id = submit(
        JOBS / "classify.yaml", local_cluster.dashboard_url, overrides, wait=True, timeout_s=WAIT_S * 2
    )
    assert job_status(job_id, local_cluster.dashboard_url)["status"] == "SUCCEEDED"
    summary = json.loads((output / "summary.json").read_text())
    assert summary["rows_read"] == summary["rows_classified"] + summary["rows_rejected"] == 406
    assert summary["rows_classified"] == 400
    predictions = pq.read_table(output / "predictions")
    rejects = pq.read_table(output / "rejects")
    ids = predictions.column("id").to_pylist() + rejects.column("id").to_pylist()
    assert len(ids) == len(set(ids)) + 1  # sn-0007 appears once predicted, once rejected as duplicate_id
    assert set(predictions.column("label").to_pylist()) <= {"World", "Sports", "Business", "Sci/Tech"}


def test_submit_train_spec_succeeds_with_a_model_dir(
    local_cluster,  # noqa: F811
    tmp_path: Path,
    tokenizer_dir: str,
) -> None:
    """jobs/train.yaml on the sample corpus with a tiny base model trains and writes a loadable model dir."""
    base = make_tiny_model(tmp_path / "base", ["a", "b"], tokenizer_dir)
    output = tmp_path / "model"
    overrides = _overrides(
        f"data.input={SAMPLE}",
        "data.text_fields=[title, body]",
        f"base_model={base}",
        f"output={output}",
        "workers=1",
        "cpus_per_worker=1",
        "epochs=1",
        "batch_size=16",
        "resume=false",
    )
    job_id = submit(
        JOBS / "train.yaml", local_cluster.dashboard_url, overrides, wait=True, timeout_s=WAIT_S * 3
    )
    assert job_status(job_id, local_cluster.dashboard_url)["status"] == "SUCCEEDED"
    labels = json.loads((output / "labels.json").read_text())["labels"]
    assert labels == ["Business", "Sci/Tech", "Sports", "World"]
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["data"]["train_data"]["rows_read"] == 406  # 400 articles + 6 broken rows, blank line apart


def test_submit_serve_config_deploys_a_working_endpoint(
    local_cluster,  # noqa: F811
    tmp_path: Path,
    tokenizer_dir: str,
) -> None:
    """jobs/serve.yaml through the Serve REST API: the app reaches RUNNING and classifies over loopback with
    the API key read from its file; a config that would remove it is refused unless --replace-all."""
    address = local_cluster.dashboard_url
    model = make_tiny_model(tmp_path / "model", ["World", "Sports"], tokenizer_dir)
    key_file = tmp_path / "api-key"
    key_file.write_text("k-123\n", encoding="utf-8")
    port = free_port()
    overrides = _overrides(
        "http_options.host=127.0.0.1",
        f"http_options.port={port}",
        f"applications.0.args.model={model}",
        "applications.0.args.min_replicas=1",
        "applications.0.args.max_replicas=1",
        "applications.0.args.cpus_per_replica=0.5",
        f"applications.0.args.api_key_file={key_file}",
    )
    assert submit(JOBS / "serve.yaml", address, overrides, wait=True, timeout_s=WAIT_S * 2) == "serve:bm-ray"
    url = f"http://127.0.0.1:{port}/v1/classify"
    assert httpx.post(url, json={"texts": ["a match report"]}, timeout=60).status_code == 401
    response = httpx.post(
        url, json={"texts": ["a match report"]}, headers={"Authorization": "Bearer k-123"}, timeout=60
    )
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["label"] in {"World", "Sports"}

    # The same config under another application name would remove `bm-ray`: refused, naming it.
    other = _write(tmp_path, "other.yaml", merge_overrides(_load("serve.yaml"), overrides))
    renamed = _overrides("applications.0.name=bm-ray-b", "applications.0.route_prefix=/b")
    with pytest.raises(JobsError, match=r"does not contain: bm-ray; .*--replace-all"):
        submit(other, address, renamed)
    cli = CliRunner().invoke(
        app, ["submit", str(other), "--address", address, "--set", "applications.0.name=x"]
    )
    said_by_cli = " ".join(cli.output.split())
    assert (
        cli.exit_code != 0 and "does not contain: bm-ray;" in said_by_cli and "--replace-all" in said_by_cli
    )
    assert serve_applications(address) == ["bm-ray"]
    said: list[str] = []
    result = submit(
        other, address, renamed, wait=True, timeout_s=WAIT_S * 2, echo=said.append, replace_all=True
    )
    assert result == "serve:bm-ray-b"
    assert "removing bm-ray" in "".join(said)
    assert serve_applications(address) == ["bm-ray-b"]


def test_serve_config_takes_one_api_key_source(tmp_path: Path) -> None:
    both = _overrides("applications.0.args.api_key_env=BM_RAY_API_KEY")
    with pytest.raises(SpecError, match="api_key_env and api_key_file"):
        load_job(JOBS / "serve.yaml", both)
    assert (
        load_job(JOBS / "serve.yaml")[1].applications[0].args["api_key_file"] == "/etc/bm-ray/api-key/api-key"
    )
