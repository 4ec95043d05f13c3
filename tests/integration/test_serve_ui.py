"""What people see of the endpoint: the playground at `/ui` in a real browser, and the Grafana dashboard,
whose every PromQL query must name a metric the running endpoint really exports."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import ray
from browser import browser_page
from ray import serve
from tiny_model import make_tiny_model

from bm_ray.layout import LABELS_FILE
from bm_ray.model.registry import fetch_preset
from bm_ray.runtime.ray_init import free_port
from bm_ray.serve import app_url, deploy
from bm_ray.specs import ServeSpec

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "helm" / "bm-ray" / "dashboards" / "bm-ray.json"
LABELS = ["World", "Sports", "Business", "Sci/Tech"]
KEY_ENV = "BM_RAY_TEST_PLAYGROUND_KEY"
KEY = "playground-test-key"
# Replicas inherit the environment Ray starts with: set before any fixture starts Ray.
os.environ[KEY_ENV] = KEY
TEXT = "The central bank raised interest rates again as inflation stayed high."
METRICS_WAIT_S = 90.0
"""Ray exports metrics every few seconds; a bounded wait for the first export after the traffic."""


@pytest.fixture(scope="module")
def endpoint(ray_local: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real endpoint (tiny model, version 7) behind a Bearer key, under the route prefix /pg."""
    model = tmp_path_factory.mktemp("playground") / "model"
    make_tiny_model(model, LABELS, str(fetch_preset("minilm-l6")))
    info = json.loads((model / LABELS_FILE).read_text())
    (model / LABELS_FILE).write_text(json.dumps({**info, "version": "7"}))
    spec = ServeSpec(
        model=str(model),
        port=free_port(),
        route_prefix="/pg",
        api_key_env=KEY_ENV,
        min_replicas=1,
        max_replicas=1,
        cpus_per_replica=0.5,
    )
    deploy(spec, name="playground")
    url = app_url(spec)
    deadline = time.monotonic() + 120
    while httpx.get(f"{url}/readyz", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "endpoint not ready after 120 s"
        time.sleep(1)
    yield url
    serve.shutdown()  # the proxy listens on this module's port; a later module's deploy needs its own


def test_playground_page_is_public_and_self_contained(endpoint: str) -> None:
    page = httpx.get(f"{endpoint}/ui", timeout=30)
    assert page.status_code == 200  # no key needed for the page itself
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    # No external asset: no src/href to another origin, no script or stylesheet loaded from anywhere.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page.text)
    assert not re.search(r"<script[^>]+src=|<link[^>]+stylesheet", page.text)
    assert httpx.post(f"{endpoint}/v1/classify", json={"texts": [TEXT]}, timeout=30).status_code == 401
    # The root is KServe V1's liveness; a browser opening it is sent to the playground.
    assert httpx.get(f"{endpoint}/", timeout=30).json() == {"status": "alive"}
    sent = httpx.get(f"{endpoint}/", headers={"Accept": "text/html"}, timeout=30)
    assert sent.status_code == 307 and sent.headers["location"] == "/pg/ui"


def test_playground_in_a_browser_shows_the_apis_answer(endpoint: str, tmp_path: Path) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    expected = httpx.post(f"{endpoint}/v1/classify", json={"texts": [TEXT]}, headers=auth, timeout=30).json()
    with browser_page() as page:
        page.goto(f"{endpoint}")  # the root sends a browser to /pg/ui, which resolves the API under /pg
        page.fill("#text", TEXT)
        page.click("#classify")  # without the key: the API refuses, the page says so
        page.wait_for_selector("#error:not([hidden])", timeout=30_000)
        assert "401" in page.inner_text("#error") and "unauthorized" in page.inner_text("#error")
        page.screenshot(path=str(tmp_path / "playground-401.png"), full_page=True)

        page.fill("#key", KEY)
        page.dispatch_event("#key", "change")  # the labels now come from /v1/model
        page.locator("#labels span").first.wait_for(timeout=30_000)
        assert [s.inner_text() for s in page.locator("#labels span").all()] == LABELS
        page.click("#classify")
        page.wait_for_selector("#result:not([hidden])", timeout=30_000)
        page.screenshot(path=str(tmp_path / "playground.png"), full_page=True)

        prediction = expected["predictions"][0]
        assert page.inner_text("#label") == prediction["label"]
        assert page.inner_text("#model") == "model: tiny-bert · version 7"
        assert page.is_hidden("#error") and page.is_hidden("#abstained")
        assert page.get_attribute("#docs", "href") == "/pg/docs"
        bars = page.locator("#bars .bar").all()
        assert [b.get_attribute("data-label") for b in bars] == sorted(
            LABELS, key=lambda label: -prediction["scores"][label]
        )
        for bar in bars:
            shown = float(bar.locator(".p").inner_text().rstrip("%"))
            assert shown == pytest.approx(
                100 * prediction["scores"][bar.get_attribute("data-label")], abs=0.06
            )
            assert bar.locator(".fill").bounding_box()["width"] > 0
        # The only errors are the refused calls made before the key was typed (the CSP blocked nothing).
        assert page.console_errors and all("401" in error for error in page.console_errors), (
            page.console_errors
        )


PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, keywords, labels, ranges and variables removed)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\$\{?\w+\}?", "", expr)  # Grafana variables
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        if expr[match.end() :].lstrip().startswith("(") or match.group() in PROMQL_KEYWORDS:
            continue  # a function call or an operator keyword
        names.add(match.group())
    return names


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and template-variable queries."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((\w+),\s*\w+\)", variable["definition"])
            assert match, variable["definition"]
            queries.append(match.group(1))
    return queries


