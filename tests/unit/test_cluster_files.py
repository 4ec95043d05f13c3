"""Cluster launcher configs and the cluster image agree with Ray's schema and with the tested versions (constraints.txt)."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from bm_ray.runtime.ray_init import SERVE_NODE_ENV_VARS, node_env

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
PINNED = ("ray", "tensorflow", "tf-keras", "transformers")


def _pins() -> dict[str, str]:
    """The tested versions (constraints.txt; pyproject.toml holds ranges), by normalised name (`tf-keras`)."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==([\w.]+)", line.strip())
        if match:
            pins[re.sub(r"[-_.]+", "-", match[1]).lower()] = match[2]
    return pins


@pytest.mark.parametrize("name", ["local.yaml", "aws.yaml"])
def test_launcher_config_matches_ray_schema(name: str) -> None:
    schema = json.loads(
        (Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text(encoding="utf-8")
    )
    config = yaml.safe_load((CLUSTER / name).read_text(encoding="utf-8"))
    jsonschema.validate(config, schema)
    assert any("pip install" in command for command in config["setup_commands"])


def test_dockerfile_versions_match_pyproject() -> None:
    dockerfile = (CLUSTER / "Dockerfile").read_text(encoding="utf-8")
    pins = _pins()
    assert set(PINNED) <= set(pins)
    for package in PINNED:
        found = set(re.findall(rf"\b{re.escape(package)}(?:\[[^\]]*\])?==([\w.]*\w)", dockerfile))
        assert found == {pins[package]}, f"{package}: Dockerfile {found} vs constraints.txt {pins[package]}"
    bases = re.findall(r"rayproject/ray:([\w.]+)-py(\d)(\d+)-(cpu|gpu)", dockerfile)
    assert {base[3] for base in bases} == {"cpu", "gpu"}
    assert {base[0] for base in bases} == {pins["ray"]}
    assert {(base[1], base[2]) for base in bases} == {("3", "11")}
    assert "TF_USE_LEGACY_KERAS=1" in dockerfile
    assert re.search(r"^USER ray$", dockerfile, re.M)
    assert "! pip show torch" in dockerfile, "the build must fail when torch is pulled in"
    assert 'pip install ".[mlflow,int8]"' in dockerfile, "MLflow logging and --precision int8 need the extras"


def test_image_bakes_the_presets_and_runs_offline() -> None:
    """The weights are fetched at build time into the image's model cache, and the image is offline after it."""
    dockerfile = (CLUSTER / "Dockerfile").read_text(encoding="utf-8")
    cache = re.search(r"\bBM_RAY_CACHE=(\S+)", dockerfile)
    assert cache, "the image's model cache (BM_RAY_CACHE) must be set"
    fetch = re.search(r"^RUN .*\bbm-ray model fetch\b.*$", dockerfile, re.M)
    assert fetch, "the presets must be fetched with `bm-ray model fetch` at build time"
    presets = re.search(r'^ARG PRESETS="([^"]+)"', dockerfile, re.M)
    assert presets and "minilm-l6" in presets[1].split()
    offline = re.search(r"^ENV BM_RAY_OFFLINE=1$", dockerfile, re.M)
    assert offline and offline.start() > fetch.start(), (
        "BM_RAY_OFFLINE=1 must follow the fetch (it would refuse it)"
    )
    assert f"chmod -R a+rX {cache[1]}" in dockerfile  # pods run as another UID than the build's
    helpers = (ROOT / "helm" / "bm-ray" / "templates" / "_helpers.tpl").read_text(encoding="utf-8")
    assert f"if [ -d {cache[1]} ]; then cp -Rn {cache[1]}/." in helpers  # the chart seeds its writable cache


def test_launcher_configs_use_token_auth() -> None:
    """Every `ray start` of the launcher configs runs in token mode, and the token file reaches every node."""
    for name in ("local.yaml", "aws.yaml"):
        config = yaml.safe_load((CLUSTER / name).read_text(encoding="utf-8"))
        starts = [
            c
            for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"]
            if "ray start" in c
        ]
        docker_env = " ".join(config.get("docker", {}).get("run_options", []))
        assert starts and all(
            "RAY_AUTH_MODE=token" in c or "--env RAY_AUTH_MODE=token" in docker_env for c in starts
        )
        assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token", name


def test_python_version_matches_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["requires-python"].startswith(">=3.11")


def test_every_node_definition_sets_the_serve_node_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The image, both launcher configs and the Helm pods set Serve's mode; a user's own value wins."""
    helpers = (ROOT / "helm" / "bm-ray" / "templates" / "_helpers.tpl").read_text(encoding="utf-8")
    dockerfile = (CLUSTER / "Dockerfile").read_text(encoding="utf-8")
    launchers = [(CLUSTER / name).read_text(encoding="utf-8") for name in ("local.yaml", "aws.yaml")]
    for name, value in SERVE_NODE_ENV_VARS.items():
        assert f"{name}={value}" in dockerfile
        assert all(f"{name}={value}" in launcher for launcher in launchers)
        assert f'{{name: {name}, value: "{value}"}}' in helpers
    monkeypatch.delenv("RAY_SERVE_THROUGHPUT_OPTIMIZED", raising=False)
    assert node_env()["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    monkeypatch.setenv("RAY_SERVE_THROUGHPUT_OPTIMIZED", "0")
    assert node_env()["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "0"
    assert node_env()["TF_USE_LEGACY_KERAS"] == "1"
