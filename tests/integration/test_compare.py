"""`bm-ray compare`: flip matrix, counts and McNemar exact on constructed models and tables, and a
SIGKILLed compare resumed without a duplicate."""

from __future__ import annotations

import json
import os
import signal
import time
from math import comb
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from drivers import start_bm_ray
from fault_corpus import write_fault_corpus
from test_classify import LABELS, ids_exactly_once, write_good_rows
from tiny_model import make_tiny_model
from typer.testing import CliRunner

from bm_ray.cli.main import app
from bm_ray.corpus import ok_rows, read_corpus
from bm_ray.jobs.compare import compare, compare_tables
from bm_ray.model.engine import Predictor
from bm_ray.model.uncertainty import interval_text, wilson_interval
from bm_ray.specs import CompareSpec, IngestSpec


def texts_of(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: str) -> tuple[str, str]:
    """Two tiny models of different seeds, their scores spread on the test rows (so they disagree often)."""
    root = tmp_path_factory.mktemp("compare-models")
    write_good_rows(root / "rows.jsonl", 200)
    texts = texts_of(root / "rows.jsonl")
    return tuple(
        str(make_tiny_model(root / f"m{seed}", LABELS, tokenizer_dir, seed=seed, spread_on=texts))
        for seed in (0, 1)
    )


def leg(id_: list[str], label: list[str], score: list[float], name: str) -> pa.Table:
    return pa.table({"id": id_, f"label_{name}": label, f"score_{name}": pa.array(score, pa.float32())})


def test_compare_tables_by_hand() -> None:
    """9 rows (8 labelled): both right on r0, only A right on r1, only B right on r2..r7 → b = 1, c = 6."""
    ids = [f"r{i}" for i in range(9)]
    truth = pa.table({"id": ids, "label": ["x", "x", "x", "y", "y", "y", "y", "y", None]})
    a = leg(ids, ["x", "x", "y", "x", "x", "x", "x", "x", "z"], [0.9] * 9, "a")
    b = leg(ids[::-1], ["x", "y", "x", "y", "y", "y", "y", "y", "z"][::-1], [0.8] * 9, "b")  # any order
    result, flips = compare_tables(a, b, truth)
    assert result["rows"] == 9 and result["rows_agree"] == 2 and result["rows_flipped"] == 7
    assert result["agreement"] == pytest.approx(2 / 9)
    assert result["flip_matrix"] == {
        "labels": ["x", "y", "z"],
        "matrix": [[1, 6, 0], [1, 0, 0], [0, 0, 1]],  # rows: A's label, columns: B's
    }
    assert result["label_counts"] == {"x": {"a": 7, "b": 2}, "y": {"a": 1, "b": 6}, "z": {"a": 1, "b": 1}}
    assert result["rows_labelled"] == 8
    assert (result["only_a_correct"], result["only_b_correct"]) == (1, 6)
    assert result["accuracy_a"] == pytest.approx(2 / 8) and result["accuracy_b"] == pytest.approx(7 / 8)
    assert result["mcnemar_p"] == pytest.approx(2 * (1 + 7) / 128)  # by hand: b=1, c=6 → 0.125
    assert result["accuracy_difference"] == pytest.approx(5 / 8)
    intervals = result["intervals"]  # Wilson for each accuracy, a paired bootstrap of B − A
    assert (intervals.accuracy_a.low, intervals.accuracy_a.high) == wilson_interval(2, 8)
    assert (intervals.accuracy_b.low, intervals.accuracy_b.high) == wilson_interval(7, 8)
    difference = intervals.accuracy_difference
    assert difference.method == "paired_bootstrap" and difference.resamples == 1000
    assert 0 < difference.low < 5 / 8 < difference.high <= 1.0
    assert flips.column_names == ["id", "label_a", "score_a", "label_b", "score_b", "label"]
    assert flips.column("id").to_pylist() == ["r1", "r2", "r3", "r4", "r5", "r6", "r7"]
    assert flips.slice(0, 1).to_pylist()[0] == {
        "id": "r1", "label_a": "x", "score_a": pytest.approx(0.9), "label_b": "y",
        "score_b": pytest.approx(0.8), "label": "x",
    }  # fmt: skip

    unlabelled, flips = compare_tables(a, b, truth.set_column(1, "label", pa.nulls(9, pa.string())))
    assert "accuracy_a" not in unlabelled and "mcnemar_p" not in unlabelled
    assert flips.column_names == ["id", "label_a", "score_a", "label_b", "score_b"]
    with pytest.raises(RuntimeError, match="different rows"):
        compare_tables(a, b.slice(1), truth)


def expected_comparison(models: tuple[str, str], ingest: IngestSpec) -> tuple[dict, dict]:
    """Each model's own predictions of the corpus's ok rows, by the engine in this process: (by id, truth)."""
    rows = ok_rows(read_corpus(ingest)[0], ["id", "text", "label"]).take_all()
    texts = [r["text"] for r in rows]
    predicted = [Predictor.load(m).predict(texts) for m in models]
    by_id = {r["id"]: (pa_, pb) for r, pa_, pb in zip(rows, *predicted, strict=True)}
    return by_id, {r["id"]: r["label"] for r in rows}


