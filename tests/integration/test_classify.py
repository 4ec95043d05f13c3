"""`bm-ray classify`: exact accounting with broken rows, parity with the engine and evaluate, exactly-once
under a killed actor and a killed job (resume), overwrite, and the reduced-precision check."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from drivers import start_bm_ray
from fault_corpus import FaultCorpus, write_fault_corpus
from tiny_model import make_tiny_model

from bm_ray.bench.classify import precision_agreement
from bm_ray.corpus import ok_rows, read_corpus
from bm_ray.jobs.classify import classify
from bm_ray.jobs.scoring import corpus_batches, evaluate_batches
from bm_ray.model.engine import Predictor
from bm_ray.model.metrics import ConfusionMatrix
from bm_ray.model.registry import read_model_info
from bm_ray.specs import ClassifySpec, IngestSpec

LABELS = ["x", "y", "z"]
WORDS = ["markets", "rally", "as", "central", "bank", "signals", "pause", "while", "tech", "earnings"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: str) -> str:
    """A tiny random BERT classifier with the real MiniLM tokenizer."""
    return str(make_tiny_model(tmp_path_factory.mktemp("model") / "tiny", LABELS, tokenizer_dir))


def write_good_rows(path: Path, n: int, prefix: str = "g") -> list[str]:
    """`n` valid JSONL rows of varied length (ids prefix0.., under 200 characters); returns the ids."""
    ids = [f"{prefix}{i}" for i in range(n)]
    with path.open("w", encoding="utf-8") as f:
        for i, id_ in enumerate(ids):
            text = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(3 + (7 * i) % 20))
            f.write(json.dumps({"id": id_, "text": text, "label": LABELS[i % 3], "url": f"u{i}"}) + "\n")
    return ids


def fault_and_good_options(tmp_path: Path, good_rows: int) -> tuple[FaultCorpus, list[str], dict[str, Any]]:
    """The JSONL fault corpus plus `good_rows` valid rows: (the fault corpus, the good ids, IngestSpec
    options reading both). max_text_chars=200: good rows stay whole; the fault corpus' 250-character
    row is still too_long."""
    corpus = write_fault_corpus(tmp_path, "jsonl")
    good = write_good_rows(tmp_path / "good.jsonl", good_rows)
    options = {**corpus.spec, "input": [corpus.input, str(tmp_path / "good.jsonl")], "max_text_chars": 200}
    return corpus, good, options


def read_dir(path: Path) -> pa.Table | None:
    """All committed Parquet files of one output subdirectory (None when there are none)."""
    files = sorted(p for p in path.glob("*.parquet") if not p.name.startswith("."))
    return pa.concat_tables([pq.read_table(p) for p in files]) if files else None


def ids_exactly_once(out: Path, expected: set[str]) -> pa.Table:
    """Predictions ids and rejects sources are unique, and every expected id is predicted."""
    predictions, rejects = read_dir(out / "predictions"), read_dir(out / "rejects")
    seen = Counter(predictions.column("id").to_pylist())
    if rejects is not None:
        seen.update(rejects.column("source").to_pylist())
    assert max(seen.values()) == 1, [k for k, v in seen.items() if v > 1]
    assert set(predictions.column("id").to_pylist()) >= expected
    return predictions


def test_broken_rows_accounted_and_predictions_match_engine_and_evaluate(
    ray_local, tmp_path: Path, tiny_model: str
) -> None:
    corpus, good, options = fault_and_good_options(tmp_path, 40)
    ingest = IngestSpec(**options, keep_fields=["url"], rows_per_block=7)
    out = tmp_path / "out"
    summary = classify(ClassifySpec(model=tiny_model, input=ingest, output=str(out), batch_size=8, actors=2))

    assert summary.rows_read == corpus.rows_read + len(good)
    assert summary.rows_read == summary.rows_classified + summary.rows_rejected
    assert summary.rows_classified == len(corpus.ok_ids) + len(good)
    assert summary.rejected_by_reason == corpus.rejected_by_reason
    assert summary.blank_lines == corpus.blank_lines
    assert sum(summary.label_counts.values()) == summary.rows_classified
    assert summary.model.model_dump() == {
        "name": "tiny-bert",
        "version": read_model_info(tiny_model).version,
        "path": tiny_model,
    }
    assert summary.elapsed_s > 0 and summary.rows_per_s > 0
    assert json.loads((out / "summary.json").read_text()) == summary.model_dump()

    predictions = read_dir(out / "predictions")
    rejects = read_dir(out / "rejects")
    assert predictions.column_names == ["id", "label", "score", "scores", "windows", "model", "url"]
    assert predictions.schema.field("scores").type == pa.map_(pa.string(), pa.float32())
    assert sorted(predictions.column("id").to_pylist()) == sorted([*corpus.ok_ids, *good])
    assert (
        dict(zip(*rejects.select(["source", "reason"]).to_pydict().values(), strict=True)) == corpus.reasons
    )
    assert predictions.column("model").unique().to_pylist() == [
        f"tiny-bert/{read_model_info(tiny_model).version}"
    ]

    # The same ok rows through the engine in this process, and through evaluate's path.
    ds, _ = read_corpus(ingest)
    rows = ok_rows(ds, ["id", "text", "label"]).take_all()
    engine = Predictor.load(tiny_model, batch_size=8)
    expected = {r["id"]: p for r, p in zip(rows, engine.predict([r["text"] for r in rows]), strict=True)}
    got = {r["id"]: r for r in predictions.to_pylist()}
    assert set(got) == set(expected)
    for id_, pred in expected.items():
        assert got[id_]["label"] == pred.label
        assert np.isclose(got[id_]["score"], pred.score, atol=1e-5)
        assert np.allclose(
            [dict(got[id_]["scores"])[k] for k in LABELS], [pred.scores[k] for k in LABELS], atol=1e-5
        )

    report = evaluate_batches(engine, corpus_batches(read_corpus(ingest)[0], Counter()))
    matrix = ConfusionMatrix(LABELS)
    known = [r for r in rows if r["label"] in matrix.index]
    matrix.add([r["label"] for r in known], [got[r["id"]]["label"] for r in known])
    assert matrix.report()["confusion_matrix"] == report["confusion_matrix"]


def test_killed_actor_commits_every_id_exactly_once(tmp_path: Path, tiny_model: str) -> None:
    """A classify actor process is SIGKILLed mid-run from outside; Ray restarts it and Ray Data retries
    its batch: no id lost or doubled, and the job succeeds."""
    import psutil

    ids = write_good_rows(tmp_path / "rows.jsonl", 400)
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(
        yaml.safe_dump(
            {
                "kind": "classify",
                "model": "/overridden/by/flag",
                "input": {"input": str(tmp_path / "rows.jsonl"), "rows_per_block": 5},
                "output": str(tmp_path / "out"),
                "batch_size": 5,
            }
        )
    )
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    bm_ray_cli = Path(sys.executable).with_name("bm-ray")
    args = [
        "classify",
        "--spec",
        str(spec_file),
        "--model",
        tiny_model,
        "--actors",
        "2",
        "--address",
        "local",
    ]
    log = (tmp_path / "driver.log").open("wb")
    driver = subprocess.Popen(
        [str(bm_ray_cli), *args], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    killed = None
    try:
        deadline = time.monotonic() + 240
        while driver.poll() is None and time.monotonic() < deadline:
            if killed is None and len(list((out / "_commits").glob("*.json"))) >= 2:
                for proc in psutil.Process(driver.pid).children(recursive=True):
                    try:
                        if "ClassifyProcessor" in " ".join(proc.cmdline()):
                            proc.kill()  # SIGKILL: the actor dies between or inside its batches
                            killed = proc.pid
                            break
                    except psutil.Error:
                        continue
            time.sleep(0.1)
        returncode = driver.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        log.close()
    assert killed is not None, "no classify actor was found to kill before the job ended"
    assert returncode == 0, (tmp_path / "driver.log").read_text(errors="replace")[-3000:]
    predictions = ids_exactly_once(out, set(ids))
    assert sorted(predictions.column("id").to_pylist()) == sorted(ids)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows_read"] == summary["rows_classified"] == len(ids)
    assert f"{out}/summary.json" in (tmp_path / "driver.log").read_text(errors="replace")  # the path printed


def test_sigkilled_classify_resumes_exactly_once(ray_local, tmp_path: Path, tiny_model: str) -> None:
    """A real `bm-ray classify` is SIGKILLed mid-run (with its embedded Ray), then rerun into the same
    output: every id is predicted once, nothing is missing, and the read-time accounting is exact."""
    ids = write_good_rows(tmp_path / "rows.jsonl", 400)
    ingest = IngestSpec(input=[str(tmp_path / "rows.jsonl")], rows_per_block=5)
    out = tmp_path / "out"
    spec = ClassifySpec(model=tiny_model, input=ingest, output=str(out), batch_size=5, actors=1)
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    log = (tmp_path / "driver.log").open("wb")
    driver = start_bm_ray(["classify", "--spec", str(spec_file)], log)
    try:
        deadline = time.monotonic() + 300
        while len(list((out / "_commits").glob("*.json"))) < 4 and time.monotonic() < deadline:
            if driver.poll() is not None:
                tail = (tmp_path / "driver.log").read_text(errors="replace")[-3000:]
                pytest.fail(
                    f"the classify job ended (exit {driver.returncode}) before it was killed:\n{tail}"
                )
            time.sleep(0.2)
        assert len(list((out / "_commits").glob("*.json"))) >= 4, "no commits within 300 s"
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=60)
        log.close()
    assert (out / "_lease.json").exists()  # left behind by the killed driver: stale, taken over below
    committed = sum(json.loads(r.read_text())["rows_committed"] for r in (out / "_commits").glob("*.json"))
    assert 0 < committed < len(ids)

    resumed = classify(spec)
    assert resumed.rows_resumed >= committed and resumed.rows_this_run == len(ids) - resumed.rows_resumed
    assert resumed.rows_read == resumed.rows_classified == len(ids)
    predictions = ids_exactly_once(out, set(ids))
    assert sorted(predictions.column("id").to_pylist()) == sorted(ids)
    assert not list(out.rglob(".tmp-*")) and not (out / "_lease.json").exists()

    # a commit whose data file is gone: detected on resume, its rows classified again
    lost = sorted((out / "predictions").glob("*.parquet"))[0]
    lost_rows = pq.read_table(lost).num_rows
    lost.unlink()
    again = classify(spec)
    assert again.rows_this_run == lost_rows and again.rows_classified == len(ids)
    assert sorted(ids_exactly_once(out, set(ids)).column("id").to_pylist()) == sorted(ids)

    with pytest.raises(ValueError, match="different job"):
        classify(spec.model_copy(update={"input": ingest.model_copy(update={"text_fields": ["body"]})}))

    fresh = classify(spec.model_copy(update={"overwrite": True}))
    assert fresh.rows_resumed == 0 and fresh.rows_this_run == fresh.rows_read == len(ids)
    ids_exactly_once(out, set(ids))


def test_resume_refuses_another_model_version_at_the_same_path(
    ray_local, tmp_path: Path, tokenizer_dir: str
) -> None:
    model_dir = tmp_path / "model"
    make_tiny_model(model_dir, LABELS, tokenizer_dir, seed=0)
    old = read_model_info(model_dir).version
    ids = write_good_rows(tmp_path / "rows.jsonl", 20)
    ingest = IngestSpec(input=[str(tmp_path / "rows.jsonl")], rows_per_block=10)
    spec = ClassifySpec(
        model=str(model_dir), input=ingest, output=str(tmp_path / "out"), batch_size=8, actors=1
    )
    first = classify(spec)
    assert first.model.version == old
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["model"]["version"] == old
    assert set(ids_exactly_once(tmp_path / "out", set(ids)).column("model").to_pylist()) == {
        f"tiny-bert/{old}"
    }

    shutil.rmtree(model_dir)
    make_tiny_model(model_dir, LABELS, tokenizer_dir, seed=1)  # retrained at the same path
    new = read_model_info(model_dir).version
    assert new != old
    with pytest.raises(
        ValueError, match=rf"different job \(differs in: model_version: {old} → {new}\).*overwrite"
    ):
        classify(spec)
    fresh = classify(spec.model_copy(update={"overwrite": True}))
    assert fresh.model.version == new and fresh.rows_read == len(ids)


def test_precision_agreement_of_fp32_with_itself_is_exact(tiny_model: str) -> None:
    """The bf16 contract (>= 0.995 on real text) needs a trained model: tests/model/test_behaviour.py."""
    texts = [" ".join(WORDS[i % len(WORDS) :]) for i in range(20)]
    assert precision_agreement(tiny_model, texts, "fp32") == 1.0
    assert precision_agreement(tiny_model, [], "bf16") == 1.0


def test_block_size_spreads_a_small_corpus_over_every_actor() -> None:
    from bm_ray.jobs.classify import BLOCKS_PER_ACTOR, CLASSIFY_BLOCK_BYTES, MIN_BLOCK_BYTES, block_bytes

    sample = 100 * 1024  # the demo's 406-row sample corpus
    assert sample // block_bytes(sample, 2) >= 2 * BLOCKS_PER_ACTOR - 1  # ~4 blocks per actor, not 1 block
    assert block_bytes(10 * 1024**3, 2) == CLASSIFY_BLOCK_BYTES  # large corpora: ~1,000-row blocks
    assert block_bytes(1024, 8) == MIN_BLOCK_BYTES


def test_a_small_corpus_reaches_the_actors_as_several_tasks(
    ray_local, tmp_path: Path, tiny_model: str
) -> None:
    """400 rows with the default rows_per_block (1,000): the actor pool gets them as several block-sized
    calls (one commit record each), so both actors have work; bundled into one 1,000-row batch they were a
    single task on whichever actor started first."""
    ids = write_good_rows(tmp_path / "rows.jsonl", 400)
    out = tmp_path / "out"
    spec = ClassifySpec(
        model=tiny_model, input=IngestSpec(input=[str(tmp_path / "rows.jsonl")]), output=str(out), actors=2
    )
    assert spec.input.rows_per_block >= len(ids)
    summary = classify(spec)
    assert summary.rows_classified == len(ids)
    assert len(list((out / "_commits").glob("*.json"))) >= 2 * 2  # at least two calls per actor
    ids_exactly_once(out, set(ids))
