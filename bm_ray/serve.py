"""Online classification with Ray Serve: a FastAPI ingress in front of a batched model deployment.

Two deployments (Serve model composition):

- ``ApiGateway`` (the HTTP ingress, no model, a tenth of a CPU): auth, body parsing and validation,
  error mapping and the rejected-requests metric. Concurrent requests are batched with ``@serve.batch``
  (``max_batch_size`` requests, ``batch_wait_ms``) into one model call through a ``DeploymentHandle``;
  a call is retried (at most :data:`MODEL_CALL_RETRIES` times) when the model replica serving it dies
  mid-request, so a killed or crashed model replica costs latency, not failed requests. Beyond
  :func:`model_capacity` requests in hand it answers 503 ``queue_full``.
- ``Classifier`` (the model): one warm :class:`~bm_ray.engine.Predictor` per replica; continuous
  batching merges the calls queued behind each forward pass; each pass is sorted by token length and
  run ``forward_batch_size`` rows at a time; autoscaling, a bounded queue, ``check_health``. A change of
  its ``user_config`` (``{"model": ...}``) switches the model with zero downtime (``reconfigure`` loads
  and warms the new predictor, then swaps the reference; batches already running finish on the old one).
  In a Serve config: ``deployments: [{name: Classifier, user_config: {model: ...}}]``.

HTTP API (all errors are ``{"error": {"code", "message", "field"?}}``):

- ``POST /v1/classify`` ``{"texts": [...]}`` or ``{"instances": [{"id", "text"}]}``.
  422: bad field (empty list, non-string or blank text, too many texts, a text longer than
  ``max_text_chars`` — refused, never truncated — both or neither of texts/instances, malformed
  JSON); 413: body over ``max_body_bytes``; 415: not JSON; 401: missing/wrong Bearer key;
  503 with ``Retry-After``: the model's queue is full (``max_queued_requests``), the model is not
  loaded, or no model replica could answer after the retries.
- ``GET /v1/model``, ``GET /healthz`` (ingress process alive), ``GET /readyz`` (a model replica answers
  with its model loaded and warm; 503 otherwise).
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures of the ingress class at runtime.
import asyncio
import functools
import hashlib
import hmac
import json
import logging
import math
import os
import sys
import time
from collections import Counter as Tally
from collections import deque
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.config import BackpressureConfig
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle
from ray.serve.metrics import Counter, Histogram
from starlette.exceptions import HTTPException as StarletteHTTPException

import bm_ray
from bm_ray.engine import Prediction, Predictor
from bm_ray.models import ModelInfo
from bm_ray.runtime import init_ray, runtime_env
from bm_ray.specs import ServeSpec, SpecError, deep_merge, read_yaml, validate_spec

logger = logging.getLogger("ray.serve")
T = TypeVar("T")

APP_NAME = "bm-ray"
IMPORT_PATH = "bm_ray.serve:build_app"
MODEL_DEPLOYMENT = "Classifier"
INGRESS_DEPLOYMENT = "ApiGateway"
GRACEFUL_SHUTDOWN_S = 30.0
"""In-flight requests (at most a few batches) get this long to finish when a replica stops."""
INGRESS_NUM_CPUS = 0.1
"""The ingress only parses and forwards: the cores go to the model replicas."""
INGRESS_HEADROOM = 64
"""Ingress slots beyond the model deployment's capacity, for requests being parsed or refused."""
MODEL_CALL_RETRIES = 2
"""Times a model call is sent again after its replica died mid-request (never for other errors)."""
RETRY_BACKOFF_S = 0.05
READY_TIMEOUT_S = 5.0
GATEWAY_CONCURRENT_BATCHES = 8
"""Gateway batches in flight to the model at once: a model replica merges the ones queued behind its
forward pass (continuous batching); one at a time would leave it with one small batch per pass."""
BATCH_SIZE_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]


class Instance(BaseModel):
    """One text with a caller-chosen id."""

    model_config = ConfigDict(extra="forbid")
    id: StrictStr | StrictInt | None = Field(default=None, description="Echoed back; the index when omitted.")
    text: StrictStr


