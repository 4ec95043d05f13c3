"""Ray Data group-bys sized for the data: partitions from the row count, and the task-based shuffle
for small group-bys (data layer; used by the near-duplicate search and the training split)."""

from __future__ import annotations

from typing import Any

import ray
from ray.data import DataContext
from ray.data.context import ShuffleStrategy

ROWS_PER_PARTITION = 500_000
"""Group-by shuffle partitions: one per this many shuffled rows (Ray's default of 200 is costly for small data)."""


def partitions(rows: int) -> int:
    """Shuffle partitions for a group-by of `rows` rows: one per :data:`ROWS_PER_PARTITION`, 1 to 200."""
    return max(1, min(200, -(-rows // ROWS_PER_PARTITION)))


TASK_SHUFFLE_MAX_ROWS = 8 * ROWS_PER_PARTITION
"""Group-bys of up to this many shuffled rows (at most 8 partitions) use Ray's task-based sort shuffle."""


def group_by_input(ds: Any, shuffled_rows: int) -> Any:
    """`ds` (materialised) as the input of a small group-by: re-rooted so that Ray Data plans the
    group-by as its task-based sort shuffle, not Ray's default hash shuffle.

    The hash shuffle starts aggregator actors for every group-by, and a train run's split does four:
    on 2 cores, finding the clusters of 366 rows and splitting them took 28.5 s with the hash shuffle
    and 5.6 s with the task-based one. A Dataset keeps the DataContext of its source, so the strategy
    is set while the new source (the same blocks, no copy) is made, and the caller's context is
    restored. Group-bys larger than :data:`TASK_SHUFFLE_MAX_ROWS` keep Ray's default.
    """
    if shuffled_rows > TASK_SHUFFLE_MAX_ROWS:
        return ds
    context = DataContext.get_current()
    before = context.shuffle_strategy
    context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    try:
        return ray.data.from_arrow_refs(ds.to_arrow_refs())
    finally:
        context.shuffle_strategy = before
