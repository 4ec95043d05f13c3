"""Duplicate ids: the first row with an id wins, later ones are rejected as ``duplicate_id``."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import pyarrow as pa
import ray

from bm_ray.corpus.rows import snippet


def _hash64(value: str) -> int:
    return int.from_bytes(hashlib.blake2b(value.encode("utf-8"), digest_size=8).digest(), "little")


_SEEDED = 0  # "source" of ids committed by an earlier run: any live row with such an id is a duplicate


@ray.remote(num_cpus=0)
class IdRegistry:
    """Per-job map hash64(id) → hash64(source) deciding which row keeps a duplicated id (the first one)."""

    def __init__(self) -> None:
        self._seen: dict[int, int] = {}

    def seed(self, ids: list[str]) -> int:
        """Register ids already committed (resume): any row carrying one of them is a duplicate."""
        for id_ in ids:
            self._seen[_hash64(id_)] = _SEEDED
        return len(self._seen)

    def check(self, ids: list[str], sources: list[str]) -> list[bool]:
        """Register ids; True where the id was already registered from a DIFFERENT source (a duplicate)."""
        out = []
        for id_, source in zip(ids, sources, strict=True):
            key, src = _hash64(id_), _hash64(source)
            seen = self._seen.setdefault(key, src)
            out.append(seen != src)
        return out

    def size(self) -> int:
        """Number of registered ids."""
        return len(self._seen)


def create_id_registry() -> Any:
    """Start a named (not detached) :class:`IdRegistry` actor for one job; returns its handle."""
    return IdRegistry.options(name=f"bm_ray_id_registry_{uuid.uuid4().hex[:12]}").remote()


def mark_duplicates(batch: pa.Table, registry: Any) -> pa.Table:
    """Reject ok rows whose id an earlier row (another `_unit`/`_row`) registered first (`duplicate_id`)."""
    reasons = batch.column("reason").to_pylist()
    ok = [i for i, r in enumerate(reasons) if r is None]
    if not ok:
        return batch
    ids = batch.column("id").to_pylist()
    units = batch.column("_unit").to_pylist()
    row_numbers = batch.column("_row").to_pylist()
    dup = ray.get(registry.check.remote([ids[i] for i in ok], [f"{units[i]}:{row_numbers[i]}" for i in ok]))
    if not any(dup):
        return batch
    texts = batch.column("text").to_pylist()
    raws = batch.column("raw").to_pylist()
    for i, is_dup in zip(ok, dup, strict=True):
        if is_dup:
            reasons[i], raws[i], texts[i] = "duplicate_id", snippet(texts[i]), None
    for name, values in (("reason", reasons), ("raw", raws), ("text", texts)):
        batch = batch.set_column(batch.schema.get_field_index(name), name, pa.array(values, pa.string()))
    return batch
