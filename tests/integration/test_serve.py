"""The Serve endpoint on a real local Ray over loopback HTTP: predictions, errors, auth, back-pressure,
model swap (good and bad), a model replica killed under load, a poisoned, slow or hanging forward pass,
autoscaling up and down under load (and the ingress retry logic on its own)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
import ray
import serve_faults
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError
from ray.serve.exceptions import BackPressureError
from serve_faults import HANG, PACE, POISON, SLOW, FaultyClassifier
from tiny_model import make_tiny_model
from typer.testing import CliRunner

from bm_ray.bench.load import drive, load_test, text_shots
from bm_ray.bench.serve import BARE_ROWS, CpuPerRequest, bare_forward, process_role, targets
from bm_ray.bench.serve_faults import load_with_kill, replica_actor_names, running_replicas, wait_replaced
from bm_ray.cli.main import app as cli_app
from bm_ray.layout import LABELS_FILE
from bm_ray.model.engine import Predictor
from bm_ray.model.registry import fetch_preset, read_model_info
from bm_ray.runtime.ray_init import free_port
from bm_ray.serve import (
    INGRESS_DEPLOYMENT,
    MODEL_DEPLOYMENT,
    ApiKeyError,
    DeployFailedError,
    ModelRefError,
    app_url,
    deploy,
    read_api_key,
)
from bm_ray.serve.gateway import MODEL_CALL_RETRIES, admission_limit, call_model
from bm_ray.serve.model import Classifier
from bm_ray.serve.schemas import ApiError, ModelNotReadyError
from bm_ray.specs import ServeSpec

# The fault hooks live under tests/, which Serve's replica processes cannot import: ship them by value.
ray.cloudpickle.register_pickle_by_value(serve_faults)

LABELS = ["World", "Sports", "Business", "Sci/Tech"]
KEY_ENV = "BM_RAY_TEST_SERVE_KEY"
KEY = "s3cret-test-key"
UNSET_KEY_ENV = "BM_RAY_TEST_UNSET_KEY"
# Replicas inherit the environment Ray starts with, so the key must be set before any fixture starts Ray.
# With the trailing newline of a Kubernetes Secret created from a file: the endpoint strips it.
os.environ[KEY_ENV] = KEY + "\n"
os.environ.pop(UNSET_KEY_ENV, None)

TEXTS = [
    "Stocks rallied on Wall Street after the Federal Reserve held interest rates steady.",
    "The striker scored twice as the home side won the cup final.",
    "NASA's new telescope sends back its first images of distant galaxies.",
    "Rebels and government forces agreed to a ceasefire after weeks of fighting.",
    "A short one.",
    "Chip maker posts record quarterly profit on strong demand for servers " * 8,
]


def _tiny(path: Path, seed: int, version: str) -> str:
    make_tiny_model(path, LABELS, str(fetch_preset("minilm-l6")), seed=seed, spread_on=TEXTS)
    info = json.loads((path / LABELS_FILE).read_text())
    (path / LABELS_FILE).write_text(json.dumps({**info, "version": version}))
    return str(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """Two tiny models (versions 1 and 2) with the real MiniLM tokenizer, their scores spread on TEXTS."""
    root = tmp_path_factory.mktemp("serve-models")
    return _tiny(root / "m1", 0, "1"), _tiny(root / "m2", 1, "2")


def thresholds_between(scores: list[float]) -> list[float]:
    """Midpoints of the gaps between the sorted distinct `scores`, widest gap first."""
    ordered = sorted(set(scores))
    gaps = sorted(itertools.pairwise(ordered), key=lambda pair: pair[0] - pair[1])
    return [(low + high) / 2 for low, high in gaps]


@pytest.fixture(scope="module")
def spec(models: tuple[str, str]) -> ServeSpec:
    """The main app: one model replica, small limits so the error cases stay cheap; its default min_score
    falls between the scores of TEXTS (some abstain, some do not).

    CPUs are fractions: every app of this module fits beside the others on the 2-CPU test Ray.
    """
    scores = [p.score for p in Predictor.load(models[0]).predict(TEXTS)]
    return ServeSpec(
        model=models[0],
        port=free_port(),
        min_replicas=1,
        max_replicas=1,
        max_texts_per_request=64,
        max_text_chars=2000,
        max_body_bytes=64 * 1024,
        cpus_per_replica=0.5,
        min_score=thresholds_between(scores)[0],
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
            "cpus_per_replica": 0.2,
        }
    )


@pytest.fixture(scope="module")
def url(ray_local: None, spec: ServeSpec, guarded: ServeSpec) -> Iterator[str]:
    """Both apps deployed on loopback; Serve shut down after the module."""
    deploy(spec)
    deploy(guarded, name="guarded")
    yield app_url(spec)
    serve.shutdown()


def test_app_runs_two_gateways_over_the_model_deployment(url: str) -> None:
    """The Serve-config contract, read through Serve's public status: ingress `ApiGateway` (two replicas,
    no single point of failure) in front of the `Classifier` model deployment."""
    app = serve.status().applications["bm-ray"]
    assert app.status == "RUNNING"
    assert {name: dict(d.replica_states) for name, d in app.deployments.items()} == {
        INGRESS_DEPLOYMENT: {"RUNNING": 2},
        MODEL_DEPLOYMENT: {"RUNNING": 1},
    }


def test_admission_limit_counts_running_replicas() -> None:
    spec = ServeSpec(model="/m", max_replicas=4, max_ongoing_requests=8, max_queued_requests=10)
    assert admission_limit(spec, model_replicas=1, gateway_replicas=2) == 9  # (1 x 8 + 10) / 2
    assert admission_limit(spec, model_replicas=4, gateway_replicas=2) == 21  # (4 x 8 + 10) / 2
    assert admission_limit(spec, model_replicas=0, gateway_replicas=1) == 10  # the queue wakes a zero
    unbounded = spec.model_copy(update={"max_queued_requests": -1})
    assert admission_limit(unbounded, model_replicas=2, gateway_replicas=1) == 32


def test_api_key_fails_closed_and_strips_one_newline(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = ServeSpec(model="/m", api_key_env="BM_RAY_TEST_KEY_UNIT")
    assert read_api_key(ServeSpec(model="/m")) is None  # no api_key_env: an open endpoint, by choice
    for value in (None, "", "\n"):
        if value is None:
            monkeypatch.delenv("BM_RAY_TEST_KEY_UNIT", raising=False)
        else:
            monkeypatch.setenv("BM_RAY_TEST_KEY_UNIT", value)
        with pytest.raises(ApiKeyError, match=r"BM_RAY_TEST_KEY_UNIT.*unset or empty"):
            read_api_key(spec)
    for value, key in (("k\n", "k"), ("k\r\n", "k"), ("k\n\n", "k\n"), ("k", "k")):
        monkeypatch.setenv("BM_RAY_TEST_KEY_UNIT", value)
        assert read_api_key(spec) == key


def test_api_key_file_fails_closed_and_strips_one_newline(tmp_path: Path) -> None:
    """A mounted Secret: a missing, unreadable or empty file refuses to start, never opens the endpoint."""
    key_file = tmp_path / "api-key"
    spec = ServeSpec(model="/m", api_key_file=str(key_file))
    with pytest.raises(ApiKeyError, match=rf"{key_file} cannot be read"):
        read_api_key(spec)  # missing
    with pytest.raises(ApiKeyError, match=rf"{tmp_path} cannot be read"):
        read_api_key(ServeSpec(model="/m", api_key_file=str(tmp_path)))  # a directory
    for value in ("", "\n", "\r\n"):
        key_file.write_bytes(value.encode())
        with pytest.raises(ApiKeyError, match=rf"{key_file} is empty"):
            read_api_key(spec)
    for value, key in (("k\n", "k"), ("k\r\n", "k"), ("k\n\n", "k\n"), ("k", "k")):
        key_file.write_bytes(value.encode())
        assert read_api_key(spec) == key
    with pytest.raises(ValueError, match="api_key_env and api_key_file"):
        ServeSpec(model="/m", api_key_env="BM_RAY_TEST_KEY_UNIT", api_key_file=str(key_file))


def test_cli_refuses_to_start_without_key_or_with_a_bad_model(
    models: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`bm-ray serve` exits non-zero with the reason, before any Ray or Serve starts."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)

    def refused(*args: str) -> str:
        result = CliRunner().invoke(cli_app, ["serve", *args])
        assert result.exit_code == 2, result.output
        return "".join(result.output.split())  # the console wraps long lines

    assert f"{UNSET_KEY_ENV},whichisunsetorempty" in refused(
        "--model", models[0], "--api-key-env", UNSET_KEY_ENV
    )
    empty_key = tmp_path / "empty-key"
    empty_key.write_text("\n", encoding="utf-8")
    assert "isempty" in refused("--model", models[0], "--api-key-file", str(empty_key))
    assert "cannotberead" in refused("--model", models[0], "--api-key-file", str(tmp_path / "no-key"))
    assert "nosuchdirectory" in refused("--model", str(tmp_path / "nope"))
    assert "notatrainedbm-raymodel" in refused("--model", str(fetch_preset("minilm-l6")))


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

        return _FakeResponse(answer())


class _FakeResponse:
    """Awaitable like a DeploymentResponse, with its `cancel()`."""

    def __init__(self, answer: object) -> None:
        self.answer = answer

    def __await__(self):  # type: ignore[no-untyped-def]
        return self.answer.__await__()  # type: ignore[attr-defined]

    def cancel(self) -> None:
        pass


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
    me = psutil.Process()
    before = sum(me.cpu_times()[:2])
    with CpuPerRequest() as cpu:
        bare = bare_forward(models[0], TEXTS, spec)
    used = sum(me.cpu_times()[:2]) - before
    assert bare["bare_batch_gain"] == pytest.approx(
        bare["bare_rows_per_s_batched"] / bare["bare_rows_per_s_batch1"]
    )
    # The engine ran in this process: its CPU is charged to the load generator's role, per request.
    assert process_role(me) == "load generator (this process)"
    per_request = cpu.per_request_ms(BARE_ROWS)
    assert per_request["load generator (this process)"] == pytest.approx(1000 * used / BARE_ROWS, rel=0.1)


def test_bench_targets_are_the_ratios_of_the_issue() -> None:
    bare = {"bare_rows_per_s_batch1": 50.0, "bare_rows_per_s_batched": 100.0}
    records = [
        {"batching": True, "concurrency": 1, "p50_ms": 27.0, "p99_ms": 40.0, "rows_per_s": 30.0, "errors": 0},
        {
            "batching": True,
            "concurrency": 32,
            "p50_ms": 400.0,
            "p99_ms": 900.0,
            "rows_per_s": 70.0,
            "errors": 0,
        },
        {
            "batching": False,
            "concurrency": 32,
            "p50_ms": 500.0,
            "p99_ms": 2100.0,
            "rows_per_s": 50.0,
            "errors": 1,
        },
    ]
    met = targets(records, bare)
    assert met["c1_overhead_ms"] == pytest.approx(7.0)  # 27 ms - 1000 / 50 rows/s
    assert met["c32_vs_bare"] == pytest.approx(0.7)
    assert met["worst_p99_over_p50"] == pytest.approx(4.2)
    assert met["errors"] == 1
    assert met["targets_met"] == {
        "c1_overhead_ms": True,
        "c32_vs_bare": True,
        "p99_le_4x_p50": False,
        "zero_errors": False,
    }


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
    assert [p["windows"] for p in got] == [p.windows for p in expected]
    # A text longer than the model's window is read whole, as overlapping windows, like classify does.
    article = " ".join(["markets rally as the central bank signals a pause"] * 30)  # < max_text_chars
    engine = Predictor.load(models[0]).predict([article])[0]
    response = post(url, {"texts": [article]})
    assert response.status_code == 200, response.text
    answer = response.json()["predictions"][0]
    assert answer["windows"] == engine.windows > 1 and answer["label"] == engine.label
    assert answer["score"] == pytest.approx(engine.score, abs=1e-5)

    instances = post(
        url, {"instances": [{"id": "a-1", "text": TEXTS[0]}, {"text": TEXTS[1]}, {"id": 7, "text": "x"}]}
    )
    assert instances.status_code == 200, instances.text
    assert [p["id"] for p in instances.json()["predictions"]] == ["a-1", "1", "7"]
    assert instances.json()["predictions"][0]["label"] == expected[0].label


def test_abstention_marks_predictions_below_min_score(
    url: str, spec: ServeSpec, models: tuple[str, str]
) -> None:
    """The endpoint's min_score by default, a request's own when given; label and scores are kept."""
    expected = Predictor.load(models[0]).predict(TEXTS)
    scores = [p.score for p in expected]
    default = post(url, {"texts": TEXTS})
    assert default.status_code == 200, default.text
    assert default.json()["min_score"] == spec.min_score
    got = default.json()["predictions"]
    assert [p["abstained"] for p in got] == [s < spec.min_score for s in scores]
    assert 0 < sum(p["abstained"] for p in got) < len(TEXTS)
    assert [p["label"] for p in got] == [p.label for p in expected]  # abstained rows keep their answer
    other = thresholds_between(scores)[1]  # another gap: another set of abstained texts
    for min_score in (0.0, 1.0, other):
        for body in (
            {"texts": TEXTS},
            {"instances": [{"id": f"t{i}", "text": t} for i, t in enumerate(TEXTS)]},
        ):
            response = post(url, {**body, "min_score": min_score})
            assert response.status_code == 200, response.text
            assert response.json()["min_score"] == min_score
            marks = [p["abstained"] for p in response.json()["predictions"]]
            assert marks == [s < min_score for s in scores]
    for bad in (1.5, -0.1, "high"):
        refused = post(url, {"texts": TEXTS, "min_score": bad})
        assert refused.status_code == 422 and refused.json()["error"]["field"] == "min_score"


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


def test_model_health_ready_and_docs(url: str, models: tuple[str, str]) -> None:
    model = httpx.get(f"{url}/v1/model").json()
    # The whole labels.json record, so fields added to ModelInfo reach clients unchanged.
    assert model == read_model_info(models[0]).to_json()
    assert (model["labels"], model["version"]) == (LABELS, "1")
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
    assert (len(replicas), len(ingress)) == (1, 2)

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
        assert failed == []  # the README's promise: the gateway retries what died with the replica
        assert wait_replaced(kill["replica"], 2, app_name="fault", timeout_s=180) is not None
        assert running_replicas("fault") == 2
        assert httpx.get(f"{fault_url}/readyz", timeout=30).json() == {"status": "ready"}
        assert post(fault_url, {"texts": TEXTS}).status_code == 200
    finally:
        serve.delete("fault")


def test_bad_model_swap_under_load_is_refused_and_the_old_model_answers(
    url: str, spec: ServeSpec, tmp_path: Path
) -> None:
    """Missing directory, and a directory that is not a bm-ray model: refused with the reason, no failed request."""
    before = httpx.get(f"{url}/v1/model").json()
    not_ours = str(fetch_preset("minilm-l6"))  # real weights, no labels.json

    async def load_while_swapping() -> tuple[list, list[str]]:
        load = asyncio.create_task(drive(url, text_shots(TEXTS, 150), concurrency=8))
        reasons = []
        for bad in (str(tmp_path / "missing"), not_ours):
            await asyncio.sleep(0.3)
            with pytest.raises(ModelRefError) as refused:
                await asyncio.to_thread(deploy, spec.model_copy(update={"model": bad}))
            reasons.append(str(refused.value))
        return await load, reasons

    outcomes, reasons = asyncio.run(load_while_swapping())
    assert [o.status for o in outcomes if o.status != 200] == []
    assert "no such directory" in reasons[0]
    assert "not a trained bm-ray model" in reasons[1]
    assert httpx.get(f"{url}/v1/model").json() == before
    assert {o.body["model"]["version"] for o in outcomes} == {before["version"]}


def test_replica_refuses_a_model_that_does_not_load_and_keeps_the_old_one(
    ray_local: None, models: tuple[str, str], tmp_path: Path
) -> None:
    """The replica's own guard (a swap that bypasses the builder, e.g. a Serve config's user_config)."""
    replica = Classifier.func_or_class(
        ServeSpec(model=models[0])
    )  # the deployment's own class, outside Serve
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / LABELS_FILE).write_text(json.dumps({"labels": ["a", "b"]}))  # labels but no weights

    async def run() -> tuple[dict, dict]:
        await replica.reconfigure({"model": models[0]})
        first = await replica.classify(["a text"])
        await replica.reconfigure({"model": str(broken)})  # refused: no exception, old model kept
        return first, await replica.classify(["a text"])

    first, after = asyncio.run(run())
    assert after == first and after["model"]["version"] == "1"
    replica.check_health()
    fresh = Classifier.func_or_class(ServeSpec(model=str(broken)))
    with pytest.raises(RuntimeError, match="did not load"):  # no model yet: the replica must not start
        asyncio.run(fresh.reconfigure({"model": str(broken)}))


@pytest.mark.parametrize("source", ["api_key_env", "api_key_file"])
def test_unset_api_key_fails_the_deploy_with_the_reason(
    spec: ServeSpec, url: str, source: str, tmp_path: Path
) -> None:
    """Fail closed inside Serve too: the gateway replica refuses to start; Serve's status says why."""
    missing, reason = (
        (UNSET_KEY_ENV, "unset or empty")
        if source == "api_key_env"
        else (str(tmp_path / "no-key"), "cannot be read")
    )
    closed = spec.model_copy(update={"route_prefix": "/closed", source: missing})
    try:
        with pytest.raises(DeployFailedError, match=missing):
            deploy(closed, name="closed")
        app = serve.status().applications["closed"]
        assert app.status == "DEPLOY_FAILED"
        assert reason in app.deployments[INGRESS_DEPLOYMENT].message
        assert httpx.post(f"{app_url(closed)}/v1/classify", json={"texts": ["a"]}).status_code != 200
    finally:
        serve.delete("closed")


