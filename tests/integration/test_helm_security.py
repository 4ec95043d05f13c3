"""The chart's locked-down defaults: Ray token auth, NetworkPolicies that match the pods, least privilege,
TLS-only Ingress with a body-size limit from the endpoint's own, images by digest."""

from __future__ import annotations

import copy
from typing import Any

import helm_python as helm
import pytest
from helm_pods import pods_of
from test_helm import CHART, render
from test_helm_policy import DIGEST, EVERY_PART, NAMESPACE

from bm_ray.specs import ServeSpec

RAY_KINDS = ("RayCluster", "RayJob", "RayService")


def _objects(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return render(copy.deepcopy(EVERY_PART if values is None else values))


def _pods(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [pod for obj in objects for pod in pods_of(obj, NAMESPACE)]


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics for matchLabels (the only form the chart uses)."""
    assert set(selector) <= {"matchLabels"}, selector
    return all(labels.get(key) == value for key, value in selector.get("matchLabels", {}).items())


def _policies(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        obj["metadata"]["name"].removeprefix("demo-bm-ray-"): obj
        for obj in objects
        if obj["kind"] == "NetworkPolicy"
    }


def test_token_auth_in_every_ray_object() -> None:
    objects = _objects()
    ray = [obj for obj in objects if obj["kind"] in RAY_KINDS]
    assert {obj["kind"] for obj in ray} == set(RAY_KINDS)
    for obj in ray:
        spec = obj["spec"].get("rayClusterSpec") or obj["spec"].get("rayClusterConfig") or obj["spec"]
        assert spec["authOptions"] == {"mode": "token"}, obj["metadata"]["name"]
    (cluster,) = [
        o
        for o in render({"rayAuth": {"mode": "token", "secretName": "ray-token"}})
        if o["kind"] == "RayCluster"
    ]
    assert cluster["spec"]["authOptions"] == {"mode": "token", "secretName": "ray-token"}


def test_no_secret_reaches_an_env_var() -> None:
    for pod in _pods(_objects()):
        for container in pod["spec"]["containers"] + pod["spec"].get("initContainers", []):
            assert not [e for e in container.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})], pod
            assert not [e for e in container.get("envFrom", []) if "secretRef" in e], pod


def test_only_the_autoscaler_holds_a_kubernetes_api_token() -> None:
    pods = _pods(_objects())
    for pod in pods:
        assert pod["spec"]["automountServiceAccountToken"] is False, pod["metadata"]["name"]
        for container in pod["spec"]["containers"] + pod["spec"].get("initContainers", []):
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            token = mounts.get("/var/run/secrets/kubernetes.io/serviceaccount")
            assert (token is not None) == (container["name"] == "autoscaler"), (
                pod["metadata"]["name"],
                container,
            )
            if token:
                (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == token]
                assert {"serviceAccountToken"} <= {
                    key for src in volume["projected"]["sources"] for key in src
                }
    assert sum(c["name"] == "autoscaler" for p in pods for c in p["spec"]["containers"]) == 4  # one per head


def test_containers_are_read_only_high_uid_with_writable_scratch() -> None:
    for pod in _pods(_objects()):
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        for container in pod["spec"]["containers"] + pod["spec"].get("initContainers", []):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True and context["runAsUser"] >= 10000
            assert context["capabilities"]["drop"] == ["ALL"] and context["allowPrivilegeEscalation"] is False
            assert container["resources"]["limits"], container["name"]
            if container["name"] in ("ray-head", "ray-worker"):
                mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
                assert "emptyDir" in mounts["/tmp"]  # Ray's /tmp/ray, HOME and caches
                cache = {e["name"]: e["value"] for e in container["env"]}["BM_RAY_CACHE"]
                assert any(cache.startswith(path) for path in mounts), cache


def test_image_by_digest() -> None:
    digest = {"image": {"digest": DIGEST, "gpuDigest": DIGEST.replace("ab", "cd")}}
    images = {c["image"] for p in _pods(_objects({**EVERY_PART, **digest})) for c in p["spec"]["containers"]}
    assert images == {f"bm-ray@{DIGEST}", f"bm-ray@{DIGEST.replace('ab', 'cd')}"}
    tagged = {c["image"] for p in _pods(_objects()) for c in p["spec"]["containers"]}
    assert tagged == {"bm-ray:0.1.0", "bm-ray:0.1.0-gpu"}


def test_network_policies_select_the_pods() -> None:
    objects = _objects()
    policies = _policies(objects)
    assert set(policies) == {"default", "head", "metrics", "endpoint"}
    pods = _pods(objects)
    by_name = {pod["metadata"]["name"]: pod["metadata"]["labels"] for pod in pods}

    def selected(policy: str) -> set[str]:
        selector = policies[policy]["spec"]["podSelector"]
        return {name for name, labels in by_name.items() if _matches(selector, labels)}

    assert selected("default") == set(by_name)  # every pod is locked down, the job submitters included
    assert selected("metrics") == set(by_name)
    assert selected("head") == {name for name in by_name if name.endswith("-head")}
    assert selected("endpoint") == {name for name in by_name if name.startswith("rayservice-")}
    # "the release's own pods": the default policy's only peer matches every pod of the release, and only them.
    (rule, *_) = policies["default"]["spec"]["ingress"]
    (peer,) = rule["from"]
    assert set(peer) == {"podSelector"}
    assert all(_matches(peer["podSelector"], labels) for labels in by_name.values())
    assert not _matches(
        peer["podSelector"], {"app.kubernetes.io/name": "bm-ray", "app.kubernetes.io/instance": "other"}
    )


def test_only_the_endpoint_is_open_outside_the_release() -> None:
    policies = _policies(_objects())
    head_rules = policies["head"]["spec"]["ingress"]
    assert [p["port"] for p in head_rules[0]["ports"]] == [8265, 8000]
    (operator,) = head_rules[0]["from"]
    assert operator["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "kuberay-system"}
    assert operator["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "kuberay-operator"}
    (endpoint,) = policies["endpoint"]["spec"]["ingress"]
    assert endpoint == {"ports": [{"protocol": "TCP", "port": 8000}]}  # any source, that port only
    default_rules = policies["default"]["spec"]["ingress"]
    assert len(default_rules) == 1 and "ports" not in default_rules[0]
    # Opening more: named peers for the endpoint keep the ingress controller; extra rules reach every pod.
    opened = _policies(
        _objects(
            {
                **EVERY_PART,
                "networkPolicy": {
                    "endpointFrom": [{"namespaceSelector": {"matchLabels": {"team": "news"}}}],
                    "extraIngress": [{"ports": [{"port": 10001}]}],
                },
            }
        )
    )
    peers = opened["endpoint"]["spec"]["ingress"][0]["from"]
    assert peers[0] == {"namespaceSelector": {"matchLabels": {"team": "news"}}}
    assert peers[1]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "ingress-nginx"}
    assert opened["default"]["spec"]["ingress"][1] == {"ports": [{"port": 10001}]}
    assert "metrics" not in _policies(render({}))


def test_ingress_without_tls_is_refused() -> None:
    values = {"serve": {"enabled": True}, "ingress": {"enabled": True}}
    with helm.Chart.load(CHART) as chart, pytest.raises(Exception, match="allowInsecureHttp"):
        chart.render(copy.deepcopy(values), name="demo", namespace="ml")
    (ingress,) = [
        o
        for o in render({**values, "ingress": {"enabled": True, "allowInsecureHttp": True}})
        if o["kind"] == "Ingress"
    ]
    assert "tls" not in ingress["spec"]


def test_ingress_body_limit_follows_max_body_bytes() -> None:
    default = ServeSpec.model_fields["max_body_bytes"].default

    def limit(values: dict[str, Any]) -> int:
        (ingress,) = [o for o in render(values) if o["kind"] == "Ingress"]
        return int(ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"])

    assert limit(copy.deepcopy(EVERY_PART)) == default + 2**20  # room for the endpoint's own JSON 413
    bigger = copy.deepcopy(EVERY_PART)
    with helm.Chart.load(CHART) as chart:
        config = copy.deepcopy(chart.values["serve"]["config"])
    config["applications"][0]["args"]["max_body_bytes"] = 50_000_000
    bigger["serve"]["config"] = config
    assert limit(bigger) == 50_000_000 + 2**20
    override = {"nginx.ingress.kubernetes.io/proxy-body-size": "64m"}  # a user's annotation wins
    values = {**copy.deepcopy(EVERY_PART), "ingress": {**EVERY_PART["ingress"], "annotations": override}}
    (ingress,) = [o for o in render(values) if o["kind"] == "Ingress"]
    assert ingress["metadata"]["annotations"] == override
