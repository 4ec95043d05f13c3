"""The endpoint through other serving protocols' real clients, on a real local Serve app: tritonclient (Open
Inference Protocol, JSON and binary tensors), huggingface_hub's InferenceClient (TEI) and kserve's
InferenceRESTClient (V1 and V2, from its own venv). Each gets the labels and calibrated scores
/v1/classify gives for the same texts, and the protocol's own error for a bad key, an empty input, a
body over the limit and a wrong model name; overload answers the spec's status with Retry-After."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from huggingface_hub import InferenceClient
from huggingface_hub.errors import HfHubHTTPError
from ray import serve
from tiny_model import make_tiny_model
from tritonclient.utils import InferenceServerException

from bm_ray.layout import LABELS_FILE
from bm_ray.model.registry import fetch_preset
from bm_ray.runtime.ray_init import free_port
from bm_ray.serve import app_url, deploy
from bm_ray.specs import ServeSpec

ROOT = Path(__file__).resolve().parents[2]
KSERVE_PYTHON = ROOT / ".venv-kserve" / "bin" / "python"
LABELS = ["World", "Sports", "Business", "Sci/Tech"]
KEY_ENV = "BM_RAY_TEST_PROTOCOLS_KEY"
KEY = "protocols-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
WRONG = {"Authorization": "Bearer wrong-key"}
os.environ[KEY_ENV] = (
    KEY  # replicas inherit the environment Ray starts with: set before any fixture starts Ray
)
VERSION = "3"
TEMPERATURE = 1.7
ORIGIN = "https://app.example"
TEXTS = [
    "Stocks rallied on Wall Street after the Federal Reserve held interest rates steady.",
    "The striker scored twice as the home side won the cup final.",
    "NASA's new telescope sends back its first images of distant galaxies.",
    # Several windows of the tiny model's 64 tokens.
    "Chip maker posts record quarterly profit on strong demand for servers and data centres. " * 6,
]
TOO_LARGE = "x" * (70 * 1024)  # over max_body_bytes (64 KiB): refused before the text limits


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> ServeSpec:
    """A tiny model (version 3, calibrated) behind a key, under a route prefix, with 429 on overload and CORS for one origin.

    Admission holds three requests at once (one gateway, two model slots and one queued), so a burst
    overloads it.
    """
    model = tmp_path_factory.mktemp("protocols") / "model"
    make_tiny_model(model, LABELS, str(fetch_preset("minilm-l6")), spread_on=TEXTS)
    info = json.loads((model / LABELS_FILE).read_text())
    # A fitted temperature: every protocol must give the calibrated scores, not the raw softmax.
    (model / LABELS_FILE).write_text(json.dumps({**info, "version": VERSION, "temperature": TEMPERATURE}))
    return ServeSpec(
        model=str(model),
        port=free_port(),
        route_prefix="/proto",
        api_key_env=KEY_ENV,
        min_replicas=1,
        max_replicas=1,
        gateway_replicas=1,
        max_ongoing_requests=2,
        max_queued_requests=1,
        max_text_chars=2000,
        max_body_bytes=64 * 1024,
        cpus_per_replica=0.5,
        overload_status=429,
        cors_allow_origin=ORIGIN,
    )


@pytest.fixture(scope="module")
def url(ray_local: None, spec: ServeSpec) -> Iterator[str]:
    """The app deployed on loopback and ready; Serve shut down after the module."""
    deploy(spec, name="protocols")
    base = app_url(spec)
    deadline = time.monotonic() + 180
    while httpx.get(f"{base}/readyz", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "endpoint not ready after 180 s"
        time.sleep(1)
    yield base
    serve.shutdown()


@pytest.fixture(scope="module")
def expected(url: str) -> dict[str, Any]:
    """/v1/classify's answer for TEXTS: the reference every protocol must match."""
    answer = httpx.post(f"{url}/v1/classify", json={"texts": TEXTS}, headers=AUTH, timeout=60).json()
    assert answer["predictions"][-1]["windows"] > 1  # the long text really is read as several windows
    assert answer["model"]["version"] == VERSION
    info = httpx.get(f"{url}/v1/model", headers=AUTH, timeout=60).json()
    assert info["temperature"] == TEMPERATURE
    return answer


