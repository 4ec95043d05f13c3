"""Exact and near-duplicate detection: normalised text → word shingles → MinHash → LSH → verified Jaccard.

Data layer: nothing here starts Ray or knows a model. Functions that take a Ray Dataset run their
per-row work as Ray Data tasks (the Ray runtime the caller started):

1. ``map_batches``: every row's text is normalised (NFKC, case-folded, every run of non-alphanumeric
   characters a single space), cut into word :data:`SHINGLE_WORDS`-grams (a text shorter than that is
   one shingle), each hashed to 32 bits, and summarised by a :data:`NUM_PERM`-value MinHash signature.
2. ``groupby(band key).count()``: every row's :data:`BANDS` band keys (hashes of :data:`ROWS_PER_BAND`
   signature values each) are counted; only keys shared by 2+ rows come back (few: a handful per
   duplicated row).
3. ``map_batches`` + ``groupby(band key).map_groups``: each row is emitted once per *shared* band key,
   carrying its shingle hashes; in each bucket the exact Jaccard similarity of every pair is computed
   and pairs at or above the threshold become edges (*exact* when the normalised texts are equal).

Clusters are the connected components of the edges, found with a union-find on the driver: O(edges),
not O(rows). The rest grows linearly with the rows (signatures), with rows × :data:`BANDS` small
integer rows (the count), and with the rows in shared buckets × their shared bands (rows carrying
shingle hashes), plus the pairs verified per bucket (quadratic in a bucket's size; buckets larger than
:data:`MAX_BUCKET` are compared to their first row only, so one boilerplate text shared by thousands
of rows cannot blow up the job).

Threshold: :data:`DEFAULT_THRESHOLD` = 0.3 word-5-gram Jaccard. On AG News this catches the same
story republished by another source with small edits (at 0.3, 17% of the 6,001 development rows have
such a copy; at 0.5, 10%). The 64 bands × 2 rows LSH finds a pair at Jaccard 0.3 with probability
1 - (1 - 0.3²)⁶⁴ ≈ 0.998 (≈ 0.93 at 0.2, where pairs would be below the threshold anyway).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from ray.data.expressions import col

from bm_ray.corpus.shuffle import group_by_input, partitions

SHINGLE_WORDS = 5
"""Words per shingle."""
NUM_PERM = 128
"""MinHash values per signature."""
BANDS = 64
"""LSH bands; NUM_PERM / BANDS signature values per band."""
ROWS_PER_BAND = NUM_PERM // BANDS
DEFAULT_THRESHOLD = 0.3
"""Word-5-gram Jaccard similarity at or above which two texts are near-duplicates."""
MAX_BUCKET = 200
"""Band buckets larger than this are verified against their first row only (bounded cost)."""

_PRIME = np.uint64(4294967291)  # largest prime below 2**32: (a * x + b) stays below 2**64
_PERM_RNG = np.random.default_rng(20240607)  # fixed: signatures must agree across processes and runs
_PERM_A = _PERM_RNG.integers(1, 2**31 - 1, size=NUM_PERM, dtype=np.uint64)
_PERM_B = _PERM_RNG.integers(0, 2**31 - 1, size=NUM_PERM, dtype=np.uint64)
_BAND_MIX = _PERM_RNG.integers(1, 2**62, size=ROWS_PER_BAND, dtype=np.uint64)
_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)

METHOD = (
    f"normalised text (NFKC, casefold, punctuation removed); word {SHINGLE_WORDS}-gram shingles; "
    f"MinHash {NUM_PERM} perms, LSH {BANDS} bands x {ROWS_PER_BAND} rows; verified Jaccard >= {{threshold}}; "
    "exact = equal normalised text"
)


def method(threshold: float = DEFAULT_THRESHOLD) -> str:
    """How duplicates were found, for reports (`leakage.method`, ingest summaries)."""
    return METHOD.format(threshold=threshold)


def normalise(text: str) -> str:
    """Text as compared: NFKC, case-folded, every run of non-alphanumeric characters one space."""
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def _hash32(value: str) -> int:
    return int.from_bytes(hashlib.blake2b(value.encode("utf-8"), digest_size=4).digest(), "little")


def text_key(text: str) -> str:
    """Hex digest of the normalised text: equal for exact duplicates."""
    return hashlib.blake2b(normalise(text).encode("utf-8"), digest_size=8).hexdigest()


def shingles(text: str, words: int = SHINGLE_WORDS) -> np.ndarray:
    """Sorted unique 32-bit hashes of the word `words`-grams of the normalised text (uint32)."""
    tokens = normalise(text).split()
    if len(tokens) <= words:
        grams = [" ".join(tokens)]
    else:
        grams = [" ".join(tokens[i : i + words]) for i in range(len(tokens) - words + 1)]
    return np.unique(np.fromiter((_hash32(g) for g in grams), dtype=np.uint32, count=len(grams)))


def minhash(shingle_hashes: np.ndarray) -> np.ndarray:
    """MinHash signature (NUM_PERM uint64 values) of one shingle-hash set."""
    x = shingle_hashes.astype(np.uint64)[:, None] % _PRIME
    return ((_PERM_A[None, :] * x + _PERM_B[None, :]) % _PRIME).min(axis=0)


def band_keys(signature: np.ndarray) -> np.ndarray:
    """One int64 key per LSH band of a signature (band index mixed in, so bands never collide)."""
    bands = signature.reshape(BANDS, ROWS_PER_BAND)
    with np.errstate(over="ignore"):  # wrap-around multiplication is the hash
        mixed = (bands * _BAND_MIX[None, :]).sum(axis=1) ^ (
            np.arange(BANDS, dtype=np.uint64) << np.uint64(56)
        )
    return mixed.view(np.int64)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard similarity of two sorted unique hash arrays."""
    inter = np.intersect1d(a, b, assume_unique=True).size
    return inter / (a.size + b.size - inter) if (a.size + b.size) else 1.0


