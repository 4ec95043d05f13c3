"""The other serving protocols' HTTP contracts: their request and answer models, parsing, tensors and errors.

Three protocols beside bm-ray's own ``/v1/classify`` (:mod:`~bm_ray.serve.schemas`):

- the Open Inference Protocol (:data:`OIP`: KServe V2, Triton's HTTP/REST API), with the binary
  tensor data extension on inputs and outputs;
- KServe V1 (:data:`KSERVE_V1`: TF Serving's ``instances``/``predictions`` REST form);
- Hugging Face Text Embeddings Inference (:data:`TEI`, what ``huggingface_hub.InferenceClient`` calls).

Every error is an :class:`~bm_ray.serve.schemas.ApiError` until :func:`error_response` renders it in
the protocol's own form and status (:func:`protocol_status`). Nothing here knows Serve or the model.
"""

# No `from __future__ import annotations`: FastAPI reads these models' annotations at runtime.
import math
import re
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from bm_ray.model.metrics import abstained
from bm_ray.serve.schemas import ApiError, FastJSONResponse, parse_json

OIP, KSERVE_V1, TEI, NATIVE = "oip", "kserve-v1", "tei", "bm-ray"
"""The protocols a route can speak (:data:`NATIVE`: bm-ray's own ``/v1/classify`` contract)."""
INPUT = "text"
OUTPUTS = ("label", "score", "scores")
"""The Open Inference Protocol tensors: one BYTES input, the top label, its score and every label's score."""
HEADER_LENGTH = "inference-header-content-length"
"""The binary tensor data extension's header: the JSON part's length; the tensors' bytes follow it."""
OIP_EXTENSIONS = ["binary_tensor_data"]


# ---------------------------------------------------------------------------------------------- requests


class OipInput(BaseModel):
    """One input tensor: `text`, BYTES, its texts in `data` (or, binary, `parameters.binary_data_size` bytes)."""

    model_config = ConfigDict(extra="forbid")
    name: StrictStr
    shape: list[StrictInt]
    datatype: StrictStr
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = Field(
        default=None, description="The texts, row-major (nested lists are flattened)."
    )


class OipOutput(BaseModel):
    """One requested output; ``parameters.binary_data: true`` asks for it as binary tensor data."""

    model_config = ConfigDict(extra="forbid")
    name: StrictStr
    parameters: dict[str, Any] | None = None


class OipInferRequest(BaseModel):
    """Body of ``POST /v2/models/{name}/infer`` (JSON, or JSON then binary tensors: ``Inference-Header-Content-Length``).

    Other keys (KServe's client sends `model_name`) are ignored."""

    model_config = ConfigDict(extra="ignore")
    id: StrictStr | None = None
    parameters: dict[str, Any] | None = Field(
        default=None, description="`binary_data_output: true`: every output as binary tensor data."
    )
    inputs: list[OipInput] = Field(min_length=1)
    outputs: list[OipOutput] | None = Field(default=None, description="All three when omitted.")


class V1Instance(BaseModel):
    """One instance as an object."""

    model_config = ConfigDict(extra="forbid")
    text: StrictStr


class V1PredictRequest(BaseModel):
    """Body of ``POST /v1/models/{name}:predict``: texts, or objects with a `text`."""

    model_config = ConfigDict(extra="forbid")
    instances: list[StrictStr | V1Instance]


class TeiParameters(BaseModel):
    """Text-classification parameters (those of huggingface_hub's client)."""

    model_config = ConfigDict(extra="ignore")
    top_k: StrictInt | None = Field(default=None, ge=1, description="Labels per text (all when omitted).")
    function_to_apply: StrictStr | None = Field(
        default=None, description="Only `softmax` (the model's calibrated probabilities) or omitted."
    )


class TeiRequest(BaseModel):
    """Body of ``POST /predict`` and ``POST /``: one text, or a list of texts."""

    model_config = ConfigDict(extra="ignore")
    inputs: StrictStr | list[StrictStr]
    parameters: TeiParameters | None = None
    truncate: StrictBool | None = Field(
        default=None, description="Accepted and ignored: long texts are windowed."
    )
    raw_scores: StrictBool | None = Field(default=None, description="Only `false`: scores are probabilities.")


# ----------------------------------------------------------------------------------------------- answers


class OipTensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class OipModelMetadata(BaseModel):
    """``GET /v2/models/{name}``: the model's name, version and tensors."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[OipTensorMetadata]
    outputs: list[OipTensorMetadata]


class OipOutputTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = Field(
        default=None, description="`binary_data_size` of a binary output (its bytes follow the JSON)."
    )
    data: list[Any] | None = None


class OipInferResponse(BaseModel):
    """The answer: `label` (BYTES [n]), `score` (FP32 [n]) and `scores` (FP32 [n, labels], in the model's label order)."""

    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[OipOutputTensor]


class V1Prediction(BaseModel):
    label: str
    score: float
    scores: dict[str, float]
    abstained: bool = Field(description="The top score is below the endpoint's min_score.")


class V1PredictResponse(BaseModel):
    """Predictions in instance order."""

    predictions: list[V1Prediction]


class TeiPrediction(BaseModel):
    label: str
    score: float


UNION_TAG = re.compile(r"(str|int|float|bool|(list|dict)\[.*\]|[A-Z]\w*)")
"""How pydantic names the member of a union in an error's location (the models' own fields are lowercase)."""


def validation_error(err: ValidationError) -> ApiError:
    """The 422 ``invalid_request`` naming the first failing field of a protocol's body (``inputs[0].shape``)."""
    first = err.errors()[0]
    loc = [p for p in first["loc"] if not (isinstance(p, str) and UNION_TAG.fullmatch(p))]
    field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or "body"
    return ApiError(422, "invalid_request", f"{field}: {first['msg']}", field)


# ----------------------------------------------------------------------------------- binary tensor data


def encode_bytes_tensor(items: list[str]) -> bytes:
    """A BYTES tensor's binary form: each element as its 4-byte little-endian length, then its bytes."""
    return b"".join(struct.pack("<I", len(b)) + b for b in (item.encode() for item in items))


def decode_bytes_tensor(raw: bytes, field: str) -> list[bytes]:
    """The elements of a binary BYTES tensor, or 422 when the lengths do not add up to `raw`."""
    items, at = [], 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise ApiError(422, "invalid_request", "a BYTES element's 4-byte length is cut off", field)
        (size,) = struct.unpack_from("<I", raw, at)
        at += 4
        if at + size > len(raw):
            raise ApiError(422, "invalid_request", "a BYTES element runs past the tensor's bytes", field)
        items.append(raw[at : at + size])
        at += size
    return items


def split_body(body: bytes, header_length: str | None) -> tuple[Any, bytes]:
    """The JSON part of an inference request and the binary tensor data after it."""
    if header_length is None:
        return parse_json(body), b""
    if not header_length.isdigit() or int(header_length) > len(body):
        raise ApiError(
            422,
            "invalid_request",
            f"Inference-Header-Content-Length {header_length!r} is not a length within the body",
            HEADER_LENGTH,
        )
    return parse_json(body[: int(header_length)]), body[int(header_length) :]


def _flatten(data: list[Any]) -> list[Any]:
    flat: list[Any] = []
    for item in data:
        flat += _flatten(item) if isinstance(item, list) else [item]
    return flat


def oip_request(header: Any, binary: bytes) -> tuple[OipInferRequest, list[str], dict[str, bool]]:
    """The request, its texts and the outputs to send (name → binary?), or a 422 naming the failing field."""
    try:
        request = OipInferRequest.model_validate(header)
    except ValidationError as err:
        raise validation_error(err) from None
    if len(request.inputs) != 1 or request.inputs[0].name != INPUT:
        names = [tensor.name for tensor in request.inputs]
        raise ApiError(
            422, "invalid_request", f"inputs {names}: the model has one input, `{INPUT}`", "inputs"
        )
    tensor = request.inputs[0]
    if tensor.datatype != "BYTES":
        raise ApiError(
            422, "invalid_request", f"`{INPUT}` is BYTES, not {tensor.datatype}", "inputs[0].datatype"
        )
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size != len(binary):
            raise ApiError(
                422,
                "invalid_request",
                f"binary_data_size {size!r}, but {len(binary)} bytes follow the JSON",
                "inputs[0].parameters.binary_data_size",
            )
        raw_items: list[Any] = decode_bytes_tensor(binary, "inputs[0]")
    elif binary:
        raise ApiError(
            422, "invalid_request", "binary data without a binary_data_size", "inputs[0].parameters"
        )
    else:
        raw_items = _flatten(tensor.data or [])
    texts = []
    for i, item in enumerate(raw_items):
        try:
            texts.append(item.decode() if isinstance(item, bytes) else item)
        except UnicodeDecodeError:
            raise ApiError(422, "invalid_request", "not UTF-8 text", f"inputs[0].data[{i}]") from None
        if not isinstance(texts[-1], str):
            raise ApiError(422, "invalid_request", "a BYTES element must be a string", f"inputs[0].data[{i}]")
    if any(dim < 0 for dim in tensor.shape) or math.prod(tensor.shape) != len(texts):
        raise ApiError(
            422,
            "invalid_request",
            f"shape {tensor.shape} does not hold the {len(texts)} elements given",
            "inputs[0].shape",
        )
    return request, texts, oip_outputs(request)


def oip_outputs(request: OipInferRequest) -> dict[str, bool]:
    """The outputs to send (all three when none are named), each with whether it goes as binary data."""
    binary = bool((request.parameters or {}).get("binary_data_output", False))
    if request.outputs is None:
        return dict.fromkeys(OUTPUTS, binary)
    wanted = {}
    for i, output in enumerate(request.outputs):
        if output.name not in OUTPUTS:
            raise ApiError(
                422,
                "invalid_request",
                f"no output {output.name!r}; the outputs are {', '.join(OUTPUTS)}",
                f"outputs[{i}].name",
            )
        wanted[output.name] = bool((output.parameters or {}).get("binary_data", binary))
    return wanted


def oip_metadata(info: dict[str, Any]) -> dict[str, Any]:
    """The model metadata of the Open Inference Protocol, from the model's labels.json record."""
    return {
        "name": info["name"],
        "versions": [str(info["version"])],
        "platform": "bm-ray",
        "inputs": [{"name": INPUT, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": "score", "datatype": "FP32", "shape": [-1]},
            {"name": "scores", "datatype": "FP32", "shape": [-1, len(info["labels"])]},
        ],
    }


def oip_response(result: dict[str, Any], request_id: str | None, outputs: dict[str, bool]) -> Response:
    """The inference answer: JSON, or JSON then the binary outputs (in `outputs`' order) when any is binary."""
    predictions = result["predictions"]
    labels = list(predictions[0]["scores"]) if predictions else []
    tensors: dict[str, tuple[str, list[int], list[Any]]] = {
        "label": ("BYTES", [len(predictions)], [p["label"] for p in predictions]),
        "score": ("FP32", [len(predictions)], [p["score"] for p in predictions]),
        "scores": (
            "FP32",
            [len(predictions), len(labels)],
            [p["scores"][label] for p in predictions for label in labels],
        ),
    }
    answer: dict[str, Any] = {
        "model_name": result["model"]["name"],
        "model_version": str(result["model"]["version"]),
    }
    if request_id is not None:
        answer["id"] = request_id
    chunks = []
    answer["outputs"] = []
    for name, binary in outputs.items():
        datatype, shape, values = tensors[name]
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if binary:
            raw = encode_bytes_tensor(values) if datatype == "BYTES" else np.asarray(values, "<f4").tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            tensor["data"] = values
        answer["outputs"].append(tensor)
    if not chunks:
        return FastJSONResponse(answer)
    header = orjson.dumps(answer)
    return Response(
        header + b"".join(chunks),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )


def v1_texts(data: Any) -> list[str]:
    """The texts of a KServe V1 predict body, or a 422 naming the failing field."""
    try:
        request = V1PredictRequest.model_validate(data)
    except ValidationError as err:
        raise validation_error(err) from None
    return [item if isinstance(item, str) else item.text for item in request.instances]


def v1_predictions(result: dict[str, Any], min_score: float | None) -> dict[str, Any]:
    """The KServe V1 answer, with abstention at the endpoint's `min_score`."""
    predictions = result["predictions"]
    marks = abstained(np.asarray([p["score"] for p in predictions]), min_score).tolist()
    return {
        "predictions": [
            {"label": p["label"], "score": p["score"], "scores": p["scores"], "abstained": mark}
            for p, mark in zip(predictions, marks, strict=True)
        ]
    }


def tei_request(data: Any) -> tuple[TeiRequest, list[str]]:
    """A TEI predict body and its texts, or a 422 naming the failing field."""
    try:
        request = TeiRequest.model_validate(data)
    except ValidationError as err:
        raise validation_error(err) from None
    function = request.parameters.function_to_apply if request.parameters else None
    if function not in (None, "softmax"):
        raise ApiError(
            422,
            "invalid_request",
            f"function_to_apply {function!r}: the scores are the model's calibrated probabilities (softmax)",
            "parameters.function_to_apply",
        )
    if request.raw_scores:
        raise ApiError(
            422, "invalid_request", "raw_scores: the endpoint answers probabilities only", "raw_scores"
        )
    texts = [request.inputs] if isinstance(request.inputs, str) else request.inputs
    return request, texts


def tei_item_field(request: TeiRequest) -> Callable[[int], str]:
    """The field of text `i` of a TEI request."""
    return (lambda i: "inputs") if isinstance(request.inputs, str) else (lambda i: f"inputs[{i}]")


def tei_predictions(request: TeiRequest, result: dict[str, Any]) -> list[Any]:
    """Each text's labels and scores, best first (`parameters.top_k` of them); one list for one text."""
    top_k = request.parameters.top_k if request.parameters else None
    answers = [
        sorted(({"label": k, "score": v} for k, v in p["scores"].items()), key=lambda e: -e["score"])[:top_k]
        for p in result["predictions"]
    ]
    return answers[0] if isinstance(request.inputs, str) else answers


def tei_info(info: dict[str, Any], limits: dict[str, Any], version: str) -> dict[str, Any]:
    """``GET /info``: TEI's fields for a classifier (``model_id``, ``model_type.classifier``, limits) and bm-ray's."""
    labels = list(info["labels"])
    return {
        "model_id": info["name"],
        "model_version": str(info["version"]),
        "model_type": {
            "classifier": {
                "id2label": {str(i): label for i, label in enumerate(labels)},
                "label2id": {label: i for i, label in enumerate(labels)},
            }
        },
        "labels": labels,
        "max_input_length": info["max_length"],
        **limits,
        "version": version,
    }


# ------------------------------------------------------------------------------------------------ errors


def protocol_of(request: Request) -> str:
    """The protocol of a request, by its path under the app's route prefix (unknown routes included)."""
    path = request.scope.get("path", "")
    root = request.scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    path = "/" + path.lstrip("/")
    if path == "/v2" or path.startswith("/v2/"):
        return OIP
    if path.startswith("/v1/models"):
        return KSERVE_V1
    if path in ("/predict", "/info", "/health") or (path == "/" and request.method == "POST"):
        return TEI
    return KSERVE_V1 if path == "/" else NATIVE


TEI_ERROR_TYPES = {
    "empty_input": "empty",
    "empty_text": "empty",
    "queue_full": "overloaded",
    "not_ready": "unhealthy",
    "model_unavailable": "unhealthy",
    "text_failed": "backend",
    "timeout": "backend",
    "internal": "backend",
    "unauthorized": "unauthorized",
    "http_error": "not_found",
}
"""TEI's `error_type` of each error code (any other code: ``validation``)."""


def protocol_status(protocol: str, err: ApiError) -> int:
    """The HTTP status of `err` in `protocol`: KServe and Triton answer a bad request 400; TEI answers an empty
    input 400 and a text the model failed on 424; everything else keeps bm-ray's status."""
    if protocol in (OIP, KSERVE_V1) and err.status in (415, 422):
        return 400
    if protocol == TEI and err.code in ("empty_input", "empty_text"):
        return 400
    if protocol == TEI and err.code == "text_failed":
        return 424
    return err.status


def error_response(protocol: str, err: ApiError) -> Response:
    """`err` in `protocol`'s form: ``{"error": "..."}`` (Open Inference Protocol, KServe V1), ``{"error",
    "error_type"}`` (TEI) or bm-ray's ``{"error": {"code", "message", "field"}}``; same headers."""
    if protocol == NATIVE:
        return err.response()
    message = (
        err.message
        if err.field is None or err.message.startswith(err.field)
        else f"{err.field}: {err.message}"
    )
    body: dict[str, Any] = {"error": message}
    if protocol == TEI:
        body["error_type"] = TEI_ERROR_TYPES.get(err.code, "validation")
    return FastJSONResponse(body, status_code=protocol_status(protocol, err), headers=err.headers())
