"""The training loop's progress callback: a line per tenth of an epoch, at most every ten seconds."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest


def test_step_progress_is_a_line_per_tenth_of_an_epoch_at_most_every_ten_seconds(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A short epoch (the demo's 12 steps of 1.5 s) logs about every 10 s and its last step, not every
    step; a long one (85 steps of 1.7 s, the README command) still logs every tenth of the epoch."""
    import bm_ray.jobs.train.loop as train_module
    from bm_ray.runtime.logs import PROGRESS_LOG_S

    def steps_logged(steps: int, step_s: float) -> list[int]:
        clock = iter(np.arange(0, (steps + 2) * step_s, step_s))
        monkeypatch.setattr(train_module, "time", SimpleNamespace(time=lambda: float(next(clock))))
        progress = train_module.EpochProgress(rank=0, epoch=0, epochs=1, steps=steps, global_batch=32)
        progress.on_epoch_begin(0)
        caplog.clear()
        with caplog.at_level("INFO", logger="bm_ray.jobs.train.loop"):
            for batch in range(steps):
                progress.on_train_batch_end(batch)
        return [int(re.search(r"step (\d+)/", r.getMessage()).group(1)) for r in caplog.records]

    # step 7 is the first 10 s (PROGRESS_LOG_S) after the epoch began; then only the last step
    assert PROGRESS_LOG_S == 10 and steps_logged(12, 1.5) == [7, 12]
    assert steps_logged(85, 1.7) == [*range(8, 81, 8), 85]  # every 8th step (13.6 s apart) and the last
