"""report.html of every job, built from the output alone: key numbers, every chart drawn, untrusted
corpus text inert (checked in the raw HTML and in a real browser), `bm-ray report DIR`."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from browser import browser_page
from tiny_model import make_tiny_model

from bm_ray.jobs.classify import classify
from bm_ray.jobs.evaluate import evaluate
from bm_ray.jobs.ingest import ingest
from bm_ray.jobs.train.job import train
from bm_ray.layout import REPORT_FILE
from bm_ray.model.metrics import reliability_bins, risk_coverage
from bm_ray.model.uncertainty import interval_text, wilson_interval
from bm_ray.report import build_report
from bm_ray.report.outputs import OutputDir, detect_kind
from bm_ray.results import MetricIntervals
from bm_ray.specs import ClassifySpec, EvaluateSpec, IngestSpec, TrainSpec

LABELS = ["x", "y", "z"]
WORDS = ["markets", "rally", "as", "central", "bank", "signals", "pause", "while", "tech", "earnings"]
SCRIPT = "<script>window.__pwned=1</script>"
ATTRIBUTE = '"><img src=x onerror="window.__pwned=2">'
CHARTS = {
    "ingest": {"labels", "rejects"},
    "classify": {"labels", "confidence", "rejects"},
    "evaluate": {"confusion", "f1", "risk_coverage", "reliability", "rejects"},
    "train": {"loss", "scores", "confusion", "f1", "risk_coverage", "reliability", "labels", "rejects"},
}


def write_corpus(path: Path) -> Path:
    """60 rows whose texts all carry both payloads (any listed example shows them), plus payloads in a
    label, in a rejected row's id and in a malformed line."""
    with path.open("w", encoding="utf-8") as f:
        for i in range(60):
            words = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(3 + i % 9))
            text = f"{words} {SCRIPT}{ATTRIBUTE}"
            f.write(json.dumps({"id": f"r{i}", "text": text, "label": LABELS[i % 3]}) + "\n")
        f.write(json.dumps({"id": "evil-label", "text": "its label is a payload", "label": ATTRIBUTE}) + "\n")
        f.write(json.dumps({"id": SCRIPT, "text": ""}) + "\n")  # empty_text, the id is the payload
        f.write(f"not json {SCRIPT}{ATTRIBUTE}\n")  # malformed_record, the raw snippet is the payload
        f.write(json.dumps({"id": "n1", "text": 5}) + "\n")  # not_a_string
    return path


@pytest.fixture(scope="module")
def outputs(ray_local: None, tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: str) -> dict[str, Path]:
    """Real ingest, classify, evaluate and (tiny, 1 worker) train outputs of the planted corpus."""
    root = tmp_path_factory.mktemp("reports")
    spec = IngestSpec(input=[str(write_corpus(root / "corpus.jsonl"))], rows_per_block=20)
    model = str(make_tiny_model(root / "model", LABELS, tokenizer_dir))
    out = {kind: root / kind for kind in CHARTS}
    ingest(spec, str(out["ingest"]))
    classify(ClassifySpec(model=model, input=spec, output=str(out["classify"]), actors=1, batch_size=8))
    evaluate(EvaluateSpec(model=model, data=spec, output=str(out["evaluate"])))
    train_spec = {"data": spec.model_dump(), "output": str(out["train"]), "base_model": model, "workers": 1}
    # Every planted text shares the payloads, so all rows form one near-duplicate cluster: a grouped
    # split would leave no validation rows (and refuses); the report, not the split, is tested here.
    train_spec.update(epochs=2, batch_size=8, learning_rate=5e-3, val_fraction=0.3, keep_checkpoints=1)
    train_spec.update(split="random")
    train(TrainSpec.model_validate(train_spec))
    return out


def facts(out: Path) -> dict[str, Any]:
    """summary.json or metrics.json of an output."""
    name = "summary.json" if (out / "summary.json").exists() else "metrics.json"
    return json.loads((out / name).read_text(encoding="utf-8"))