def model_name(expected: dict[str, Any]) -> str:
    return expected["model"]["name"]


def assert_matches(expected: dict[str, Any], labels: list[str], scores: list[list[float]]) -> None:
    """`labels` and per-label `scores` (the model's label order) are /v1/classify's."""
    predictions = expected["predictions"]
    assert labels == [p["label"] for p in predictions]
    np.testing.assert_allclose(scores, [[p["scores"][k] for k in LABELS] for p in predictions], rtol=1e-6)


# --------------------------------------------------------------------------------------------- tritonclient


def test_tritonclient_metadata_readiness_and_infer(
    url: str, spec: ServeSpec, expected: dict[str, Any]
) -> None:
    name = model_name(expected)
    # A fresh headers dict each call: tritonclient adds its own headers (Inference-Header-Content-Length) to it.
    client = triton.InferenceServerClient(url=url.removeprefix("http://"), network_timeout=120)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(name, headers=dict(AUTH))
    assert client.is_model_ready(name, VERSION, headers=dict(AUTH))
    assert not client.is_model_ready(name, "99", headers=dict(AUTH))
    meta = client.get_model_metadata(name, headers=dict(AUTH))
    assert meta == client.get_model_metadata(name, VERSION, headers=dict(AUTH))
    assert (meta["name"], meta["versions"]) == (name, [VERSION])
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"] == [
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
        {"name": "score", "datatype": "FP32", "shape": [-1]},
        {"name": "scores", "datatype": "FP32", "shape": [-1, len(LABELS)]},
    ]

    def text_input(texts: list[str], binary: bool = True) -> triton.InferInput:
        tensor = triton.InferInput("text", [len(texts)], "BYTES")
        tensor.set_data_from_numpy(np.array(texts, dtype=np.object_), binary_data=binary)
        return tensor

    # The client's defaults: binary input, every output binary.
    result = client.infer(name, [text_input(TEXTS)], headers=dict(AUTH))
    assert result.get_response()["model_version"] == VERSION
    assert all("binary_data_size" in o["parameters"] for o in result.get_response()["outputs"])
    labels = [b.decode() for b in result.as_numpy("label")]
    assert_matches(expected, labels, result.as_numpy("scores").tolist())
    np.testing.assert_allclose(
        result.as_numpy("score"), [p["score"] for p in expected["predictions"]], rtol=1e-6
    )
    # JSON both ways, one output asked for, with the version in the URL.
    asked = [
        triton.InferRequestedOutput("scores", binary_data=False),
        triton.InferRequestedOutput("label", False),
    ]
    result = client.infer(name, [text_input(TEXTS, binary=False)], VERSION, outputs=asked, headers=dict(AUTH))
    assert [o["name"] for o in result.get_response()["outputs"]] == ["scores", "label"]
    assert all("data" in o for o in result.get_response()["outputs"])
    labels = [b.decode() if isinstance(b, bytes) else b for b in result.as_numpy("label")]  # JSON: str
    assert_matches(expected, labels, result.as_numpy("scores").tolist())

    def refused(call: Any) -> InferenceServerException:
        with pytest.raises(InferenceServerException) as err:
            call()
        return err.value

    bad_key = refused(lambda: client.infer(name, [text_input(TEXTS)], headers=dict(WRONG)))
    assert bad_key.status() == "401" and "Authorization: Bearer" in bad_key.message()
    empty = refused(lambda: client.infer(name, [text_input([])], headers=dict(AUTH)))
    assert empty.status() == "400" and "no text" in empty.message()
    blank = refused(lambda: client.infer(name, [text_input(["ok", " "])], headers=dict(AUTH)))
    assert blank.status() == "400" and blank.message().startswith("inputs[0].data[1]: text is empty")
    too_large = refused(lambda: client.infer(name, [text_input([TOO_LARGE])], headers=dict(AUTH)))
    assert too_large.status() == "413" and "limit" in too_large.message()
    wrong = refused(lambda: client.infer("nope", [text_input(TEXTS)], headers=dict(AUTH)))
    assert wrong.status() == "404" and f"serves {name!r} version {VERSION!r}" in wrong.message()
    wrong_version = refused(lambda: client.get_model_metadata(name, "99", headers=dict(AUTH)))
    assert wrong_version.status() == "404"
    client.close()


