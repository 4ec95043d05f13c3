"""The application builder (`bm_ray.serve:build_app`) for `serve run`, `serve deploy` and KubeRay's serveConfigV2.

``ApiGateway`` ingress (``gateway_replicas`` replicas) bound to the ``Classifier`` model deployment.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve.config import BackpressureConfig
from ray.serve.deployment import Deployment
from ray.serve.handle import DeploymentHandle

import bm_ray
from bm_ray.layout import SERVE_IMPORT_PATH
from bm_ray.model.registry import (
    HUB_PREFIX,
    PRESETS,
    ModelRefError,
    is_remote,
    read_model_info,
    resolve_model,
)
from bm_ray.runtime.compat import versioned_options
from bm_ray.runtime.ray_init import init_ray, runtime_env
from bm_ray.serve.gateway import INGRESS_NUM_CPUS, ApiGateway, ingress_max_ongoing, read_api_key
from bm_ray.serve.model import Classifier
from bm_ray.specs import ServeSpec, SpecError, deep_merge, read_yaml, validate_spec

APP_NAME = "bm-ray"
AUTOSCALING_LOOK_BACK_S = 15.0
"""Window over which Serve averages the ongoing requests it scales on (Serve's default is 30 s; it must
exceed Serve's 10 s metrics interval): the replica count follows a change of load soon after the delays."""


class DeployFailedError(RuntimeError):
    """Serve could not deploy the app; the message carries Serve's own reasons from its status."""


def check_model_ref(model: str) -> None:
    """Refuse a local model reference that is missing or not a bm-ray model (:class:`ModelRefError`, naming why).

    Presets, ``hf:`` hub ids and remote URIs are checked by the replicas when they load (a refused
    swap keeps the old model there). This runs wherever the app is built: in `bm-ray serve` before
    anything is deployed, and in Serve's build step for `serve deploy`/KubeRay, where it fails the
    new config (the reason shows in `serve status`) and the running version keeps answering.
    """
    if model in PRESETS or model.startswith(HUB_PREFIX) or is_remote(model):
        return
    directory = resolve_model(
        model
    )  # a local reference: no download, a ModelRefError when it is no directory
    try:
        read_model_info(directory)
    except (ValueError, KeyError, TypeError) as err:
        raise ModelRefError(f"model {model!r}: {err}") from None


def _code_version(spec: ServeSpec) -> str:
    """Same for two specs that differ only in the model, so a model change is an in-place reconfigure."""
    settings = spec.model_dump(exclude={"model"}) | {"bm_ray": bm_ray.__version__}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


GATEWAY_START_RETRIES = 3
"""Constructor attempts of the gateway deployment before Serve marks the app DEPLOY_FAILED."""


def compose_app(spec: ServeSpec, model: Deployment = Classifier) -> serve.Application:
    """The application for `spec`: the gateway bound to `model` (the ``Classifier`` deployment, or a subclass of it)."""
    check_model_ref(spec.model)
    backpressure = BackpressureConfig(status_code=spec.overload_status, retry_after_s=spec.retry_after_s)
    # A fixed `version` keeps a model change an in-place `reconfigure` of the running replicas (no
    # restart) when the app is redeployed; Serve's public `options()` refuses it (see versioned_options).
    version = _code_version(spec)
    model_app = versioned_options(
        model,
        version,
        autoscaling_config={
            "min_replicas": spec.min_replicas,
            "max_replicas": spec.max_replicas,
            "target_ongoing_requests": spec.target_ongoing_requests,
            "upscale_delay_s": spec.upscale_delay_s,
            "downscale_delay_s": spec.downscale_delay_s,
            "look_back_period_s": AUTOSCALING_LOOK_BACK_S,
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
    ).bind(spec)
    ingress_slots = ingress_max_ongoing(spec)
    return versioned_options(
        ApiGateway,
        version,
        num_replicas=spec.gateway_replicas,
        # A gateway that cannot start has a configuration error (no API key, an unreadable key file):
        # fail the deploy after a few tries, not Serve's default 20 (~15 s before the status says why).
        max_constructor_retry_count=GATEWAY_START_RETRIES,
        max_ongoing_requests=ingress_slots,
        # A last line of defence only (the proxy's plain-text 503): the gateway's own bound fills first.
        max_queued_requests=ingress_slots,
        backpressure_config=backpressure,
        ray_actor_options={"num_cpus": INGRESS_NUM_CPUS, "runtime_env": runtime_env()},
    ).bind(spec, model_app)


def build_app(args: ServeSpec | dict[str, Any]) -> serve.Application:
    """Application builder (`bm_ray.serve:build_app`) for `serve run`, Serve config files and KubeRay.

    `args` are :class:`ServeSpec` fields; unknown keys and wrong types are refused naming the key, and
    a local model path that is missing or not a bm-ray model is refused naming the reason.
    """
    spec = args if isinstance(args, ServeSpec) else validate_spec(ServeSpec, dict(args), "serve args")
    return compose_app(spec)


def load_serve_spec(config: str | Path | None, flags: dict[str, Any]) -> ServeSpec:
    """The spec from `flags` on top of `config`: a ServeSpec YAML or a Serve config file (jobs/serve.yaml).

    From a Serve config, the `bm_ray.serve:build_app` application gives the args and route prefix, and
    `http_options` the host and port.
    """
    if config is None:
        return validate_spec(ServeSpec, flags, "command line")
    data = read_yaml(config)
    if "applications" in data:
        apps = [a for a in data["applications"] or [] if a.get("import_path") == SERVE_IMPORT_PATH]
        if not apps:
            raise SpecError(f"{config}: no application with import_path {SERVE_IMPORT_PATH}")
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


def deploy(spec: ServeSpec, name: str = APP_NAME, model: Deployment = Classifier) -> DeploymentHandle:
    """Start Serve's HTTP proxy on the spec's host/port (if not running) and deploy or update app `name`.

    Needs Ray initialised. Redeploying a running app with only a new model is the zero-downtime path
    (user_config change); a model that is refused (:class:`ModelRefError`) leaves the app untouched;
    an app that fails to deploy raises :class:`DeployFailedError` with Serve's reasons.
    """
    app = compose_app(spec, model)
    serve.start(http_options={"host": spec.host, "port": spec.port})
    try:
        return serve.run(app, name=name, route_prefix=spec.route_prefix, blocking=False)
    except RuntimeError as err:  # serve.run names only the failed deployments; its status says why
        status = serve.status().applications.get(name)
        reasons = [
            f"{d}: {s.message}" for d, s in (status.deployments if status else {}).items() if s.message
        ]
        raise DeployFailedError("\n".join([str(err), *reasons])) from None


def run_serve(spec: ServeSpec, address: str | None = None) -> str:
    """Deploy `spec` on an embedded local Ray or the cluster at `address`; returns the endpoint URL.

    Everything that can be checked here is checked before Ray starts: a local model that is not a
    bm-ray model, and (on an embedded Ray, whose replicas inherit this environment) an unset API key.
    """
    check_model_ref(spec.model)
    if not (address or os.environ.get("RAY_ADDRESS")):
        read_api_key(spec)
    init_ray(address)
    deploy(spec)
    return app_url(spec)
