"""Node loss on a real local multi-node cluster (`bm_ray.deploy.cluster`: a head and worker nodes, each its own
`ray start`): a worker node's raylet is SIGKILLed (its workers die with it) during a bulk classification of
100,000 rows, during a Ray Train run and under Serve load.

Opt-in (marker `chaos`, ``BM_RAY_CHAOS=1``, ``make test-chaos``): each test starts its own cluster and takes
minutes. Only this cluster's processes are ever signalled (a raylet is found by the cluster's temp dir and
its node id); every cluster is stopped with `cluster_down`, never `ray stop`. Each test writes its figures to
``$BM_RAY_CHAOS_FIGURES`` (a JSON file per test) when that variable names a directory.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from cluster_fixtures import running_cluster
from tiny_model import make_tiny_model
from trainings import write_synthetic

from bm_ray.bench.load import drive, status_report, text_shots
from bm_ray.bench.serve_faults import load_with_fault
from bm_ray.deploy.cluster import WORKER_RESOURCE, ClusterInfo, _ray_start, cluster_down, cluster_up
from bm_ray.layout import SAFETENSORS_FILE
from bm_ray.model.engine import Predictor
from bm_ray.model.registry import read_model_info
from bm_ray.runtime.auth import ray_auth_headers
from bm_ray.runtime.ray_init import free_port

pytestmark = pytest.mark.chaos

LABELS = ["x", "y", "z"]
WORDS = ["markets", "rally", "as", "central", "bank", "signals", "pause", "while", "tech", "earnings"]
ROWS = 100_000
EMPTY_EVERY = 997
"""Every so many rows the text is empty: a reject (empty_text) that keeps its id."""
CLASSIFY_DEADLINE_S = 1500
"""One classify run, kill included, must end within this (else it hung: killed and failed)."""
BM_RAY = Path(sys.executable).with_name("bm-ray")


# --- the cluster and its nodes ----------------------------------------------------------------------------


def add_worker_node(info: ClusterInfo, cpus: int, timeout_s: float = 300) -> None:
    """Start one more worker node of the cluster (a replacement for a lost one), as `cluster_up` starts them,
    and wait until it is alive."""
    before = len(worker_nodes(info))
    late = _ray_start(
        [f"--address={info.address}", f"--num-cpus={cpus}"], info, {WORKER_RESOURCE: 1}, timeout_s
    )
    deadline = time.monotonic() + timeout_s
    while len(worker_nodes(info)) <= before:
        assert time.monotonic() < deadline, f"the added node is not alive after {timeout_s:.0f}s ({late})"
        time.sleep(1)


def state_list(info: ClusterInfo, kind: str, **equal: str) -> list[dict[str, Any]]:
    """Ray's state API (`/api/v0/<kind>` of the dashboard) with the cluster's token, filtered by `equal`.

    Over HTTP with explicit headers: Ray's Python state client reads the auth mode once per process.
    """
    params: list[tuple[str, str | int]] = [("limit", 10_000), ("detail", "true")]
    for key, value in equal.items():
        params += [("filter_keys", key), ("filter_predicates", "="), ("filter_values", value)]
    reply = httpx.get(
        f"{info.dashboard_url}/api/v0/{kind}",
        params=params,
        headers=ray_auth_headers(info.auth_env),
        timeout=30,
    )
    reply.raise_for_status()
    return reply.json()["data"]["result"]["result"]


def worker_nodes(info: ClusterInfo) -> list[str]:
    """Node ids of the cluster's alive worker nodes (those with the `bm-ray-worker` resource), sorted."""
    nodes = state_list(info, "nodes", state="ALIVE")
    return sorted(n["node_id"] for n in nodes if WORKER_RESOURCE in (n.get("resources_total") or {}))


def alive_actors(info: ClusterInfo, match: str) -> list[dict[str, Any]]:
    """The cluster's alive actors whose class name or repr (Ray Data's `MapWorker(MapBatches(...))`) has `match`."""
    actors = state_list(info, "actors", state="ALIVE")
    return [a for a in actors if match in f"{a.get('class_name')} {a.get('repr_name')}"]


def raylets(temp_dir: str) -> list[psutil.Process]:
    """The raylets of the cluster under `temp_dir` (their command lines name it), oldest first."""
    found = [
        proc
        for proc in psutil.process_iter(["pid", "cmdline", "create_time"])
        if (cmdline := proc.info["cmdline"])
        and Path(cmdline[0]).name == "raylet"
        and any(temp_dir in arg for arg in cmdline)
    ]
    return sorted(found, key=lambda proc: proc.info["create_time"])