def test_v2_routes_speak_the_protocols_error_form(url: str, expected: dict[str, Any]) -> None:
    assert httpx.get(f"{url}/v2/health/live", timeout=30).json() == {"live": True}
    assert httpx.get(f"{url}/v2/health/ready", timeout=30).json() == {"ready": True}
    server = httpx.get(f"{url}/v2", timeout=30).json()
    assert server["name"] == "bm-ray" and "binary_tensor_data" in server["extensions"]
    unknown = httpx.get(f"{url}/v2/models/{model_name(expected)}/config", headers=AUTH, timeout=30)
    assert unknown.status_code == 404 and unknown.json() == {"error": "Not Found"}
    unauthorized = httpx.get(f"{url}/v2/models/{model_name(expected)}", timeout=30)
    assert unauthorized.status_code == 401 and set(unauthorized.json()) == {"error"}
    assert unauthorized.headers["www-authenticate"] == "Bearer"


# ---------------------------------------------------------------------------------------- huggingface_hub


def test_huggingface_inference_client(url: str, expected: dict[str, Any]) -> None:
    client = InferenceClient(model=url, token=KEY, timeout=120)
    for text, prediction in zip(TEXTS, expected["predictions"], strict=True):
        # TEI answers [{label, score}, ...] best first; this client returns the first element: the top label.
        top = client.text_classification(text)
        assert (top.label, top.score) == (prediction["label"], pytest.approx(prediction["score"], rel=1e-6))
    # The whole list, and a batch, through /predict (TEI's own route).
    batch = httpx.post(f"{url}/predict", json={"inputs": TEXTS}, headers=AUTH, timeout=60).json()
    for answer, prediction in zip(batch, expected["predictions"], strict=True):
        assert [e["label"] for e in answer] == sorted(LABELS, key=lambda k: -prediction["scores"][k])
        assert {e["label"]: e["score"] for e in answer} == pytest.approx(prediction["scores"], rel=1e-6)
    one = httpx.post(
        f"{url}/", json={"inputs": TEXTS[0], "parameters": {"top_k": 2}}, headers=AUTH, timeout=60
    )
    assert one.json() == batch[0][:2]

    def refused(client: InferenceClient, text: str) -> httpx.Response | Any:
        with pytest.raises(HfHubHTTPError) as err:
            client.text_classification(text)
        return err.value.response

    bad_key = refused(InferenceClient(model=url, token="wrong"), TEXTS[0])
    assert bad_key.status_code == 401 and bad_key.json()["error_type"] == "unauthorized"
    empty = refused(client, "")
    assert empty.status_code == 400 and empty.json() == {
        "error": "inputs: text is empty or whitespace",
        "error_type": "empty",
    }
    too_large = refused(client, TOO_LARGE)
    assert too_large.status_code == 413 and too_large.json()["error_type"] == "validation"
    # TEI's routes name no model: a wrong name can only be a wrong URL, answered 404.
    wrong = refused(InferenceClient(model=f"{url}/models/nope", token=KEY), TEXTS[0])
    assert wrong.status_code == 404
    info = httpx.get(f"{url}/info", headers=AUTH, timeout=30).json()
    assert (info["model_id"], info["model_version"], info["labels"]) == (
        model_name(expected),
        VERSION,
        LABELS,
    )
    assert info["max_client_batch_size"] == 256 and info["max_text_chars"] == 2000
    assert httpx.get(f"{url}/health", timeout=30).json() == {"status": "ready"}


# ------------------------------------------------------------------------------------------------- kserve


