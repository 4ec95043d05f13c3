"""Drives a bm-ray endpoint with kserve's InferenceRESTClient (V1 and V2); run by `.venv-kserve/bin/python`.

kserve pins packages that clash with bm-ray's, so it has its own venv (`make kserve-venv`) and
tests/integration/test_protocols.py runs this script there: argv is one JSON object
``{"url", "name", "version", "key", "texts", "too_large"}``; stdout is one JSON object of what each
call answered (an error as ``{"status", "message"}``).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import httpx
import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig


async def outcome(call: Any) -> Any:
    """What `call` answered, or the HTTP error it raised (status and kserve's message)."""
    try:
        return await call
    except httpx.HTTPStatusError as err:
        return {"status": err.response.status_code, "message": str(err), "body": err.response.json()}


def v2_request(name: str, texts: list[str], binary: bool) -> InferRequest:
    tensor = InferInput(name="text", shape=[len(texts)], datatype="BYTES")
    tensor.set_data_from_numpy(np.array(texts, dtype=np.object_), binary_data=binary)
    return InferRequest(model_name=name, infer_inputs=[tensor])


def outputs(response: Any) -> Any:
    if isinstance(response, dict):
        return response
    return {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": {o.name: o.as_numpy().tolist() for o in response.outputs},
    }


def decoded(values: Any) -> Any:
    return [v.decode() if isinstance(v, bytes) else v for v in values] if isinstance(values, list) else values


async def main(args: dict[str, Any]) -> dict[str, Any]:
    url, name, texts = args["url"], args["name"], args["texts"]
    # Each call gets a fresh copy: the client adds Inference-Header-Content-Length to the dict it is given.
    auth = {"Authorization": f"Bearer {args['key']}"}
    wrong = {"Authorization": "Bearer wrong"}
    v1 = InferenceRESTClient(RESTConfig(protocol="v1", retries=0, timeout=120))
    v2 = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=120))
    out: dict[str, Any] = {
        "v1_live": await v1.is_server_live(url),
        "v1_ready": await v1.is_model_ready(url, name, headers=dict(auth)),
        "v1": await outcome(v1.infer(url, {"instances": texts}, model_name=name, headers=dict(auth))),
        "v1_bad_key": await outcome(
            v1.infer(url, {"instances": texts}, model_name=name, headers=dict(wrong))
        ),
        "v1_empty": await outcome(v1.infer(url, {"instances": []}, model_name=name, headers=dict(auth))),
        "v1_too_large": await outcome(
            v1.infer(url, {"instances": [args["too_large"]]}, model_name=name, headers=dict(auth))
        ),
        "v1_wrong_model": await outcome(
            v1.infer(url, {"instances": texts}, model_name="nope", headers=dict(auth))
        ),
        "v2_live": await v2.is_server_live(url),
        "v2_ready": await v2.is_server_ready(url),
        "v2_model_ready": await v2.is_model_ready(url, name, headers=dict(auth)),
        "v2_bad_key": await outcome(
            v2.infer(url, v2_request(name, texts, False), model_name=name, headers=dict(wrong))
        ),
        "v2_empty": await outcome(
            v2.infer(url, v2_request(name, [], False), model_name=name, headers=dict(auth))
        ),
        "v2_too_large": await outcome(
            v2.infer(url, v2_request(name, [args["too_large"]], True), model_name=name, headers=dict(auth))
        ),
        "v2_wrong_model": await outcome(
            v2.infer(url, v2_request("nope", texts, False), model_name="nope", headers=dict(auth))
        ),
    }
    for binary in (False, True):
        answer = outputs(
            await outcome(v2.infer(url, v2_request(name, texts, binary), model_name=name, headers=dict(auth)))
        )
        if "outputs" in answer:
            answer["outputs"] = {k: decoded(v) for k, v in answer["outputs"].items()}
        out[f"v2_binary_{binary}".lower()] = answer
    await v1.close()
    await v2.close()
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(json.loads(sys.argv[1])))))