class ClassifyRequest(BaseModel):
    """Body of ``POST /v1/classify``: exactly one of `texts` and `instances`."""

    model_config = ConfigDict(extra="forbid")
    texts: list[StrictStr] | None = Field(default=None, min_length=1)
    instances: list[Instance] | None = Field(default=None, min_length=1)


class ModelRef(BaseModel):
    """The model that answered."""

    name: str
    version: str


class PredictionOut(BaseModel):
    """One classified text."""

    id: str
    label: str
    score: float
    scores: dict[str, float]


class ClassifyResponse(BaseModel):
    """Predictions in request order."""

    model: ModelRef
    predictions: list[PredictionOut]


class ApiError(Exception):
    """A client error rendered as ``{"error": {"code", "message", "field"?}}``."""

    def __init__(
        self, status: int, code: str, message: str, field: str | None = None, retry_after_s: int | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.retry_after_s = retry_after_s

    def response(self) -> JSONResponse:
        """The JSON error response."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        headers = {"Retry-After": str(self.retry_after_s)} if self.retry_after_s is not None else {}
        if self.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return JSONResponse({"error": error}, status_code=self.status, headers=headers)


http_app = FastAPI(
    title="bm-ray classifier",
    version=bm_ray.__version__,
    description="Text classification with a fine-tuned BERT model on Ray Serve.",
)


@http_app.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    # Unknown routes and methods get the same error shape as everything else.
    return ApiError(exc.status_code, "http_error", str(exc.detail)).response()


@http_app.exception_handler(Exception)
async def _internal_error(_: Request, exc: Exception) -> JSONResponse:
    logger.exception("request failed", exc_info=exc)
    return ApiError(500, "internal", f"internal error: {type(exc).__name__}").response()


def _json_schema_in_place(model: type[BaseModel], pointer: str) -> dict[str, Any]:
    """JSON schema of `model` whose nested `$ref`s point inside itself (at `pointer` of the OpenAPI doc).

    The route parses its body by hand (to answer 413/415/422 itself), so FastAPI does not register the
    request models as components; the `$defs` travel inline instead.
    """
    return model.model_json_schema(ref_template=pointer + "/$defs/{model}")


_CLASSIFY_BODY_POINTER = "#/paths/~1v1~1classify/post/requestBody/content/application~1json/schema"
_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": description}
    for status, description in {
        401: "Missing or wrong Bearer API key",
        413: "Body over max_body_bytes",
        415: "Content-Type is not JSON",
        422: "Invalid request (the `field` names the failing one)",
        503: "Not ready, queue full or no model replica answered (with Retry-After)",
    }.items()
}


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _pydantic_error(err: ValidationError) -> ApiError:
    first = err.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "body"
    return ApiError(422, "invalid_request", f"{field}: {first['msg']}", field)


def check_request(body: ClassifyRequest, spec: ServeSpec) -> tuple[list[str], list[str]]:
    """Ids and texts of a parsed request, or :class:`ApiError` 422 naming the failing field."""
    if (body.texts is None) == (body.instances is None):
        raise ApiError(422, "invalid_request", "give exactly one of `texts` and `instances`", "texts")
    if body.texts is not None:
        field, texts = "texts", body.texts
        ids = [str(i) for i in range(len(texts))]
    else:
        field = "instances"
        texts = [inst.text for inst in body.instances or []]
        ids = [str(i if inst.id is None else inst.id) for i, inst in enumerate(body.instances or [])]
    if len(texts) > spec.max_texts_per_request:
        raise ApiError(
            422,
            "too_many_texts",
            f"{len(texts)} texts; at most {spec.max_texts_per_request} per request",
            field,
        )
    suffix = "" if field == "texts" else ".text"
    for i, text in enumerate(texts):
        if not text.strip():
            raise ApiError(422, "empty_text", "text is empty or whitespace", f"{field}.{i}{suffix}")
        if len(text) > spec.max_text_chars:
            raise ApiError(
                422,
                "text_too_long",
                f"text has {len(text)} characters; the limit is {spec.max_text_chars} (longer texts are refused)",
                f"{field}.{i}{suffix}",
            )
    return ids, texts


async def read_json_body(request: Request, max_bytes: int) -> Any:
    """The JSON body, enforcing the content type (415) and the size (413) on the header and the bytes read."""
    if not _is_json(request.headers.get("content-type", "")):
        raise ApiError(415, "unsupported_media_type", "send the body as application/json", "content-type")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, "body_too_large", f"body of {declared} bytes; the limit is {max_bytes}", "body")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise ApiError(413, "body_too_large", f"body over the limit of {max_bytes} bytes", "body")
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as err:
        raise ApiError(422, "malformed_json", f"body is not valid JSON: {err}", "body") from None


PLAYGROUND_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'"
)
"""The playground runs its own inline script and talks only to this endpoint."""


@functools.cache
def playground_page() -> str:
    """The endpoint playground (package data `bm_ray/serve_playground.html`), read once per process."""
    return (resources.files("bm_ray") / "serve_playground.html").read_text(encoding="utf-8")


class ModelNotReadyError(RuntimeError):
    """Raised by a Classifier replica that has no model loaded (picklable: one message argument)."""


def queue_full(retry_after_s: int) -> ApiError:
    """The 503 answered when the model's queue (or the gateway's share of it) is full."""
    return ApiError(503, "queue_full", "the model's queue is full; retry later", retry_after_s=retry_after_s)


def split_by_sizes(items: Sequence[T], sizes: Sequence[int]) -> list[Sequence[T]]:
    """`items` cut into consecutive runs of `sizes` (the answers of the calls or requests of a batch)."""
    runs, start = [], 0
    for size in sizes:
        runs.append(items[start : start + size])
        start += size
    return runs


def _prediction_json(info: ModelInfo, predictions: Sequence[Prediction]) -> dict[str, Any]:
    # Plain data crosses the handle: the ingress never needs the engine's types.
    return {
        "model": {"name": info.name, "version": info.version},
        "predictions": [{"label": p.label, "score": p.score, "scores": p.scores} for p in predictions],
    }


@serve.deployment(name=MODEL_DEPLOYMENT, graceful_shutdown_timeout_s=GRACEFUL_SHUTDOWN_S)
class Classifier:
    """The model deployment: one warm :class:`Predictor` per replica, batched across concurrent calls.

    Continuous batching: one loop runs the forward passes, and each pass takes every call that queued up
    while the previous pass ran (up to ``max_batch_size`` texts, at least one call). Under load the
    passes grow by themselves and the forward pass (not the batch window) sets the pace; an idle
    replica answers a lone call at once. ``@serve.batch`` cannot do this: it closes a batch after its
    wait window even while the previous batch is still running, which on a busy CPU keeps batches tiny.
    """

    def __init__(self, spec: ServeSpec) -> None:
        self.spec = spec
        self._predictor: Predictor | None = None
        self._model_ref: str | None = None
        self._forward_error: str | None = None
        self._calls: deque[tuple[list[str], asyncio.Future[dict[str, Any]]]] = deque()
        self._calls_waiting = asyncio.Event()
        self._forward_loop: asyncio.Task[None] | None = None
        self._predictions = Counter(
            "bm_ray_predictions", description="Texts classified, by predicted label.", tag_keys=("label",)
        )
        self._batch_sizes = Histogram(
            "bm_ray_batch_size", description="Texts per forward pass.", boundaries=BATCH_SIZE_BUCKETS
        )

    async def reconfigure(self, config: dict[str, Any]) -> None:
        """Switch to ``config["model"]``: load and warm it off the event loop, then swap the reference."""
        model_ref = str(config["model"])
        if model_ref == self._model_ref:
            return
        started = time.monotonic()
        predictor = await asyncio.to_thread(self._load, model_ref)
        self._predictor, self._model_ref, self._forward_error = predictor, model_ref, None
        info = predictor.info
        logger.info(
            "serving %s v%s (%s) after %.1fs", info.name, info.version, model_ref, time.monotonic() - started
        )

    def _load(self, model_ref: str) -> Predictor:
        predictor = Predictor.load(
            model_ref,
            batch_size=self.spec.forward_batch_size,
            precision=self.spec.precision,
            num_threads=math.ceil(self.spec.cpus_per_replica),
        )
        predictor.warmup()
        return predictor

    def check_health(self) -> None:
        """Serve's health probe: unhealthy without a model or after a failed forward pass."""
        if self._predictor is None:
            raise ModelNotReadyError("no model loaded")
        if self._forward_error is not None:
            raise RuntimeError(f"last forward pass failed: {self._forward_error}")

    def _require_predictor(self) -> Predictor:
        if self._predictor is None:
            raise ModelNotReadyError("model is loading")
        return self._predictor

    async def classify(self, texts: list[str]) -> dict[str, Any]:
        """``{"model": {"name", "version"}, "predictions": [{"label", "score", "scores"}]}`` for `texts`."""
        self._require_predictor()
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._calls.append((texts, answer))
        self._calls_waiting.set()
        if self._forward_loop is None or self._forward_loop.done():
            self._forward_loop = asyncio.create_task(self._run_forward_passes())
        return await answer

    async def model_info(self) -> dict[str, Any]:
        """The served model's :class:`ModelInfo` as JSON."""
        return self._require_predictor().info.to_json()

    async def ready(self) -> str | None:
        """None when this replica can classify, else why not (as :meth:`check_health` would fail)."""
        try:
            self.check_health()
        except RuntimeError as err:
            return str(err)
        return None

    def _next_batch(self) -> list[tuple[list[str], asyncio.Future[dict[str, Any]]]]:
        """The queued calls of the next forward pass: at least one, then up to max_batch_size texts."""
        batch = [self._calls.popleft()]
        texts = len(batch[0][0])
        while self._calls and texts + len(self._calls[0][0]) <= self.spec.max_batch_size:
            texts += len(self._calls[0][0])
            batch.append(self._calls.popleft())
        return batch

    async def _run_forward_passes(self) -> None:
        while True:
            await self._calls_waiting.wait()
            self._calls_waiting.clear()
            while self._calls:
                await self._forward(self._next_batch())

    async def _forward(self, batch: list[tuple[list[str], asyncio.Future[dict[str, Any]]]]) -> None:
        # The predictor is read once per pass, so a model swap mid-pass cannot mix models.
        texts = [text for call_texts, _ in batch for text in call_texts]
        self._batch_sizes.observe(len(texts))
        try:
            predictor = self._require_predictor()
            predictions = await asyncio.to_thread(predictor.predict, texts)
        except Exception as err:
            self._forward_error = repr(err)
            for _, answer in batch:
                if not answer.done():
                    answer.set_exception(err)
            return
        self._forward_error = None
        for label, count in Tally(prediction.label for prediction in predictions).items():
            self._predictions.inc(count, tags={"label": label})
        per_call = split_by_sizes(predictions, [len(call_texts) for call_texts, _ in batch])
        for (_, answer), call_predictions in zip(batch, per_call, strict=True):
            if not answer.done():  # the caller may have gone (cancelled request)
                answer.set_result(_prediction_json(predictor.info, call_predictions))