def test_kserve_clients_v1_and_v2(url: str, expected: dict[str, Any]) -> None:
    if not KSERVE_PYTHON.exists():
        pytest.skip(f"{KSERVE_PYTHON} missing: run `make kserve-venv` (make test does) for kserve's own venv")
    name = model_name(expected)
    args = {"url": url, "name": name, "version": VERSION, "key": KEY, "texts": TEXTS, "too_large": TOO_LARGE}
    run = subprocess.run(
        [str(KSERVE_PYTHON), str(ROOT / "tests" / "kserve_driver.py"), json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["v1_live"] and out["v1_ready"] and out["v2_live"] and out["v2_ready"] and out["v2_model_ready"]
    v1 = out["v1"]["predictions"]
    assert_matches(expected, [p["label"] for p in v1], [[p["scores"][k] for k in LABELS] for p in v1])
    assert [p["abstained"] for p in v1] == [p["abstained"] for p in expected["predictions"]]
    for binary in ("v2_binary_false", "v2_binary_true"):
        answer = out[binary]
        # kserve's InferResponse.from_bytes drops model_version (tritonclient's test reads it).
        assert answer.get("model_name") == name, answer
        assert_matches(expected, answer["outputs"]["label"], answer["outputs"]["scores"])
    for protocol in ("v1", "v2"):
        bad_key, empty, too_large, wrong = (
            out[f"{protocol}_{case}"] for case in ("bad_key", "empty", "too_large", "wrong_model")
        )
        assert bad_key["status"] == 401 and "Authorization: Bearer" in bad_key["body"]["error"]
        assert empty["status"] == 400 and "no text" in empty["body"]["error"]
        assert too_large["status"] == 413 and set(too_large["body"]) == {"error"}
        assert wrong["status"] == 404 and "'nope'" in wrong["body"]["error"]
        assert wrong["body"]["error"] in wrong["message"]  # kserve's exception carries the protocol's message


# ------------------------------------------------------------------------------------------ shared contract


def test_overload_answers_the_specs_status_with_retry_after(url: str, expected: dict[str, Any]) -> None:
    """A burst over the admission bound: refusals are 429 (overload_status) with Retry-After, in each
    protocol's form; the rest answer."""
    texts = [TEXTS[-1]] * 32

    def send(i: int) -> httpx.Response:
        if i % 2:
            return httpx.post(f"{url}/predict", json={"inputs": texts}, headers=AUTH, timeout=120)
        return httpx.post(
            f"{url}/v1/models/{model_name(expected)}:predict",
            json={"instances": texts},
            headers=AUTH,
            timeout=120,
        )

    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(send, range(32)))
    refused = [r for r in responses if r.status_code != 200]
    assert refused, "the burst never overloaded the endpoint"
    assert any(r.status_code == 200 for r in responses)
    for response in refused:
        assert response.status_code == 429 and response.headers["retry-after"] == "1"
        body = response.json()
        if response.url.path.endswith("/predict"):
            assert body["error_type"] == "overloaded"
        else:
            assert set(body) == {"error"}


def test_liveness_playground_and_cors(url: str) -> None:
    assert httpx.get(f"{url}/", timeout=30).json() == {"status": "alive"}  # KServe V1's liveness
    browser = httpx.get(f"{url}/", headers={"Accept": "text/html"}, timeout=30)
    assert browser.status_code == 307 and browser.headers["location"] == "/proto/ui"
    page = httpx.get(f"{url}/ui", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    preflight = httpx.options(
        f"{url}/v1/classify",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
        timeout=30,
    )
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == ORIGIN
    allowed = httpx.post(f"{url}/v1/classify", json={"texts": ["a"]}, headers={"Origin": ORIGIN}, timeout=30)
    assert allowed.status_code == 401 and allowed.headers["access-control-allow-origin"] == ORIGIN
    other = httpx.post(
        f"{url}/v1/classify", json={"texts": ["a"]}, headers={"Origin": "https://evil.example"}, timeout=30
    )
    assert "access-control-allow-origin" not in other.headers
    assert "access-control-allow-origin" not in httpx.get(f"{url}/healthz", timeout=30).headers
