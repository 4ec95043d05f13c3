"""Every use of a private Ray or Keras API in bm-ray, each with why no public API serves.

A Ray or Keras upgrade that breaks bm-ray most likely breaks it here. Nothing is imported at module
level (Ray is imported inside the functions that need it, Keras objects arrive as arguments) and
nothing of bm_ray at all, so any layer may import this module, :mod:`bm_ray.runtime.logs` included.

Two private uses are not Python calls and stay where they act:

- ``bm_ray/data/ray_data_logging.yaml`` names Ray Data's internal classes (the filter and session-file
  handler of ``ray.data._internal.logging``, ``ray._private.log.PlainRayHandler``): it is Ray Data's own
  default logging config with the console level changed, and Ray Data has no setting for its console level.
- :mod:`bm_ray.deploy.submit` matches the wording of Ray's SDK auth errors ("Authentication required",
  "Authentication failed", from ``ray._private.authentication.http_token_authentication``) to add what to
  set: Ray raises them as plain exceptions of several types, with no type or code of their own to test.

Not counted here: :class:`bm_ray.jobs.train.optimizer.LayerDecayAdamWeightDecay` overrides
``_resource_apply_dense`` / ``_resource_apply_sparse``, the methods Keras' legacy ``OptimizerV2`` names
for a custom optimizer to override, and calls the inherited ``_fallback_apply_state`` as Keras' own
implementations of those methods do; a subclass's hooks live with the subclass.
"""

from __future__ import annotations

from typing import Any

RAY_TRAIN_REPORT_MODULE = "ray.train.v2._internal.execution.context"
"""The Ray Train module that logs every ``ray.train.report`` call (:func:`bm_ray.runtime.logs.quiet_ray_train_reports`).

Its logger is named by that module's file path, outside the ``ray.train`` tree that
``ray.train.LoggingConfig`` filters, and Ray Train has no public setting for it: the logger can only be
found through the module."""


def build_optimizer_slots(optimizer: Any, variables: Any) -> None:
    """Create the slots (Adam moments) of a Keras legacy `optimizer` for `variables` before its first step.

    Keras' legacy optimizers (transformers' AdamWeightDecay) create their slots lazily on the first step
    and have no public build(); this is the method `apply_gradients` itself calls.
    """
    optimizer._create_all_weights(variables)


def versioned_options(deployment: Any, version: str, **options: Any) -> Any:
    """``deployment.options(**options)`` with the code `version` fixed.

    A fixed `version` keeps a model change an in-place `reconfigure` of the running replicas (no
    restart) when the app is redeployed with `serve.run`. Serve's public `options()` refuses `version`
    (its declarative deploys version apps themselves), and no public API gives `serve.run` a stable
    version, hence `_internal=True`.
    """
    return deployment.options(**options, version=version, _internal=True)


def replica_ongoing_requests(actor: Any, timeout_s: float = 5.0) -> int:
    """Calls in flight on a Serve replica `actor` (a handle to its Ray actor); -1 if it does not answer.

    Serve has no public per-replica load; its replica actor's own method (private API) answers from a
    separate thread even while the replica is busy.
    """
    import ray

    try:
        return int(ray.get(actor.get_num_ongoing_requests.remote(), timeout=timeout_s))
    except Exception:
        return -1


def serve_submission_client(address: str, headers: dict[str, str]) -> Any:
    """A client of the Serve REST API (PUT/GET /api/serve/applications/) on the dashboard at `address`.

    The REST API is public, but Ray has no public Python client for it: this is the one `serve deploy`
    uses, and it adds Ray's token-auth header (on by default since Ray 2.5x) that a plain HTTP call would
    have to rebuild from Ray's private modules.
    """
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    return ServeSubmissionClient(address, headers=headers)