def model_capacity(spec: ServeSpec) -> int:
    """Requests the model deployment can hold at its largest, running or queued.

    The gateway answers 503 ``queue_full`` (JSON, with Retry-After) beyond this many requests in hand.
    Defined above the deployments: ``serve.ingress`` pickles the ingress class (and the module globals
    its methods use) when the class is defined.
    """
    running = spec.max_replicas * spec.max_ongoing_requests
    queued = spec.max_queued_requests if spec.max_queued_requests >= 0 else running
    return running + queued


async def call_model(
    handle: DeploymentHandle,
    method: str,
    *args: Any,
    retry_after_s: int,
    on_retry: Callable[[], None] | None = None,
) -> Any:
    """``await handle.<method>.remote(*args)``, retried only when the model replica died; errors as :class:`ApiError`.

    At most :data:`MODEL_CALL_RETRIES` retries. Classification is idempotent, so a request lost with its replica can be sent again: the router
    has already dropped the dead replica and routes the retry to a live one (or waits for Serve's
    replacement). Errors raised by the model code itself are never retried.
    """
    attempt = 0
    while True:
        try:
            return await getattr(handle, method).remote(*args)
        except BackPressureError as err:
            retry_after = retry_after_s if err.retry_after_s is None else err.retry_after_s
            raise queue_full(math.ceil(retry_after)) from None
        except ModelNotReadyError as err:
            raise ApiError(
                503, "not_ready", str(getattr(err, "cause", err)), retry_after_s=retry_after_s
            ) from None
        except DeploymentUnavailableError:
            raise ApiError(
                503, "model_unavailable", "the model deployment failed to deploy", retry_after_s=retry_after_s
            ) from None
        except RayActorError as err:
            # ActorDiedError (the replica was killed or crashed mid-request) and ActorUnavailableError
            # (unreachable replica): the request may be lost, never the model's own answer.
            if attempt == MODEL_CALL_RETRIES:
                logger.warning("%s failed after %d retries: %r", method, attempt, err)
                raise ApiError(
                    503,
                    "model_unavailable",
                    f"no model replica could answer ({type(err).__name__})",
                    retry_after_s=retry_after_s,
                ) from None
            attempt += 1
            if on_retry is not None:
                on_retry()
            logger.warning(
                "%s: model replica lost mid-request (%s); retry %d", method, type(err).__name__, attempt
            )
            await asyncio.sleep(RETRY_BACKOFF_S * (attempt - 1))