SIGNATURE_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("text_key", pa.string()),
        ("shingles", pa.list_(pa.uint32())),
        ("band_keys", pa.list_(pa.int64())),
    ]
)
BAND_SCHEMA = pa.schema(
    [
        ("band_key", pa.int64()),
        ("key", pa.string()),
        ("text_key", pa.string()),
        ("shingles", pa.list_(pa.uint32())),
    ]
)
EDGE_SCHEMA = pa.schema(
    [("a", pa.string()), ("b", pa.string()), ("jaccard", pa.float64()), ("exact", pa.bool_())]
)


def signature_rows(batch: pa.Table, key_column: str = "key") -> pa.Table:
    """Ray Data task: (key, text) rows → (key, text_key, shingles, band_keys)."""
    texts = [t or "" for t in batch.column("text").to_pylist()]
    sets = [shingles(t) for t in texts]
    return pa.table(
        {
            "key": batch.column(key_column).cast(pa.string()),
            "text_key": pa.array([text_key(t) for t in texts], pa.string()),
            "shingles": pa.array([s.tolist() for s in sets], pa.list_(pa.uint32())),
            "band_keys": pa.array([band_keys(minhash(s)).tolist() for s in sets], pa.list_(pa.int64())),
        },
        schema=SIGNATURE_SCHEMA,
    )


def _band_key_rows(batch: pa.Table) -> pa.Table:
    return pa.table({"band_key": pc.list_flatten(batch.column("band_keys"))})


def band_rows(batch: pa.Table, colliding: set[int]) -> pa.Table:
    """Ray Data task: one row per (row, band) whose band key is shared with another row."""
    out: dict[str, list[Any]] = {name: [] for name in BAND_SCHEMA.names}
    columns = [batch.column(c).to_pylist() for c in ("key", "text_key", "shingles", "band_keys")]
    for key, tkey, sh, bands in zip(*columns, strict=True):
        for band in bands:
            if band in colliding:
                for name, value in zip(BAND_SCHEMA.names, (band, key, tkey, sh), strict=True):
                    out[name].append(value)
    return pa.table(out, schema=BAND_SCHEMA)