@pytest.mark.parametrize("kind", sorted(CHARTS))
def test_every_job_writes_a_report_with_its_payloads_escaped(outputs: dict[str, Path], kind: str) -> None:
    path = outputs[kind] / REPORT_FILE
    page = path.read_text(encoding="utf-8")
    assert detect_kind(OutputDir(str(outputs[kind]))) == kind
    assert re.search(r"<script|<img|<[^>]*\sonerror\s*=", page, re.IGNORECASE) is None
    assert "default-src 'none'" in page  # and even an unescaped value could not run: CSP forbids scripts
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in page or kind == "classify"
    assert "&quot;&gt;&lt;img src=x onerror=&quot;window.__pwned=2&quot;&gt;" in page
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", page)  # nothing loaded from anywhere


def test_browser_renders_every_report(outputs: dict[str, Path], tmp_path: Path) -> None:
    """Headless Chromium: no script ran, the payloads read as text, the key numbers, every chart drawn."""
    with browser_page() as page:
        for kind, out in sorted(outputs.items()):
            page.goto((out / REPORT_FILE).as_uri())
            page.screenshot(path=str(tmp_path / f"report-{kind}.png"), full_page=True)
            assert page.evaluate("document.scripts.length") == 0
            assert page.evaluate("window.__pwned === undefined")
            assert page.locator("img, [onerror]").count() == 0
            text = page.inner_text("body")
            assert ATTRIBUTE in text and (SCRIPT in text or kind == "classify"), kind
            data = facts(out)
            keys = ["rows_read", "rows_rejected"] if kind in ("ingest", "classify") else ["rows_evaluated"]
            keys += {"ingest": ["rows_ok"], "classify": ["rows_classified"]}.get(kind, ["rows_rejected"])
            for key in keys:
                assert page.inner_text(f'.stat[data-key="{key}"] .v') == f"{data[key]:,}", (kind, key)
            if kind in ("ingest", "classify"):
                assert page.get_attribute('[data-key="accounting"]', "class") == "ok"
            else:
                shown = page.inner_text('.stat[data-key="accuracy"] .v')
                assert float(shown) == pytest.approx(data["accuracy"], rel=1e-3)
                # The ECE a perfectly calibrated model would show on these rows, from the same scores.
                floor = page.inner_text('.stat[data-key="ece_floor"] .v')
                assert float(floor) == pytest.approx(data["ece_floor"], rel=1e-3) and data["ece_floor"] > 0
            charts = page.locator("svg.chart").all()
            assert {c.get_attribute("data-chart") for c in charts} == CHARTS[kind], kind
            for chart in charts:
                box = chart.bounding_box()
                assert box["width"] == float(chart.get_attribute("width")) > 100, kind
                assert box["height"] == float(chart.get_attribute("height")) > 20, kind
                assert chart.locator("rect, polyline").count() > 0, (kind, chart.get_attribute("data-chart"))
            assert page.console_errors == []


def test_report_numbers_come_from_the_output(outputs: dict[str, Path]) -> None:
    """Confusion counts and reject examples in the page are the ones in the output files."""
    metrics = facts(outputs["evaluate"])
    page = (outputs["evaluate"] / REPORT_FILE).read_text(encoding="utf-8")
    cells = [int(c) for c in re.findall(r'data-count="(\d+)"', page)]
    assert cells == [n for row in metrics["confusion_matrix"]["matrix"] for n in row]
    summary = facts(outputs["ingest"])
    page = (outputs["ingest"] / REPORT_FILE).read_text(encoding="utf-8")
    for reason, count in summary["rejected_by_reason"].items():
        assert f'{reason} <span class="note">({count:,} {"row" if count == 1 else "rows"})</span>' in page
    assert "corpus.jsonl:63" in page  # the malformed line's source, as an example


