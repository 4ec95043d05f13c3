"""The Helm chart: strict lint, rendering of every toggle, CRD / Kubernetes schema validation, values schema."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "bm-ray"
CRDS = ROOT.parent / "shared" / "kuberay-crds"
KUBE_VERSION = "1.30.0"

TOGGLES: dict[str, dict[str, Any]] = {
    "default": {},
    "gpu": {"cluster": {"gpuWorkers": {"enabled": True, "replicas": 1}}},
    "train": {"train": {"enabled": True}},
    "classify": {"classify": {"enabled": True}},
    "serve": {"serve": {"enabled": True}},
    "ingress": {
        "serve": {"enabled": True},
        "ingress": {"enabled": True, "className": "nginx", "tlsSecret": "tls"},
    },
    "ingress-http": {
        "serve": {"enabled": True},
        "ingress": {"enabled": True, "allowInsecureHttp": True},
    },
    "open": {"networkPolicy": {"enabled": False}, "rayAuth": {"mode": "disabled"}},
    "loadbalancer": {"serve": {"enabled": True, "service": {"type": "LoadBalancer"}}},
    "object-store": {
        "storage": {"pvc": {"enabled": False}, "objectStore": {"credentialsSecret": "s3-creds"}}
    },
    "grafana": {"grafana": {"enabled": True, "folder": "ML"}},
}


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    """All objects the chart renders for `values` (release `demo` in namespace `ml`)."""
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values, name="demo", namespace="ml")
    return [
        doc
        for name, text in manifests.items()
        if name.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def _strict(schema: Any) -> Any:
    """The CRD schema with unknown fields refused, as `kubectl apply --validate=strict` does (the API server
    would silently prune them): additionalProperties false on objects that list properties."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {key: _strict(value) for key, value in schema.items()}
    preserve = schema.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in schema and "additionalProperties" not in schema and not preserve:
        strict["additionalProperties"] = False
    return strict


@functools.cache
def _crd_validators() -> dict[str, jsonschema.Draft7Validator]:
    validators = {}
    for path in sorted(CRDS.glob("ray.io_*.yaml")):
        crd = yaml.safe_load(path.read_text(encoding="utf-8"))
        for version in crd["spec"]["versions"]:
            key = f"{crd['spec']['group']}/{version['name']}/{crd['spec']['names']['kind']}"
            validators[key] = jsonschema.Draft7Validator(_strict(version["schema"]["openAPIV3Schema"]))
    return validators


def _by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def test_lint_strict_is_clean() -> None:
    for values in TOGGLES.values():
        report = helm.lint(CHART, values, strict=True, kube_version=f"v{KUBE_VERSION}")
        assert report["errors"] == [], report
        assert [m for m in report["messages"] if m["severity"] >= 2] == [], report


@pytest.mark.parametrize("toggle", sorted(TOGGLES))
def test_rendered_objects_are_valid(toggle: str) -> None:
    objects = render(TOGGLES[toggle])
    assert objects
    ray_objects = [obj for obj in objects if obj["apiVersion"].startswith("ray.io/")]
    for obj in objects:
        if obj not in ray_objects:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    if not CRDS.is_dir():
        pytest.skip(
            f"KubeRay CRDs not found at {CRDS} (../shared/kuberay-crds): ray.io objects not validated"
        )
    for obj in ray_objects:
        _crd_validators()[f"{obj['apiVersion']}/{obj['kind']}"].validate(obj)


def test_default_values_render_one_private_cluster() -> None:
    objects = render({})
    assert {obj["kind"] for obj in objects} == {"RayCluster", "PersistentVolumeClaim", "NetworkPolicy"}
    (cluster,) = _by_kind(objects, "RayCluster")
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["serviceType"] == "ClusterIP"
    assert [group["groupName"] for group in spec["workerGroupSpecs"]] == ["cpu"]
    for template in [spec["headGroupSpec"]["template"], spec["workerGroupSpecs"][0]["template"]]:
        assert template["spec"]["securityContext"]["runAsNonRoot"] is True
        container = template["spec"]["containers"][0]
        context = container["securityContext"]
        assert context["runAsUser"] >= 10000
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        assert container["resources"]["requests"] and container["resources"]["limits"]


def test_gpu_group_has_gpu_limits_and_bounds() -> None:
    (cluster,) = _by_kind(render(TOGGLES["gpu"]), "RayCluster")
    gpu = cluster["spec"]["workerGroupSpecs"][1]
    assert gpu["groupName"] == "gpu"
    assert (gpu["minReplicas"], gpu["maxReplicas"]) == (0, 2)
    container = gpu["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"].endswith(":0.1.0-gpu")


