"""The no-op Serve app of `bm-ray bench serve`'s floor: Serve's own cost on these cores, without a model.

The same HTTP proxy, load generator and hops as the endpoint, with no model work, so the endpoint's
overhead can be told apart from what any Ray Serve app costs here (:func:`bm_ray.bench.serve.serve_floor`).
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures of the ingress class at runtime.
from typing import Any

import orjson
from fastapi import FastAPI, Request
from ray import serve
from ray.serve.handle import DeploymentHandle

from bm_ray.serve.gateway import INGRESS_NUM_CPUS
from bm_ray.serve.schemas import FastJSONResponse

floor_http = FastAPI()


def noop_result(texts: list[str]) -> dict[str, Any]:
    """One fixed prediction per text, shaped as the model deployment's answer."""
    return {"model": {"name": "noop"}, "predictions": [{"label": "0", "score": 1.0}] * len(texts)}


@serve.deployment(name="NoopModel", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
class NoopModel:
    """A model deployment that answers at once, with no forward pass."""

    async def classify(self, texts: list[str]) -> dict[str, Any]:
        """:func:`noop_result`."""
        return noop_result(texts)


@serve.deployment(
    name="NoopGateway", ray_actor_options={"num_cpus": INGRESS_NUM_CPUS}, max_ongoing_requests=1000
)
@serve.ingress(floor_http)
class NoopGateway:
    """A FastAPI ingress that parses the body and answers itself (one hop) or through NoopModel (two)."""

    def __init__(self, model: DeploymentHandle | None = None) -> None:
        self._model = model

    @floor_http.post("/v1/classify")
    async def classify(self, request: Request) -> FastJSONResponse:
        """Parse, call the no-op model (if bound), answer with orjson, as the real gateway does."""
        texts = orjson.loads(await request.body())["texts"]
        if self._model is None:
            return FastJSONResponse(noop_result(texts))
        return FastJSONResponse(await self._model.classify.remote(texts))
