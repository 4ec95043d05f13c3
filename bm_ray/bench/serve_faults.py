"""A model replica of the Serve endpoint killed under load: finding, killing and waiting for replicas.

:func:`fault_run` deploys two model replicas on loopback, kills the busiest one mid-request once part of
the load is answered, and reports what the clients got and how Serve replaced it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import ray
from ray import serve

from bm_ray.bench.load import Outcome, Shot, bench_spec, deployed, drive, status_report, text_shots
from bm_ray.runtime.compat import replica_ongoing_requests
from bm_ray.serve import APP_NAME, MODEL_DEPLOYMENT
from bm_ray.specs import ServeSpec


def replica_actor_names(
    app_name: str = APP_NAME, deployment: str = MODEL_DEPLOYMENT
) -> list[tuple[str, str]]:
    """(name, namespace) of the live replica actors of `deployment` (the model, by default) in `app_name`.

    Serve has no API to address one replica; its fault-tolerance guide kills one by this actor name
    (``SERVE_REPLICA::<app>#<deployment>#<id>``), found through Ray's public named-actor listing.
    """
    return sorted(
        (actor["name"], actor["namespace"])
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["name"].startswith("SERVE_REPLICA::") and f"{app_name}#{deployment}#" in actor["name"]
    )


def running_replicas(app_name: str = APP_NAME, deployment: str = MODEL_DEPLOYMENT) -> int:
    """How many replicas of `deployment` Serve reports RUNNING (0 when the app or deployment is absent)."""
    app = serve.status().applications.get(app_name)
    if app is None or deployment not in app.deployments:
        return 0
    return sum(n for state, n in app.deployments[deployment].replica_states.items() if state == "RUNNING")


def wait_replaced(
    killed: str, replicas: int, app_name: str = APP_NAME, timeout_s: float = 180.0
) -> float | None:
    """Seconds until `replicas` model replicas other than the actor `killed` exist and are RUNNING.

    None on timeout. Both conditions matter: Serve's status counts a killed replica as RUNNING until
    its controller notices the death, and creates the replacement's actor only after that.
    """
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        others = [name for name, _ in replica_actor_names(app_name) if name != killed]
        if len(others) >= replicas and running_replicas(app_name) >= replicas:
            return time.monotonic() - started
        time.sleep(0.5)
    return None


def kill_busy_replica(app_name: str = APP_NAME, attempts: int = 50) -> tuple[str, int]:
    """Kill the model replica actor with the most calls in flight; (its name, that count).

    Polls up to `attempts` times for a replica with at least one call in flight, so the kill lands
    mid-request rather than between two batches.
    """
    best: tuple[int, str, ray.actor.ActorHandle] | None = None
    for _ in range(attempts):
        for name, namespace in replica_actor_names(app_name):
            actor = ray.get_actor(name, namespace=namespace)
            ongoing = replica_ongoing_requests(actor)
            if best is None or ongoing > best[0]:
                best = (ongoing, name, actor)
        if best is not None and best[0] > 0:
            break
        time.sleep(0.02)
    if best is None:
        raise RuntimeError(f"no replica of {MODEL_DEPLOYMENT} in app {app_name} to kill")
    ongoing, name, actor = best
    ray.kill(actor, no_restart=True)
    return name, ongoing


async def load_with_fault(
    url: str,
    shots: Sequence[Shot],
    concurrency: int,
    fault: Callable[[], dict[str, Any]],
    fault_after: float = 0.3,
) -> tuple[list[Outcome], dict[str, Any]]:
    """Run `shots` and call `fault` (in a thread, the load going on) once a `fault_after` fraction is
    answered.

    Returns the outcomes and `fault`'s record with ``answered_before`` (requests answered before it) and
    ``at`` (its ``time.monotonic()`` when it returned).
    """
    answered = 0
    fault_at = max(1, min(len(shots), math.ceil(len(shots) * fault_after)))
    reached = asyncio.Event()

    def count(_: Outcome) -> None:
        nonlocal answered
        answered += 1
        if answered >= fault_at:
            reached.set()

    load = asyncio.create_task(drive(url, shots, concurrency, on_outcome=count))
    waiter = asyncio.create_task(reached.wait())
    await asyncio.wait({load, waiter}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    answered_before = answered
    record = await asyncio.to_thread(fault)
    return await load, {**record, "answered_before": answered_before, "at": time.monotonic()}


async def load_with_kill(
    url: str, shots: Sequence[Shot], concurrency: int, kill_after: float = 0.3, app_name: str = APP_NAME
) -> tuple[list[Outcome], dict[str, Any]]:
    """Run `shots` and kill the busiest model replica actor once a `kill_after` fraction is answered.

    Returns the outcomes and the kill: ``{"replica", "in_flight", "answered_before", "at"}`` (calls —
    gateway batches of requests — in flight on the killed replica just before the kill, requests
    answered before it, its ``time.monotonic()``).
    """

    def kill() -> dict[str, Any]:
        name, in_flight = kill_busy_replica(app_name)
        return {"replica": name, "in_flight": in_flight}

    return await load_with_fault(url, shots, concurrency, kill, kill_after)


def wait_ready(url: str, timeout_s: float = 120.0) -> bool:
    """Poll /readyz until it answers 200 (True) or `timeout_s` passes (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=10).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return False


def fault_run(
    model: str,
    texts: Sequence[str],
    requests: int = 1000,
    concurrency: int = 32,
    kill_after: float = 0.3,
    spec: ServeSpec | None = None,
) -> dict[str, Any]:
    """Two model replicas under load; one model replica actor is killed once `kill_after` of the load is answered.

    Reports the success rate, the model replicas before and after (waiting, bounded, for Serve's
    replacement to be RUNNING), how long the replacement took and whether the endpoint is healthy after.
    """
    run_spec = bench_spec(model, spec, min_replicas=2, max_replicas=2, cpus_per_replica=1)
    with deployed(run_spec) as url:
        before = running_replicas()
        outcomes, kill = asyncio.run(
            load_with_kill(url, text_shots(texts, requests), concurrency, kill_after)
        )
        report = status_report(outcomes)
        replaced = wait_replaced(kill["replica"], before) is not None
        healthy = wait_ready(url) and asyncio.run(drive(url, text_shots(texts, 1), 1))[0].status == 200
        return {
            **report,
            "killed_replica_in_flight": kill["in_flight"],
            "answered_before_kill": kill["answered_before"],
            "success_rate": report["by_status"].get(200, 0) / len(outcomes),
            "replicas_before": before,
            "replicas_after": running_replicas(),
            "replaced_after_s": round(time.monotonic() - kill["at"], 1) if replaced else None,
            "healthy_after": healthy,
        }
