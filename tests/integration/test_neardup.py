"""Near-duplicate clusters, the leakage-aware grouped split and the leakage report (real Ray Data)."""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import ray
from tiny_model import make_tiny_model
from typer.testing import CliRunner

from bm_ray.cli.main import app
from bm_ray.corpus import neardup

LABELS = ["a", "b", "c"]


def _text(rng: random.Random, words: int = 30) -> str:
    return " ".join(f"w{rng.randrange(50_000)}" for _ in range(words))


def _near_copy(text: str, rng: random.Random) -> str:
    """Same story, lightly edited: one word replaced, different case and punctuation."""
    words = text.split()
    words[rng.randrange(len(words))] = "edited"
    return (" ".join(words) + " !").upper()


def planted_corpus(seed: int = 0) -> tuple[list[dict], list[set[str]]]:
    """300 unrelated rows plus planted clusters: 12 exact pairs, 10 near-duplicate triples
    (one exact + one near copy) and 4 chains a~b~c where a and c are not similar themselves."""
    rng = random.Random(seed)
    rows, clusters = [], []

    def add(text: str, label: str) -> str:
        key = f"r{len(rows)}"
        rows.append({"id": key, "text": text, "label": label})
        return key

    for i in range(300):
        add(_text(rng), LABELS[i % 3])
    for i in range(12):
        text, label = _text(rng), LABELS[i % 3]
        clusters.append({add(text, label), add("  " + text.upper() + ".", label)})
    for i in range(10):
        text, label = _text(rng), LABELS[i % 3]
        clusters.append({add(text, label), add(text, label), add(_near_copy(text, rng), label)})
    for i in range(4):
        first, second = _text(rng, 20), _text(rng, 20)
        label = LABELS[i % 3]
        clusters.append({add(first, label), add(first + " " + second, label), add(second, label)})
    return rows, clusters


def test_normalise_and_short_texts() -> None:
    assert neardup.normalise("  Hello,  WORLD!!  it's\tme ") == "hello world it s me"
    assert neardup.shingles("two words").size == 1  # shorter than a shingle: one shingle
    assert neardup.jaccard(neardup.shingles("a b c d e f"), neardup.shingles("A b c d e, f")) == 1.0


def test_planted_clusters_are_found(ray_local: None) -> None:
    rows, planted = planted_corpus()
    found = neardup.find_clusters(blocks_of(rows), key_column="id")
    got: dict[str, set[str]] = {}
    for key, cluster in found.cluster_of.items():
        got.setdefault(cluster, set()).add(key)
    assert sorted(map(sorted, got.values())) == sorted(map(sorted, planted))
    assert found.counts()["exact_pairs"] == 12 + 10


def blocks_of(rows: list[dict]) -> ray.data.Dataset:
    """A dataset of `rows` in 4 blocks, as a small corpus file reads. `from_items` would make up to 200
    one-row blocks, and every Ray Data stage then runs 200 tasks: ~15 s more per split on 2 cores."""
    return ray.data.from_items(rows, override_num_blocks=4)


def _ids(ds: ray.data.Dataset) -> list[str]:
    return sorted(r["id"] for r in ds.select_columns(["id"]).take_all())


def test_grouped_split_keeps_clusters_whole_and_stratified(ray_local: None) -> None:
    rows, planted = planted_corpus()
    ds = blocks_of(rows)
    train_ds, val_ds = neardup.grouped_split(ds, neardup.find_clusters(ds, key_column="id"), 0.2, 7)
    train, val = _ids(train_ds), _ids(val_ds)
    assert sorted(train + val) == sorted(r["id"] for r in rows)  # every row on exactly one side
    val_set = set(val)
    for cluster in planted:
        assert len(cluster & val_set) in (0, len(cluster)), f"cluster {sorted(cluster)} straddles the split"
    assert any(cluster <= val_set for cluster in planted)  # clusters do go to validation
    label_of = {r["id"]: r["label"] for r in rows}
    totals, in_val = Counter(label_of.values()), Counter(label_of[i] for i in val)
    for label in LABELS:  # stratified: each label's share within one (≤ 3-row) cluster of 20%
        assert abs(in_val[label] - 0.2 * totals[label]) <= 3, (label, in_val, totals)