def scalable_app(
    spec: ServeSpec, route_prefix: str, cpus_per_replica: float, **settings: object
) -> ServeSpec:
    """`spec` as another app of this module at `route_prefix`: 1 to 2 model replicas of `cpus_per_replica`
    CPUs each, with `settings` on top."""
    return spec.model_copy(
        update={
            "route_prefix": route_prefix,
            "min_replicas": 1,
            "max_replicas": 2,
            "cpus_per_replica": cpus_per_replica,
            **settings,
        }
    )


@pytest.fixture(scope="module")
def faulty(url: str, spec: ServeSpec) -> Iterator[ServeSpec]:
    """The model replica with the test-only fault hooks: one gateway, 1 of at most 2 model replicas
    running (no upscaling during the tests), 3 calls on the replica (+ as many again waiting), a 2 s
    request timeout. (An unbounded router queue: Serve's router counts a burst still being assigned
    as queued, so a bounded one would refuse part of the burst itself.)"""
    faulty_spec = scalable_app(
        spec,
        "/faulty",
        cpus_per_replica=0.2,
        gateway_replicas=1,
        upscale_delay_s=600,
        max_ongoing_requests=3,
        max_queued_requests=-1,
        request_timeout_s=2,
    )
    deploy(faulty_spec, name="faulty", model=FaultyClassifier)
    yield faulty_spec
    serve.delete("faulty")