@serve.deployment(name=INGRESS_DEPLOYMENT, graceful_shutdown_timeout_s=GRACEFUL_SHUTDOWN_S)
@serve.ingress(http_app)
class ApiGateway:
    """The HTTP ingress: auth, parsing, validation and error mapping; the model runs in :class:`Classifier`."""

    def __init__(self, spec: ServeSpec, model: DeploymentHandle) -> None:
        self.spec = spec
        self._model = model
        self._api_key = os.environ.get(spec.api_key_env) if spec.api_key_env else None
        # A mounted Secret: a missing or empty file fails the replica, it never opens the endpoint.
        if spec.api_key_file:
            self._api_key = Path(spec.api_key_file).read_text(encoding="utf-8").strip()
            if not self._api_key:
                raise ValueError(f"api_key_file {spec.api_key_file} is empty")
        if spec.api_key_env and not self._api_key:
            logger.warning("api_key_env %s is not set in the replica: the endpoint is open", spec.api_key_env)
        self._rejected = Counter(
            "bm_ray_rejected_requests", description="Requests refused, by reason.", tag_keys=("reason",)
        )
        self._retries = Counter(
            "bm_ray_model_call_retries",
            description="Model calls sent again because the model replica died mid-request.",
            tag_keys=("method",),
        )
        self._classify_texts.set_max_batch_size(spec.max_batch_size)
        self._classify_texts.set_batch_wait_timeout_s(spec.batch_wait_ms / 1000)
        self._capacity = model_capacity(spec)
        self._pending = 0

    async def _call_model(self, method: str, *args: Any) -> Any:
        return await call_model(
            self._model,
            method,
            *args,
            retry_after_s=self.spec.retry_after_s,
            on_retry=lambda: self._retries.inc(tags={"method": method}),
        )

    async def _classify(self, texts: list[str]) -> dict[str, Any]:
        # Refuse here, in JSON, once the requests this gateway holds would overflow the model's queue.
        if self._pending >= self._capacity:
            raise queue_full(self.spec.retry_after_s)
        self._pending += 1
        try:
            return await self._classify_texts(texts)
        finally:
            self._pending -= 1

    @serve.batch(
        max_batch_size=32, batch_wait_timeout_s=0.01, max_concurrent_batches=GATEWAY_CONCURRENT_BATCHES
    )
    async def _classify_texts(self, requests: list[list[str]]) -> list[dict[str, Any]]:
        # The dynamic batch: the texts of concurrent HTTP requests go to the model in one call, so the
        # per-call cost of the hop to a model replica is paid once per batch, not once per request.
        result = await self._call_model("classify", [text for texts in requests for text in texts])
        per_request = split_by_sizes(result["predictions"], [len(texts) for texts in requests])
        return [{"model": result["model"], "predictions": predictions} for predictions in per_request]

    def _authorize(self, request: Request) -> None:
        if self._api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), self._api_key.encode()
        ):
            raise ApiError(
                401, "unauthorized", "missing or wrong `Authorization: Bearer <key>`", "authorization"
            )

    def _reject(self, err: ApiError) -> JSONResponse:
        self._rejected.inc(tags={"reason": err.code})
        return err.response()

    @http_app.post(
        "/v1/classify",
        response_model=ClassifyResponse,
        responses=_ERROR_RESPONSES,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": _json_schema_in_place(ClassifyRequest, _CLASSIFY_BODY_POINTER)
                    }
                },
            }
        },
    )
    async def classify(self, request: Request) -> JSONResponse:
        """Classify `texts` (or `instances`), answering in request order."""
        try:
            self._authorize(request)
            data = await read_json_body(request, self.spec.max_body_bytes)
            try:
                body = ClassifyRequest.model_validate(data)
            except ValidationError as err:
                raise _pydantic_error(err) from None
            ids, texts = check_request(body, self.spec)
            result = await self._classify(texts)
        except ApiError as err:
            return self._reject(err)
        return JSONResponse(
            {
                "model": result["model"],
                "predictions": [
                    {"id": id_, **prediction}
                    for id_, prediction in zip(ids, result["predictions"], strict=True)
                ],
            }
        )

    @http_app.get("/v1/model", responses=_ERROR_RESPONSES)
    async def model(self, request: Request) -> JSONResponse:
        """Labels, version, name, max_length and base model of the model being served."""
        try:
            self._authorize(request)
            info = await self._call_model("model_info")
        except ApiError as err:
            return self._reject(err)
        return JSONResponse(info)

    @http_app.get("/", include_in_schema=False)
    async def playground(self) -> HTMLResponse:
        """The playground page (public; the API calls it makes carry the key typed into it)."""
        return HTMLResponse(playground_page(), headers={"Content-Security-Policy": PLAYGROUND_CSP})

    @http_app.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        """The ingress process is alive."""
        return {"status": "ok"}

    @http_app.get("/readyz", responses={503: {"description": "Model not loaded or not warm"}})
    async def readyz(self) -> JSONResponse:
        """A model replica answers, with its model loaded and its warm-up prediction done."""
        try:
            reason = await asyncio.wait_for(self._call_model("ready"), READY_TIMEOUT_S)
        except ApiError as err:
            return err.response()
        except TimeoutError:
            reason = f"no model replica answered within {READY_TIMEOUT_S:g}s"
        if reason is not None:
            return ApiError(503, "not_ready", reason, retry_after_s=self.spec.retry_after_s).response()
        return JSONResponse({"status": "ready"})