def test_cluster_split_is_deterministic_and_seeded(ray_local: None) -> None:
    """The split of given clusters (the step after finding them) depends on the seed and nothing else."""
    rows, planted = planted_corpus()
    cluster_of = {key: min(cluster) for cluster in planted for key in cluster}
    clustered = blocks_of([{**r, "cluster": cluster_of.get(r["id"], r["id"])} for r in rows]).materialize()

    def split(seed: int) -> tuple[list[str], list[str]]:
        train, val = neardup.split_by_cluster(clustered, 0.2, seed)
        return _ids(train), _ids(val)

    first = split(7)
    assert split(7) == first
    assert split(8) != first


def test_a_grouped_split_with_no_room_for_validation_refuses(ray_local: None) -> None:
    """One cluster holding every row cannot be split: a clear error, never a run validated on 0 rows."""
    from bm_ray.jobs.train.data import split_rows
    from bm_ray.specs import TrainSpec

    text = "the central bank signals a pause while markets rally on tech earnings"
    rows = [{"id": f"r{i}", "text": f"{text} {i}", "label": LABELS[i % len(LABELS)]} for i in range(30)]
    spec = TrainSpec.model_validate({"data": {"input": ["corpus.jsonl"]}, "output": "out"})
    with pytest.raises(ValueError, match=r"left no validation rows.*--split random"):
        split_rows(blocks_of(rows), spec)
    train, val, _, leakage = split_rows(blocks_of(rows), spec.model_copy(update={"split": "random"}))
    assert train.count() + val.count() == 30 and leakage["fraction"] == 1.0