def test_model_outputs_carry_their_intervals(outputs: dict[str, Path]) -> None:
    """metrics.json of evaluate and train: accuracy (Wilson), macro-F1 and ECE (bootstrap) intervals,
    shown under the report's tiles with their method; train's calibration and model card too."""
    for kind in ("evaluate", "train"):
        metrics = facts(outputs[kind])
        intervals = MetricIntervals.model_validate(metrics["intervals"])
        rows = metrics["rows_evaluated"]
        assert intervals.confidence == 0.95 and intervals.accuracy.method == "wilson"
        accuracy = (intervals.accuracy.low, intervals.accuracy.high)
        assert accuracy == wilson_interval(round(metrics["accuracy"] * rows), rows)
        for name in ("macro_f1", "ece"):
            interval = getattr(intervals, name)
            assert (interval.method, interval.resamples) == ("bootstrap", 1000), name
            assert interval.low <= interval.high and math.isfinite(interval.low), name
        page = (outputs[kind] / REPORT_FILE).read_text(encoding="utf-8")
        for name in ("accuracy", "macro_f1", "ece"):
            assert f'<div class="ci">{interval_text(getattr(intervals, name), 4)}</div>' in page, (kind, name)
        assert "Wilson score interval" in page and "1,000 resamples" in page
    evaluated = MetricIntervals.model_validate(facts(outputs["evaluate"])["intervals"])
    assert evaluated.accuracy_answered == evaluated.accuracy  # no min_score: every row answered
    calibration = facts(outputs["train"])["calibration"]
    assert calibration["after"]["ece_interval"]["method"] == "bootstrap"
    assert "95% interval" in (outputs["train"] / "README.md").read_text(encoding="utf-8")


def test_optional_sections_appear_only_with_their_data(outputs: dict[str, Path], tmp_path: Path) -> None:
    for kind in ("classify", "evaluate"):
        page = (outputs[kind] / REPORT_FILE).read_text(encoding="utf-8")
        assert 'id="leakage"' not in page and 'data-key="rows_abstained"' not in page
        assert 'id="throughput"' not in page or kind == "classify"
    classified = shutil.copytree(outputs["classify"], tmp_path / "classify")
    summary = facts(classified)
    (classified / "summary.json").write_text(json.dumps({**summary, "rows_abstained": 2}))
    for i, record in enumerate(sorted((classified / "_commits").glob("*.json"))):
        os.utime(record, (1_000_000 + 5 * i, 1_000_000 + 5 * i))  # commits 5 s apart
    page = Path(build_report(str(classified))).read_text(encoding="utf-8")
    assert re.search(r'data-key="rows_abstained"><div class="v">2<', page)
    assert 'data-chart="throughput"' in page
    commits = len(list((classified / "_commits").glob("*.json")))
    rate = (
        summary["rows_read"]
        - json.loads(sorted((classified / "_commits").glob("*.json"))[0].read_text())["rows_committed"]
    ) / (5 * (commits - 1))
    assert f"{commits:,} commits; {rate:,.1f} rows/s" in page
    evaluated = shutil.copytree(outputs["evaluate"], tmp_path / "evaluate")
    metrics = facts(evaluated)
    leakage = {"overlap_rows": 3, "examples": [{"id": "a", "text": SCRIPT}]}
    (evaluated / "metrics.json").write_text(json.dumps({**metrics, "leakage": leakage}))
    page = Path(build_report(str(evaluated))).read_text(encoding="utf-8")
    assert 'id="leakage"' in page and "overlap_rows" in page and "<script" not in page


def test_cli_rebuilds_a_report_and_refuses_other_directories(
    outputs: dict[str, Path], tmp_path: Path
) -> None:
    out = shutil.copytree(outputs["ingest"], tmp_path / "ingest")
    (out / REPORT_FILE).unlink()
    cli = [str(Path(sys.executable).parent / "bm-ray")]
    done = subprocess.run([*cli, "report", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{out}/{REPORT_FILE}"
    assert 'data-chart="rejects"' in (out / REPORT_FILE).read_text(encoding="utf-8")
    empty = tmp_path / "empty"
    empty.mkdir()
    done = subprocess.run([*cli, "report", str(empty)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "not a bm-ray job output" in " ".join(done.stderr.split())


def test_risk_coverage_and_reliability_by_hand() -> None:
    scores = np.array([0.9, 0.8, 0.6, 0.3])
    correct = np.array([True, False, True, False])
    coverage, risk = risk_coverage(scores, correct)
    assert coverage.tolist() == [0.25, 0.5, 0.75, 1.0]
    assert risk.tolist() == pytest.approx([0.0, 0.5, 1 / 3, 0.5])
    bins = reliability_bins(scores, correct, bins=2)
    assert bins["count"] == [1, 3]
    assert bins["accuracy"] == pytest.approx([0.0, 2 / 3])
    assert bins["confidence"] == pytest.approx([0.3, (0.9 + 0.8 + 0.6) / 3])
    assert bins["ece"] == pytest.approx((1 * 0.3 + 3 * abs(2 / 3 - 2.3 / 3)) / 4)
