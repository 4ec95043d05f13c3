"""A real multi-node Ray cluster on one machine: one head and N worker nodes, each a `ray start`.

Every process of a cluster lives under its own `--temp-dir`, so :func:`cluster_down` stops exactly that
cluster (by the processes whose command line names the temp dir, and their children) and never touches
other Ray clusters on the machine, as `ray stop` would.

Token authentication is on by default: the cluster gets its own random token in `<temp-dir>/auth_token`
(mode 0600), every node runs with `RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=<that file>`, and callers use the
same two variables (Ray's own conventions; :attr:`ClusterInfo.auth_env`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from bm_ray.runtime.auth import ray_auth_headers
from bm_ray.runtime.ray_init import node_env

STATE_FILE = "bm-ray-cluster.json"
TOKEN_FILE = "auth_token"
HEAD_RESOURCE = "bm-ray-head"
WORKER_RESOURCE = "bm-ray-worker"


class ClusterError(RuntimeError):
    """A local cluster that could not be started or stopped; the message says why."""


@dataclass(frozen=True)
class ClusterInfo:
    """Where a local cluster listens and where its processes keep their files."""

    port: int
    dashboard_port: int
    workers: int
    temp_dir: str
    token_path: str | None = None

    @property
    def address(self) -> str:
        """GCS address for `ray.init(address=...)` and `ray start --address`."""
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        """Dashboard / job server address for `bm-ray submit --address` and `ray job submit`."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def auth_env(self) -> dict[str, str]:
        """Ray's variables that make a client (bm-ray, `ray job submit`, `ray.init`) present the token."""
        if self.token_path is None:
            return {"RAY_AUTH_MODE": "disabled"}
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": self.token_path}


def default_temp_dir(port: int) -> Path:
    """Temp dir of the cluster whose head listens on `port` (short: Ray puts unix sockets under it)."""
    return Path(tempfile.gettempdir()) / f"bm-ray-{port}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _write_token(temp_dir: Path) -> Path:
    """A fresh random token for one cluster, readable by its owner only."""
    path = temp_dir / TOKEN_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(secrets.token_hex(32))
    return path


RAY_REGISTRATION_TIMEOUT = "The current node timed out during startup"
"""What `ray start` says when its raylet has not registered with the GCS within Ray's fixed 30 s (not
configurable). The raylet keeps running and may still register: on a loaded machine it often does."""


def _ray_start(
    args: list[str], info: ClusterInfo, resources: dict[str, float], timeout_s: float
) -> str | None:
    """Run one `ray start`; None when it succeeded, or a note naming it when only Ray's own 30 s
    registration wait ran out (the caller's wait for the alive nodes then decides)."""
    # Each node gets its own agent / client / metrics ports: the fixed defaults (52365, 10001) would collide
    # with the other nodes of this cluster and with other clusters on the machine, and so, on a busy machine,
    # can the metrics port Ray picks by itself.
    command = [
        str(Path(sys.executable).with_name("ray")),
        "start",
        *args,
        f"--temp-dir={info.temp_dir}",
        "--node-ip-address=127.0.0.1",
        f"--dashboard-agent-listen-port={_free_port()}",
        f"--metrics-export-port={_free_port()}",
        f"--resources={json.dumps(resources)}",
        "--disable-usage-stats",
    ]
    # The nodes (and so job entrypoints such as `bm-ray train`) use the tools of this interpreter's venv.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    # Every node states the mode and the token file explicitly, so that head, workers and job drivers agree
    # (Ray would otherwise switch a head to token mode whenever ~/.ray/auth_token exists, but not its workers).
    # RAY_AUTH_TOKEN would win over the file: a caller's own token must not leak into this cluster.
    env = {name: value for name, value in os.environ.items() if name != "RAY_AUTH_TOKEN"}
    env.update(node_env(), RAY_USAGE_STATS_ENABLED="0", PATH=path, **info.auth_env)
    name = " ".join(command[1:3])
    try:
        result = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        raise ClusterError(f"`{name}` did not finish within {timeout_s:.0f}s") from None
    if result.returncode == 0:
        return None
    tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
    if RAY_REGISTRATION_TIMEOUT in tail:
        note = f"`{name}`: {RAY_REGISTRATION_TIMEOUT} (Ray's 30 s wait)"
        logging.getLogger(__name__).warning(
            "%s; waiting up to %.0f s for the node to register", note, timeout_s
        )
        return note
    raise ClusterError(f"`{name}` failed (exit {result.returncode}):\n{tail}")


def _alive_nodes(info: ClusterInfo) -> int | None:
    """Alive nodes as the dashboard sees them; None while it does not answer yet."""
    headers = ray_auth_headers(info.auth_env)
    try:
        httpx.get(f"{info.dashboard_url}/api/version", headers=headers, timeout=5).raise_for_status()
        reply = httpx.get(
            f"{info.dashboard_url}/nodes", params={"view": "summary"}, headers=headers, timeout=5
        )
        reply.raise_for_status()
    except httpx.HTTPError:
        return None
    nodes = reply.json()["data"]["summary"]
    return sum(1 for node in nodes if node["raylet"]["state"] == "ALIVE")


