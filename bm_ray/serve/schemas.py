"""The HTTP contract of the endpoint: request and response models, request checks and every error.

All errors are ``{"error": {"code", "message", "field"?}}``. Nothing here knows Serve or the model.
"""

# No `from __future__ import annotations`: FastAPI reads these models' annotations at runtime.
from collections.abc import Callable
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from bm_ray.specs import ServeSpec


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
    min_score: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Mark predictions whose top score is below this as abstained; the endpoint's min_score "
        "when omitted.",
    )


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
    windows: int = Field(
        description="Token windows the text was read as (1 when it fits the model's window)."
    )
    abstained: bool = Field(
        description="The top score is below min_score: label and scores are given, but not to be trusted."
    )


class ClassifyResponse(BaseModel):
    """Predictions in request order."""

    model: ModelRef
    min_score: float | None = Field(description="The abstention threshold applied (null: none).")
    predictions: list[PredictionOut]


def request_min_score(body: ClassifyRequest, spec: ServeSpec) -> float | None:
    """The abstention threshold of a request: its own `min_score`, else the endpoint's (ServeSpec)."""
    return spec.min_score if body.min_score is None else body.min_score


class FastJSONResponse(JSONResponse):
    """JSON rendered by orjson: a response of 32 predictions renders several times faster than `json`."""

    def render(self, content: Any) -> bytes:
        """The body bytes."""
        return orjson.dumps(content)


class ApiError(Exception):
    """A client-visible error rendered as ``{"error": {"code", "message", "field"?}}``."""

    def __init__(
        self, status: int, code: str, message: str, field: str | None = None, retry_after_s: int | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        """``Retry-After`` (when set) and, on a 401, ``WWW-Authenticate: Bearer``: in every protocol's form."""
        headers = {"Retry-After": str(self.retry_after_s)} if self.retry_after_s is not None else {}
        if self.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return headers

    def response(self) -> JSONResponse:
        """The JSON error response."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        return FastJSONResponse({"error": error}, status_code=self.status, headers=self.headers())


class ModelNotReadyError(RuntimeError):
    """Raised by a model replica that has no model loaded (picklable: one message argument)."""


class TextFailedError(ValueError):
    """Raised by a model replica for a call whose text `index` failed on its own in the forward pass.

    The rest of that forward pass was answered: only the call holding the failing text gets this.
    Picklable: its arguments are exactly ``(index, message)``.
    """

    def __init__(self, index: int, message: str) -> None:
        super().__init__(index, message)
        self.index, self.message = index, message


def queue_full(retry_after_s: int, status: int = 503) -> ApiError:
    """The 503 (or 429: ServeSpec `overload_status`) answered when the model deployment cannot take another
    request right now."""
    return ApiError(
        status, "queue_full", "the model's queue is full; retry later", retry_after_s=retry_after_s
    )


def request_timeout(timeout_s: float) -> ApiError:
    """The 504 answered when a request took longer than `request_timeout_s`."""
    return ApiError(504, "timeout", f"no answer within request_timeout_s ({timeout_s:g} s)")


def json_schema_in_place(model: type[BaseModel], pointer: str) -> dict[str, Any]:
    """JSON schema of `model` whose nested `$ref`s point inside itself (at `pointer` of the OpenAPI doc).

    The route parses its body by hand (to answer 413/415/422 itself), so FastAPI does not register the
    request models as components; the `$defs` travel inline instead.
    """
    return model.model_json_schema(ref_template=pointer + "/$defs/{model}")


CLASSIFY_BODY_POINTER = "#/paths/~1v1~1classify/post/requestBody/content/application~1json/schema"
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": description}
    for status, description in {
        401: "Missing or wrong Bearer API key",
        413: "Body over max_body_bytes",
        415: "Content-Type is not JSON",
        422: "Invalid request, or a text the model failed on (the `field` names it)",
        429: "Endpoint full, when overload_status is 429 (with Retry-After)",
        500: "The model failed on the request for another reason",
        503: "Not ready, queue full or no model replica answered (with Retry-After)",
        504: "No answer within request_timeout_s",
    }.items()
}


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def parse_classify_request(data: Any) -> ClassifyRequest:
    """`data` as a :class:`ClassifyRequest`, or :class:`ApiError` 422 naming the first failing field."""
    try:
        return ClassifyRequest.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "body"
        raise ApiError(422, "invalid_request", f"{field}: {first['msg']}", field) from None


def text_field(body: ClassifyRequest, index: int) -> str:
    """The request field holding text `index` (``texts.3`` or ``instances.3.text``)."""
    return f"texts.{index}" if body.texts is not None else f"instances.{index}.text"


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
    check_texts(texts, spec, field, lambda i: text_field(body, i))
    return ids, texts


def check_texts(texts: list[str], spec: ServeSpec, list_field: str, item_field: Callable[[int], str]) -> None:
    """:class:`ApiError` 422 for a request whose texts break the spec's limits (every protocol checks the same).

    `list_field` names the list of texts in the request and `item_field(i)` text `i`, in the request's
    own protocol (``texts.3``, ``inputs[0].data[3]``, ...).
    """
    if not texts:
        raise ApiError(422, "empty_input", "the request holds no text", list_field)
    if len(texts) > spec.max_texts_per_request:
        raise ApiError(
            422,
            "too_many_texts",
            f"{len(texts)} texts; at most {spec.max_texts_per_request} per request",
            list_field,
        )
    for i, text in enumerate(texts):
        if not text.strip():
            raise ApiError(422, "empty_text", "text is empty or whitespace", item_field(i))
        if len(text) > spec.max_text_chars:
            raise ApiError(
                422,
                "text_too_long",
                f"text has {len(text)} characters; the limit is {spec.max_text_chars} (longer texts are refused)",
                item_field(i),
            )


async def read_json_body(request: Request, max_bytes: int) -> Any:
    """The JSON body, enforcing the content type (415) and the size (413) on the header and the bytes read."""
    if not _is_json(request.headers.get("content-type", "")):
        raise ApiError(415, "unsupported_media_type", "send the body as application/json", "content-type")
    return parse_json(await read_body(request, max_bytes))


def parse_json(body: bytes) -> Any:
    """`body` parsed as JSON, or :class:`ApiError` 422 ``malformed_json``."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise ApiError(422, "malformed_json", f"body is not valid JSON: {err}", "body") from None


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The body bytes, enforcing the size (413) on the Content-Length header and on the bytes read."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, "body_too_large", f"body of {declared} bytes; the limit is {max_bytes}", "body")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise ApiError(413, "body_too_large", f"body over the limit of {max_bytes} bytes", "body")
    return bytes(body)