def verify_bucket(group: pa.Table, threshold: float) -> pa.Table:
    """Ray Data group task: verified near-duplicate edges among the rows of one LSH band bucket."""
    if group.num_rows < 2:
        return EDGE_SCHEMA.empty_table()
    keys = group.column("key").to_pylist()
    tkeys = group.column("text_key").to_pylist()
    sets = [np.asarray(s, dtype=np.uint32) for s in group.column("shingles").to_pylist()]
    order = sorted(range(len(keys)), key=keys.__getitem__)  # deterministic pair orientation
    edges: list[tuple[str, str, float, bool]] = []
    for pos, i in enumerate(order):
        partners = order[pos + 1 :] if len(order) <= MAX_BUCKET or pos == 0 else []
        for j in partners:
            if keys[i] == keys[j]:
                continue
            exact = tkeys[i] == tkeys[j]
            similarity = 1.0 if exact else jaccard(sets[i], sets[j])
            if similarity >= threshold:
                edges.append((keys[i], keys[j], similarity, exact))
    if not edges:
        return EDGE_SCHEMA.empty_table()
    a, b, sim, exact = zip(*edges, strict=True)
    return pa.table({"a": a, "b": b, "jaccard": sim, "exact": exact}, schema=EDGE_SCHEMA)


def find_edges(ds: Any, threshold: float = DEFAULT_THRESHOLD, key_column: str = "key") -> pa.Table:
    """Verified duplicate edges (a < b, jaccard, exact) among the rows of a Ray Dataset.

    `ds` has a unique string column `key_column` and a `text` column. The work runs as Ray Data
    tasks (see the module docstring); the band keys shared by 2+ rows and the edges come back to
    the caller, each pair once.
    """
    signatures = (
        ds.select_columns([key_column, "text"])
        .map_batches(signature_rows, fn_kwargs={"key_column": key_column}, batch_format="pyarrow")
        .materialize()
    )
    band_row_count = signatures.count() * BANDS
    signatures = group_by_input(signatures, band_row_count)
    # Most band keys are unique: count them first (a vectorised aggregation), so the per-bucket
    # verification only runs on buckets of 2+ rows.
    counts = (
        signatures.map_batches(_band_key_rows, batch_format="pyarrow")
        .groupby("band_key", num_partitions=partitions(band_row_count))
        .count()
    )
    colliding = {
        key
        for t in _iter_tables(counts)
        for key, n in zip(t.column(0).to_pylist(), t.column(1).to_pylist(), strict=True)
        if n > 1
    }
    if not colliding:
        return EDGE_SCHEMA.empty_table()
    edges = (
        signatures.map_batches(band_rows, fn_kwargs={"colliding": colliding}, batch_format="pyarrow")
        .groupby("band_key", num_partitions=partitions(band_row_count))
        .map_groups(verify_bucket, fn_kwargs={"threshold": threshold}, batch_format="pyarrow")
    )
    tables = [t for t in _iter_tables(edges) if t.num_rows]
    if not tables:
        return EDGE_SCHEMA.empty_table()
    table = pa.concat_tables(tables)
    # A pair collides in several bands: keep it once (sorted, so the result is deterministic).
    seen: dict[tuple[str, str], tuple[float, bool]] = {}
    for a, b, sim, exact in zip(*(table.column(c).to_pylist() for c in EDGE_SCHEMA.names), strict=True):
        seen[(a, b)] = (sim, exact)
    pairs = sorted(seen)
    return pa.table(
        {
            "a": [p[0] for p in pairs],
            "b": [p[1] for p in pairs],
            "jaccard": [seen[p][0] for p in pairs],
            "exact": [seen[p][1] for p in pairs],
        },
        schema=EDGE_SCHEMA,
    )


def _iter_tables(ds: Any) -> Iterable[pa.Table]:
    yield from ds.iter_batches(batch_format="pyarrow", batch_size=None)


def clusters_from_edges(edges: pa.Table) -> dict[str, str]:
    """Connected components of the edges: key → cluster id (the smallest key of its component).

    Only keys that have an edge appear; every other row is its own cluster.
    """
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in zip(edges.column("a").to_pylist(), edges.column("b").to_pylist(), strict=True):
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {key: root(key) for key in parent}