def cluster_up(
    workers: int = 1,
    cpus_per_worker: int = 1,
    head_cpus: int = 1,
    port: int = 6379,
    dashboard_port: int = 8265,
    temp_dir: str | Path | None = None,
    timeout_s: float = 120,
    auth: bool = True,
) -> ClusterInfo:
    """Start a head node (with dashboard and job server) and `workers` worker nodes; wait until all are alive.

    Worker nodes carry the custom resource `bm-ray-worker` (the head `bm-ray-head`), so work can be pinned to
    them. With `auth` (the default) the cluster requires its own token (see the module doc); without it,
    anyone who reaches its ports can run code on it. `timeout_s` bounds each `ray start` and the wait for the
    nodes. On failure, whatever was started is stopped again.
    """
    if workers < 0 or cpus_per_worker < 1 or head_cpus < 0:
        raise ClusterError("workers must be >= 0, cpus_per_worker >= 1 and head_cpus >= 0")
    for name, value in (("port", port), ("dashboard port", dashboard_port)):
        if _port_in_use(value):
            raise ClusterError(f"{name} {value} is already in use (another Ray cluster?); pick another")
    temp = Path(temp_dir or default_temp_dir(port)).resolve()
    temp.mkdir(parents=True, exist_ok=True)
    token = str(_write_token(temp)) if auth else None
    info = ClusterInfo(port, dashboard_port, workers, str(temp), token_path=token)
    # Recorded first, so that cluster_down can find every process even of a half-started cluster.
    (temp / STATE_FILE).write_text(json.dumps(asdict(info)), encoding="utf-8")
    head = [
        "--head",
        f"--port={port}",
        f"--dashboard-port={dashboard_port}",
        "--dashboard-host=127.0.0.1",
        "--include-dashboard=true",
        f"--num-cpus={head_cpus}",
        f"--ray-client-server-port={_free_port()}",
    ]
    worker = [f"--address={info.address}", f"--num-cpus={cpus_per_worker}"]
    nodes = [(head, {HEAD_RESOURCE: 1})] + [(worker, {WORKER_RESOURCE: 1})] * workers
    try:
        # Notes of the nodes whose raylet had not registered when `ray start` gave up on it.
        late = [note for args, resources in nodes if (note := _ray_start(args, info, resources, timeout_s))]
        # Each node has the whole timeout to register: Ray's own 30 s is too short on a loaded machine.
        deadline = time.monotonic() + timeout_s
        while (alive := _alive_nodes(info)) != workers + 1:
            if time.monotonic() > deadline:
                why = "; ".join(late)
                raise ClusterError(
                    f"{alive or 0} of {workers + 1} nodes alive after {timeout_s:.0f}s"
                    + (f" ({why})" if why else "")
                )
            time.sleep(1)
    except BaseException:
        cluster_down(temp)
        raise
    return info


def read_cluster_info(temp_dir: str | Path) -> ClusterInfo | None:
    """The cluster :func:`cluster_up` recorded under `temp_dir`, if any."""
    state = Path(temp_dir) / STATE_FILE
    if not state.is_file():
        return None
    return ClusterInfo(**json.loads(state.read_text(encoding="utf-8")))


def _cluster_markers(temp_dir: Path, port: int | None) -> list[re.Pattern[bytes]]:
    """Command-line patterns of the cluster's processes: the temp dir as a whole path component
    (/tmp/bm-ray-6390 must not match /tmp/bm-ray-63901), and the Ray Client server, the one head process
    that is told only the GCS address."""
    markers = [re.compile(re.escape(str(temp_dir).encode()) + rb"(?=[/\0 ]|$)")]
    if port is not None:
        markers.append(re.compile(rb"ray\.util\.client\.server\0.*--address=[^\0]*:%d\0" % port))
    return markers


def _cluster_pids(markers: list[re.Pattern[bytes]]) -> set[int]:
    """Live processes matching `markers`, plus all their descendants (Ray workers retitle themselves,
    e.g. `ray::IDLE`, so only their parentage ties them to the cluster)."""
    parents: dict[int, int] = {}
    matched: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state, ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
        except OSError:
            continue
        if state == "Z":
            continue
        pid = int(entry.name)
        parents[pid] = int(ppid)
        if any(marker.search(cmdline) for marker in markers):
            matched.add(pid)
    found = set(matched)
    while True:
        children = {pid for pid, ppid in parents.items() if ppid in found} - found
        if not children:
            return found
        found |= children


def _signal_all(pids: set[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def cluster_down(temp_dir: str | Path, timeout_s: float = 10) -> int:
    """Stop every process of the cluster under `temp_dir` (SIGTERM, then SIGKILL); return how many."""
    temp = Path(temp_dir).resolve()
    info = read_cluster_info(temp)
    markers = _cluster_markers(temp, info.port if info else None)
    pids = _cluster_pids(markers)
    _signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while (left := _cluster_pids(markers)) and time.monotonic() < deadline:
        time.sleep(0.5)
    _signal_all(left, signal.SIGKILL)
    (temp / STATE_FILE).unlink(missing_ok=True)
    (temp / TOKEN_FILE).unlink(missing_ok=True)
    return len(pids | left)
