"""The spec of the Ray Serve application (`bm_ray.serve:build_app`, `bm-ray serve`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from bm_ray.specs.common import LongTextOptions, MinScore, ModelLocation, Precision
from bm_ray.specs.jobs import ClassifySpec


class ServeSpec(LongTextOptions):
    """Arguments of the Ray Serve application (`bm_ray.serve:build_app`) and `bm-ray serve`."""

    model: ModelLocation
    host: str = Field(default="127.0.0.1", description="HTTP host the endpoint listens on.")
    port: int = Field(default=8000, ge=1, le=65535, description="HTTP port of the endpoint.")
    route_prefix: str = Field(default="/", description="URL path the application is served under.")
    min_replicas: int = Field(default=1, ge=0, description="Model replicas at least (autoscaling).")
    max_replicas: int = Field(default=2, ge=1, description="Model replicas at most (autoscaling).")
    target_ongoing_requests: float = Field(
        default=16,
        gt=0,
        description="Requests per model replica (running or queued) the autoscaler aims for.",
    )
    upscale_delay_s: float = Field(default=10, ge=0, description="Load above target this long adds replicas.")
    downscale_delay_s: float = Field(
        default=120, ge=0, description="Load below target this long removes replicas (plus a 15 s average)."
    )
    gateway_replicas: int = Field(
        default=2, ge=1, description="Ingress replicas (two: no single point of failure)."
    )
    request_timeout_s: float = Field(default=30, gt=0, description="Longer requests get 504.")
    max_ongoing_requests: int = Field(
        default=64, ge=1, description="Requests one model replica takes at once; more wait in the queue."
    )
    max_queued_requests: int = Field(default=256, ge=-1, description="Beyond this, 503 with Retry-After.")
    retry_after_s: int = Field(
        default=1, ge=0, description="Retry-After (seconds) sent with 503 and overload (429) answers."
    )
    overload_status: Literal[429, 503] = Field(
        default=503,
        description="HTTP status of a request refused because the endpoint is full (always with Retry-After).",
    )
    cors_allow_origin: str | None = Field(
        default=None,
        description="Browser origins allowed to call the endpoint (CORS), comma-separated, or * for any; "
        "off when unset.",
    )
    max_batch_size: int = Field(
        default=32,
        ge=1,
        description="The most texts a model replica runs in one pass (the calls queued behind the "
        "previous pass are merged up to this).",
    )
    forward_batch_size: int = Field(
        default=8,
        ge=1,
        description="Rows per forward pass: a model pass is sorted by token length and run this many rows "
        "at a time, so short texts are not padded to the pass's longest.",
    )
    max_texts_per_request: int = Field(
        default=256, ge=1, description="A request with more texts is refused with 422."
    )
    max_text_chars: int = Field(default=100_000, ge=1, description="Longer texts are refused with 422.")
    max_body_bytes: int = Field(
        default=10 * 1024 * 1024, ge=1024, description="Larger request bodies are refused with 413."
    )
    api_key_env: str | None = Field(default=None, description="Env var holding the Bearer API key.")
    api_key_file: str | None = Field(
        default=None,
        description="File holding the Bearer API key (e.g. a mounted Kubernetes Secret); a missing file fails "
        "the replica instead of opening the endpoint.",
    )
    cpus_per_replica: float = Field(default=1, gt=0, description="CPUs each model replica holds.")
    gpus_per_replica: float = Field(default=0, ge=0, description="GPUs each model replica holds.")
    precision: Precision = ClassifySpec.model_fields["precision"]
    min_score: MinScore = Field(
        default=None, description="Default abstention threshold of a request (a request's min_score wins)."
    )

    @model_validator(mode="after")
    def _check(self) -> ServeSpec:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) < min_replicas ({self.min_replicas})")
        if self.api_key_env and self.api_key_file:
            raise ValueError("api_key_env and api_key_file: give one source of the API key, not both")
        return self
