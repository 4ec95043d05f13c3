"""The benchmarks' memory sampler: RSS (and USS) of this process and all its descendants, sampled.

Ray's raylet, GCS, workers and actors are descendants of the driver of an embedded Ray, so a run's
whole process tree is sampled from a background thread every `interval_s` seconds.
"""

from __future__ import annotations

import threading
from typing import Any


class PeakMemory:
    """Peak summed RSS of this process tree (sampled) and, with `per_process`, each process's peaks.

    ``peak_bytes`` is the peak of the tree's summed RSS. With `per_process`, ``peaks`` and ``uss_peaks``
    hold each process's peak RSS and peak USS (bytes, process name): RSS counts the shared object-store
    pages a Ray worker has touched (plasma is mmapped into every worker that writes or reads a block);
    USS is the process's private memory alone, what grows when a process itself holds more as a
    corpus grows. Reading USS costs more than RSS, so it is read only with `per_process`.
    """

    def __init__(self, interval_s: float = 0.2, per_process: bool = False) -> None:
        self.interval_s = interval_s
        self.per_process = per_process
        self.peak_bytes = 0
        self.peaks: dict[int, tuple[int, str]] = {}
        self.uss_peaks: dict[int, tuple[int, str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    memory = proc.memory_full_info() if self.per_process else proc.memory_info()
                    label = _label(proc) if self.per_process else ""
                except psutil.Error:
                    continue
                total += memory.rss
                if self.per_process:
                    if memory.rss > self.peaks.get(proc.pid, (0, ""))[0]:
                        self.peaks[proc.pid] = (memory.rss, label)
                    if memory.uss > self.uss_peaks.get(proc.pid, (0, ""))[0]:
                        self.uss_peaks[proc.pid] = (memory.uss, label)
            self.peak_bytes = max(self.peak_bytes, total)
            self._stop.wait(self.interval_s)

    def largest(self) -> tuple[float, str]:
        """(peak RSS in MiB, process name) of the process with the largest peak (`per_process` only)."""
        rss, name = max(self.peaks.values())
        return rss / 2**20, name

    def largest_private(self) -> tuple[float, str]:
        """(peak USS in MiB, process name) of the process with the largest private-memory peak (`per_process` only)."""
        uss, name = max(self.uss_peaks.values())
        return uss / 2**20, name

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _label(proc: Any) -> str:
    """A process's name in the report: its Ray title (``ray::...``), else its program's file name."""
    name = " ".join(proc.cmdline()[:1]) or proc.name()
    title = proc.name()
    return title if title.startswith("ray::") else name.rsplit("/", 1)[-1]
