"""Policy scan of the Helm chart: checkov's Kubernetes checks on the Pods taken out of every rendered Ray object.

checkov does not look inside custom resources, so tests/helm_pods.py turns each RayCluster / RayJob / RayService
into the Pods KubeRay would create (node groups, the head's autoscaler sidecar, the job submitter), written
beside the chart's NetworkPolicies. checkov runs from its own venv (`make scan-venv`: its pins clash with ours).
Only the checks in helm/bm-ray/policy-allowlist.txt may fail, each with its reason there.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from helm_pods import pods_of
from test_helm import CHART, ROOT, render

CHECKOV = ROOT / ".venv-scan" / "bin" / "checkov"
ALLOWLIST = CHART / "policy-allowlist.txt"
NAMESPACE = "ml"
EVERY_PART: dict[str, Any] = {
    "cluster": {"gpuWorkers": {"enabled": True, "replicas": 1}},
    "train": {"enabled": True},
    "classify": {"enabled": True},
    "serve": {"enabled": True},
    "ingress": {"enabled": True, "className": "nginx", "tlsSecret": "tls"},
    "storage": {"objectStore": {"credentialsSecret": "s3-creds"}},
    "networkPolicy": {"metricsFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]},
}
DIGEST = "sha256:" + "ab" * 32


def allowlist() -> dict[str, str]:
    """Allowed check ids and their reasons; every entry must give one."""
    entries = {}
    for line in ALLOWLIST.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            check_id, _, reason = line.partition(" ")
            assert reason.strip(), f"{ALLOWLIST.name}: {check_id} has no reason"
            entries[check_id] = reason.strip()
    return entries


def scan(values: dict[str, Any], directory: Path) -> dict[str, Any]:
    """Render, write the extracted Pods and the NetworkPolicies to `directory`, run checkov; its JSON report."""
    if not CHECKOV.exists():
        message = f"{CHECKOV} missing: run `make scan-venv` (make test does)"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    pods = 0
    for obj in render(values):
        for pod in pods_of(obj, NAMESPACE):
            (directory / f"{pod['metadata']['name']}.yaml").write_text(yaml.safe_dump(pod), encoding="utf-8")
            pods += 1
        if obj["kind"] == "NetworkPolicy":
            obj["metadata"]["namespace"] = NAMESPACE
            (directory / f"{obj['metadata']['name']}.yaml").write_text(yaml.safe_dump(obj), encoding="utf-8")
    assert pods > 0
    result = subprocess.run(
        [
            str(CHECKOV),
            "-d",
            str(directory),
            "--framework",
            "kubernetes",
            "-o",
            "json",
            "--quiet",
            "--compact",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    report = json.loads(result.stdout)
    report = report[0] if isinstance(report, list) else report
    report["pods"] = pods
    return report


def failed(report: dict[str, Any]) -> dict[str, set[str]]:
    """Failed check id -> the Pods / objects it failed on."""
    out: dict[str, set[str]] = {}
    for check in report["results"]["failed_checks"]:
        out.setdefault(check["check_id"], set()).add(check["resource"])
    return out


@pytest.mark.parametrize("values", [{}, EVERY_PART], ids=["default", "every-part"])
def test_pod_templates_pass_the_policy_scan(values: dict[str, Any], tmp_path: Path) -> None:
    report = scan(values, tmp_path)
    failures = failed(report)
    allowed = allowlist()
    unexpected = {check: sorted(where) for check, where in failures.items() if check not in allowed}
    assert not unexpected, f"checkov failures outside {ALLOWLIST.name}: {unexpected}"
    assert report["summary"]["passed"] > 0 and report["summary"]["parsing_errors"] == 0
    if values:  # every part on: each entry of the allow-list is still needed (the list only shrinks)
        assert set(failures) == set(allowed), f"no longer failing, remove: {set(allowed) - set(failures)}"
        assert report["pods"] == 14  # 4 Ray objects x (head, cpu, gpu) + 2 job submitters


def test_digest_clears_the_digest_check(tmp_path: Path) -> None:
    values = {**EVERY_PART, "image": {"digest": DIGEST, "gpuDigest": DIGEST}}
    report = scan(values, tmp_path)
    assert "CKV_K8S_43" not in failed(report)
    assert not set(failed(report)) - set(allowlist())
