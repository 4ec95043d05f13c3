"""`bm-ray bench ingest`: ingest throughput and the largest process's peak memory as the corpus grows.

For each row count it writes a synthetic JSONL corpus (ids ``r<n>``, 1% of them repeated so that the
de-duplication has work to do; files of at most 500,000 rows), runs :func:`bm_ray.jobs.ingest.ingest` on a
fresh embedded Ray with 2 CPUs, and samples the RSS of every process of the run (the driver, Ray's
raylet and GCS, the read workers, the dedupe shards) every 0.2 s. It prints rows/s and the largest
single process's peak RSS per size, and the ratio of that peak at the last size to the first.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from bm_ray.bench.memory import PeakMemory

WORDS = [
    "markets",
    "rally",
    "central",
    "bank",
    "signals",
    "pause",
    "while",
    "tech",
    "earnings",
    "beat",
    "forecasts",
    "league",
    "cup",
]
FILE_ROWS = 500_000
DUPLICATE_FRACTION = 0.01


def write_corpus(root: Path, rows: int, seed: int = 7) -> list[str]:
    """Write `rows` synthetic JSONL records under `root`; returns the file paths."""
    rng = random.Random(seed)
    paths = []
    for start in range(0, rows, FILE_ROWS):
        path = root / f"part-{start // FILE_ROWS:05d}.jsonl"
        with path.open("w", encoding="utf-8") as f:
            for n in range(start, min(rows, start + FILE_ROWS)):
                id_ = f"r{rng.randrange(n)}" if n and rng.random() < DUPLICATE_FRACTION else f"r{n}"
                text = " ".join(rng.choice(WORDS) for _ in range(8 + n % 24))
                f.write(json.dumps({"id": id_, "text": text, "label": WORDS[n % 4]}) + "\n")
        paths.append(str(path))
    return paths


def bench_ingest(sizes: list[int], dedupe: str = "ids", json_path: str | None = None) -> dict[str, Any]:
    """Run the ingest benchmark for each row count in `sizes` (each on its own fresh embedded Ray)."""
    import ray

    from bm_ray.jobs.ingest import ingest
    from bm_ray.runtime.ray_init import init_ray
    from bm_ray.specs import IngestSpec

    runs = []
    with tempfile.TemporaryDirectory(prefix="bm-ray-bench-ingest-") as tmp:
        for rows in sizes:
            corpus = Path(tmp) / f"corpus-{rows}"
            corpus.mkdir()
            write_corpus(corpus, rows)
            # fresh per size, so every process's peak belongs to this run; no dashboard: not needed here
            init_ray("local", num_cpus=2, include_dashboard=False)
            try:
                with PeakMemory(per_process=True) as peaks:
                    started = time.perf_counter()
                    summary = ingest(
                        IngestSpec(input=[str(corpus)], dedupe=dedupe), str(Path(tmp) / f"out-{rows}")
                    )
                    elapsed = time.perf_counter() - started
            finally:
                ray.shutdown()
            peak_mb, process = peaks.largest()
            peak_uss_mb, private_process = peaks.largest_private()
            runs.append(
                {
                    "rows": rows,
                    "rows_read": summary.rows_read,
                    "rows_ok": summary.rows_ok,
                    "duplicate_id": summary.rejected_by_reason.get("duplicate_id", 0),
                    "elapsed_s": round(elapsed, 2),
                    "rows_per_s": round(rows / elapsed, 1),
                    "largest_process_peak_rss_mb": round(peak_mb, 1),
                    "largest_process": process,
                    "largest_process_peak_uss_mb": round(peak_uss_mb, 1),
                    "largest_private_process": private_process,
                }
            )
            print(json.dumps(runs[-1]), flush=True)
    result: dict[str, Any] = {"dedupe": dedupe, "cpus": 2, "runs": runs}
    if len(runs) > 1:
        first, last = runs[0], runs[-1]
        result["rss_ratio"] = round(
            last["largest_process_peak_rss_mb"] / first["largest_process_peak_rss_mb"], 3
        )
        result["uss_ratio"] = round(
            last["largest_process_peak_uss_mb"] / first["largest_process_peak_uss_mb"], 3
        )
        result["rss_ratio_sizes"] = [first["rows"], last["rows"]]
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result
