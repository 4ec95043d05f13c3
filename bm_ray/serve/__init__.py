"""Online classification with Ray Serve: a FastAPI ingress in front of a continuously batched model deployment.

- :mod:`~bm_ray.serve.schemas`: the HTTP contract (request/response models, request checks, errors).
- :mod:`~bm_ray.serve.gateway`: ``ApiGateway``, the ingress (auth, admission, parsing, error mapping,
  retries of calls lost with a model replica, per-request timeout).
- :mod:`~bm_ray.serve.protocols` and :mod:`~bm_ray.serve.protocol_schemas`: the same endpoint in the Open
  Inference Protocol (KServe V2, Triton), KServe V1 and Hugging Face TEI.
- :mod:`~bm_ray.serve.model`: ``Classifier``, the model replica (continuous batching, row-by-row retry
  of a failed pass, zero-downtime model swap).
- :mod:`~bm_ray.serve.app`: the application builder, ``bm_ray.serve:build_app`` (the import path of
  ``jobs/serve.yaml`` and the Helm chart's serveConfigV2), and deployment from Python.
"""

from bm_ray.serve.app import (
    APP_NAME,
    DeployFailedError,
    ModelRefError,
    app_url,
    build_app,
    check_model_ref,
    compose_app,
    deploy,
    load_serve_spec,
    run_serve,
)
from bm_ray.serve.gateway import INGRESS_DEPLOYMENT, INGRESS_NUM_CPUS, ApiKeyError, read_api_key
from bm_ray.serve.model import MODEL_DEPLOYMENT

__all__ = [
    "APP_NAME",
    "INGRESS_DEPLOYMENT",
    "INGRESS_NUM_CPUS",
    "MODEL_DEPLOYMENT",
    "ApiKeyError",
    "DeployFailedError",
    "ModelRefError",
    "app_url",
    "build_app",
    "check_model_ref",
    "compose_app",
    "deploy",
    "load_serve_spec",
    "read_api_key",
    "run_serve",
]
