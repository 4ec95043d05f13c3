"""Benchmarks of the Serve endpoint over loopback HTTP: batching on/off, malformed-traffic load, model replica kill.

Every run is bounded: a fixed request count per load and a client timeout per request.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import ray
from ray import serve

from bm_ray.bench.serve_floor import NoopGateway, NoopModel
from bm_ray.serve import APP_NAME, INGRESS_NUM_CPUS, MODEL_DEPLOYMENT, app_url, deploy
from bm_ray.specs import IngestSpec, ServeSpec

REQUEST_TIMEOUT_S = 60.0
DEFAULT_PORT = 8131


@dataclass(frozen=True)
class Shot:
    """One HTTP request to send to /v1/classify and the status it must get."""

    kind: str
    content: bytes
    content_type: str = "application/json"
    expect: int = 200


@dataclass(frozen=True)
class Outcome:
    """What one request got (status 0: no HTTP answer)."""

    kind: str
    status: int
    expect: int
    latency_s: float
    body: Any = None


def read_texts(path: str, text_fields: Sequence[str] = ("text",), limit: int = 2000) -> list[str]:
    """The first `limit` non-empty texts of a corpus, read through :func:`bm_ray.corpus.read_corpus`."""
    from bm_ray.corpus import ok_rows, read_corpus

    ds, _ = read_corpus(IngestSpec(input=[path], text_fields=list(text_fields)), dedupe=False)
    texts = [row["text"] for row in ok_rows(ds, ["text"]).take(limit)]
    if not texts:
        raise ValueError(f"{path}: no texts in fields {', '.join(text_fields)}")
    return texts


def text_shots(texts: Sequence[str], n: int) -> list[Shot]:
    """`n` well-formed requests, one text each, cycling through `texts`."""
    return [
        Shot("ok", json.dumps({"texts": [text]}).encode())
        for text in itertools.islice(itertools.cycle(texts), n)
    ]


def malformed_shots(spec: ServeSpec) -> list[Shot]:
    """One request per way of being malformed, each with the 4xx it must get."""

    def body(data: Any) -> bytes:
        return json.dumps(data).encode()

    return [
        Shot("empty_list", body({"texts": []}), expect=422),
        Shot("non_string", body({"texts": ["fine", 7]}), expect=422),
        Shot("blank_text", body({"texts": ["  \n "]}), expect=422),
        Shot("too_many", body({"texts": ["a"] * (spec.max_texts_per_request + 1)}), expect=422),
        Shot("too_long", body({"texts": ["x" * (spec.max_text_chars + 1)]}), expect=422),
        Shot("both", body({"texts": ["a"], "instances": [{"text": "a"}]}), expect=422),
        Shot("neither", body({}), expect=422),
        Shot("bad_json", b'{"texts": ["a"', expect=422),
        Shot("not_json", b"texts=a", content_type="text/plain", expect=415),
        Shot("too_big", b" " * (spec.max_body_bytes + 1), expect=413),
    ]


async def drive(
    url: str,
    shots: Sequence[Shot],
    concurrency: int,
    headers: dict[str, str] | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Send `shots` to `url`/v1/classify from `concurrency` concurrent clients; outcomes in shot order.

    `on_outcome` is called with each outcome as it arrives (e.g. to act mid-load).
    """
    outcomes: list[Outcome | None] = [None] * len(shots)
    queue = iter(enumerate(shots))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=REQUEST_TIMEOUT_S) as client:

        async def worker() -> None:
            for i, shot in queue:
                started = time.perf_counter()
                try:
                    response = await client.post(
                        "/v1/classify",
                        content=shot.content,
                        headers={"content-type": shot.content_type, **(headers or {})},
                    )
                    status, body = response.status_code, _json_or_text(response)
                except httpx.HTTPError as err:
                    status, body = 0, repr(err)
                outcomes[i] = outcome = Outcome(
                    shot.kind, status, shot.expect, time.perf_counter() - started, body
                )
                if on_outcome is not None:
                    on_outcome(outcome)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return [o for o in outcomes if o is not None]


