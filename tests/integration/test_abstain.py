"""Abstention (`min_score`) in the bulk path and in evaluate: exact counts on a constructed case, exactly
once across a resume, the risk–coverage files and the threshold search of `--target-accuracy`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from rich.console import Console
from test_classify import LABELS, fault_and_good_options, ids_exactly_once, read_dir, write_good_rows
from tiny_model import make_tiny_model
from typer.testing import CliRunner

from bm_ray.cli.main import app
from bm_ray.corpus import ok_rows, read_corpus
from bm_ray.jobs.classify import classify, summary_table
from bm_ray.model.engine import Predictor
from bm_ray.model.metrics import threshold_curve, threshold_for_accuracy
from bm_ray.specs import ClassifySpec, IngestSpec


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: str) -> str:
    """A tiny random BERT classifier with the real MiniLM tokenizer, its scores spread on the test rows."""
    root = tmp_path_factory.mktemp("model")
    write_good_rows(root / "rows.jsonl", 60)
    texts = [json.loads(line)["text"] for line in (root / "rows.jsonl").read_text().splitlines()]
    return str(make_tiny_model(root / "tiny", LABELS, tokenizer_dir, spread_on=texts))


def threshold_between(scores: list[float]) -> float:
    """A min_score in the widest gap between the observed scores of the middle half: which rows fall under
    it does not depend on float noise between batchings (the gap is far wider than it)."""
    ordered = np.sort(np.asarray(scores, dtype=np.float64))
    middle = ordered[len(ordered) // 4 : 3 * len(ordered) // 4 + 1]
    gap = int(np.argmax(np.diff(middle)))
    assert middle[gap + 1] - middle[gap] > 1e-4, "the tiny model's scores are too close to split"
    return float((middle[gap] + middle[gap + 1]) / 2)


def test_classify_marks_and_counts_abstained_rows_exactly_once_across_a_resume(
    ray_local, tmp_path: Path, tiny_model: str
) -> None:
    corpus, good, options = fault_and_good_options(tmp_path, 60)
    ingest = IngestSpec(**options, rows_per_block=7)
    rows = ok_rows(read_corpus(ingest)[0], ["id", "text"]).take_all()
    predicted = Predictor.load(tiny_model).predict([r["text"] for r in rows])
    engine = {r["id"]: p for r, p in zip(rows, predicted, strict=True)}
    min_score = threshold_between([p.score for p in engine.values()])
    expected = {id_ for id_, p in engine.items() if p.score < min_score}
    assert 0 < len(expected) < len(engine)

    out = tmp_path / "out"
    spec = ClassifySpec(
        model=tiny_model, input=ingest, output=str(out), batch_size=8, actors=1, min_score=min_score
    )
    summary = classify(spec)
    assert summary.rows_read == summary.rows_classified + summary.rows_rejected
    assert summary.rows_classified == len(corpus.ok_ids) + len(good) == len(engine)
    assert summary.rows_abstained == len(expected) and summary.min_score == min_score
    console = Console(width=200, record=True)
    console.print(summary_table(summary))
    row = next(line for line in console.export_text().splitlines() if " abstained " in line)
    assert f"{len(expected):,} (top score < min_score {min_score:g})" in row
    predictions = ids_exactly_once(out, set(engine))
    assert predictions.column_names == ["id", "label", "score", "scores", "windows", "model", "abstained"]
    marked = {r["id"] for r in predictions.select(["id", "abstained"]).to_pylist() if r["abstained"]}
    assert marked == expected
    # an abstained row keeps its label and scores
    for r in predictions.to_pylist():
        assert r["label"] == engine[r["id"]].label and r["score"] == pytest.approx(
            engine[r["id"]].score, abs=1e-5
        )

    # Resume after losing some commits: rows_abstained still counts every committed row once, the resumed
    # commits' abstained rows included (read from the commit records, not from this run's rows).
    committed = sorted((out / "predictions").glob("*.parquet"))
    assert len(committed) >= 2
    committed[0].unlink()
    again = classify(spec)
    assert 0 < again.rows_this_run < again.rows_read and again.rows_resumed > 0
    assert again.rows_abstained == len(expected)
    assert json.loads((out / "summary.json").read_text())["rows_abstained"] == len(expected)
    assert {r["id"] for r in read_dir(out / "predictions").to_pylist() if r["abstained"]} == expected
    commits = [json.loads(p.read_text()) for p in (out / "_commits").glob("*.json")]
    assert sum(c["flag_counts"]["abstained"] for c in commits) == len(expected)

    with pytest.raises(ValueError, match=r"different job.*min_score"):  # every row judged by one threshold
        classify(spec.model_copy(update={"min_score": 0.9}))
    plain = classify(spec.model_copy(update={"min_score": None, "overwrite": True}))
    # no threshold, nothing thresholded: no column, no count (the report then shows no abstention)
    assert "rows_abstained" not in plain.model_dump() and plain.min_score is None
    assert "abstained" not in read_dir(out / "predictions").column_names


def test_evaluate_writes_the_curve_marks_abstained_rows_and_finds_the_threshold(
    ray_local, tmp_path: Path, tiny_model: str
) -> None:
    good = write_good_rows(tmp_path / "good.jsonl", 60)
    texts = [json.loads(line)["text"] for line in (tmp_path / "good.jsonl").read_text().splitlines()]
    labels = [json.loads(line)["label"] for line in (tmp_path / "good.jsonl").read_text().splitlines()]
    engine = Predictor.load(tiny_model).predict(texts)
    min_score = threshold_between([p.score for p in engine])
    expected = {id_ for id_, p in zip(good, engine, strict=True) if p.score < min_score}
    correct = np.array([p.label == label for p, label in zip(engine, labels, strict=True)])
    answered = np.array([id_ not in expected for id_ in good])

    out = tmp_path / "eval"
    args = ["evaluate", "--model", tiny_model, "--data", str(tmp_path / "good.jsonl"), "--output", str(out)]
    result = CliRunner().invoke(app, [*args, "--min-score", repr(min_score), "--target-accuracy", "0.5"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["rows_abstained"] == len(expected) and metrics["min_score"] == min_score
    assert metrics["coverage"] == pytest.approx(answered.mean())
    assert metrics["accuracy_answered"] == pytest.approx(correct[answered].mean())
    assert metrics["accuracy"] == pytest.approx(correct.mean())  # abstention does not change the accuracy
    logged = pq.read_table(out / "predictions.parquet").to_pydict()
    assert {i for i, a in zip(logged["id"], logged["abstained"], strict=True) if a} == expected

    curve = json.loads((out / "risk_coverage.json").read_text())
    scores = np.asarray(logged["score"], dtype=np.float64)
    hits = np.asarray(logged["label"]) == np.asarray(logged["predicted"])
    assert curve["rows"] == len(good)
    assert curve["thresholds"] == sorted(set(scores.tolist()), reverse=True)
    assert curve["coverage"][-1] == 1.0 and curve["accuracy"][-1] == pytest.approx(correct.mean())
    assert (out / "risk_coverage.png").read_bytes()[:4] == b"\x89PNG"
    found = threshold_for_accuracy(threshold_curve(scores, hits), 0.5)
    assert metrics["target_accuracy"] == curve["target_accuracy"] == found
    printed = " ".join(result.output.split())
    if found["threshold"] is None:
        assert "no threshold reaches accuracy 0.5" in printed
    else:
        assert (
            f"--min-score {found['threshold']!r} is the smallest threshold reaching accuracy 0.5" in printed
        )
        kept = scores >= found["threshold"]
        assert hits[kept].mean() >= 0.5 and kept.mean() == pytest.approx(found["coverage"])

    unreachable = CliRunner().invoke(app, [*args, "--target-accuracy", "1.0"])
    assert unreachable.exit_code == 0, unreachable.output
    best = json.loads((out / "metrics.json").read_text())["target_accuracy"]
    if best["threshold"] is None:  # the most confident row(s) are wrong: no threshold reaches 1.0
        assert "no threshold reaches accuracy 1 on these 60 rows" in " ".join(unreachable.output.split())
