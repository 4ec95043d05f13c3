"""The Serve endpoint on a real local Ray over loopback HTTP: predictions, errors, auth, back-pressure,
model swap, a model replica killed under load (and the ingress retry logic on its own)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError
from ray.serve._private.build_app import build_app as serve_build_app
from ray.serve.exceptions import BackPressureError

from bm_ray.bench_serve import (
    BARE_ROWS,
    CpuPerRequest,
    bare_forward,
    drive,
    load_test,
    load_with_kill,
    process_role,
    replica_actor_names,
    running_replicas,
    text_shots,
    wait_replaced,
)
from bm_ray.engine import Predictor
from bm_ray.models import LABELS_FILE, fetch_preset, make_tiny_model
from bm_ray.serve import (
    INGRESS_DEPLOYMENT,
    INGRESS_NUM_CPUS,
    MODEL_CALL_RETRIES,
    MODEL_DEPLOYMENT,
    ApiError,
    Classifier,
    ModelNotReadyError,
    app_url,
    build_app,
    call_model,
    deploy,
)
from bm_ray.specs import ServeSpec

LABELS = ["World", "Sports", "Business", "Sci/Tech"]
KEY_ENV = "BM_RAY_TEST_SERVE_KEY"
KEY = "s3cret-test-key"
# Replicas inherit the environment Ray starts with, so the key must be set before any fixture starts Ray.
os.environ[KEY_ENV] = KEY

TEXTS = [
    "Stocks rallied on Wall Street after the Federal Reserve held interest rates steady.",
    "The striker scored twice as the home side won the cup final.",
    "NASA's new telescope sends back its first images of distant galaxies.",
    "Rebels and government forces agreed to a ceasefire after weeks of fighting.",
    "A short one.",
    "Chip maker posts record quarterly profit on strong demand for servers " * 8,
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tiny(path: Path, seed: int, version: str) -> str:
    make_tiny_model(path, LABELS, str(fetch_preset("minilm-l6")), seed=seed)
    info = json.loads((path / LABELS_FILE).read_text())
    (path / LABELS_FILE).write_text(json.dumps({**info, "version": version}))
    return str(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """Two tiny models (versions 1 and 2) with the real MiniLM tokenizer."""
    root = tmp_path_factory.mktemp("serve-models")
    return _tiny(root / "m1", 0, "1"), _tiny(root / "m2", 1, "2")


@pytest.fixture(scope="module")
def spec(models: tuple[str, str]) -> ServeSpec:
    """The main app: one 1-CPU replica, small limits so the error cases stay cheap."""
    return ServeSpec(
        model=models[0],
        port=_free_port(),
        min_replicas=1,
        max_replicas=1,
        max_texts_per_request=64,
        max_text_chars=2000,
        max_body_bytes=64 * 1024,
        cpus_per_replica=1,
    )


@pytest.fixture(scope="module")
def guarded(spec: ServeSpec) -> ServeSpec:
    """A second app: Bearer key required and a tiny queue (1 ongoing + 1 queued request)."""
    return spec.model_copy(
        update={
            "route_prefix": "/guarded",
            "api_key_env": KEY_ENV,
            "max_ongoing_requests": 1,
            "max_queued_requests": 1,
            "max_batch_size": 1,
            "cpus_per_replica": 0.25,
        }
    )


@pytest.fixture(scope="module")
def url(ray_local: None, spec: ServeSpec, guarded: ServeSpec) -> Iterator[str]:
    """Both apps deployed on loopback; Serve shut down after the module."""
    deploy(spec)
    deploy(guarded, name="guarded")
    yield app_url(spec)
    serve.shutdown()


def test_app_is_a_light_ingress_over_the_model_deployment() -> None:
    """The Serve-config contract: ingress `ApiGateway`, model `Classifier` holding user_config and limits."""
    app = serve_build_app(build_app({"model": "/m", "max_replicas": 3, "max_queued_requests": 10}), name="x")
    assert app.ingress_deployment_name == INGRESS_DEPLOYMENT
    deployments = {d.name: d for d in app.deployments}
    assert set(deployments) == {INGRESS_DEPLOYMENT, MODEL_DEPLOYMENT}
    model, ingress = deployments[MODEL_DEPLOYMENT], deployments[INGRESS_DEPLOYMENT]
    assert model._deployment_config.user_config == {"model": "/m"}
    assert model._deployment_config.max_queued_requests == 10
    assert model._deployment_config.autoscaling_config.max_replicas == 3
    assert ingress._deployment_config.user_config is None
    assert ingress._deployment_config.num_replicas == 1
    assert ingress.ray_actor_options["num_cpus"] == INGRESS_NUM_CPUS
    # Room for everything the model deployment holds, so its queue is what fills first.
    assert ingress._deployment_config.max_ongoing_requests > 3 * 64 + 10
    other_model = serve_build_app(
        build_app({"model": "/m2", "max_replicas": 3, "max_queued_requests": 10}), name="x"
    )
    assert {d.name: d.version for d in other_model.deployments} == {
        d.name: d.version for d in app.deployments
    }


class _FakeMethod:
    """A handle method whose successive calls raise or return the given outcomes."""

    def __init__(self, outcomes: list[object]) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0

    def remote(self, *args: object) -> object:
        self.calls += 1
        outcome = self.outcomes.pop(0)

        async def answer() -> object:
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome

        return answer()


class _FakeHandle:
    def __init__(self, outcomes: list[object]) -> None:
        self.classify = _FakeMethod(outcomes)


def _call(outcomes: list[object]) -> tuple[object, int, int]:
    """(result or raised exception, handle calls, retries counted) of `call_model` over `outcomes`."""
    handle, retries = _FakeHandle(outcomes), []
    try:
        result: object = asyncio.run(
            call_model(handle, "classify", ["a"], retry_after_s=1, on_retry=lambda: retries.append(1))  # type: ignore[arg-type]
        )
    except Exception as err:
        result = err
    return result, handle.classify.calls, len(retries)


def test_model_call_retried_after_replica_death() -> None:
    deaths: list[object] = [ActorDiedError(), ActorUnavailableError("replica gone", None)]
    assert _call([*deaths, {"ok": 1}]) == ({"ok": 1}, 3, 2)

    err, calls, retries = _call([ActorDiedError()] * (MODEL_CALL_RETRIES + 1))
    assert isinstance(err, ApiError) and (err.status, err.code, err.retry_after_s) == (
        503,
        "model_unavailable",
        1,
    )
    assert calls == MODEL_CALL_RETRIES + 1 and retries == MODEL_CALL_RETRIES


@pytest.mark.parametrize(
    ("raised", "status", "code"),
    [
        (BackPressureError(num_queued_requests=4, max_queued_requests=4, retry_after_s=2), 503, "queue_full"),
        (ModelNotReadyError("model is loading"), 503, "not_ready"),
        (ValueError("a bug in the model code"), None, None),
    ],
)
def test_model_call_not_retried_for_other_errors(
    raised: Exception, status: int | None, code: str | None
) -> None:
    err, calls, retries = _call([raised, {"ok": 1}])
    assert (calls, retries) == (1, 0)
    if status is None:
        assert err is raised
    else:
        assert isinstance(err, ApiError) and (err.status, err.code) == (status, code)
        assert err.retry_after_s == (2 if code == "queue_full" else 1)


def test_model_replica_merges_calls_queued_behind_a_forward_pass(
    ray_local: None, models: tuple[str, str]
) -> None:
    """Continuous batching: calls arriving while a pass runs go into the next pass, capped in texts."""
    spec = ServeSpec(model=models[0], max_batch_size=8, forward_batch_size=4)
    replica = Classifier.func_or_class(spec)  # the deployment's own class, outside Serve
    texts = [f"{text} ({i})" for i in range(3) for text in TEXTS]  # 18 texts

    async def run() -> tuple[list[dict], list[int]]:
        await replica.reconfigure({"model": models[0]})
        predictor = replica._predictor
        passes: list[int] = []
        real_predict = predictor.predict

        def counted(batch: list[str]) -> list:
            passes.append(len(batch))
            return real_predict(batch)

        predictor.predict = counted
        answers = await asyncio.gather(*(replica.classify([text]) for text in texts))
        return answers, passes

    answers, passes = asyncio.run(run())
    engine = Predictor.load(models[0], batch_size=4, precision="fp32").predict(texts)
    assert [a["predictions"][0]["label"] for a in answers] == [p.label for p in engine]
    np.testing.assert_allclose(
        [a["predictions"][0]["score"] for a in answers], [p.score for p in engine], atol=1e-5
    )
    # All 18 calls queue before the first pass starts: they run as passes capped at max_batch_size texts.
    assert passes == [8, 8, 2]


def test_bare_forward_and_cpu_per_request_roles(models: tuple[str, str]) -> None:
    """The serve bench's side measurements: the engine's own batching gain, and CPU per role."""
    spec = ServeSpec(model=models[0], max_batch_size=16, forward_batch_size=4, cpus_per_replica=1)
    with CpuPerRequest() as cpu:
        bare = bare_forward(models[0], TEXTS, spec)
    assert bare["bare_rows_per_s_batch1"] > 0 and bare["bare_rows_per_s_batched"] > 0
    assert bare["bare_batch_gain"] == pytest.approx(
        bare["bare_rows_per_s_batched"] / bare["bare_rows_per_s_batch1"]
    )
    per_request = cpu.per_request_ms(BARE_ROWS)
    assert per_request["load generator (this process)"] > 0  # the engine ran in this process
    assert process_role(psutil.Process()) == "load generator (this process)"


def post(url: str, payload: object, **kwargs: object) -> httpx.Response:
    return httpx.post(f"{url}/v1/classify", json=payload, timeout=30, **kwargs)


def test_predictions_equal_engine(url: str, models: tuple[str, str]) -> None:
    expected = Predictor.load(models[0]).predict(TEXTS)
    response = post(url, {"texts": TEXTS})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == {"name": "tiny-bert", "version": "1"}
    got = body["predictions"]
    assert [p["id"] for p in got] == [str(i) for i in range(len(TEXTS))]
    assert [p["label"] for p in got] == [p.label for p in expected]
    np.testing.assert_allclose([p["score"] for p in got], [p.score for p in expected], atol=1e-5)
    np.testing.assert_allclose(
        [[p["scores"][label] for label in LABELS] for p in got],
        [[p.scores[label] for label in LABELS] for p in expected],
        atol=1e-5,
    )

    instances = post(
        url, {"instances": [{"id": "a-1", "text": TEXTS[0]}, {"text": TEXTS[1]}, {"id": 7, "text": "x"}]}
    )
    assert instances.status_code == 200, instances.text
    assert [p["id"] for p in instances.json()["predictions"]] == ["a-1", "1", "7"]
    assert instances.json()["predictions"][0]["label"] == expected[0].label


@pytest.mark.parametrize(
    ("payload", "status", "field"),
    [
        ({"texts": []}, 422, "texts"),
        ({"texts": ["ok", 3]}, 422, "texts.1"),
        ({"texts": ["ok", " \t\n"]}, 422, "texts.1"),
        ({"instances": [{"id": "a", "text": ""}]}, 422, "instances.0.text"),
        ({"instances": [{"id": "a"}]}, 422, "instances.0.text"),
        ({"texts": ["a"] * 65}, 422, "texts"),
        ({"texts": ["ok", "x" * 2001]}, 422, "texts.1"),
        ({"texts": ["a"], "instances": [{"text": "a"}]}, 422, "texts"),
        ({}, 422, "texts"),
        ({"txts": ["a"]}, 422, "txts"),
        ([1, 2], 422, "body"),
    ],
)
def test_bad_requests_get_422_naming_the_field(url: str, payload: object, status: int, field: str) -> None:
    response = post(url, payload)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["field"] == field
    assert error["message"] and error["code"]


@pytest.mark.parametrize(
    ("content", "headers", "status", "code"),
    [
        (b'{"texts": ["a"', {"content-type": "application/json"}, 422, "malformed_json"),
        (b"\xff\xfe", {"content-type": "application/json"}, 422, "malformed_json"),
        (b"texts=a", {"content-type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"),
        (b'{"texts": ["a"]}', {"content-type": "text/plain"}, 415, "unsupported_media_type"),
        (
            b'{"texts": ["' + b"a" * 70_000 + b'"]}',
            {"content-type": "application/json"},
            413,
            "body_too_large",
        ),
    ],
)
def test_body_errors(url: str, content: bytes, headers: dict[str, str], status: int, code: str) -> None:
    response = httpx.post(f"{url}/v1/classify", content=content, headers=headers, timeout=30)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


def test_body_over_limit_without_content_length_is_413(url: str) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"texts": ["'
        for _ in range(20):
            yield b"a" * 4096
        yield b'"]}'

    response = httpx.post(
        f"{url}/v1/classify", content=chunks(), headers={"content-type": "application/json"}, timeout=30
    )
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "body_too_large"


def test_model_health_ready_and_docs(url: str) -> None:
    model = httpx.get(f"{url}/v1/model").json()
    assert model == {
        "labels": LABELS,
        "max_length": 64,
        "name": "tiny-bert",
        "version": "1",
        "base_model": "random",
    }
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{url}/readyz").json() == {"status": "ready"}
    schema = httpx.get(f"{url}/openapi.json").json()
    assert "/v1/classify" in schema["paths"]
    assert httpx.get(f"{url}/docs").status_code == 200
    missing = httpx.get(f"{url}/v1/nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "http_error"


def test_auth(url: str, guarded: ServeSpec) -> None:
    guarded_url = app_url(guarded)
    assert post(url, {"texts": ["open endpoint"]}).status_code == 200  # no api_key_env: no auth
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        response = post(guarded_url, {"texts": ["a"]}, headers=headers)
        assert response.status_code == 401, response.text
        assert response.json()["error"]["code"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{guarded_url}/v1/model").status_code == 401
    assert httpx.get(f"{guarded_url}/healthz").status_code == 200
    good = post(guarded_url, {"texts": ["a"]}, headers={"Authorization": f"Bearer {KEY}"})
    assert good.status_code == 200, good.text


def test_full_queue_is_503_with_retry_after(guarded: ServeSpec) -> None:
    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60, headers={"Authorization": f"Bearer {KEY}"}) as client:
            return await asyncio.gather(
                *(
                    client.post(f"{app_url(guarded)}/v1/classify", json={"texts": TEXTS * 10})
                    for _ in range(24)
                )
            )

    responses = asyncio.run(burst())
    assert {r.status_code for r in responses} == {200, 503}
    rejected = next(r for r in responses if r.status_code == 503)
    assert rejected.headers["retry-after"] == "1"
    assert rejected.json()["error"]["code"] == "queue_full"


def test_load_with_malformed_requests(url: str, spec: ServeSpec) -> None:
    report = load_test(url, TEXTS, spec, requests=300, concurrency=16)
    assert report["requests"] == 300
    assert report["server_errors"] == 0, report
    assert report["unexpected"] == 0, report
    assert report["by_status"][200] == 270


def test_model_update_under_load_has_no_failures(url: str, spec: ServeSpec, models: tuple[str, str]) -> None:
    replicas = replica_actor_names()
    ingress = replica_actor_names(deployment=INGRESS_DEPLOYMENT)
    assert len(replicas) == len(ingress) == 1

    async def load_while_switching() -> list:
        load = asyncio.create_task(drive(url, text_shots(TEXTS, 200), concurrency=8))
        await asyncio.sleep(0.5)
        await asyncio.to_thread(deploy, spec.model_copy(update={"model": models[1]}))
        return await load

    outcomes = asyncio.run(load_while_switching())
    assert [o.status for o in outcomes if o.status != 200] == []
    versions = [o.body["model"]["version"] for o in outcomes]
    assert versions[-1] == "2" and "1" in versions
    assert httpx.get(f"{url}/v1/model").json()["version"] == "2"
    assert replica_actor_names() == replicas  # reconfigured in place, not replaced
    assert replica_actor_names(deployment=INGRESS_DEPLOYMENT) == ingress


def test_killed_model_replica_loses_no_requests(url: str, spec: ServeSpec) -> None:
    """A model replica killed mid-load: its in-flight requests are retried by the ingress on the other one."""
    fault = spec.model_copy(
        update={"route_prefix": "/fault", "min_replicas": 2, "max_replicas": 2, "cpus_per_replica": 0.2}
    )
    deploy(fault, name="fault")
    fault_url = app_url(fault)
    try:
        assert running_replicas("fault") == 2
        outcomes, kill = asyncio.run(
            load_with_kill(
                fault_url, text_shots(TEXTS, 300), concurrency=16, kill_after=0.2, app_name="fault"
            )
        )
        assert kill["in_flight"] > 0 and kill["answered_before"] < 300  # killed mid-request, mid-load
        failed = [(o.status, o.body) for o in outcomes if o.status != 200]
        assert len(failed) <= 3, failed  # >= 99% succeed
        assert wait_replaced(kill["replica"], 2, app_name="fault", timeout_s=180) is not None
        assert running_replicas("fault") == 2
        assert httpx.get(f"{fault_url}/readyz", timeout=30).json() == {"status": "ready"}
        assert post(fault_url, {"texts": TEXTS}).status_code == 200
    finally:
        serve.delete("fault")