@dataclass
class DuplicateClusters:
    """Near-duplicate clusters of a dataset: `cluster_of` maps every key with a duplicate to its cluster."""

    cluster_of: dict[str, str]
    edges: pa.Table
    threshold: float

    def counts(self) -> dict[str, Any]:
        """Clusters (of 2+ rows), rows in them, exact and near pairs, and the method (for summaries)."""
        exact = sum(self.edges.column("exact").to_pylist())
        return {
            "clusters": len(set(self.cluster_of.values())),
            "rows_in_clusters": len(self.cluster_of),
            "exact_pairs": exact,
            "near_pairs": self.edges.num_rows - exact,
            "threshold": self.threshold,
            "method": method(self.threshold),
        }


def find_clusters(
    ds: Any, threshold: float = DEFAULT_THRESHOLD, key_column: str = "key"
) -> DuplicateClusters:
    """Exact + near-duplicate clusters among the (`key_column`, `text`) rows of a Ray Dataset."""
    edges = find_edges(ds, threshold, key_column)
    return DuplicateClusters(clusters_from_edges(edges), edges, threshold)


def assign_clusters(batch: pa.Table, cluster_of: dict[str, str], key_column: str = "key") -> pa.Table:
    """Ray Data task: append `cluster` (the row's duplicate cluster, else its own key)."""
    keys = batch.column(key_column).to_pylist()
    return batch.append_column("cluster", pa.array([cluster_of.get(k, k) for k in keys], pa.string()))


