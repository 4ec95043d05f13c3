"""Pod templates taken out of the chart's Ray objects, as the Pods KubeRay would create from them.

Policy scanners (checkov) do not look inside custom resources; these Pods carry what the chart controls:
every node group's template, the head's autoscaler sidecar (from autoscalerOptions) and the RayJob submitter.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

# What KubeRay itself gives the autoscaler container (ray-operator/controllers/ray/common/pod.go,
# BuildAutoscalerContainer), before the chart's autoscalerOptions are merged over it.
AUTOSCALER_NAME = "autoscaler"


def _cluster_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    spec = obj["spec"]
    return {
        "RayCluster": spec,
        "RayJob": spec.get("rayClusterSpec"),
        "RayService": spec.get("rayClusterConfig"),
    }[obj["kind"]]


def _pod(name: str, namespace: str, template: dict[str, Any], node_type: str | None) -> dict[str, Any]:
    metadata = copy.deepcopy(template.get("metadata", {}))
    labels = dict(metadata.get("labels", {}))
    if node_type:  # KubeRay's own label, which the head NetworkPolicy selects on
        labels["ray.io/node-type"] = node_type
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": copy.deepcopy(template["spec"]),
    }


def _with_autoscaler(pod: dict[str, Any], cluster: dict[str, Any]) -> dict[str, Any]:
    options = cluster.get("autoscalerOptions", {})
    ray = pod["spec"]["containers"][0]
    container = {
        "name": AUTOSCALER_NAME,
        "image": options.get("image", ray["image"]),
        "imagePullPolicy": options.get("imagePullPolicy", "IfNotPresent"),
        "command": ["/bin/bash", "-lc", "--"],
        "args": [
            "ray kuberay-autoscaler --cluster-name $(RAY_CLUSTER_NAME) --cluster-namespace $(RAY_CLUSTER_NAMESPACE)"
        ],
        "resources": options.get("resources"),
        "securityContext": options.get("securityContext"),
        "volumeMounts": options.get("volumeMounts", []),
        "env": options.get("env", []),
    }
    pod["spec"]["containers"].append({k: v for k, v in container.items() if v is not None})
    return pod


def pods_of(obj: dict[str, Any], namespace: str) -> Iterator[dict[str, Any]]:
    """The Pods one rendered RayCluster / RayJob / RayService turns into (empty for other kinds)."""
    if obj["kind"] not in ("RayCluster", "RayJob", "RayService"):
        return
    name = f"{obj['kind'].lower()}-{obj['metadata']['name']}"
    cluster = _cluster_spec(obj)
    head = _pod(f"{name}-head", namespace, cluster["headGroupSpec"]["template"], "head")
    if cluster.get("enableInTreeAutoscaling"):
        head = _with_autoscaler(head, cluster)
    yield head
    for group in cluster.get("workerGroupSpecs", []):
        yield _pod(f"{name}-{group['groupName']}", namespace, group["template"], "worker")
    if obj["kind"] == "RayJob" and "submitterPodTemplate" in obj["spec"]:
        yield _pod(f"{name}-submitter", namespace, obj["spec"]["submitterPodTemplate"], None)