@pytest.mark.parametrize("kind", ["train", "classify"])
def test_rayjob_runs_the_jobs_file(kind: str) -> None:
    objects = render({kind: {"enabled": True}})
    (job,) = _by_kind(objects, "RayJob")
    (config_map,) = _by_kind(objects, "ConfigMap")
    assert job["spec"]["entrypoint"] == f"bm-ray {kind} --spec /etc/bm-ray/spec/{kind}.yaml"
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    assert job["spec"]["ttlSecondsAfterFinished"] > 0 and job["spec"]["activeDeadlineSeconds"] > 0
    expected = yaml.safe_load((ROOT / "jobs" / f"{kind}.yaml").read_text(encoding="utf-8"))
    assert yaml.safe_load(config_map["data"][f"{kind}.yaml"]) == expected
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert {"name": "spec", "configMap": {"name": config_map["metadata"]["name"]}} in head["volumes"]


def test_default_values_equal_the_jobs_files() -> None:
    with helm.Chart.load(CHART) as chart:
        values = chart.values
    for keys, name in [(("train", "spec"), "train.yaml"), (("classify", "spec"), "classify.yaml")]:
        assert values[keys[0]][keys[1]] == yaml.safe_load((ROOT / "jobs" / name).read_text(encoding="utf-8"))
    assert values["serve"]["config"] == yaml.safe_load(
        (ROOT / "jobs" / "serve.yaml").read_text(encoding="utf-8")
    )


def test_rayservice_serves_the_jobs_file_privately() -> None:
    objects = render(TOGGLES["serve"])
    (service,) = _by_kind(objects, "RayService")
    expected = yaml.safe_load((ROOT / "jobs" / "serve.yaml").read_text(encoding="utf-8"))
    assert yaml.safe_load(service["spec"]["serveConfigV2"]) == expected
    assert service["spec"]["serveService"]["spec"]["type"] == "ClusterIP"
    assert not _by_kind(objects, "Ingress")
    key_file = Path(expected["applications"][0]["args"]["api_key_file"])
    cluster = service["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]["template"]["spec"]
    worker = cluster["workerGroupSpecs"][0]["template"]["spec"]
    # The key is a file in the Serve worker pods only (the head runs no replicas: num-cpus 0).
    (volume,) = [v for v in worker["volumes"] if v.get("secret", {}).get("secretName") == "bm-ray-api-key"]
    assert volume["secret"]["items"] == [{"key": "api-key", "path": key_file.name}]
    (mount,) = [m for m in worker["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["mountPath"] == str(key_file.parent) and mount["readOnly"] is True
    assert not [v for v in head["volumes"] if "secret" in v]


def test_public_exposure_only_when_asked() -> None:
    (lb,) = _by_kind(render(TOGGLES["loadbalancer"]), "RayService")
    assert lb["spec"]["serveService"]["spec"]["type"] == "LoadBalancer"
    (ingress,) = _by_kind(render(TOGGLES["ingress"]), "Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == "demo-bm-ray-serve"


def test_object_store_uses_existing_secret_and_no_pvc() -> None:
    objects = render(TOGGLES["object-store"])
    assert not _by_kind(objects, "PersistentVolumeClaim")
    (cluster,) = _by_kind(objects, "RayCluster")
    template = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    container = template["containers"][0]
    assert "envFrom" not in container
    (volume,) = [v for v in template["volumes"] if v.get("secret", {}).get("secretName") == "s3-creds"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["AWS_SHARED_CREDENTIALS_FILE"] == f"{mount['mountPath']}/credentials"


@pytest.mark.parametrize(
    "bad",
    [
        {"cluster": {"cpuWorkers": {"maxReplicas": -1}}},
        {"cluster": {"cpuWorkers": {"replicas": "two"}}},
        {"clutser": {}},
        {"serve": {"service": {"type": "Public"}}},
        {"train": {"spec": {"kind": "classify"}}},
        {"ingress": {"enabled": "yes"}},
        {"grafana": {"enabled": "yes"}},
    ],
)
def test_bad_values_are_refused(bad: dict[str, Any]) -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError):
        chart.render(copy.deepcopy(bad), name="demo", namespace="ml")


def test_grafana_dashboard_configmap_only_when_enabled() -> None:
    """The dashboard file, verbatim, in a ConfigMap carrying the label Grafana's sidecar watches."""
    assert not [obj for obj in _by_kind(render({}), "ConfigMap") if "grafana" in obj["metadata"]["name"]]
    (config_map,) = _by_kind(render(TOGGLES["grafana"]), "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "ML"}
    dashboard = (CHART / "dashboards" / "bm-ray.json").read_text(encoding="utf-8")
    assert config_map["data"]["bm-ray.json"] == dashboard.rstrip("\n")