def test_leakage_report_counts_planted_duplicates_exactly(ray_local: None) -> None:
    rng = random.Random(3)
    train_rows = [{"id": f"t{i}", "text": _text(rng)} for i in range(200)]
    val_rows = [{"id": f"v{i}", "text": _text(rng)} for i in range(100)]
    for i in range(7):  # 7 exact copies (up to case and punctuation) of training rows
        val_rows[i]["text"] = train_rows[i]["text"].upper() + "."
    for i in range(7, 12):  # 5 near copies
        val_rows[i]["text"] = _near_copy(train_rows[i]["text"], rng)
    val_rows[12]["text"] = val_rows[13]["text"]  # duplicated within validation only: not leakage
    report = neardup.leakage_report(blocks_of(train_rows), blocks_of(val_rows))
    assert (report["val_rows"], report["exact"], report["near"]) == (100, 7, 5)
    assert report["fraction"] == 0.12
    assert "MinHash" in report["method"]
    assert "12 of 100" in (neardup.leakage_warning(report) or "")
    assert neardup.leakage_warning({**report, "exact": 1, "near": 0, "fraction": 0.01}) is None


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_ingest_near_duplicates_writes_a_cluster_per_row(ray_local: None, tmp_path: Path) -> None:
    rows, planted = planted_corpus()
    corpus = _write_jsonl(tmp_path / "c.jsonl", rows)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["ingest", "--input", str(corpus), "--output", str(out), "--near-duplicates"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["near_duplicates"]["clusters"] == len(planted)
    assert summary["near_duplicates"]["rows_in_clusters"] == sum(map(len, planted))
    table = pq.read_table(out / "near_duplicates")
    cluster_of = dict(zip(table.column("id").to_pylist(), table.column("cluster").to_pylist(), strict=True))
    assert len(cluster_of) == summary["rows_ok"] == len(rows)
    for cluster in planted:
        assert len({cluster_of[key] for key in cluster}) == 1
    assert cluster_of["r0"] == "r0"  # a row without duplicates is its own cluster


def test_evaluate_train_data_reports_leakage(
    ray_local: None, tokenizer_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened, closed = track_dedupe_indexes(monkeypatch)
    rng = random.Random(5)
    train_rows = [{"id": f"t{i}", "text": _text(rng), "label": LABELS[i % 3]} for i in range(60)]
    eval_rows = [{"id": f"e{i}", "text": _text(rng), "label": LABELS[i % 3]} for i in range(40)]
    for i in range(4):
        eval_rows[i]["text"] = train_rows[10 + i]["text"]
    eval_rows[4]["text"] = _near_copy(train_rows[20]["text"], rng)
    model = make_tiny_model(tmp_path / "model", LABELS, tokenizer_dir)
    args = ["evaluate", "--model", str(model), "--data", str(_write_jsonl(tmp_path / "e.jsonl", eval_rows))]
    args += [
        "--train-data",
        str(_write_jsonl(tmp_path / "t.jsonl", train_rows)),
        "--output",
        str(tmp_path / "m"),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    leakage = json.loads((tmp_path / "m" / "metrics.json").read_text(encoding="utf-8"))["leakage"]
    assert (leakage["val_rows"], leakage["exact"], leakage["near"]) == (40, 4, 1)
    assert "warning: 5 of 40" in result.output
    # evaluate read three corpora (the data, then train and data again for leakage): each read's
    # dedupe actors are closed by evaluate itself, not left to the driver's exit or garbage collection
    assert len(opened) == 3 and {id(i) for i in opened} == {id(i) for i in closed}
    assert live_dedupe_shards() == 0


def track_dedupe_indexes(monkeypatch: pytest.MonkeyPatch) -> tuple[list[Any], list[Any]]:
    """Lists that fill with every DedupeIndex created and every one closed (the real methods still run)."""
    from bm_ray.corpus.dedupe import DedupeIndex

    opened: list[Any] = []
    closed: list[Any] = []
    create, close = DedupeIndex.create.__func__, DedupeIndex.close

    def tracked_create(cls: type[DedupeIndex], *args: Any, **kwargs: Any) -> DedupeIndex:
        opened.append(create(cls, *args, **kwargs))
        return opened[-1]

    def tracked_close(self: DedupeIndex) -> None:
        closed.append(self)
        close(self)

    monkeypatch.setattr(DedupeIndex, "create", classmethod(tracked_create))
    monkeypatch.setattr(DedupeIndex, "close", tracked_close)
    return opened, closed


def live_dedupe_shards(timeout_s: float = 20.0) -> int:
    """Live dedupe shard actors of this Ray (a killed actor takes a moment to leave the state API)."""
    import ray
    from ray.util.state import list_actors

    address = ray.get_runtime_context().gcs_address  # this session's Ray, whatever else runs here
    deadline = time.monotonic() + timeout_s
    while True:
        alive = list_actors(
            address=address, filters=[("class_name", "=", "IdShard"), ("state", "=", "ALIVE")]
        )
        if not alive or time.monotonic() > deadline:
            return len(alive)
        time.sleep(0.5)


def test_small_group_bys_plan_the_task_shuffle_and_leave_the_context_alone(ray_local: None) -> None:
    """A small group-by input is re-rooted on Ray's task-based sort shuffle (no aggregator actors to start);
    a large one keeps Ray's default; the caller's DataContext is unchanged either way."""
    from ray.data import DataContext
    from ray.data.context import ShuffleStrategy

    from bm_ray.corpus.shuffle import TASK_SHUFFLE_MAX_ROWS, group_by_input

    before = DataContext.get_current().shuffle_strategy
    ds = blocks_of(planted_corpus()[0]).materialize()
    small = group_by_input(ds, ds.count())
    assert small.context.shuffle_strategy == ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    assert sorted(_ids(small)) == sorted(_ids(ds))  # the same rows
    assert group_by_input(ds, TASK_SHUFFLE_MAX_ROWS + 1) is ds
    assert DataContext.get_current().shuffle_strategy == before