def raylet_pid(info: ClusterInfo, node_id: str) -> int:
    """The pid of the raylet of node `node_id` of this cluster."""
    for proc in raylets(info.temp_dir):
        if f"--node_id={node_id}" in proc.info["cmdline"]:
            return proc.info["pid"]
    raise AssertionError(f"no raylet of node {node_id} under {info.temp_dir}")


def kill_node(info: ClusterInfo, node_id: str) -> float:
    """SIGKILL the raylet of node `node_id` (its workers exit with it); returns the time.monotonic() of the kill."""
    os.kill(raylet_pid(info, node_id), signal.SIGKILL)
    return time.monotonic()


def wait_dead(info: ClusterInfo, node_id: str, timeout_s: float = 120) -> float:
    """Seconds until the cluster reports node `node_id` dead (bounded)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if node_id not in worker_nodes(info):
            return time.monotonic() - started
        time.sleep(1)
    raise AssertionError(f"node {node_id} still alive {timeout_s:.0f}s after its raylet was killed")


def test_a_worker_node_registering_after_rays_own_wait_still_joins() -> None:
    """`ray start` gives its raylet a fixed 30 s to register with the GCS; on a loaded machine that is not
    enough (a first `make test` on a fresh machine hit it). `cluster_up` gives every node its whole
    timeout: here the worker node's raylet is frozen (SIGSTOP) for 40 s as it starts, so Ray's wait runs out."""
    temp = Path(tempfile.mkdtemp(prefix="bmr-late-", dir="/tmp"))
    frozen_s = 40.0
    froze: dict[str, float] = {}

    def freeze_the_worker_raylet_as_it_starts() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            started = raylets(str(temp))
            if len(started) == 2:
                pid = started[-1].pid  # the head's came first
                os.kill(pid, signal.SIGSTOP)
                froze["at"] = time.monotonic()
                time.sleep(frozen_s)
                os.kill(pid, signal.SIGCONT)
                return
            time.sleep(0.05)

    port = free_port()
    watcher = threading.Thread(target=freeze_the_worker_raylet_as_it_starts, daemon=True)
    watcher.start()
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("bm_ray.deploy.cluster").addHandler(handler)
    try:
        with pytest.MonkeyPatch.context() as env:
            env.delenv("RAY_ADDRESS", raising=False)
            info = cluster_up(workers=1, port=port, dashboard_port=free_port(), temp_dir=temp, timeout_s=180)
        watcher.join(timeout=frozen_s + 10)
        assert "at" in froze, "the worker's raylet never appeared: it was not frozen"
        assert any("timed out during startup" in r.getMessage() for r in records), [
            r.getMessage() for r in records
        ]
        assert len(worker_nodes(info)) == 1
    finally:
        logging.getLogger("bm_ray.deploy.cluster").removeHandler(handler)
        cluster_down(temp)
        shutil.rmtree(temp, ignore_errors=True)


def record_figures(name: str, figures: dict[str, Any]) -> None:
    """Print the figures of a test (and write them to $BM_RAY_CHAOS_FIGURES/<name>.json when set)."""
    print(f"{name}: {json.dumps(figures)}")
    folder = os.environ.get("BM_RAY_CHAOS_FIGURES")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"{name}.json").write_text(json.dumps(figures, indent=2))


def start_driver(args: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """A real `bm-ray ARGS` (a driver connected to the cluster by `--address`) in its own process group."""
    log = log_path.open("ab")
    try:
        return subprocess.Popen(
            [str(BM_RAY), *args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    finally:
        log.close()


def stop_driver(driver: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGKILL) -> None:
    if driver.poll() is None:
        os.killpg(driver.pid, sig)
    try:
        driver.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=60)


def tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


# --- 1. bulk classification -------------------------------------------------------------------------------


def write_rows(path: Path, n: int) -> tuple[list[str], list[str]]:
    """`n` short JSONL rows (ids r0..), every EMPTY_EVERY-th with an empty text; (all ids, the empty ones)."""
    ids, empty = [], []
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            id_ = f"r{i}"
            text = (
                ""
                if i % EMPTY_EVERY == EMPTY_EVERY - 1
                else " ".join(WORDS[(i + k) % len(WORDS)] for k in range(3 + (7 * i) % 9))
            )
            ids.append(id_)
            if not text:
                empty.append(id_)
            f.write(json.dumps({"id": id_, "text": text}) + "\n")
    return ids, empty


def read_dir(path: Path) -> pa.Table | None:
    files = sorted(p for p in path.glob("*.parquet") if not p.name.startswith("."))
    return pa.concat_tables([pq.read_table(p) for p in files]) if files else None


def check_exactly_once(out: Path, ids: list[str], empty: list[str]) -> dict[str, int]:
    """Every input id once in predictions ∪ rejects (the empty texts as empty_text rejects), and the summary
    adds up: rows_read = rows_classified + rows_rejected = the input rows. Returns lost and duplicated ids."""
    predictions, rejects = read_dir(out / "predictions"), read_dir(out / "rejects")
    seen = Counter(predictions.column("id").to_pylist())
    rejected = Counter(rejects.column("id").to_pylist()) if rejects is not None else Counter()
    seen.update(rejected)
    duplicated = sum(count - 1 for count in seen.values() if count > 1)
    lost = len(set(ids) - set(seen))
    assert duplicated == 0, [k for k, v in seen.items() if v > 1][:20]
    assert lost == 0, sorted(set(ids) - set(seen))[:20]
    assert set(seen) == set(ids)
    assert sorted(rejected) == sorted(empty)
    assert set(rejects.column("reason").to_pylist()) == {"empty_text"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows_read"] == summary["rows_classified"] + summary["rows_rejected"] == len(ids)
    assert summary["rows_rejected"] == len(empty) and summary["rows_classified"] == predictions.num_rows
    assert not list(out.rglob(".tmp-*")) and not (out / "_lease.json").exists()
    return {"lost": lost, "duplicated": duplicated}


def commits(out: Path) -> int:
    return len(list((out / "_commits").glob("*.json")))


def run_classify_killing(
    info: ClusterInfo, args: list[str], out: Path, log: Path, candidates: list[str], kill_after_commits: int
) -> dict[str, Any]:
    """Run a classify driver; once `kill_after_commits` commits are written, SIGKILL the raylet of the first
    of the `candidates` nodes that holds one of the job's duplicate-id shards (`IdShard`, the state Ray cannot
    restore), else of the first.

    Bounded: a run that does not end within CLASSIFY_DEADLINE_S (a hang) is killed and fails the test.
    Returns the node killed, what it held, the exit code, the commits and the predictor actors' nodes at the
    kill, the run's time.
    """
    started = time.monotonic()
    driver = start_driver(args, log)
    result: dict[str, Any] = {"killed_at_commits": None}
    try:
        while driver.poll() is None and time.monotonic() - started < CLASSIFY_DEADLINE_S:
            if result["killed_at_commits"] is None and commits(out) >= kill_after_commits:
                nodes = [a["node_id"] for a in alive_actors(info, "ClassifyProcessor")]
                shards = [a["node_id"] for a in alive_actors(info, "IdShard")]
                victim = next((node for node in candidates if node in shards), candidates[0])
                result.update(
                    victim=victim,
                    actor_nodes_at_kill=nodes,
                    predictors_on_victim=nodes.count(victim),
                    id_shards_on_victim=shards.count(victim),
                    id_shards_on_head=sum(node not in worker_nodes(info) for node in shards),
                )
                killed_at = kill_node(info, victim)
                result["killed_at_commits"] = commits(out)
                result["kill_s"] = round(killed_at - started, 1)
                result["node_dead_after_s"] = round(wait_dead(info, victim), 1)
            time.sleep(0.5)
        if driver.poll() is None:
            pytest.fail(
                f"classify did not end within {CLASSIFY_DEADLINE_S}s of a node loss (hung):\n{tail(log)}"
            )
    finally:
        stop_driver(driver)
    result.update(returncode=driver.returncode, elapsed_s=round(time.monotonic() - started, 1))
    return result


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: str) -> str:
    return str(make_tiny_model(tmp_path_factory.mktemp("model") / "tiny", LABELS, tokenizer_dir))


def test_worker_node_lost_mid_classify_loses_and_doubles_no_row(tmp_path: Path, tiny_model: str) -> None:
    """100,000 rows on a head (no CPU for actors) and two worker nodes; one predictor actor per worker node.
    Run 1 loses one worker node mid-run (the one holding the duplicate-id shards when a worker node has them),
    run 2 (after a replacement node joined) the other one. Each run either
    finishes on the node left or fails with a clear message and finishes on the rerun into the same output:
    every id once in predictions ∪ rejects, rows_read = classified + rejected."""
    ids, empty = write_rows(tmp_path / "rows.jsonl", ROWS)
    figures: dict[str, Any] = {"rows": ROWS, "runs": []}
    # Worker nodes of 2 logical CPUs, actors of 1: after a node loss its actor restarts on the node left.
    with running_cluster(workers=2, cpus_per_worker=2, head_cpus=0) as info:
        first, second = worker_nodes(info)
        survivor = None
        for run in (1, 2):
            if run == 2:
                add_worker_node(info, cpus=2)  # the replacement of the lost node: two worker nodes again
                assert len(worker_nodes(info)) == 2 and survivor in worker_nodes(info)
            out = tmp_path / f"out{run}"
            spec = {
                "kind": "classify",
                "model": tiny_model,
                "input": {"input": str(tmp_path / "rows.jsonl")},
                "output": str(out),
                "batch_size": 64,
                "actors": 2,
                "cpus_per_actor": 1,
            }
            spec_file = tmp_path / f"spec{run}.yaml"
            spec_file.write_text(yaml.safe_dump(spec))
            args = ["classify", "--spec", str(spec_file), "--address", info.address]
            log = tmp_path / f"driver{run}.log"
            # run 1 loses one of the two worker nodes (the one with the dedupe state, if one has it), run 2
            # the other one
            candidates = [first, second] if run == 1 else [survivor]
            result = run_classify_killing(info, args, out, log, candidates, kill_after_commits=10)
            assert result["killed_at_commits"] is not None, f"run {run} ended before the kill:\n{tail(log)}"
            victim = result["victim"]
            survivor = second if victim == first else first
            # Both predictor actors ran on worker nodes (none on the CPU-less head), one on the victim.
            workers_then = {first, second} if run == 1 else set(worker_nodes(info)) | {victim}
            assert set(result["actor_nodes_at_kill"]) <= workers_then, result
            assert victim in result["actor_nodes_at_kill"], result
            assert result["killed_at_commits"] < ROWS // 1000, "killed after the last commit"
            if result["returncode"] != 0:
                text = tail(log)
                # Ray's error, then bm-ray's note: what stands and how to go on
                assert "rows committed" in text and "rerun the same command to resume" in text, text
                rerun = start_driver(args, log)
                try:
                    rerun.wait(timeout=CLASSIFY_DEADLINE_S)
                finally:
                    stop_driver(rerun)
                assert rerun.returncode == 0, tail(log)
                result["rerun"] = True
            else:
                result["rerun"] = False
            summary = json.loads((out / "summary.json").read_text())
            checked = check_exactly_once(out, ids, empty)
            figures["runs"].append(
                {
                    **{k: v for k, v in result.items() if k not in ("actor_nodes_at_kill", "victim")},
                    **checked,
                    "rows_read": summary["rows_read"],
                    "rows_classified": summary["rows_classified"],
                    "rows_rejected": summary["rows_rejected"],
                    "rows_resumed": summary["rows_resumed"],
                }
            )
    record_figures("classify_node_loss", figures)


# --- 2. training ------------------------------------------------------------------------------------------

TRAIN_DEADLINE_S = 1800


def test_node_of_a_train_worker_lost_resumes_from_the_checkpoint(tmp_path: Path, tiny_model: str) -> None:
    """Two Ray Train workers, one per worker node (each holds a whole node's 2 CPUs); after the first
    checkpoint the node of one of them is lost. The placement group cannot be re-made on what is left, so a
    replacement node joins; the next attempt (FailureConfig) resumes from the last checkpoint, and the model
    directory is written once and loads."""
    from bm_ray.jobs.train.job import run_name

    data = write_synthetic(tmp_path / "train.jsonl", 1200, labels=LABELS)
    output = tmp_path / "model"
    spec = {
        "kind": "train",
        "data": {"input": [str(data)]},
        "output": str(output),
        "base_model": tiny_model,
        "workers": 2,
        "cpus_per_worker": 2,
        "epochs": 6,
        "batch_size": 16,
        "learning_rate": 5e-3,
        "val_fraction": 0.2,
        "warmup_fraction": 0.05,
        "max_failures": 3,
        "keep_checkpoints": 1,
    }
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(spec))
    run_dir = output / "_ray_train" / run_name(str(output))
    log = tmp_path / "train.log"
    figures: dict[str, Any] = {}
    # The head's CPU runs Ray Data's ingest; the workers fit only on worker nodes, one per node.
    with running_cluster(workers=2, cpus_per_worker=2, head_cpus=1) as info:
        started = time.monotonic()
        driver = start_driver(
            ["train", "--spec", str(tmp_path / "train.yaml"), "--address", info.address], log
        )
        try:
            while driver.poll() is None and not any(run_dir.glob("checkpoint_*")):
                assert time.monotonic() - started < TRAIN_DEADLINE_S, f"no checkpoint:\n{tail(log)}"
                time.sleep(0.5)
            assert driver.poll() is None, f"training ended before the kill:\n{tail(log)}"
            time.sleep(4)  # let Ray Train register the checkpoint; the kill then lands in epoch 2
            workers = alive_actors(info, "RayTrainWorker")
            nodes = {a["node_id"] for a in workers}
            assert len(workers) == 2 and len(nodes) == 2 and nodes <= set(worker_nodes(info)), workers
            victim = sorted(nodes)[0]
            killed_at = kill_node(info, victim)
            figures["checkpoints_before_kill"] = len(list(run_dir.glob("checkpoint_*")))
            figures["node_dead_after_s"] = round(wait_dead(info, victim), 1)
            add_worker_node(info, cpus=2)  # the replacement: two 2-CPU worker nodes again
            figures["replacement_joined_after_s"] = round(time.monotonic() - killed_at, 1)
            driver.wait(timeout=max(1, TRAIN_DEADLINE_S - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            pytest.fail(f"training did not end within {TRAIN_DEADLINE_S}s of the node loss:\n{tail(log)}")
        finally:
            stop_driver(driver)
        figures["elapsed_s"] = round(time.monotonic() - started, 1)
    assert driver.returncode == 0, tail(log)
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["recovered_after_epochs"], "the run did not restart from a checkpoint"
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2, 3, 4, 5, 6]
    # Saved once: one model directory (its weights once, beside the run's checkpoints), and it loads.
    weights = [p for p in output.rglob(SAFETENSORS_FILE) if "_ray_train" not in p.parts]
    assert weights == [output / SAFETENSORS_FILE], weights
    # Its version is the weights' hash and the save time: the saved model, not a checkpoint's copy.
    version = read_model_info(output).version
    assert re.match(r"^[0-9a-f]{16}-\d{8}T\d{6}Z$", version), version
    predictor = Predictor.load(str(output))
    predictions = predictor.predict(["football goal coach", "bank shares merger", "robot chip research"])
    assert {p.label for p in predictions} <= set(LABELS)
    figures.update(
        recovered_after_epochs=metrics["recovered_after_epochs"],
        epochs=[e["epoch"] for e in metrics["epochs"]],
        accuracy=metrics.get("accuracy"),
    )
    record_figures("train_node_loss", figures)


# --- 3. Serve ---------------------------------------------------------------------------------------------

SERVE_TEXTS = [
    "Stocks rallied on Wall Street after the Federal Reserve held interest rates steady.",
    "The striker scored twice as the home side won the cup final.",
    "NASA's new telescope sends back its first images of distant galaxies.",
    "Rebels and government forces agreed to a ceasefire after weeks of fighting.",
]
SERVE_REQUESTS = 2000
SERVE_CONCURRENCY = 16
RECOVERY_TIMEOUT_S = 300


def serve_details(info: ClusterInfo) -> dict[str, Any]:
    """Serve's own view of the cluster (the dashboard's Serve REST API: apps, replicas with their nodes)."""
    reply = httpx.get(
        f"{info.dashboard_url}/api/serve/applications/", headers=ray_auth_headers(info.auth_env), timeout=30
    )
    reply.raise_for_status()
    return reply.json()


def replicas(info: ClusterInfo, deployment: str) -> list[dict[str, Any]]:
    from bm_ray.serve import APP_NAME

    app = serve_details(info).get("applications", {}).get(APP_NAME) or {}
    return (app.get("deployments", {}).get(deployment) or {}).get("replicas", [])


def running(info: ClusterInfo, deployment: str, avoid: str | None = None) -> int:
    """RUNNING replicas of `deployment`, not counting those on node `avoid`."""
    return sum(r["state"] == "RUNNING" and r.get("node_id") != avoid for r in replicas(info, deployment))


def test_node_of_a_model_replica_lost_under_load(tmp_path: Path, tiny_model: str) -> None:
    """Two model replicas (2 CPUs each) on two 5-CPU worker nodes; under load the node of one of them is lost
    (its model replica, and whatever gateway replica and HTTP proxy it held, with it). Calls in flight on
    the lost model replica are retried by a live gateway; what may fail is only what was in flight on the
    lost node's own gateway replica or proxy, so at most the clients' concurrency. Serve replaces the
    replica on the node left and the endpoint is back at two model replicas."""
    from bm_ray.bench.serve_faults import wait_ready
    from bm_ray.serve import INGRESS_DEPLOYMENT, MODEL_DEPLOYMENT

    port = free_port()
    spec = {"model": tiny_model, "port": port, "min_replicas": 2, "max_replicas": 2, "cpus_per_replica": 2}
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(spec))
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    figures: dict[str, Any] = {"requests": SERVE_REQUESTS, "concurrency": SERVE_CONCURRENCY}
    # 5 CPUs a worker node: the node left holds its model replica (2), the lost one's (2) and the gateway
    # replicas Serve moves there (0.1 each); with 4, a moved gateway left 1.9 CPUs and the replica waited.
    with running_cluster(workers=2, cpus_per_worker=5, head_cpus=1) as info:
        driver = start_driver(
            ["serve", "--config", str(tmp_path / "serve.yaml"), "--address", info.address], log
        )
        try:
            deadline = time.monotonic() + 600
            while running(info, MODEL_DEPLOYMENT) < 2 or not wait_ready(url, timeout_s=5):
                assert driver.poll() is None, tail(log)
                assert time.monotonic() < deadline, f"the endpoint did not come up:\n{tail(log)}"
                time.sleep(2)
            model_nodes = [r["node_id"] for r in replicas(info, MODEL_DEPLOYMENT)]
            gateway_nodes = [r["node_id"] for r in replicas(info, INGRESS_DEPLOYMENT)]
            assert set(model_nodes) <= set(worker_nodes(info)), model_nodes  # 2 CPUs: never the head
            victim = model_nodes[0]
            figures["model_replicas_on_victim"] = model_nodes.count(victim)
            figures["gateway_replicas_on_victim"] = gateway_nodes.count(victim)
            # the victim's raylet SIGKILLed once a fifth of the requests are answered
            outcomes, kill = asyncio.run(
                load_with_fault(
                    url,
                    text_shots(SERVE_TEXTS, SERVE_REQUESTS),
                    SERVE_CONCURRENCY,
                    lambda: {"killed_at": kill_node(info, victim)},
                    fault_after=0.2,
                )
            )
            killed_at, before = kill["killed_at"], kill["answered_before"]
            load_done = time.monotonic()
            recovered_s = None
            while time.monotonic() - killed_at < RECOVERY_TIMEOUT_S:
                if running(info, MODEL_DEPLOYMENT, avoid=victim) >= 2 and victim not in worker_nodes(info):
                    recovered_s = time.monotonic() - killed_at
                    break
                time.sleep(1)
            states = [(r["state"], r.get("node_id") == victim) for r in replicas(info, MODEL_DEPLOYMENT)]
            healthy = wait_ready(url, timeout_s=60)
            after = asyncio.run(drive(url, text_shots(SERVE_TEXTS, 50), 4))
        finally:
            stop_driver(driver, signal.SIGINT)
    report = status_report(outcomes)
    failed = [(o.status, str(o.body)[:200]) for o in outcomes if o.status != 200]
    figures.update(
        answered_before_kill=before,
        failed=len(failed),
        by_status=report["by_status"],
        failures=Counter(s for s, _ in failed),
        failure_samples=failed[:8],
        load_after_kill_s=round(load_done - killed_at, 1),
        recovered_after_s=None if recovered_s is None else round(recovered_s, 1),
        after_recovery_ok=sum(o.status == 200 for o in after),
    )
    record_figures("serve_node_loss", figures)
    assert len(outcomes) == SERVE_REQUESTS and before < SERVE_REQUESTS
    assert len(failed) <= SERVE_CONCURRENCY, failed  # only what was in flight on the lost node
    assert recovered_s is not None, f"not back at 2 model replicas in {RECOVERY_TIMEOUT_S}s: {states}"
    assert healthy and all(o.status == 200 for o in after), [
        (o.status, o.body) for o in after if o.status != 200
    ]