def _json_or_text(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def summarize(outcomes: Sequence[Outcome], wall_s: float) -> dict[str, Any]:
    """Rows/s, latency percentiles (ms) and error count of a load of one-text requests."""
    latencies = np.array([o.latency_s for o in outcomes]) * 1000
    ok = sum(o.status == 200 for o in outcomes)
    p50, p95, p99 = (float(np.percentile(latencies, q)) for q in (50, 95, 99))
    return {
        "requests": len(outcomes),
        "rows_per_s": ok / wall_s,
        "p50_ms": p50,
        "p95_ms": p95,
        "p99_ms": p99,
        "errors": len(outcomes) - ok,
    }


async def _timed(url: str, shots: Sequence[Shot], concurrency: int) -> tuple[list[Outcome], float]:
    started = time.perf_counter()
    outcomes = await drive(url, shots, concurrency)
    return outcomes, time.perf_counter() - started


@contextmanager
def deployed(spec: ServeSpec) -> Iterator[str]:
    """The app deployed on loopback for the block (its URL), deleted after it."""
    deploy(spec)
    try:
        yield app_url(spec)
    finally:
        serve.delete(APP_NAME)


def _bench_spec(model: str, spec: ServeSpec | None, **overrides: Any) -> ServeSpec:
    base = spec or ServeSpec(
        model=model, port=DEFAULT_PORT, min_replicas=1, max_replicas=1, cpus_per_replica=2
    )
    return fit_to_cluster(base.model_copy(update={"model": model, **overrides}))


def fit_to_cluster(spec: ServeSpec) -> ServeSpec:
    """`spec` with `cpus_per_replica` lowered (if needed) so max_replicas model replicas and the gateways fit.

    A bench asking for the whole machine (e.g. 2 replicas of 1 CPU on 2 cores) would otherwise leave a
    model replica or the ingress pending forever.
    """
    ingress = INGRESS_NUM_CPUS * spec.gateway_replicas
    room = (ray.cluster_resources().get("CPU", 0.0) - ingress) / spec.max_replicas
    if room <= 0 or spec.cpus_per_replica <= room:
        return spec
    return spec.model_copy(update={"cpus_per_replica": math.floor(room * 100) / 100})


BARE_ROWS = 256


def bare_forward(model: str, texts: Sequence[str], spec: ServeSpec) -> dict[str, float]:
    """The engine alone in this process, on serving-shaped work: what batching can gain at most.

    Rows/s for :data:`BARE_ROWS` texts sent one per call, and as random batches of `max_batch_size`
    texts (each run as the replica does: length-sorted passes of `forward_batch_size` rows), with the
    replica's thread count and precision; tokenisation included, every shape warmed first.
    """
    from bm_ray.model.engine import Predictor

    predictor = Predictor.load(
        model, spec.forward_batch_size, spec.precision, num_threads=math.ceil(spec.cpus_per_replica)
    )
    rng = np.random.default_rng(0)
    sample = [texts[i] for i in rng.choice(len(texts), BARE_ROWS, replace=len(texts) < BARE_ROWS)]

    def rows_per_s(batch: int) -> float:
        calls = [sample[i : i + batch] for i in range(0, len(sample), batch)]
        for call in calls:  # warm every shape
            predictor.predict(call)
        started = time.perf_counter()
        for call in calls:
            predictor.predict(call)
        return len(sample) / (time.perf_counter() - started)

    one, batched = rows_per_s(1), rows_per_s(spec.max_batch_size)
    return {
        "bare_rows_per_s_batch1": one,
        "bare_rows_per_s_batched": batched,
        "bare_batch_gain": batched / one,
    }


def process_role(process: Any, app_name: str = APP_NAME) -> str:
    """What a process of this machine is to the endpoint: a deployment, the proxy, this client, or Ray."""
    if process.pid == os.getpid():
        return "load generator (this process)"
    try:
        command = " ".join(process.cmdline())
    except psutil.Error:
        return "other"
    replica = f"ray::ServeReplica:{app_name}:"
    if command.startswith(replica):
        return command[len(replica) :].split()[0]
    if command.startswith("ray::ProxyActor"):
        return "HTTP proxy"
    return "Ray and other processes"


class CpuPerRequest:
    """CPU time (user + system) each role of :func:`process_role` spent during a block, by process."""

    def __enter__(self) -> CpuPerRequest:
        self._start = self._snapshot()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._snapshot()
        self.seconds: Counter[str] = Counter()
        for pid, (role, cpu) in end.items():
            self.seconds[role] += cpu - self._start.get(pid, (role, 0.0))[1]

    @staticmethod
    def _snapshot() -> dict[int, tuple[str, float]]:
        taken = {}
        for process in psutil.process_iter():
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue
            taken[process.pid] = (process_role(process), times.user + times.system)
        return taken

    def per_request_ms(self, requests: int) -> dict[str, float]:
        """Milliseconds of CPU per request, by role, largest first."""
        return {role: 1000 * s / requests for role, s in self.seconds.most_common()}


def load_levels(
    url: str, shots: Sequence[Shot], concurrencies: Sequence[int]
) -> list[tuple[int, list[Outcome], float, dict[str, float]]]:
    """Warm the proxy and connection pool, then send `shots` at each concurrency in turn.

    Per level: (concurrency, outcomes, wall seconds, CPU ms per request by role of :func:`process_role`).
    """
    asyncio.run(drive(url, shots[:32], 8))
    levels = []
    for concurrency in concurrencies:
        with CpuPerRequest() as cpu:
            outcomes, wall_s = asyncio.run(_timed(url, shots, concurrency))
        levels.append((concurrency, outcomes, wall_s, cpu.per_request_ms(len(outcomes))))
    return levels


FLOOR_APP = "bm-ray-floor"


def serve_floor(url: str, shots: Sequence[Shot], concurrencies: Sequence[int]) -> dict[str, Any]:
    """p50 and rows/s of the no-op app with one hop (ingress answers) and two (ingress → model), per level.

    Runs on the Serve instance (port, proxy) the endpoint used; the app is deleted after each shape.
    """
    floor: dict[str, Any] = {}
    for hops, app in ((1, NoopGateway.bind()), (2, NoopGateway.bind(NoopModel.bind()))):
        serve.run(app, name=FLOOR_APP, route_prefix="/")
        try:
            for concurrency, outcomes, wall_s, cpu_ms in load_levels(url, shots, concurrencies):
                record = summarize(outcomes, wall_s)
                if record["errors"]:  # a floor measured on errors would say nothing
                    statuses = Counter(o.status for o in outcomes)
                    raise RuntimeError(f"the no-op floor app ({hops} hops) answered {dict(statuses)}")
                floor[f"hops{hops}_c{concurrency}"] = {**record, "cpu_ms_per_request": sum(cpu_ms.values())}
        finally:
            serve.delete(FLOOR_APP)
    return floor


def floor_limits(floor: dict[str, Any], bare: dict[str, float], cpus: float, top: int) -> dict[str, float]:
    """What the floor allows: the least c1 overhead per topology, and the c{top} rows/s the CPUs can carry.

    At concurrency `top` every request costs the floor's CPU (proxy, ingress, hops, load generator)
    on top of the model's own CPU per row in batches (the bare batched pass on `cpus` threads), so
    rows/s cannot exceed ``cpus / (model CPU per row + floor CPU per request)``.
    """
    model_cpu_s = cpus / bare["bare_rows_per_s_batched"]
    limits: dict[str, float] = {}
    for hops in (1, 2):
        limits[f"floor_c1_ms_hops{hops}"] = floor[f"hops{hops}_c1"]["p50_ms"]
        cpu_s = floor[f"hops{hops}_c{top}"]["cpu_ms_per_request"] / 1000
        limits[f"c{top}_vs_bare_limit_hops{hops}"] = (
            cpus / (model_cpu_s + cpu_s) / bare["bare_rows_per_s_batched"]
        )
    return limits


C1_OVERHEAD_TARGET_MS = 8.0
C32_VS_BARE_TARGET = 0.65
P99_OVER_P50_LIMIT = 4.0


def targets(records: Sequence[dict[str, Any]], bare: dict[str, float]) -> dict[str, Any]:
    """The endpoint against the bare forward pass measured in the same run (batching on).

    ``c1_overhead_ms``: p50 at concurrency 1 minus one bare single-text forward pass (its mean);
    ``c32_vs_bare``: rows/s at the highest concurrency over the bare batched rows/s; the worst p99/p50
    over every level; errors over every level; and whether each meets its target.
    """
    on = sorted((r for r in records if r["batching"]), key=lambda r: r["concurrency"])
    c1_overhead = on[0]["p50_ms"] - 1000 / bare["bare_rows_per_s_batch1"]
    top_vs_bare = on[-1]["rows_per_s"] / bare["bare_rows_per_s_batched"]
    worst_tail = max(r["p99_ms"] / r["p50_ms"] for r in records)
    errors = sum(r["errors"] for r in records)
    return {
        "c1_overhead_ms": c1_overhead,
        f"c{on[-1]['concurrency']}_vs_bare": top_vs_bare,
        "worst_p99_over_p50": worst_tail,
        "errors": errors,
        "targets_met": {
            "c1_overhead_ms": c1_overhead <= C1_OVERHEAD_TARGET_MS,
            "c32_vs_bare": top_vs_bare >= C32_VS_BARE_TARGET,
            "p99_le_4x_p50": worst_tail <= P99_OVER_P50_LIMIT,
            "zero_errors": errors == 0,
        },
    }


def bench_serve(
    model: str,
    corpus_texts: Sequence[str],
    concurrencies: Sequence[int] = (1, 8, 32),
    requests: int = 300,
    json_path: str | None = None,
    spec: ServeSpec | None = None,
) -> list[dict[str, Any]]:
    """Throughput and latency with batching on (spec's max_batch_size) and off (1), one text per request.

    Needs Ray initialised; deploys on loopback, prints a table and the targets of :func:`targets`,
    writes `json_path` (records, targets, bare forward, CPU per request by role) and leaves the app deleted.
    """
    base = _bench_spec(model, spec)
    shots = text_shots(corpus_texts, requests)
    bare = bare_forward(model, corpus_texts, base)
    top = max(concurrencies)
    records, cpu_ms = [], {}
    for batching, max_batch_size in ((True, base.max_batch_size), (False, 1)):
        with deployed(base.model_copy(update={"max_batch_size": max_batch_size})) as url:
            for concurrency, outcomes, wall_s, level_cpu_ms in load_levels(url, shots, concurrencies):
                if batching and concurrency == top:
                    cpu_ms = level_cpu_ms
                records.append(
                    {"batching": batching, "concurrency": concurrency, **summarize(outcomes, wall_s)}
                )
    floor = serve_floor(app_url(base), shots, (1, top))
    limits = floor_limits(floor, bare, math.ceil(base.cpus_per_replica), top)
    on, off = (
        next(r for r in records if r["batching"] is b and r["concurrency"] == top) for b in (True, False)
    )
    ratio = on["rows_per_s"] / off["rows_per_s"] if off["rows_per_s"] else float("inf")
    print(_table(records))
    print(f"batching on/off rows/s at concurrency {top}: {ratio:.2f}x")
    print(
        f"bare forward pass in one process: {bare['bare_rows_per_s_batch1']:.1f} rows/s one text per call, "
        f"{bare['bare_rows_per_s_batched']:.1f} in batches of {base.max_batch_size}: batching gains at most "
        f"{bare['bare_batch_gain']:.2f}x here"
    )
    print(
        f"CPU per request at concurrency {top}, batching on: "
        + ", ".join(f"{role} {ms:.1f} ms" for role, ms in cpu_ms.items())
    )
    met = targets(records, bare)
    print(
        f"c1_overhead_ms {met['c1_overhead_ms']:.1f} (target <= {C1_OVERHEAD_TARGET_MS:g}), "
        f"c{top}_vs_bare {met[f'c{top}_vs_bare']:.2f} (target >= {C32_VS_BARE_TARGET}), "
        f"worst p99/p50 {met['worst_p99_over_p50']:.2f} (<= {P99_OVER_P50_LIMIT:g}), errors {met['errors']}"
    )
    print(
        "Serve floor (no-op model, same proxy and load generator): p50 at concurrency 1 "
        f"{limits['floor_c1_ms_hops1']:.1f} ms with one hop, {limits['floor_c1_ms_hops2']:.1f} ms with two; "
        f"c{top}_vs_bare the CPUs allow: {limits[f'c{top}_vs_bare_limit_hops1']:.2f} with one hop, "
        f"{limits[f'c{top}_vs_bare_limit_hops2']:.2f} with two"
    )
    if json_path:
        Path(json_path).write_text(
            json.dumps(
                {
                    "records": records,
                    **met,
                    "serve_floor": floor,
                    **limits,
                    f"ratio_on_off_c{top}": ratio,
                    **bare,
                    f"cpu_ms_per_request_c{top}": cpu_ms,
                },
                indent=2,
            ),
            encoding="utf-8",
        )
    return records


def _table(records: Sequence[dict[str, Any]]) -> str:
    lines = [
        f"{'batching':>8} {'conc':>5} {'rows/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>6}"
    ]
    for r in records:
        lines.append(
            f"{'on' if r['batching'] else 'off':>8} {r['concurrency']:>5} {r['rows_per_s']:>8.1f} "
            f"{r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['errors']:>6}"
        )
    return "\n".join(lines)


def mixed_shots(texts: Sequence[str], spec: ServeSpec, n: int, malformed_every: int = 10) -> list[Shot]:
    """`n` requests, every `malformed_every`-th one malformed (cycling through the kinds)."""
    bad = itertools.cycle(malformed_shots(spec))
    good = iter(text_shots(texts, n))
    return [next(bad) if i % malformed_every == malformed_every - 1 else next(good) for i in range(n)]


def status_report(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """Counts per status, and how many requests got another status than their kind must get."""
    return {
        "requests": len(outcomes),
        "by_status": dict(sorted(Counter(o.status for o in outcomes).items())),
        "unexpected": sum(o.status != o.expect for o in outcomes),
        "server_errors": sum(o.status >= 500 or o.status == 0 for o in outcomes),
    }


def load_test(
    url: str, texts: Sequence[str], spec: ServeSpec, requests: int = 5000, concurrency: int = 32
) -> dict:
    """`requests` requests (10% malformed) from `concurrency` clients against a running endpoint."""
    outcomes = asyncio.run(drive(url, mixed_shots(texts, spec, requests), concurrency))
    return status_report(outcomes)


def load_run(
    model: str,
    texts: Sequence[str],
    requests: int = 5000,
    concurrency: int = 32,
    spec: ServeSpec | None = None,
) -> dict[str, Any]:
    """Deploy on loopback, run :func:`load_test`, delete the app."""
    run_spec = _bench_spec(model, spec)
    with deployed(run_spec) as url:
        return load_test(url, texts, run_spec, requests, concurrency)


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


def _ongoing(actor: ray.actor.ActorHandle) -> int:
    # Serve has no public per-replica load; its replica actor's own method (private API) answers from a
    # separate thread even while the replica is busy; -1 if it fails.
    try:
        return int(ray.get(actor.get_num_ongoing_requests.remote(), timeout=5))
    except Exception:
        return -1


def kill_busy_replica(app_name: str = APP_NAME, attempts: int = 50) -> tuple[str, int]:
    """Kill the model replica actor with the most calls in flight; (its name, that count).

    Polls up to `attempts` times for a replica with at least one call in flight, so the kill lands
    mid-request rather than between two batches.
    """
    best: tuple[int, str, ray.actor.ActorHandle] | None = None
    for _ in range(attempts):
        for name, namespace in replica_actor_names(app_name):
            actor = ray.get_actor(name, namespace=namespace)
            ongoing = _ongoing(actor)
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


async def load_with_kill(
    url: str, shots: Sequence[Shot], concurrency: int, kill_after: float = 0.3, app_name: str = APP_NAME
) -> tuple[list[Outcome], dict[str, Any]]:
    """Run `shots` and kill the busiest model replica actor once a `kill_after` fraction is answered.

    Returns the outcomes and the kill: ``{"replica", "in_flight", "answered_before", "at"}`` (calls —
    gateway batches of requests — in flight on the killed replica just before the kill, requests
    answered before it, its ``time.monotonic()``).
    """
    answered = 0
    kill_at = max(1, min(len(shots), math.ceil(len(shots) * kill_after)))
    reached = asyncio.Event()

    def count(_: Outcome) -> None:
        nonlocal answered
        answered += 1
        if answered >= kill_at:
            reached.set()

    load = asyncio.create_task(drive(url, shots, concurrency, on_outcome=count))
    waiter = asyncio.create_task(reached.wait())
    await asyncio.wait({load, waiter}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    answered_before = answered
    name, in_flight = await asyncio.to_thread(kill_busy_replica, app_name)
    kill = {
        "replica": name,
        "in_flight": in_flight,
        "answered_before": answered_before,
        "at": time.monotonic(),
    }
    return await load, kill


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
    run_spec = _bench_spec(model, spec, min_replicas=2, max_replicas=2, cpus_per_replica=1)
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
