"""`bm-ray bench serve`: the Serve endpoint over loopback HTTP with batching on and off, against its floors.

Per concurrency level: rows/s, latency percentiles and errors of one-text requests (the load of
:mod:`bm_ray.bench.load`), with the CPU each process of the endpoint spent per request; next to them the
bare forward pass in one process (what batching can gain at most) and Serve's own floor (a no-op app on
the same proxy, :mod:`bm_ray.bench.serve_floor`), and the targets the endpoint is held to.
The malformed-traffic load is :func:`bm_ray.bench.load.load_run`; the model replica kill
:func:`bm_ray.bench.serve_faults.fault_run`.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from ray import serve

from bm_ray.bench.load import Outcome, Shot, bench_spec, deployed, drive, summarize, text_shots
from bm_ray.bench.serve_floor import NoopGateway, NoopModel
from bm_ray.serve import APP_NAME, app_url
from bm_ray.specs import ServeSpec

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


async def _timed(url: str, shots: Sequence[Shot], concurrency: int) -> tuple[list[Outcome], float]:
    started = time.perf_counter()
    outcomes = await drive(url, shots, concurrency)
    return outcomes, time.perf_counter() - started


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
    base = bench_spec(model, spec)
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


def bench_serve_precisions(
    model: str, corpus_texts: Sequence[str], requests: int, spec: ServeSpec, json_path: Path | None = None
) -> dict[str, Any]:
    """The fp32 endpoint, then the int8 one (``precision: int8``), at concurrency 1 and 32 with batching
    on, in one run: each leg's rows/s and p50, and int8's c32 rows/s over fp32's (the target is >= 1.6)."""
    legs: dict[str, dict[str, Any]] = {}
    shots = text_shots(corpus_texts, requests)
    for precision in ("fp32", "int8"):
        with deployed(bench_spec(model, spec.model_copy(update={"precision": precision}))) as url:
            for concurrency, outcomes, wall_s, _ in load_levels(url, shots, (1, 32)):
                legs[f"{precision}_c{concurrency}"] = summarize(outcomes, wall_s)
    result = {
        "legs": legs,
        "int8_vs_fp32_c32_rows_per_s": legs["int8_c32"]["rows_per_s"] / legs["fp32_c32"]["rows_per_s"],
        "int8_vs_fp32_c1_p50": legs["int8_c1"]["p50_ms"] / legs["fp32_c1"]["p50_ms"],
    }
    print(
        f"c32 rows/s: fp32 {legs['fp32_c32']['rows_per_s']:.1f}, int8 {legs['int8_c32']['rows_per_s']:.1f} "
        f"= {result['int8_vs_fp32_c32_rows_per_s']:.2f}x (target >= 1.6); c1 p50: fp32 "
        f"{legs['fp32_c1']['p50_ms']:.1f} ms, int8 {legs['int8_c1']['p50_ms']:.1f} ms"
    )
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result
