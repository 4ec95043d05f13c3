"""Duplicate ids: the first row with an id, in listing order (file, then row), wins; later ones are
rejected as ``duplicate_id``. Deterministic: the same winners whatever the task timing, and on resume.

Two passes over the corpus. The first registers every ok row's ``(hash64(id), order)`` in
:data:`DEDUPE_SHARDS` :class:`IdShard` actors, partitioned by hash; each keeps, per id hash, the
smallest order key (``_file << 32 | _row``) in an on-disk SQLite table whose page cache is capped at
:data:`SHARD_CACHE_KIB`, so no process holds all ids and each one's memory stays flat as the corpus
grows (the table itself lives in a temporary file that SQLite deletes when the actor ends). The second
pass asks the shards, one round trip per block and shard, which rows are not their id's smallest key.

Ids are compared by a 64-bit BLAKE2b hash: two different ids collide with probability about
n² / 2^65 (3·10^-8 for 10^6 ids, 3% for 10^9: README → De-duplication).
"""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from bm_ray.corpus.rows import snippet

DEDUPE_SHARDS = 2
"""Shard actors of one job (each a process with a bounded page cache; more spread the upserts)."""

SHARD_CACHE_KIB = 32 * 1024
"""SQLite page cache per shard (KiB): the bound on a shard's memory beyond the Python process."""

_UPSERT = "INSERT INTO ids(h, k) VALUES (?, ?) ON CONFLICT(h) DO UPDATE SET k = min(k, excluded.k)"
_LOOKUP_CHUNK = 30_000  # under SQLite's limit on host parameters per statement (32,766)


def hash64(value: str) -> int:
    """Signed 64-bit BLAKE2b hash of an id (SQLite integers are signed)."""
    return int.from_bytes(
        hashlib.blake2b(value.encode("utf-8"), digest_size=8).digest(), "little", signed=True
    )


@ray.remote(num_cpus=0)
class IdShard:
    """One hash partition of the ids: per id hash, the smallest order key registered (on disk)."""

    def __init__(self) -> None:
        # "": a private temporary on-disk database, deleted by SQLite when the connection (process) ends
        self._db = sqlite3.connect("", isolation_level=None)
        self._db.execute(f"PRAGMA cache_size = -{SHARD_CACHE_KIB}")
        self._db.execute("PRAGMA journal_mode = OFF")
        self._db.execute("PRAGMA synchronous = OFF")
        self._db.execute("CREATE TABLE ids (h INTEGER PRIMARY KEY, k INTEGER NOT NULL)")

    def add(self, hashes: np.ndarray, keys: np.ndarray) -> int:
        """Register (hash, order key) pairs, keeping the smallest key per hash; returns how many."""
        self._db.execute("BEGIN")
        self._db.executemany(_UPSERT, zip(hashes.tolist(), keys.tolist(), strict=True))
        self._db.execute("COMMIT")
        return len(hashes)

    def losers(self, hashes: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """True where a smaller order key was registered for the hash (that row is a duplicate)."""
        best: dict[int, int] = {}
        unique = list(set(hashes.tolist()))
        for start in range(0, len(unique), _LOOKUP_CHUNK):
            chunk = unique[start : start + _LOOKUP_CHUNK]
            marks = ",".join("?" * len(chunk))
            best.update(self._db.execute(f"SELECT h, k FROM ids WHERE h IN ({marks})", chunk).fetchall())
        return np.fromiter(
            (best.get(h, k) < k for h, k in zip(hashes.tolist(), keys.tolist(), strict=True)),
            dtype=bool,
            count=len(hashes),
        )


@dataclass
class DedupeIndex:
    """The shard actors of one job's duplicate detection."""

    shards: list[Any]

    @classmethod
    def create(cls, shards: int = DEDUPE_SHARDS) -> DedupeIndex:
        """Start `shards` :class:`IdShard` actors (needs a running Ray)."""
        return cls([IdShard.remote() for _ in range(shards)])

    def close(self) -> None:
        """End the shard actors (their temporary tables go with them)."""
        for shard in self.shards:
            ray.kill(shard)


def _ok_keys(batch: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(positions, id hashes, order keys) of the ok rows of a block."""
    ok = np.flatnonzero(pc.is_null(batch.column("reason")).to_numpy(zero_copy_only=False))
    if not len(ok):
        return ok, np.empty(0, np.int64), np.empty(0, np.int64)
    taken = batch.select(["id", "_file", "_row"]).take(pa.array(ok))
    hashes = np.fromiter((hash64(i) for i in taken.column("id").to_pylist()), dtype=np.int64, count=len(ok))
    files = taken.column("_file").to_numpy().astype(np.int64)
    keys = (files << 32) | taken.column("_row").to_numpy().astype(np.int64)
    return ok, hashes, keys


def _by_shard(hashes: np.ndarray, shards: int) -> list[np.ndarray]:
    part = (hashes.view(np.uint64) % np.uint64(shards)).astype(np.int64)
    return [np.flatnonzero(part == s) for s in range(shards)]


def register_ids(batch: pa.Table, index: DedupeIndex) -> pa.Table:
    """First pass: register the ok rows' ids of a block; returns one row with the count."""
    _, hashes, keys = _ok_keys(batch)
    parts = _by_shard(hashes, len(index.shards))
    ray.get(
        [shard.add.remote(hashes[p], keys[p]) for shard, p in zip(index.shards, parts, strict=True) if len(p)]
    )
    return pa.table({"ids": pa.array([len(hashes)], pa.int64())})


def build_dedupe_index(ds: ray.data.Dataset, remote_args: dict[str, Any]) -> DedupeIndex:
    """Run the first pass over `ds` (all rows, none skipped) into a new :class:`DedupeIndex`."""
    index = DedupeIndex.create()
    try:
        registered = ds.map_batches(
            register_ids,
            fn_kwargs={"index": index},
            batch_format="pyarrow",
            batch_size=None,
            zero_copy_batch=True,
            **remote_args,
        )
        for _ in registered.iter_batches(batch_format="pyarrow", batch_size=None):
            pass
    except BaseException:
        index.close()
        raise
    return index


def mark_duplicates(batch: pa.Table, index: DedupeIndex) -> pa.Table:
    """Second pass: reject ok rows whose id has an earlier row (smaller order key) as ``duplicate_id``."""
    ok, hashes, keys = _ok_keys(batch)
    if not len(ok):
        return batch
    parts = _by_shard(hashes, len(index.shards))
    answers = ray.get(
        [
            shard.losers.remote(hashes[p], keys[p])
            for shard, p in zip(index.shards, parts, strict=True)
            if len(p)
        ]
    )
    dup = np.zeros(len(ok), dtype=bool)
    for p, answer in zip([p for p in parts if len(p)], answers, strict=True):
        dup[p] = answer
    if not dup.any():
        return batch
    reasons = batch.column("reason").to_pylist()
    texts = batch.column("text").to_pylist()
    raws = batch.column("raw").to_pylist()
    for i in ok[dup].tolist():
        reasons[i], raws[i], texts[i] = "duplicate_id", snippet(texts[i]), None
    for name, values in (("reason", reasons), ("raw", raws), ("text", texts)):
        batch = batch.set_column(batch.schema.get_field_index(name), name, pa.array(values, pa.string()))
    return batch
