"""`bm-ray demo`'s summary: one line per stage within an 80-column terminal."""

from __future__ import annotations

from rich.console import Console

from bm_ray.cli.demo import Demo, StageResult


def test_summary_table_fits_80_columns_one_line_per_stage(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    console = Console(width=80, record=True, color_system=None)
    demo = Demo(console)
    demo.results = [
        StageResult("fetch weights", 0.0, None, "/root/.cache/bm-ray/models/minilm-l6", "preset minilm-l6"),
        StageResult("ingest", 24.8, 406, str(tmp_path / "bm-ray-demo/ingest"), "400 ok, 6 rejected"),
        StageResult(
            "train (Ray Train)",
            387.4,
            1080,
            str(tmp_path / "bm-ray-demo/model"),
            "val accuracy 1.000, macro-F1 1.000",
        ),
        StageResult(
            "evaluate",
            8.7,
            406,
            str(tmp_path / "bm-ray-demo/evaluate"),
            "accuracy 0.995 (incl. train rows)",
        ),
        StageResult(
            "classify (Ray Data)",
            25.9,
            406,
            str(tmp_path / "bm-ray-demo/classify"),
            "400 classified, 6 rejected",
        ),
        StageResult(
            "serve (Ray Serve)", 26.6, 4, "http://127.0.0.1:8000/v1/classify", "POST /v1/classify answered"
        ),
    ]
    console.print(demo.table())
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= 80
    body = [line for line in lines if line.startswith("│")]
    assert len(body) == len(demo.results)  # no stage wraps into a tall cell
    assert any("bm-ray-demo/model" in line and "train" in line for line in lines)  # outputs still shown
    for shown in ("fetch weights", "387.4", "1080", "val accuracy 1.000, macro-F1 1.000"):
        assert any(shown in line for line in body), shown  # numbers and results are not cut
