"""The gateway's routes in other serving protocols, on the same pipeline as ``POST /v1/classify``.

- Open Inference Protocol (KServe V2, Triton): ``/v2/health/{live,ready}``, ``/v2``,
  ``/v2/models/{name}[/versions/{v}]`` (metadata, ``/ready``, ``/infer``), JSON or binary tensors.
- KServe V1 (TF Serving's REST form): ``GET /`` (liveness), ``/v1/models``,
  ``/v1/models/{name}`` and ``POST /v1/models/{name}:predict``.
- Hugging Face TEI: ``POST /predict`` and ``POST /``, ``GET /info``, ``GET /health``.

:class:`ProtocolRoutes` is a base of ``ApiGateway``: every inference route runs the gateway's
``_run_texts`` (the Bearer key, admission, the body and text limits, the model call with its timeout
and retries, calibration), so only the parsing and the rendering (:mod:`~bm_ray.serve.protocol_schemas`)
differ; every error is rendered in the protocol's own form. The model name and version in a URL are
checked against the served model's labels.json record (``GET /v1/model``); a wrong one is a 404.
Liveness and readiness are public; everything that names the model needs the key.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures at runtime.
import inspect
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from ray import serve
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

import bm_ray
from bm_ray.serve.protocol_schemas import (
    HEADER_LENGTH,
    KSERVE_V1,
    OIP,
    OIP_EXTENSIONS,
    TEI,
    OipInferRequest,
    OipInferResponse,
    OipModelMetadata,
    TeiRequest,
    V1PredictRequest,
    V1PredictResponse,
    error_response,
    oip_metadata,
    oip_request,
    oip_response,
    split_body,
    tei_info,
    tei_item_field,
    tei_predictions,
    tei_request,
    v1_predictions,
    v1_texts,
)
from bm_ray.serve.schemas import (
    ApiError,
    FastJSONResponse,
    check_texts,
    json_schema_in_place,
    read_body,
    read_json_body,
)
from bm_ray.specs import ServeSpec

MODEL_INFO_TTL_S = 1.0
"""How long the served model's record (name, version, labels) is reused; a mismatch always re-reads it."""
V2_BODY_TYPES = ("", "application/json", "application/octet-stream")
"""Content types of an inference request (tritonclient sends none)."""

protocol_router = APIRouter()


def _body(model: type, path: str) -> dict[str, Any]:
    """The OpenAPI `requestBody` of a route that reads its body itself (as ``/v1/classify`` does)."""
    pointer = (
        "#/paths/"
        + path.replace("~", "~0").replace("/", "~1")
        + "/post/requestBody/content/application~1json/schema"
    )
    schema = json_schema_in_place(model, pointer.replace("{", "{{").replace("}", "}}"))  # a format template
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    words = {
        401: "Missing or wrong Bearer API key",
        400: "Invalid request (the protocol's own error form)",
        404: "No such model or version",
        413: "Body over max_body_bytes",
        422: "Invalid request (the protocol's own error form)",
        424: "The model failed on a text",
        429: "Endpoint full (overload_status 429), with Retry-After",
        503: "Not ready or endpoint full, with Retry-After",
        504: "No answer within request_timeout_s",
    }
    # "default" also keeps FastAPI from listing its 422 HTTPValidationError (a str path parameter never fails).
    answers: dict[int | str, dict[str, Any]] = {status: {"description": words[status]} for status in statuses}
    return answers | {"default": {"description": "Any other error, in the protocol's form"}}


def _oip_item(i: int) -> str:
    return f"inputs[0].data[{i}]"


def _v1_item(i: int) -> str:
    return f"instances[{i}]"