def _code_version(spec: ServeSpec) -> str:
    """Same for two specs that differ only in the model, so a model change is an in-place reconfigure."""
    settings = spec.model_dump(exclude={"model"}) | {"bm_ray": bm_ray.__version__}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _ingress_max_ongoing(spec: ServeSpec) -> int:
    """Room in the ingress for every request the model deployment can hold, plus headroom.

    The gateway's own bound (:func:`model_capacity`) must be what fills first, so that overload is
    answered by the gateway with a JSON 503 instead of piling up in (or being refused by) the HTTP proxy.
    """
    return model_capacity(spec) + INGRESS_HEADROOM


def build_app(args: ServeSpec | dict[str, Any]) -> serve.Application:
    """Application builder (`bm_ray.serve:build_app`) for `serve run`, Serve config files and KubeRay.

    `args` are :class:`ServeSpec` fields; unknown keys and wrong types are refused naming the key.
    The app is the ``ApiGateway`` ingress bound to the ``Classifier`` model deployment.
    """
    spec = args if isinstance(args, ServeSpec) else validate_spec(ServeSpec, dict(args), "serve args")
    backpressure = BackpressureConfig(status_code=503, retry_after_s=spec.retry_after_s)
    # Serve otherwise versions each `serve.run` afresh and replaces replicas instead of reconfiguring.
    version = _code_version(spec)
    model = Classifier.options(
        autoscaling_config={
            "min_replicas": spec.min_replicas,
            "max_replicas": spec.max_replicas,
            "target_ongoing_requests": spec.target_ongoing_requests,
        },
        max_ongoing_requests=spec.max_ongoing_requests,
        max_queued_requests=spec.max_queued_requests,
        backpressure_config=backpressure,
        ray_actor_options={
            "num_cpus": spec.cpus_per_replica,
            "num_gpus": spec.gpus_per_replica,
            "runtime_env": runtime_env(),
        },
        user_config={"model": spec.model},
        version=version,
        _internal=True,
    ).bind(spec)
    ingress_slots = _ingress_max_ongoing(spec)
    return ApiGateway.options(
        num_replicas=1,
        max_ongoing_requests=ingress_slots,
        # A last line of defence only (the proxy's plain-text 503): the model's queue fills long before.
        # Not the spec's queue bound: the proxy counts a burst still being assigned as queued.
        max_queued_requests=ingress_slots,
        backpressure_config=backpressure,
        ray_actor_options={"num_cpus": INGRESS_NUM_CPUS, "runtime_env": runtime_env()},
        version=version,
        _internal=True,
    ).bind(spec, model)