def _unit_hash(value: str, seed: int) -> float:
    digest = hashlib.blake2b(f"{seed}:{value}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


def choose_val_clusters(group: pa.Table, fraction: float, seed: int) -> pa.Table:
    """Ray Data group task (one label): clusters in a seeded random order, taken into validation
    until the label's validation share reaches `fraction` of its rows (whole clusters only)."""
    clusters = group.column("cluster").to_pylist()
    sizes = group.column("rows").to_pylist()
    target = fraction * sum(sizes)
    taken, chosen = 0, []
    for i in sorted(range(len(clusters)), key=lambda i: (_unit_hash(clusters[i], seed), clusters[i])):
        # Take a cluster when it brings the share closer to the target (big clusters may be skipped).
        if abs(taken + sizes[i] - target) < abs(taken - target):
            taken += sizes[i]
            chosen.append(clusters[i])
    return pa.table({"cluster": pa.array(chosen, pa.string())})


def _cluster_sizes(group: pa.Table) -> pa.Table:
    """Ray Data group task (one cluster): its size and majority label (ties: smallest label)."""
    labels = group.column("label").to_pylist()
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    major = min(counts, key=lambda label: (-counts[label], label))
    return pa.table(
        {"cluster": [group.column("cluster")[0].as_py()], "label": [major], "rows": [len(labels)]}
    )


def split_by_cluster(ds: Any, fraction: float, seed: int) -> tuple[Any, Any]:
    """(train, val) of labelled rows with a `cluster` column: every cluster entirely on one side,
    stratified by (majority) label, seeded and deterministic.

    Ray Data work: a group-by per cluster (size, majority label), then a group-by per label that
    takes whole clusters into validation in a seeded order (see :func:`choose_val_clusters`); only the
    chosen validation cluster ids come back to the caller, to mark the rows. `cluster` is dropped.
    """
    ds = ds.materialize()
    ds = group_by_input(ds, ds.count())
    sizes = (
        ds.select_columns(["cluster", "label"])
        .groupby("cluster", num_partitions=partitions(ds.count()))
        .map_groups(_cluster_sizes, batch_format="pyarrow")
    )
    chosen = sizes.groupby("label", num_partitions=1).map_groups(
        choose_val_clusters, fn_kwargs={"fraction": fraction, "seed": seed}, batch_format="pyarrow"
    )
    val_clusters = {c for t in _iter_tables(chosen) for c in t.column("cluster").to_pylist()}
    marked = ds.map_batches(_mark_val, fn_kwargs={"val_clusters": val_clusters}, batch_format="pyarrow")
    marked = marked.drop_columns(["cluster"]).materialize()
    train = marked.filter(expr=~col("_val")).drop_columns(["_val"])
    val = marked.filter(expr=col("_val")).drop_columns(["_val"])
    return train, val


def grouped_split(
    ds: Any, clusters: DuplicateClusters, fraction: float, seed: int, key_column: str = "id"
) -> tuple[Any, Any]:
    """(train, val): a split of labelled rows (`key_column`, `text`, `label`, ...) with every
    exact/near-duplicate cluster of `clusters` (from :func:`find_clusters`) entirely on one side
    (see :func:`split_by_cluster`)."""
    with_cluster = ds.map_batches(
        assign_clusters,
        fn_kwargs={"cluster_of": clusters.cluster_of, "key_column": key_column},
        batch_format="pyarrow",
    )
    return split_by_cluster(with_cluster, fraction, seed)


def _mark_val(batch: pa.Table, val_clusters: set[str]) -> pa.Table:
    return batch.append_column(
        "_val", pa.array([c in val_clusters for c in batch.column("cluster").to_pylist()], pa.bool_())
    )


def leakage_from_edges(
    edges: pa.Table, val_keys: set[str], val_rows: int, threshold: float = DEFAULT_THRESHOLD
) -> dict[str, Any]:
    """Leakage report from duplicate edges found over train ∪ val rows (`val_keys` are the val side).

    A validation row counts once: as `exact` when it has an exact duplicate among the training rows,
    else as `near` when it has one at Jaccard >= threshold. Returns `val_rows`, `exact`, `near`,
    `fraction` ((exact + near) / val_rows) and `method`.
    """
    exact_rows: set[str] = set()
    near_rows: set[str] = set()
    for a, b, is_exact in zip(*(edges.column(c).to_pylist() for c in ("a", "b", "exact")), strict=True):
        if (a in val_keys) == (b in val_keys):
            continue  # both on one side: not leakage
        (exact_rows if is_exact else near_rows).add(a if a in val_keys else b)
    near_rows -= exact_rows
    return {
        "val_rows": val_rows,
        "exact": len(exact_rows),
        "near": len(near_rows),
        "fraction": round((len(exact_rows) + len(near_rows)) / val_rows, 4) if val_rows else 0.0,
        "method": method(threshold),
    }


def leakage_report(
    train: Any, val: Any, threshold: float = DEFAULT_THRESHOLD, key_column: str = "id"
) -> dict[str, Any]:
    """Validation rows with an exact or a near duplicate among the training rows (see
    :func:`leakage_from_edges`). `train` and `val` are Ray Datasets with `key_column` and `text`;
    keys are tagged by side, so the two may reuse ids."""
    tagged = [
        side.select_columns([key_column, "text"]).map_batches(
            _tag_key, fn_kwargs={"prefix": prefix, "key_column": key_column}, batch_format="pyarrow"
        )
        for prefix, side in (("t", train), ("v", val))
    ]
    val_keys = {k for t in _iter_tables(tagged[1].select_columns(["key"])) for k in t.column(0).to_pylist()}
    edges = find_edges(tagged[0].union(tagged[1]), threshold)
    return leakage_from_edges(edges, val_keys, len(val_keys), threshold)


LEAKAGE_WARN_FRACTION = 0.01
"""Above this share of validation rows with a duplicate in training, jobs print a warning."""


def leakage_warning(report: dict[str, Any]) -> str | None:
    """The warning line for a leakage report above :data:`LEAKAGE_WARN_FRACTION`, else None."""
    if report["fraction"] <= LEAKAGE_WARN_FRACTION:
        return None
    return (
        f"warning: {report['exact'] + report['near']} of {report['val_rows']} validation rows "
        f"({report['fraction']:.1%}) have an exact ({report['exact']}) or near ({report['near']}) duplicate "
        "in the training rows: the held-out accuracy overstates accuracy on new data "
        "(use the grouped split, or deduplicate the evaluation set)"
    )


def _tag_key(batch: pa.Table, prefix: str, key_column: str) -> pa.Table:
    keys = [f"{prefix}:{k}" for k in batch.column(key_column).to_pylist()]
    return pa.table({"key": pa.array(keys, pa.string()), "text": batch.column("text")})