class PrefixRoot:
    """A request for the route prefix itself (``/proto``) is one for the app's root (``/proto/``).

    Starlette would answer it with a redirect, which KServe's client (liveness at the base URL) and
    huggingface_hub (POSTs to the base URL) do not follow.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        root = scope.get("root_path", "")
        if scope["type"] == "http" and root and scope.get("path") == root:
            scope = {**scope, "path": root + "/"}
        await self.app(scope, receive, send)


class OptionalCORS:
    """Starlette's CORSMiddleware with the replica's ``cors_allow_origin`` (ServeSpec), else a pass-through.

    The app is built at import, before a replica has its spec: the spec is read from the replica's
    gateway on the first HTTP request.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._inner: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._inner is None and scope["type"] == "http":
            self._inner = self._build()
        await (self._inner or self.app)(scope, receive, send)

    def _build(self) -> ASGIApp | None:
        try:
            gateway = serve.get_replica_context().servable_object
        except Exception:  # not in a Serve replica (the OpenAPI generator, a test client): no CORS
            return self.app
        if gateway is None:
            return None  # not initialised yet: look again on the next request
        origins = [o.strip() for o in (gateway.spec.cors_allow_origin or "").split(",") if o.strip()]
        if not origins:
            return self.app
        return CORSMiddleware(
            self.app,
            allow_origins=origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["Retry-After", "Inference-Header-Content-Length"],
            max_age=600,
        )