def _passes() -> list[list[str]]:
    handle = serve.get_deployment_handle(MODEL_DEPLOYMENT, app_name="faulty")
    return handle.recorded_passes.remote().result(timeout_s=30)


async def _post_all(url: str, bodies: list[object], delays: list[float]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=30) as client:

        async def one(body: object, delay: float) -> httpx.Response:
            await asyncio.sleep(delay)
            if isinstance(body, bytes):
                return await client.post(
                    f"{url}/v1/classify", content=body, headers={"content-type": "application/json"}
                )
            return await client.post(f"{url}/v1/classify", json=body)

        return await asyncio.gather(*(one(b, d) for b, d in zip(bodies, delays, strict=True)))


def _wait_idle(url: str, timeout_s: float = 20) -> None:
    """Until the faulty replica answers a request in time again (a hang from a previous test is over)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if post(url, {"texts": ["idle?"]}).status_code == 200:
            return
    raise AssertionError(f"{url} did not answer within {timeout_s} s")


def test_hanging_forward_times_out_backpressure_counts_running_replicas(faulty: ServeSpec) -> None:
    """Six hanging requests fill what the one running replica holds (3 + 3 waiting, not max_replicas' 12):
    malformed bodies sent meanwhile get 503 queue_full (admission comes before the body is read); the
    hanging ones get a 504 JSON after request_timeout_s; the calls cancelled by it are never computed,
    and the replica answers again once the one pass that ran ends."""
    furl = app_url(faulty)
    _wait_idle(furl)
    started = len(_passes())
    bodies: list[object] = [{"texts": [f"{HANG} {i}"]} for i in range(6)] + [b'{"texts": ['] * 3
    responses = asyncio.run(_post_all(furl, bodies, [0.0] * 6 + [0.8] * 3))
    hung, refused = responses[:6], responses[6:]
    assert [r.status_code for r in refused] == [503] * 3, [r.text for r in refused]
    assert {r.json()["error"]["code"] for r in refused} == {"queue_full"}
    assert all(r.headers["retry-after"] == "1" for r in refused)
    assert [r.status_code for r in hung] == [504] * 6, [r.text for r in hung]
    assert {r.json()["error"]["code"] for r in hung} == {"timeout"}
    _wait_idle(furl)  # the one hanging pass ends HANG_S after it started
    ran = _passes()[started:]
    assert sum(any(HANG in t for t in texts) for texts in ran) == 1, ran  # the cancelled five never ran
    assert httpx.get(f"{furl}/readyz", timeout=10).json() == {"status": "ready"}


def test_poisoned_text_fails_only_its_own_request(faulty: ServeSpec) -> None:
    """A slow pass lets two requests queue into one pass with a poisoned text: that pass is rerun text
    by text, only the poisoned request fails (422 naming the text), the others are answered, and the
    replica stays healthy (no restart, still RUNNING)."""
    furl = app_url(faulty)
    _wait_idle(furl)
    replicas = replica_actor_names("faulty")
    started = len(_passes())
    bodies: list[object] = [
        {"texts": [SLOW]},
        {"texts": [TEXTS[0]]},
        {"instances": [{"id": "ok", "text": TEXTS[1]}, {"id": "bad", "text": f"a {POISON} b"}]},
    ]
    responses = asyncio.run(_post_all(furl, bodies, [0.0, 0.3, 0.3]))
    assert [r.status_code for r in responses] == [200, 200, 422], [r.text for r in responses]
    error = responses[2].json()["error"]
    assert (error["code"], error["field"]) == ("text_failed", "instances.1.text")
    assert "poisoned text" in error["message"]
    expected = Predictor.load(faulty.model).predict([TEXTS[0]])[0]
    assert responses[1].json()["predictions"][0]["label"] == expected.label
    ran = _passes()[started:]
    merged = next(texts for texts in ran if any(POISON in t for t in texts))
    assert len(merged) == 3  # the two queued requests' texts in one pass, then one by one
    assert [f"a {POISON} b"] in ran
    assert replica_actor_names("faulty") == replicas
    assert serve.status().applications["faulty"].deployments[MODEL_DEPLOYMENT].status == "HEALTHY"
    assert post(furl, {"texts": TEXTS}).status_code == 200


def test_autoscaling_follows_load_up_and_down(url: str, spec: ServeSpec) -> None:
    """min 1, max 2 model replicas of 0.05 CPU (small enough that the second one is schedulable beside the
    module's other apps on the test's CPUs: what is tested is Serve's decision, not the cluster's size): sustained load (16 clients, target 4 per replica) reaches 2 replicas within 60 s, and 1
    again within downscale_delay_s + Serve's 10 s average (+ margin) after it stops; no request fails."""
    scaled = scalable_app(
        spec,
        "/scaled",
        cpus_per_replica=0.05,
        target_ongoing_requests=4,
        upscale_delay_s=2,
        downscale_delay_s=5,
        max_batch_size=2,
    )
    # Each pass of the test replica takes >= 200 ms (PACE, 2 texts), so the load queues at the model as it would
    # with a real model, not in the HTTP layers in front of a tiny one.
    deploy(scaled, name="scaled", model=FaultyClassifier)
    scaled_url = app_url(scaled)
    long_texts = [f"{PACE} {text}" for text in TEXTS]

    async def load_until_two_replicas() -> tuple[list, float | None]:
        stop = asyncio.Event()
        outcomes: list = []

        async def client_load() -> None:
            while not stop.is_set():  # bounded by the 60 s watch below
                outcomes.extend(await drive(scaled_url, text_shots(long_texts, 48), concurrency=16))

        load = asyncio.create_task(client_load())
        started, reached = time.monotonic(), None
        while time.monotonic() - started < 60:
            if await asyncio.to_thread(running_replicas, "scaled") == 2:
                reached = time.monotonic() - started
                break
            await asyncio.sleep(1)
        stop.set()
        await load
        return outcomes, reached

    try:
        assert running_replicas("scaled") == 1
        outcomes, reached = asyncio.run(load_until_two_replicas())
        assert reached is not None, (
            f"still 1 replica after 60 s of load: {serve.status().applications['scaled']}"
        )
        assert outcomes and [o.status for o in outcomes if o.status != 200] == []
        # Scaling down under a light load (one client, below target): it must not fail a request either.
        stopped, light = time.monotonic(), []
        while running_replicas("scaled") != 1 and time.monotonic() - stopped < 5 + 10 + 30:
            light += asyncio.run(drive(scaled_url, text_shots(long_texts, 4), concurrency=1))
            time.sleep(0.5)
        assert running_replicas("scaled") == 1, serve.status().applications["scaled"]
        assert [o.status for o in light if o.status != 200] == []
        assert post(scaled_url, {"texts": TEXTS}).status_code == 200
    finally:
        serve.delete("scaled")
