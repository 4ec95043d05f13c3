"""The HTTP ingress: auth, admission, parsing, validation and error mapping; the model runs in ``Classifier``.

It holds no backlog of its own: each request is one call to the model deployment, so Serve's
autoscaler sees every waiting request there. It is the layer that keeps a killed model replica from
failing requests (a call lost with its replica is sent again) and answers every error as JSON.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures of the ingress class at runtime.
import asyncio
import functools
import hmac
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle
from ray.serve.metrics import Counter
from starlette.exceptions import HTTPException as StarletteHTTPException

import bm_ray
from bm_ray.model.metrics import abstained
from bm_ray.serve.model import GRACEFUL_SHUTDOWN_S, MODEL_DEPLOYMENT
from bm_ray.serve.protocol_schemas import NATIVE, error_response, protocol_of
from bm_ray.serve.protocols import OptionalCORS, PrefixRoot, ProtocolRoutes, protocol_router
from bm_ray.serve.schemas import (
    CLASSIFY_BODY_POINTER,
    ERROR_RESPONSES,
    ApiError,
    ClassifyRequest,
    ClassifyResponse,
    FastJSONResponse,
    ModelNotReadyError,
    TextFailedError,
    check_request,
    json_schema_in_place,
    parse_classify_request,
    queue_full,
    read_json_body,
    request_min_score,
    request_timeout,
    text_field,
)
from bm_ray.specs import ServeSpec

logger = logging.getLogger("ray.serve")

INGRESS_DEPLOYMENT = "ApiGateway"
INGRESS_NUM_CPUS = 0.1
"""The ingress only parses and forwards: the cores go to the model replicas."""
INGRESS_HEADROOM = 64
"""Ingress slots beyond the model deployment's largest capacity, for requests being refused."""
MODEL_CALL_RETRIES = 2
"""Times a model call is sent again after its replica died mid-request (never for other errors)."""
RETRY_BACKOFF_S = 0.05
READY_TIMEOUT_S = 5.0
CAPACITY_REFRESH_S = 1.0
"""How often a gateway re-reads the running replica counts that set its admission bound."""
PLAYGROUND_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'"
)
"""The playground runs its own inline script and talks only to this endpoint."""


class ApiKeyError(RuntimeError):
    """The API key source named by the spec is unset, missing or empty: the endpoint refuses to start."""


def strip_key(raw: str) -> str:
    """`raw` less one trailing newline (``\\n`` or ``\\r\\n``): a Kubernetes Secret created from a file keeps the file's."""
    key = raw[:-1] if raw.endswith("\n") else raw
    return key[:-1] if key.endswith("\r") else key


