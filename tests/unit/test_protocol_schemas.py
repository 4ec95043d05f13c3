"""The other protocols' contracts without Serve: tensors (checked against tritonclient's own codec), request
parsing, answers and each protocol's error form and status."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson
import pytest
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from bm_ray.serve.protocol_schemas import (
    KSERVE_V1,
    NATIVE,
    OIP,
    TEI,
    decode_bytes_tensor,
    encode_bytes_tensor,
    error_response,
    oip_metadata,
    oip_request,
    oip_response,
    protocol_of,
    split_body,
    tei_info,
    tei_predictions,
    tei_request,
    v1_predictions,
    v1_texts,
)
from bm_ray.serve.schemas import ApiError, check_texts
from bm_ray.specs import ServeSpec

LABELS = ["World", "Sports", "Business"]
RESULT = {
    "model": {"name": "tiny", "version": "7"},
    "predictions": [
        {
            "label": "Sports",
            "score": 0.7,
            "scores": {"World": 0.1, "Sports": 0.7, "Business": 0.2},
            "windows": 1,
        },
        {
            "label": "World",
            "score": 0.5,
            "scores": {"World": 0.5, "Sports": 0.2, "Business": 0.3},
            "windows": 3,
        },
    ],
}


def test_bytes_tensors_match_tritonclient() -> None:
    texts = ["héllo", "", "a" * 300]
    raw = encode_bytes_tensor(texts)
    assert raw == serialize_byte_tensor(np.array([t.encode() for t in texts], dtype=np.object_)).item()
    assert [b.decode() for b in deserialize_bytes_tensor(raw)] == texts
    assert decode_bytes_tensor(raw, "f") == [t.encode() for t in texts]
    for cut in (raw[:2], raw[:-1]):
        with pytest.raises(ApiError) as err:
            decode_bytes_tensor(cut, "inputs[0]")
        assert (err.value.status, err.value.field) == (422, "inputs[0]")


def _binary_request(texts: list[str], **header: Any) -> tuple[bytes, str]:
    raw = encode_bytes_tensor(texts)
    tensor = {
        "name": "text",
        "shape": [len(texts)],
        "datatype": "BYTES",
        "parameters": {"binary_data_size": len(raw)},
    }
    head = json.dumps({"inputs": [tensor], **header}).encode()
    return head + raw, str(len(head))


def test_oip_requests_json_and_binary() -> None:
    request, texts, outputs = oip_request(
        {"inputs": [{"name": "text", "shape": [2, 1], "datatype": "BYTES", "data": [["a"], ["b"]]}]}, b""
    )
    assert texts == ["a", "b"] and outputs == {"label": False, "score": False, "scores": False}
    body, length = _binary_request(["x", "y z"], parameters={"binary_data_output": True}, id="r1")
    request, texts, outputs = oip_request(*split_body(body, length))
    assert (request.id, texts) == ("r1", ["x", "y z"]) and all(outputs.values())
    _, _, outputs = oip_request(
        *split_body(
            _binary_request(["x"], outputs=[{"name": "score", "parameters": {"binary_data": True}}])[0],
            _binary_request(["x"], outputs=[{"name": "score", "parameters": {"binary_data": True}}])[1],
        )
    )
    assert outputs == {"score": True}


@pytest.mark.parametrize(
    ("header", "binary", "field"),
    [
        ({"inputs": [{"name": "txt", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}, b"", "inputs"),
        (
            {"inputs": [{"name": "text", "shape": [1], "datatype": "FP32", "data": [1.0]}]},
            b"",
            "inputs[0].datatype",
        ),
        (
            {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a"]}]},
            b"",
            "inputs[0].shape",
        ),
        (
            {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [3]}]},
            b"",
            "inputs[0].data[0]",
        ),
        ({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES"}]}, b"xx", "inputs[0].parameters"),
        (
            {
                "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}],
                "outputs": [{"name": "p"}],
            },
            b"",
            "outputs[0].name",
        ),
        ({"inputs": []}, b"", "inputs"),
        ({"inputs": [{"name": "text", "datatype": "BYTES"}]}, b"", "inputs[0].shape"),
    ],
)
def test_oip_request_errors_name_the_field(header: dict[str, Any], binary: bytes, field: str) -> None:
    with pytest.raises(ApiError) as err:
        oip_request(header, binary)
    assert (err.value.status, err.value.code, err.value.field) == (422, "invalid_request", field)


def test_split_body_checks_the_header_length() -> None:
    assert split_body(b'{"a": 1}', None) == ({"a": 1}, b"")
    assert split_body(b'{"a": 1}xyz', "8") == ({"a": 1}, b"xyz")
    for bad in ("99", "x", "-1"):
        with pytest.raises(ApiError) as err:
            split_body(b'{"a": 1}', bad)
        assert err.value.field == "inference-header-content-length"
    with pytest.raises(ApiError) as err:
        split_body(b"{", None)
    assert err.value.code == "malformed_json"


def test_oip_response_json_and_binary() -> None:
    plain = json.loads(oip_response(RESULT, "r1", dict.fromkeys(("label", "score", "scores"), False)).body)
    assert plain["model_name"] == "tiny" and plain["model_version"] == "7" and plain["id"] == "r1"
    by_name = {o["name"]: o for o in plain["outputs"]}
    assert by_name["label"] == {
        "name": "label",
        "datatype": "BYTES",
        "shape": [2],
        "data": ["Sports", "World"],
    }
    assert by_name["scores"]["shape"] == [2, 3]
    assert by_name["scores"]["data"] == [0.1, 0.7, 0.2, 0.5, 0.2, 0.3]

    response = oip_response(RESULT, None, {"label": True, "score": False, "scores": True})
    length = int(response.headers["inference-header-content-length"])
    header = orjson.loads(response.body[:length])
    rest = response.body[length:]
    label, score, scores = header["outputs"]
    assert "id" not in header and score["data"] == [0.7, 0.5]
    label_raw, scores_raw = (
        rest[: label["parameters"]["binary_data_size"]],
        rest[label["parameters"]["binary_data_size"] :],
    )
    assert len(scores_raw) == scores["parameters"]["binary_data_size"] == 2 * 3 * 4
    assert [b.decode() for b in deserialize_bytes_tensor(label_raw)] == ["Sports", "World"]
    np.testing.assert_allclose(
        np.frombuffer(scores_raw, "<f4").reshape(2, 3), [[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]]
    )


def test_oip_metadata() -> None:
    meta = oip_metadata({"name": "tiny", "version": 7, "labels": LABELS})
    assert meta["versions"] == ["7"]
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"][2] == {"name": "scores", "datatype": "FP32", "shape": [-1, 3]}


def test_kserve_v1() -> None:
    assert v1_texts({"instances": ["a", {"text": "b"}]}) == ["a", "b"]
    for bad in ({"instances": [1]}, {"inputs": ["a"]}, {"instances": [{"txt": "a"}]}, []):
        with pytest.raises(ApiError) as err:
            v1_texts(bad)
        assert err.value.status == 422
    answer = v1_predictions(RESULT, 0.6)
    assert [p["abstained"] for p in answer["predictions"]] == [False, True]
    assert answer["predictions"][0] == {
        **{k: RESULT["predictions"][0][k] for k in ("label", "score", "scores")},
        "abstained": False,
    }


def test_tei() -> None:
    request, texts = tei_request({"inputs": "one", "parameters": {"top_k": 2}, "truncate": True})
    assert texts == ["one"]
    single = {"model": RESULT["model"], "predictions": RESULT["predictions"][:1]}
    assert tei_predictions(request, single) == [
        {"label": "Sports", "score": 0.7},
        {"label": "Business", "score": 0.2},
    ]
    request, texts = tei_request({"inputs": ["a", "b"]})
    batch = tei_predictions(request, RESULT)
    assert len(batch) == 2 and [e["label"] for e in batch[1]] == ["World", "Business", "Sports"]
    for bad, field in (
        ({"inputs": 3}, "inputs"),
        ({"inputs": "a", "parameters": {"function_to_apply": "sigmoid"}}, "parameters.function_to_apply"),
        ({"inputs": "a", "raw_scores": True}, "raw_scores"),
    ):
        with pytest.raises(ApiError) as err:
            tei_request(bad)
        assert err.value.field == field, bad
    info = tei_info(
        {"name": "tiny", "version": "7", "labels": LABELS, "max_length": 128},
        {"max_client_batch_size": 4},
        "1.0",
    )
    assert info["model_type"]["classifier"]["id2label"] == {"0": "World", "1": "Sports", "2": "Business"}
    assert (info["model_id"], info["max_input_length"], info["max_client_batch_size"]) == ("tiny", 128, 4)


def test_texts_are_checked_the_same_in_every_protocol() -> None:
    spec = ServeSpec(model="/m", max_texts_per_request=2, max_text_chars=5)
    for texts, code, field in (
        ([], "empty_input", "inputs"),
        (["a", "b", "c"], "too_many_texts", "inputs"),
        (["a", " "], "empty_text", "inputs[1]"),
        (["toolong"], "text_too_long", "inputs[0]"),
    ):
        with pytest.raises(ApiError) as err:
            check_texts(texts, spec, "inputs", lambda i: f"inputs[{i}]")
        assert (err.value.code, err.value.field) == (code, field)


class _Request:
    def __init__(self, method: str, path: str, root: str = "") -> None:
        self.method = method
        self.scope = {"path": root + path, "root_path": root}


@pytest.mark.parametrize(
    ("method", "path", "protocol"),
    [
        ("POST", "/v2/models/m/infer", OIP),
        ("GET", "/v2", OIP),
        ("GET", "/v2/nope", OIP),
        ("POST", "/v1/models/m:predict", KSERVE_V1),
        ("GET", "/", KSERVE_V1),
        ("POST", "/", TEI),
        ("POST", "/predict", TEI),
        ("GET", "/info", TEI),
        ("POST", "/v1/classify", NATIVE),
        ("GET", "/nope", NATIVE),
    ],
)
def test_protocol_of_a_path(method: str, path: str, protocol: str) -> None:
    assert protocol_of(_Request(method, path)) == protocol  # type: ignore[arg-type]
    assert protocol_of(_Request(method, path, root="/pg")) == protocol  # type: ignore[arg-type]


def test_errors_in_each_protocols_form() -> None:
    full = ApiError(429, "queue_full", "the model's queue is full; retry later", retry_after_s=2)
    empty = ApiError(422, "empty_text", "text is empty or whitespace", "inputs[0].data[1]")
    key = ApiError(401, "unauthorized", "missing or wrong key", "authorization")
    for protocol in (OIP, KSERVE_V1):
        response = error_response(protocol, empty)
        assert response.status_code == 400
        assert json.loads(response.body) == {"error": "inputs[0].data[1]: text is empty or whitespace"}
        assert error_response(protocol, full).headers["retry-after"] == "2"
        assert error_response(protocol, key).headers["www-authenticate"] == "Bearer"
    tei = error_response(TEI, empty)
    assert tei.status_code == 400 and json.loads(tei.body)["error_type"] == "empty"
    overloaded = error_response(TEI, full)
    assert overloaded.status_code == 429 and json.loads(overloaded.body)["error_type"] == "overloaded"
    assert error_response(TEI, ApiError(422, "text_failed", "boom", "inputs")).status_code == 424
    native = error_response(NATIVE, empty)
    assert native.status_code == 422 and json.loads(native.body)["error"]["code"] == "empty_text"