def test_promql_metric_names_parser() -> None:
    expr = 'histogram_quantile(0.95, sum by (le) (rate(ray_x_bucket{application=~"$app", le!="1"}[$__rate_interval])))'
    assert promql_metric_names(expr) == {"ray_x_bucket"}
    assert promql_metric_names("sum(rate(a_sum[5m])) / sum(rate(b_count[5m])) and on(x) c") == {
        "a_sum",
        "b_count",
        "c",
    }


def exported_metric_names() -> set[str]:
    """Names of every sample on the metrics export endpoint of every node of this Ray cluster."""
    names = set()
    for node in ray.nodes():
        if not node["Alive"]:
            continue
        port = node["MetricsExportPort"]
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
        names.update(m.group() for m in re.finditer(r"(?m)^[A-Za-z_:][A-Za-z0-9_:]*", text))
    return names


def test_every_dashboard_query_names_an_exported_metric(endpoint: str) -> None:
    panels = json.loads(DASHBOARD.read_text(encoding="utf-8"))["panels"]
    titles = " | ".join(panel["title"] for panel in panels)
    for part in (
        "Request rate",
        "Errors by status",
        "p50 / p95 / p99",
        "Batch size",
        "Predictions per label",
        "Rejected requests by reason",
        "Replicas",
    ):
        assert part in titles
    auth = {"Authorization": f"Bearer {KEY}"}
    for _ in range(3):  # traffic for every series: answers, a 422, a 401
        assert (
            httpx.post(
                f"{endpoint}/v1/classify", json={"texts": [TEXT]}, headers=auth, timeout=30
            ).status_code
            == 200
        )
    assert (
        httpx.post(f"{endpoint}/v1/classify", json={"texts": []}, headers=auth, timeout=30).status_code == 422
    )
    assert httpx.post(f"{endpoint}/v1/classify", json={"texts": [TEXT]}, timeout=30).status_code == 401
    wanted = set().union(*(promql_metric_names(q) for q in dashboard_queries()))
    assert any(name.startswith("ray_bm_ray_") for name in wanted) and any(
        name.startswith("ray_serve_") for name in wanted
    )
    deadline = time.monotonic() + METRICS_WAIT_S
    while True:
        missing = wanted - exported_metric_names()
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert not missing, f"dashboard queries name metrics the endpoint does not export: {sorted(missing)}"
