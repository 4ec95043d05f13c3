"""Test support: a corpus read as Ray Data's read tasks read it (the same task bodies), in this process
without Ray, and the per-file accounting every read must keep."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from bm_ray.corpus import BLANK_LINE, CorpusDatasource, list_corpus
from bm_ray.corpus.rows import UNIT_END
from bm_ray.layout import REJECT_REASONS
from bm_ray.specs import IngestSpec


def read_rows(spec: IngestSpec) -> list[dict[str, Any]]:
    """Every row the read tasks of `spec`'s corpus emit, in order: ok rows, rejects, blank lines and one
    :data:`UNIT_END` row per file (its `_row`: the records the reader counted in the file)."""
    source = CorpusDatasource(spec, list_corpus(spec), unit_ends=True)
    return [row for task in source.get_read_tasks(1) for block in task() for row in block.to_pylist()]


def accounting(rows: list[dict[str, Any]]) -> Counter[str]:
    """Checks that each file's records are rows 0..n-1, each exactly once, where n is the count of its
    unit_end row, and that every reason is in the vocabulary; returns the count per outcome (`ok`, each
    reject reason, `blank_line`), whose sum over all but blank lines is the rows read."""
    records: dict[str, list[int]] = defaultdict(list)
    counted: dict[str, int] = {}
    outcomes: Counter[str] = Counter()
    for row in rows:
        if row["reason"] == UNIT_END:
            assert row["_unit"] not in counted, f"two unit_end rows for {row['source']}"
            counted[row["_unit"]] = row["_row"]
            continue
        assert row["reason"] in {None, BLANK_LINE, *REJECT_REASONS}, row
        records[row["_unit"]].append(row["_row"])
        outcomes[row["reason"] or "ok"] += 1
    assert set(records) <= set(counted), "rows of a file that was never ended"
    for unit, n in counted.items():
        assert sorted(records[unit]) == list(range(n)), f"{unit}: rows {sorted(records[unit])} of {n} counted"
    return outcomes


def rows_read(outcomes: Counter[str]) -> int:
    """Rows read as the summary counts them: every record but blank lines (= ok + rejected)."""
    return sum(n for outcome, n in outcomes.items() if outcome != BLANK_LINE)