def read_api_key(spec: ServeSpec) -> str | None:
    """The Bearer key from `api_key_env` or `api_key_file` (None when neither is set: an open endpoint, by choice).

    Fails closed: :class:`ApiKeyError` when the variable is unset or empty, or the file is missing,
    unreadable or empty; never an open endpoint. One trailing newline is stripped (:func:`strip_key`).
    """
    if spec.api_key_file is not None:
        try:
            key = strip_key(Path(spec.api_key_file).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as err:
            raise ApiKeyError(
                f"api_key_file {spec.api_key_file} cannot be read ({err}); mount or write the Bearer API key "
                "there (or drop api_key_file to serve without auth)"
            ) from None
        if not key:
            raise ApiKeyError(
                f"api_key_file {spec.api_key_file} is empty; write the Bearer API key into it "
                "(or drop api_key_file to serve without auth)"
            )
        return key
    if spec.api_key_env is None:
        return None
    key = strip_key(os.environ.get(spec.api_key_env, ""))
    if not key:
        raise ApiKeyError(
            f"api_key_env names {spec.api_key_env}, which is unset or empty; set it to the Bearer API key "
            "(or drop api_key_env to serve without auth)"
        )
    return key


@functools.cache
def playground_page() -> str:
    """The endpoint playground (package data `bm_ray/serve/playground.html`), read once per process."""
    return (resources.files("bm_ray.serve") / "playground.html").read_text(encoding="utf-8")


def admission_limit(spec: ServeSpec, model_replicas: int, gateway_replicas: int) -> int:
    """Requests one gateway takes at once: its share of what the running model replicas can hold.

    Running replicas × ``max_ongoing_requests`` plus ``max_queued_requests`` (-1: as many again),
    split over the running gateways; at least one request, so a deployment scaled to zero can wake.
    """
    running = model_replicas * spec.max_ongoing_requests
    queued = spec.max_queued_requests if spec.max_queued_requests >= 0 else running
    return max(1, math.ceil((running + queued) / max(1, gateway_replicas)))


def ingress_max_ongoing(spec: ServeSpec) -> int:
    """Serve's cap on one gateway: above its own bound at the model's largest size, so the gateway fills first.

    Overload is then answered by the gateway with a JSON 503 instead of piling up in (or being
    refused by) the HTTP proxy.
    """
    return admission_limit(spec, spec.max_replicas, 1) + INGRESS_HEADROOM


async def call_model(
    handle: DeploymentHandle,
    method: str,
    *args: Any,
    retry_after_s: int,
    on_retry: Callable[[], None] | None = None,
    overload_status: int = 503,
) -> Any:
    """``await handle.<method>.remote(*args)``, retried only when the model replica died; errors as :class:`ApiError`.

    At most :data:`MODEL_CALL_RETRIES` retries. Classification is idempotent, so a request lost with
    its replica can be sent again: the router has already dropped the dead replica and routes the
    retry to a live one (or waits for Serve's replacement). Errors raised by the model code itself
    are never retried; :class:`TextFailedError` passes through for the caller to name the text.
    """
    attempt = 0
    while True:
        response = getattr(handle, method).remote(*args)
        try:
            return await response
        except asyncio.CancelledError:
            # A timed-out or disconnected request: tell the replica, so a call still queued there is
            # skipped (awaiting the response alone does not cancel it there).
            response.cancel()
            raise
        except BackPressureError as err:
            retry_after = retry_after_s if err.retry_after_s is None else err.retry_after_s
            raise queue_full(math.ceil(retry_after), overload_status) from None
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


http_app = FastAPI(
    title="bm-ray classifier",
    version=bm_ray.__version__,
    description="Text classification with a fine-tuned BERT model on Ray Serve.",
    default_response_class=FastJSONResponse,
)
http_app.include_router(protocol_router)  # the other protocols' routes (bm_ray.serve.protocols)
http_app.add_middleware(OptionalCORS)
http_app.add_middleware(PrefixRoot)


@http_app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    # Unknown routes and methods get the same error shape as everything else (in the path's protocol).
    return error_response(protocol_of(request), ApiError(exc.status_code, "http_error", str(exc.detail)))


@http_app.exception_handler(Exception)
async def _internal_error(request: Request, exc: Exception) -> Response:
    logger.exception("request failed", exc_info=exc)
    err = ApiError(500, "internal", f"internal error: {type(exc).__name__}")
    return error_response(protocol_of(request), err)


TextReader = Callable[[Request], Awaitable[tuple[Any, list[str], Callable[[int], str]]]]
"""Reads and checks a request's texts: (the protocol's parsed request, the texts, the field of text i)."""


@serve.deployment(name=INGRESS_DEPLOYMENT, graceful_shutdown_timeout_s=GRACEFUL_SHUTDOWN_S)
@serve.ingress(http_app)
class ApiGateway(ProtocolRoutes):
    """The HTTP ingress in front of :class:`~bm_ray.serve.model.Classifier` (see the module docstring); the other
    protocols' routes come from :class:`~bm_ray.serve.protocols.ProtocolRoutes`."""

    def __init__(self, spec: ServeSpec, model: DeploymentHandle) -> None:
        self.spec = spec
        self._model = model
        # Fail closed: an unset variable or a missing file stops the replica here.
        self._api_key = read_api_key(spec)
        self._rejected = Counter(
            "bm_ray_rejected_requests", description="Requests refused, by reason.", tag_keys=("reason",)
        )
        self._retries = Counter(
            "bm_ray_model_call_retries",
            description="Model calls sent again because the model replica died mid-request.",
            tag_keys=("method",),
        )
        self._in_flight = 0
        self._limit = admission_limit(spec, max(1, spec.min_replicas), spec.gateway_replicas)
        self._limit_read_at = -math.inf
        self._limit_refresh: asyncio.Task[None] | None = None

    def _refresh_limit(self) -> None:
        """Re-read the running replica counts in the background, at most every :data:`CAPACITY_REFRESH_S`."""
        now = time.monotonic()
        if now - self._limit_read_at < CAPACITY_REFRESH_S or (
            self._limit_refresh is not None and not self._limit_refresh.done()
        ):
            return
        self._limit_read_at = now
        self._limit_refresh = asyncio.create_task(self._read_limit())

    async def _read_limit(self) -> None:
        try:
            app = serve.get_replica_context().app_name
            status = await asyncio.to_thread(serve.status)
            deployments = status.applications[app].deployments

            def running(name: str) -> int:
                return deployments[name].replica_states.get("RUNNING", 0) if name in deployments else 0

            self._limit = admission_limit(self.spec, running(MODEL_DEPLOYMENT), running(INGRESS_DEPLOYMENT))
        except Exception as err:  # keep the last bound; the router's own back-pressure still holds
            logger.warning("could not read the replica counts: %r", err)

    async def _call_model(self, method: str, *args: Any) -> Any:
        return await call_model(
            self._model,
            method,
            *args,
            retry_after_s=self.spec.retry_after_s,
            on_retry=lambda: self._retries.inc(tags={"method": method}),
            overload_status=self.spec.overload_status,
        )

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

    def _reject(self, err: ApiError, protocol: str = NATIVE) -> Response:
        self._rejected.inc(tags={"reason": err.code})
        return error_response(protocol, err)

    async def _classify(self, texts: list[str], item_field: Callable[[int], str]) -> dict[str, Any]:
        try:
            return await asyncio.wait_for(self._call_model("classify", texts), self.spec.request_timeout_s)
        except TimeoutError:
            raise request_timeout(self.spec.request_timeout_s) from None
        except TextFailedError as err:
            cause = getattr(err, "cause", err)
            raise ApiError(
                422,
                "text_failed",
                f"the model failed on this text ({cause.message}); the other texts were fine",
                item_field(cause.index),
            ) from None

    async def _run_texts(self, request: Request, read: TextReader) -> tuple[Any, dict[str, Any]]:
        """The pipeline of every protocol's inference route: the key, admission, `read` (the body, parsed and
        checked), the model call; returns (what `read` parsed, the model's answer), or raises ApiError."""
        self._refresh_limit()
        self._authorize(request)
        # Admission before the body is read: a full endpoint costs a refused client no upload.
        if self._in_flight >= self._limit:
            raise queue_full(self.spec.retry_after_s, self.spec.overload_status)
        self._in_flight += 1
        try:
            parsed, texts, item_field = await read(request)
            return parsed, await self._classify(texts, item_field)
        finally:
            self._in_flight -= 1

    async def _model_info(self) -> dict[str, Any]:
        """The served model's labels.json record (ApiError when no replica answers in time)."""
        try:
            return await asyncio.wait_for(self._call_model("model_info"), self.spec.request_timeout_s)
        except TimeoutError:
            raise request_timeout(self.spec.request_timeout_s) from None

    async def _ready_reason(self) -> str | None:
        """None when a model replica can classify, else why not (ApiError when the call itself failed)."""
        try:
            return await asyncio.wait_for(self._call_model("ready"), READY_TIMEOUT_S)
        except TimeoutError:
            return f"no model replica answered within {READY_TIMEOUT_S:g}s"

    @http_app.post(
        "/v1/classify",
        response_model=ClassifyResponse,
        responses=ERROR_RESPONSES,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": json_schema_in_place(ClassifyRequest, CLASSIFY_BODY_POINTER)
                    }
                },
            }
        },
    )
    async def classify(self, request: Request) -> Response:
        """Classify `texts` (or `instances`), answering in request order; predictions whose top score is below
        the request's `min_score` (else the endpoint's) are marked `abstained`."""

        async def read(request: Request) -> tuple[Any, list[str], Callable[[int], str]]:
            body = parse_classify_request(await read_json_body(request, self.spec.max_body_bytes))
            ids, texts = check_request(body, self.spec)
            return (body, ids), texts, functools.partial(text_field, body)

        try:
            (body, ids), result = await self._run_texts(request, read)
        except ApiError as err:
            return self._reject(err)
        min_score = request_min_score(body, self.spec)
        predictions = result["predictions"]
        marks = abstained(np.asarray([p["score"] for p in predictions]), min_score).tolist()
        return FastJSONResponse(
            {
                "model": result["model"],
                "min_score": min_score,
                "predictions": [
                    {"id": id_, **prediction, "abstained": mark}
                    for id_, prediction, mark in zip(ids, predictions, marks, strict=True)
                ],
            }
        )

    @http_app.get("/v1/model", responses=ERROR_RESPONSES)
    async def model(self, request: Request) -> Response:
        """The served model's labels.json record (labels, name, version, max_length, base model, ...)."""
        try:
            self._authorize(request)
            info = await self._model_info()
        except ApiError as err:
            return self._reject(err)
        return FastJSONResponse(info)

    @http_app.get("/ui", include_in_schema=False)
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
            reason = await self._ready_reason()
        except ApiError as err:
            return err.response()
        if reason is not None:
            return ApiError(503, "not_ready", reason, retry_after_s=self.spec.retry_after_s).response()
        return FastJSONResponse({"status": "ready"})
