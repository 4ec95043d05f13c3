"""Near-duplicate clusters, the leakage-aware grouped split and the leakage report (real Ray Data)."""

from __future__ import annotations

import random
from collections import Counter

import ray

from bm_ray import neardup

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
    found = neardup.find_clusters(ray.data.from_items(rows), key_column="id")
    got: dict[str, set[str]] = {}
    for key, cluster in found.cluster_of.items():
        got.setdefault(cluster, set()).add(key)
    assert sorted(map(sorted, got.values())) == sorted(map(sorted, planted))
    assert found.counts()["exact_pairs"] == 12 + 10


def _split_ids(rows: list[dict], seed: int) -> tuple[list[str], list[str]]:
    train, val, _ = neardup.grouped_split(ray.data.from_items(rows), 0.2, seed, key_column="id")
    return sorted(r["id"] for r in train.take_all()), sorted(r["id"] for r in val.take_all())


def test_grouped_split_keeps_clusters_whole_stratified_and_seeded(ray_local: None) -> None:
    rows, planted = planted_corpus()
    train, val = _split_ids(rows, seed=7)
    assert sorted(train + val) == sorted(r["id"] for r in rows)  # every row on exactly one side
    val_set = set(val)
    for cluster in planted:
        assert len(cluster & val_set) in (0, len(cluster)), f"cluster {sorted(cluster)} straddles the split"
    assert any(cluster <= val_set for cluster in planted)  # clusters do go to validation
    label_of = {r["id"]: r["label"] for r in rows}
    totals, in_val = Counter(label_of.values()), Counter(label_of[i] for i in val)
    for label in LABELS:  # stratified: each label's share within one (≤ 3-row) cluster of 20%
        assert abs(in_val[label] - 0.2 * totals[label]) <= 3, (label, in_val, totals)
    assert _split_ids(rows, seed=7) == (train, val)  # deterministic
    assert _split_ids(rows, seed=8) != (train, val)  # and seeded


def test_leakage_report_counts_planted_duplicates_exactly(ray_local: None) -> None:
    rng = random.Random(3)
    train_rows = [{"id": f"t{i}", "text": _text(rng)} for i in range(200)]
    val_rows = [{"id": f"v{i}", "text": _text(rng)} for i in range(100)]
    for i in range(7):  # 7 exact copies (up to case and punctuation) of training rows
        val_rows[i]["text"] = train_rows[i]["text"].upper() + "."
    for i in range(7, 12):  # 5 near copies
        val_rows[i]["text"] = _near_copy(train_rows[i]["text"], rng)
    val_rows[12]["text"] = val_rows[13]["text"]  # duplicated within validation only: not leakage
    report = neardup.leakage_report(ray.data.from_items(train_rows), ray.data.from_items(val_rows))
    assert (report["val_rows"], report["exact"], report["near"]) == (100, 7, 5)
    assert report["fraction"] == 0.12
    assert "MinHash" in report["method"]
    assert "12 of 100" in (neardup.leakage_warning(report) or "")
    assert neardup.leakage_warning({**report, "exact": 1, "near": 0, "fraction": 0.01}) is None
