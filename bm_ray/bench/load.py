"""The HTTP load generator of the Serve benchmarks: requests to /v1/classify, concurrent clients, summaries.

Well-formed one-text requests, one request per way of being malformed, and mixes of both, sent over
loopback from concurrent clients (:func:`drive`) to an app deployed for the run (:func:`deployed`).
Every run is bounded: a fixed request count per load and a client timeout per request.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import ray
from ray import serve

from bm_ray.serve import APP_NAME, INGRESS_NUM_CPUS, app_url, deploy
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
    from bm_ray.corpus import first_ok_rows

    spec = IngestSpec(input=[path], text_fields=list(text_fields))
    return [row["text"] for row in first_ok_rows(spec, ["text"], limit)]


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


@contextmanager
def deployed(spec: ServeSpec) -> Iterator[str]:
    """The app deployed on loopback for the block (its URL), deleted after it."""
    deploy(spec)
    try:
        yield app_url(spec)
    finally:
        serve.delete(APP_NAME)


def bench_spec(model: str, spec: ServeSpec | None, **overrides: Any) -> ServeSpec:
    """The spec a bench deploys: `spec` for `model` with `overrides`, fitted to the cluster (:func:`fit_to_cluster`).

    Without `spec`: one model replica of 2 CPUs on :data:`DEFAULT_PORT`.
    """
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
    run_spec = bench_spec(model, spec)
    with deployed(run_spec) as url:
        return load_test(url, texts, run_spec, requests, concurrency)