class ProtocolRoutes:
    """The protocol routes of ``ApiGateway`` (see the module docstring); it supplies the pipeline."""

    spec: ServeSpec
    _info: dict[str, Any] | None = None
    _info_at: float = -math.inf

    async def _model_record(self, fresh: bool = False) -> dict[str, Any]:
        """The served model's labels.json record, read again after :data:`MODEL_INFO_TTL_S` or when `fresh`."""
        if fresh or self._info is None or time.monotonic() - self._info_at > MODEL_INFO_TTL_S:
            self._info = await self._model_info()  # type: ignore[attr-defined]
            self._info_at = time.monotonic()
        return self._info

    async def _check_model(self, name: str, version: str | None) -> dict[str, Any]:
        """The record when it is model `name` (and `version`), else 404 in the route's protocol."""

        def matches(info: dict[str, Any]) -> bool:
            return info["name"] == name and (version is None or str(info["version"]) == version)

        info = await self._model_record()
        if not matches(info):
            info = await self._model_record(fresh=True)  # a swap may have changed it since
        if not matches(info):
            asked = f"model {name!r}" + ("" if version is None else f" version {version!r}")
            raise ApiError(
                404,
                "model_not_found",
                f"no {asked}: this endpoint serves {info['name']!r} version {info['version']!r}",
                "model",
            )
        return info

    async def _answer(
        self,
        request: Request,
        protocol: str,
        name: str | None,
        version: str | None,
        respond: Callable[[dict[str, Any]], Response | Awaitable[Response]],
    ) -> Response:
        """`respond` to the served model's record once the key is checked (and, with a `name`, that the
        model is the one served); a refusal as `protocol`'s error response."""
        try:
            self._authorize(request)  # type: ignore[attr-defined]
            record = await (self._check_model(name, version) if name else self._model_record())
        except ApiError as err:
            return self._reject(err, protocol)  # type: ignore[attr-defined]
        answer = respond(record)
        return await answer if inspect.isawaitable(answer) else answer

    async def _ready(self, protocol: str, answer: dict[str, Any]) -> Response:
        """200 with `answer` when a model replica is ready, else 503 (with the reason) in `protocol`'s form."""
        try:
            reason = await self._ready_reason()  # type: ignore[attr-defined]
        except ApiError as err:
            reason = err.message
        if reason is not None:
            err = ApiError(503, "not_ready", reason, retry_after_s=self.spec.retry_after_s)
            return error_response(protocol, err)
        return FastJSONResponse(answer)

    # ------------------------------------------------------------------ Open Inference Protocol (V2)

    @protocol_router.get("/v2/health/live", tags=["Open Inference Protocol"])
    async def oip_live(self) -> dict[str, bool]:
        """The server is alive (public)."""
        return {"live": True}

    @protocol_router.get("/v2/health/ready", tags=["Open Inference Protocol"], responses=_errors(503))
    async def oip_ready(self) -> Response:
        """A model replica has its model loaded and warm (public)."""
        return await self._ready(OIP, {"ready": True})

    @protocol_router.get("/v2", tags=["Open Inference Protocol"])
    async def oip_server(self) -> dict[str, Any]:
        """Server metadata: name, version and the extensions supported (public)."""
        return {"name": "bm-ray", "version": bm_ray.__version__, "extensions": OIP_EXTENSIONS}

    @protocol_router.get(
        "/v2/models/{name}",
        tags=["Open Inference Protocol"],
        response_model=OipModelMetadata,
        responses=_errors(401, 404),
    )
    async def oip_model(self, request: Request, name: str) -> Response:
        """The model's metadata: input `text` (BYTES [-1]); outputs `label` (BYTES [-1]), `score` (FP32 [-1])
        and `scores` (FP32 [-1, labels])."""
        return await self._oip_model(request, name, None)

    @protocol_router.get(
        "/v2/models/{name}/versions/{version}",
        tags=["Open Inference Protocol"],
        response_model=OipModelMetadata,
        responses=_errors(401, 404),
    )
    async def oip_model_version(self, request: Request, name: str, version: str) -> Response:
        """The metadata of one version of the model (404 for any version but the one served)."""
        return await self._oip_model(request, name, version)

    async def _oip_model(self, request: Request, name: str, version: str | None) -> Response:
        return await self._answer(
            request, OIP, name, version, lambda info: FastJSONResponse(oip_metadata(info))
        )

    @protocol_router.get(
        "/v2/models/{name}/ready", tags=["Open Inference Protocol"], responses=_errors(401, 404, 503)
    )
    async def oip_model_ready(self, request: Request, name: str) -> Response:
        """The model is ready (200) or not (503)."""
        return await self._oip_model_ready(request, name, None)

    @protocol_router.get(
        "/v2/models/{name}/versions/{version}/ready",
        tags=["Open Inference Protocol"],
        responses=_errors(401, 404, 503),
    )
    async def oip_model_version_ready(self, request: Request, name: str, version: str) -> Response:
        """That version of the model is ready (200) or not (503)."""
        return await self._oip_model_ready(request, name, version)

    async def _oip_model_ready(self, request: Request, name: str, version: str | None) -> Response:
        return await self._answer(
            request, OIP, name, version, lambda _: self._ready(OIP, {"name": name, "ready": True})
        )

    @protocol_router.post(
        "/v2/models/{name}/infer",
        tags=["Open Inference Protocol"],
        response_model=OipInferResponse,
        responses=_errors(400, 401, 404, 413, 429, 503, 504),
        openapi_extra=_body(OipInferRequest, "/v2/models/{name}/infer"),
    )
    async def oip_infer(self, request: Request, name: str) -> Response:
        """Classify the texts of input `text`; outputs as JSON, or as binary tensor data (the extension's
        `binary_data` / `binary_data_output` parameters, ``Inference-Header-Content-Length``)."""
        return await self._oip_infer(request, name, None)

    @protocol_router.post(
        "/v2/models/{name}/versions/{version}/infer",
        tags=["Open Inference Protocol"],
        response_model=OipInferResponse,
        responses=_errors(400, 401, 404, 413, 429, 503, 504),
        openapi_extra=_body(OipInferRequest, "/v2/models/{name}/versions/{version}/infer"),
    )
    async def oip_infer_version(self, request: Request, name: str, version: str) -> Response:
        """Classify with that version of the model (404 for any version but the one served)."""
        return await self._oip_infer(request, name, version)

    async def _oip_infer(self, request: Request, name: str, version: str | None) -> Response:
        async def read(request: Request) -> Any:
            await self._check_model(name, version)
            media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if (
                media not in V2_BODY_TYPES
                or request.headers.get("content-encoding", "identity") != "identity"
            ):
                raise ApiError(
                    415,
                    "unsupported_media_type",
                    "send the request as uncompressed JSON, or JSON and binary tensor data",
                    "content-type",
                )
            body = await read_body(request, self.spec.max_body_bytes)
            parsed, texts, outputs = oip_request(*split_body(body, request.headers.get(HEADER_LENGTH)))
            check_texts(texts, self.spec, "inputs[0].data", _oip_item)
            return (parsed.id, outputs), texts, _oip_item

        try:
            (request_id, outputs), result = await self._run_texts(request, read)  # type: ignore[attr-defined]
        except ApiError as err:
            return self._reject(err, OIP)  # type: ignore[attr-defined]
        return oip_response(result, request_id, outputs)

    # ------------------------------------------------------------------------- KServe V1 / TF Serving

    @protocol_router.get("/", tags=["KServe V1"])
    async def v1_live(self, request: Request) -> Response:
        """Liveness, KServe V1's ``{"status": "alive"}`` (public); a browser is sent to the playground at `/ui`."""
        if "text/html" in request.headers.get("accept", ""):
            return RedirectResponse(request.scope.get("root_path", "").rstrip("/") + "/ui", status_code=307)
        return FastJSONResponse({"status": "alive"})

    @protocol_router.get("/v1/models", tags=["KServe V1"], responses=_errors(401))
    async def v1_models(self, request: Request) -> Response:
        """The models served: ``{"models": [name]}``."""
        return await self._answer(
            request, KSERVE_V1, None, None, lambda info: FastJSONResponse({"models": [info["name"]]})
        )

    @protocol_router.get("/v1/models/{name}", tags=["KServe V1"], responses=_errors(401, 404, 503))
    async def v1_model(self, request: Request, name: str) -> Response:
        """The model is ready: ``{"name", "ready": true}`` (503 while it is not)."""
        return await self._answer(
            request, KSERVE_V1, name, None, lambda _: self._ready(KSERVE_V1, {"name": name, "ready": True})
        )

    @protocol_router.post(
        "/v1/models/{name}:predict",
        tags=["KServe V1"],
        response_model=V1PredictResponse,
        responses=_errors(400, 401, 404, 413, 429, 503, 504),
        openapi_extra=_body(V1PredictRequest, "/v1/models/{name}:predict"),
    )
    async def v1_predict(self, request: Request, name: str) -> Response:
        """Classify `instances` (texts, or objects with a `text`), answering `predictions` in order; abstention at
        the endpoint's `min_score`."""

        async def read(request: Request) -> Any:
            await self._check_model(name, None)
            texts = v1_texts(await read_json_body(request, self.spec.max_body_bytes))
            check_texts(texts, self.spec, "instances", _v1_item)
            return None, texts, _v1_item

        try:
            _, result = await self._run_texts(request, read)  # type: ignore[attr-defined]
        except ApiError as err:
            return self._reject(err, KSERVE_V1)  # type: ignore[attr-defined]
        return FastJSONResponse(v1_predictions(result, self.spec.min_score))

    # ------------------------------------------------------------------------ Hugging Face TEI

    @protocol_router.post(
        "/predict",
        tags=["Hugging Face TEI"],
        responses=_errors(400, 401, 413, 422, 424, 429, 503, 504),
        openapi_extra=_body(TeiRequest, "/predict"),
    )
    async def tei_predict(self, request: Request) -> Response:
        """TEI's predict: ``[{"label", "score"}, ...]`` best first for one text, a list of those for a list."""
        return await self._tei_predict(request)

    @protocol_router.post(
        "/",
        tags=["Hugging Face TEI"],
        responses=_errors(400, 401, 413, 422, 424, 429, 503, 504),
        openapi_extra=_body(TeiRequest, "/"),
    )
    async def tei_root(self, request: Request) -> Response:
        """The same as ``POST /predict`` (where ``huggingface_hub.InferenceClient(model=URL)`` posts)."""
        return await self._tei_predict(request)

    async def _tei_predict(self, request: Request) -> Response:
        async def read(request: Request) -> Any:
            parsed, texts = tei_request(await read_json_body(request, self.spec.max_body_bytes))
            item = tei_item_field(parsed)
            check_texts(texts, self.spec, "inputs", item)
            return parsed, texts, item

        try:
            parsed, result = await self._run_texts(request, read)  # type: ignore[attr-defined]
        except ApiError as err:
            return self._reject(err, TEI)  # type: ignore[attr-defined]
        return FastJSONResponse(tei_predictions(parsed, result))

    @protocol_router.get("/info", tags=["Hugging Face TEI"], responses=_errors(401, 503))
    async def tei_info(self, request: Request) -> Response:
        """The model (``model_id``, its labels as TEI's ``model_type.classifier``), the limits and bm-ray's version."""
        limits = {
            "max_client_batch_size": self.spec.max_texts_per_request,
            "max_text_chars": self.spec.max_text_chars,
            "max_body_bytes": self.spec.max_body_bytes,
            "max_concurrent_requests": self._limit,  # type: ignore[attr-defined]
        }
        return await self._answer(
            request,
            TEI,
            None,
            None,
            lambda info: FastJSONResponse(tei_info(info, limits, bm_ray.__version__)),
        )

    @protocol_router.get("/health", tags=["Hugging Face TEI"], responses=_errors(503))
    async def tei_health(self) -> Response:
        """A model replica is ready (public); 503 in TEI's error form while it is not."""
        return await self._ready(TEI, {"status": "ready"})
