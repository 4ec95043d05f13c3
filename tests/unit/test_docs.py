"""The docs cannot drift from the code: the architecture page lists every module, and the committed
OpenAPI document is what the endpoint's app serves."""

from __future__ import annotations

import importlib.util
import json
import pkgutil
import re
from pathlib import Path

import bm_ray

ROOT = Path(__file__).resolve().parents[2]
ARCHITECTURE = ROOT / "docs" / "explanation" / "architecture.md"


def package_modules() -> list[str]:
    """`bm_ray/<folder>/<module>.py` of every module (not package) of the package, plus its root."""
    paths = ["bm_ray/__init__.py"]
    for module in pkgutil.walk_packages(bm_ray.__path__, "bm_ray."):
        if not module.ispkg:
            paths.append(module.name.replace(".", "/") + ".py")
    return sorted(paths)


def test_the_architecture_page_lists_every_module() -> None:
    page = ARCHITECTURE.read_text(encoding="utf-8")
    missing = [path for path in package_modules() if f"`{path}`" not in page]
    assert not missing, f"{ARCHITECTURE.relative_to(ROOT)} lacks {missing}: add each to its module map"


def test_the_architecture_page_lists_no_module_that_is_gone() -> None:
    page = ARCHITECTURE.read_text(encoding="utf-8")
    listed = set(re.findall(r"`(bm_ray/[\w/]+\.py)`", page))
    assert listed <= set(package_modules()), (
        f"listed but not in the package: {listed - set(package_modules())}"
    )


def test_committed_openapi_matches_the_app() -> None:
    spec = importlib.util.spec_from_file_location("openapi_gen", ROOT / "docs" / "_ext" / "openapi_gen.py")
    assert spec and spec.loader
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    committed = json.loads((ROOT / "docs" / "openapi.json").read_text(encoding="utf-8"))
    assert committed == generator.openapi_document(), "docs/openapi.json is stale: run `make openapi`"
