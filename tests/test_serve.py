"""The Serve endpoint on a real local Ray over loopback HTTP: predictions, errors, auth, back-pressure, model swap."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from ray import serve

from bm_ray.bench_serve import drive, load_test, replica_actor_names, text_shots
from bm_ray.engine import Predictor
from bm_ray.models import LABELS_FILE, fetch_preset, make_tiny_model
from bm_ray.serve import app_url, deploy
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
            "cpus_per_replica": 0.5,
        }
    )


@pytest.fixture(scope="module")
def url(ray_local: None, spec: ServeSpec, guarded: ServeSpec) -> Iterator[str]:
    """Both apps deployed on loopback; Serve shut down after the module."""
    deploy(spec)
    deploy(guarded, name="guarded")
    yield app_url(spec)
    serve.shutdown()


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


def test_load_with_malformed_requests(url: str, spec: ServeSpec) -> None:
    report = load_test(url, TEXTS, spec, requests=300, concurrency=16)
    assert report["requests"] == 300
    assert report["server_errors"] == 0, report
    assert report["unexpected"] == 0, report
    assert report["by_status"][200] == 270


def test_model_update_under_load_has_no_failures(url: str, spec: ServeSpec, models: tuple[str, str]) -> None:
    replicas = replica_actor_names()

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