def test_compare_counts_flips_and_mcnemar_exact(
    ray_local, tmp_path: Path, two_models: tuple[str, str]
) -> None:
    corpus = write_fault_corpus(tmp_path, "jsonl")
    write_good_rows(tmp_path / "good.jsonl", 200)
    options = {**corpus.spec, "input": [corpus.input, str(tmp_path / "good.jsonl")], "max_text_chars": 200}
    ingest = IngestSpec(**options, rows_per_block=50)
    expected, truth = expected_comparison(two_models, ingest)
    spec = CompareSpec(
        models=list(two_models), input=ingest, output=str(tmp_path / "cmp"), batch_size=16, actors=1
    )
    result = compare(spec)

    flipped = {i for i, (a, b) in expected.items() if a.label != b.label}
    assert 0 < len(flipped) < len(expected)
    assert result.rows == len(expected) == len(corpus.ok_ids) + 200
    assert result.rows_flipped == len(flipped) and result.rows_agree == len(expected) - len(flipped)
    names = result.flip_matrix.labels
    matrix = np.zeros((len(names), len(names)), dtype=int)
    for a, b in expected.values():
        matrix[names.index(a.label), names.index(b.label)] += 1
    assert result.flip_matrix.matrix == matrix.tolist()
    for leg_name in ("a", "b"):
        assert result.legs[leg_name].rows_read == corpus.rows_read + 200
        assert result.legs[leg_name].rows_rejected == len(corpus.reasons)
    labelled = {i: t for i, t in truth.items() if t is not None}
    right_a = {i for i, t in labelled.items() if expected[i][0].label == t}
    right_b = {i for i, t in labelled.items() if expected[i][1].label == t}
    b, c = len(right_a - right_b), len(right_b - right_a)
    assert (result.only_a_correct, result.only_b_correct) == (b, c)
    assert result.accuracy_a == pytest.approx(len(right_a) / len(labelled))
    assert result.accuracy_b == pytest.approx(len(right_b) / len(labelled))
    ci = result.intervals
    assert ci is not None and ci.accuracy_a.low <= result.accuracy_a <= ci.accuracy_a.high
    assert ci.accuracy_difference.low <= result.accuracy_difference <= ci.accuracy_difference.high
    page = (tmp_path / "cmp" / "report.html").read_text()  # the intervals beside the report's tiles
    assert (
        interval_text(ci.accuracy_difference, 4, signed=True) in page
        and "paired percentile bootstrap" in page
    )
    exact = min(1.0, 2 * sum(comb(b + c, k) for k in range(min(b, c) + 1)) / 2 ** (b + c))
    assert result.mcnemar_p == pytest.approx(exact, rel=1e-9)
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text()) == result.model_dump()

    flips = pq.read_table(tmp_path / "cmp" / "flips" / "flips.parquet").to_pylist()
    assert [r["id"] for r in flips] == sorted(flipped)
    for r in flips:
        a, b = expected[r["id"]]
        assert (r["label_a"], r["label_b"], r["label"]) == (a.label, b.label, truth[r["id"]])
        assert r["score_a"] == pytest.approx(a.score, abs=1e-5) and r["score_b"] == pytest.approx(
            b.score, abs=1e-5
        )
    assert (tmp_path / "cmp" / "report.html").exists()


def test_sigkilled_compare_resumes_without_duplicates(
    ray_local, tmp_path: Path, two_models: tuple[str, str]
) -> None:
    """A real `bm-ray compare` is SIGKILLed while its second leg runs, then rerun: leg A is resumed whole,
    leg B continues, every id is predicted once per leg and the flips are those of the two models."""
    ids = write_good_rows(tmp_path / "rows.jsonl", 400)
    ingest = IngestSpec(input=[str(tmp_path / "rows.jsonl")], rows_per_block=5)
    out = tmp_path / "cmp"
    spec = CompareSpec(models=list(two_models), input=ingest, output=str(out), batch_size=5, actors=1)
    spec_file = tmp_path / "compare.yaml"
    spec_file.write_text(
        yaml.safe_dump({**spec.model_dump(mode="json"), "models": ["/overridden/by/flags"] * 2})
    )
    args = ["compare", "--spec", str(spec_file), "--model", two_models[0], "--model", two_models[1]]
    log = (tmp_path / "driver.log").open("wb")
    driver = start_bm_ray(args, log)
    try:
        deadline = time.monotonic() + 300
        while not list((out / "b" / "_commits").glob("*.json")) and time.monotonic() < deadline:
            if driver.poll() is not None:
                tail = (tmp_path / "driver.log").read_text(errors="replace")[-3000:]
                pytest.fail(f"compare ended (exit {driver.returncode}) before it was killed:\n{tail}")
            time.sleep(0.2)
        assert list((out / "b" / "_commits").glob("*.json")), "leg b made no commits within 300 s"
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=60)
        log.close()
    assert not (out / "compare.json").exists()
    committed = sum(
        json.loads(r.read_text())["rows_committed"] for r in (out / "b" / "_commits").glob("*.json")
    )
    assert 0 < committed < len(ids)

    result = compare(spec)
    assert result.legs["a"].rows_resumed == len(ids)  # the finished leg read nothing again
    # Ray workers of the killed job may commit a little more before they notice: at least what was seen.
    assert result.legs["b"].rows_resumed >= committed
    for leg_name in ("a", "b"):
        predictions = ids_exactly_once(out / leg_name, set(ids))
        assert sorted(predictions.column("id").to_pylist()) == sorted(ids)
    expected, _ = expected_comparison(two_models, ingest)
    flipped = sorted(i for i, (a, b) in expected.items() if a.label != b.label)
    assert result.rows == len(ids) and result.rows_flipped == len(flipped)
    assert pq.read_table(out / "flips" / "flips.parquet").column("id").to_pylist() == flipped

    # The CLI on the finished output: nothing classified again, the same comparison, the summary table.
    rerun = CliRunner().invoke(app, args)
    assert rerun.exit_code == 0, rerun.output
    assert json.loads((out / "compare.json").read_text())["flip_matrix"] == result.flip_matrix.model_dump()
    printed = " ".join(rerun.output.split())
    assert f"{result.agreement:.2%}" in printed and "McNemar" in printed
    assert str(out / "compare.json") in printed