def load_serve_spec(config: str | Path | None, flags: dict[str, Any]) -> ServeSpec:
    """The spec from `flags` on top of `config`: a ServeSpec YAML or a Serve config file (jobs/serve.yaml).

    From a Serve config, the `bm_ray.serve:build_app` application gives the args and route prefix, and
    `http_options` the host and port.
    """
    if config is None:
        return validate_spec(ServeSpec, flags, "command line")
    data = read_yaml(config)
    if "applications" in data:
        apps = [a for a in data["applications"] or [] if a.get("import_path") == IMPORT_PATH]
        if not apps:
            raise SpecError(f"{config}: no application with import_path {IMPORT_PATH}")
        http = data.get("http_options") or {}
        data = {
            **{key: http[key] for key in ("host", "port") if key in http},
            **{key: apps[0][key] for key in ("route_prefix",) if key in apps[0]},
            **(apps[0].get("args") or {}),
        }
    return validate_spec(ServeSpec, deep_merge(data, flags), str(config))


def app_url(spec: ServeSpec) -> str:
    """Base URL of the endpoint (no trailing slash)."""
    return f"http://{spec.host}:{spec.port}{spec.route_prefix.rstrip('/')}"


def deploy(spec: ServeSpec, name: str = APP_NAME) -> DeploymentHandle:
    """Start Serve's HTTP proxy on the spec's host/port (if not running) and deploy or update app `name`.

    Redeploying a running app with only a new model is the zero-downtime path (user_config change).
    """
    serve.start(http_options={"host": spec.host, "port": spec.port})
    return serve.run(build_app(spec), name=name, route_prefix=spec.route_prefix, blocking=False)


def run_serve(spec: ServeSpec, address: str | None = None, blocking: bool = True) -> str:
    """Serve `spec` on an embedded local Ray or the cluster at `address`; returns the endpoint URL.

    With `blocking`, waits until Ctrl-C; then an embedded Ray is shut down with Serve, while an app on a
    remote cluster keeps running there (remove it with `serve delete`).
    """
    init_ray(address)
    deploy(spec)
    url = app_url(spec)
    if not blocking:
        return url
    print(f"bm-ray: serving {spec.model} at {url} (docs: {url}/docs); Ctrl-C to stop", file=sys.stderr)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        if not (address or os.environ.get("RAY_ADDRESS")):
            serve.shutdown()
    return url
