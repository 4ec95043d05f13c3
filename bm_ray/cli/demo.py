"""`bm-ray demo`: the whole flow on an embedded local Ray, stage by stage, with a final summary table.

fetch weights → ingest (rejects shown) → train (2 Ray Train workers) → evaluate → bulk classify
(Ray Data) → serve (Ray Serve) and query it over loopback HTTP → shut everything down.
By default it runs on the bundled sample corpus (`bm_ray/data/sample_news.jsonl`: original short
news-style articles in the four AG News categories, plus a few broken rows); `--data` runs the same
flow on any corpus. The `demo` command itself is at the end.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from bm_ray.cli.main import app
from bm_ray.cli.options import corpus_options, option_group, spec_options
from bm_ray.cli.output import JsonOpt, command_output, json_text
from bm_ray.specs import ClassifySpec, EvaluateSpec, IngestSpec, ServeSpec, TrainSpec, validate_spec

SAMPLE_CORPUS = "sample_news.jsonl"
SAMPLE_TEXT_FIELDS = ["title", "body"]
RESULT_COLUMN_WIDTH = 34
"""The table's result column: with the stage, time and row columns the table fits 80 terminal columns."""


def sample_corpus_spec() -> IngestSpec:
    """The bundled sample corpus (shipped inside the package)."""
    path = resources.files("bm_ray") / "data" / SAMPLE_CORPUS
    return IngestSpec(input=[str(path)], text_fields=SAMPLE_TEXT_FIELDS, label_field="label", id_field="id")


@dataclass
class StageResult:
    """One row of the summary table."""

    stage: str
    seconds: float
    rows: int | None
    output: str
    note: str = ""

    @property
    def rows_per_s(self) -> str:
        """Throughput of the stage, when it processes rows."""
        return f"{self.rows / self.seconds:.1f}" if self.rows and self.seconds else "-"


class Demo:
    """Runs the stages in order, timing each and collecting the summary."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.results: list[StageResult] = []

    def stage(self, name: str, run: Callable[[], tuple[int | None, str, str]]) -> None:
        """Run one stage; `run` returns (rows processed, where its outputs are, a short note)."""
        self.console.rule(f"[bold]{name}")
        started = time.perf_counter()
        rows, output, note = run()
        self.results.append(StageResult(name, time.perf_counter() - started, rows, output, note))
        self.console.print(f"[green]✔ {name}[/] in {self.results[-1].seconds:.1f}s — {note}")

    def table(self) -> Table:
        """The final summary table: one line per stage within 80 columns; where the outputs are follows it."""
        table = Table(title="bm-ray demo", caption=self.outputs(), caption_justify="left")
        table.add_column("stage", no_wrap=True, min_width=13)
        for column, width in (("s", 6), ("rows", 5), ("rows/s", 6)):
            table.add_column(column, justify="right", no_wrap=True, min_width=width)
        table.add_column("result", no_wrap=True, overflow="ellipsis", max_width=RESULT_COLUMN_WIDTH)
        for r in self.results:
            table.add_row(
                r.stage.split(" (")[0], f"{r.seconds:.1f}", str(r.rows or "-"), r.rows_per_s, r.note
            )
        return table

    def outputs(self) -> str:
        """Where each stage wrote, relative to the working directory when inside it."""

        def shown(path: str) -> str:
            return os.path.relpath(path) if path.startswith(os.getcwd() + os.sep) else path

        return "\n".join(f"{r.stage.split(' (')[0]}: {shown(r.output)}" for r in self.results)


def run_demo(
    workdir: str | Path,
    data: IngestSpec | None = None,
    base_model: str = "minilm-l6",
    epochs: int = 3,
    workers: int = 2,
    port: int = 8000,
    console: Console | None = None,
) -> list[StageResult]:
    """Run the demo into `workdir`; always shuts down Serve and the embedded Ray it started."""
    import ray
    from ray import serve

    from bm_ray.jobs.classify import classify
    from bm_ray.jobs.evaluate import evaluate
    from bm_ray.jobs.ingest import ingest
    from bm_ray.jobs.train.job import train
    from bm_ray.model.registry import PRESETS, fetch_preset
    from bm_ray.runtime.ray_init import init_ray
    from bm_ray.serve import run_serve

    console = console or Console()
    work = Path(workdir).resolve()
    data = data or sample_corpus_spec()
    model_dir = work / "model"
    demo = Demo(console)
    init_ray(num_cpus=max(2, workers))
    try:
        if base_model in PRESETS:
            demo.stage("fetch weights", lambda: (None, str(fetch_preset(base_model)), f"preset {base_model}"))

        def run_ingest() -> tuple[int, str, str]:
            summary = ingest(data, str(work / "ingest"), overwrite=True)
            console.print(f"  rejected by reason: {summary.rejected_by_reason}")
            return (
                summary.rows_read,
                str(work / "ingest"),
                f"{summary.rows_ok} ok, {summary.rows_rejected} rejected",
            )

        demo.stage("ingest", run_ingest)

        def run_train() -> tuple[int, str, str]:
            spec = TrainSpec(
                data=data, output=str(model_dir), base_model=base_model, workers=workers, epochs=epochs
            )
            report = train(spec)
            rows = report.data.train_rows * epochs
            return (
                rows,
                str(model_dir),
                f"val accuracy {report.accuracy:.3f}, macro-F1 {report.macro_f1:.3f}",
            )

        demo.stage("train (Ray Train)", run_train)

        def run_evaluate() -> tuple[int, str, str]:
            report = evaluate(EvaluateSpec(model=str(model_dir), data=data, output=str(work / "evaluate")))
            rows = report.rows_evaluated + report.rows_rejected
            note = f"accuracy {report.accuracy:.3f} (incl. train rows)"
            return rows, str(work / "evaluate"), note

        demo.stage("evaluate", run_evaluate)

        def run_classify() -> tuple[int, str, str]:
            summary = classify(
                ClassifySpec(model=str(model_dir), input=data, output=str(work / "classify"), overwrite=True)
            )
            note = f"{summary.rows_classified} classified, {summary.rows_rejected} rejected"
            return summary.rows_read, str(work / "classify"), note

        demo.stage("classify (Ray Data)", run_classify)

        def run_endpoint() -> tuple[int, str, str]:
            import httpx

            url = run_serve(ServeSpec(model=str(model_dir), port=port, max_replicas=1))
            texts = [
                "The central bank raised interest rates again as inflation stayed high.",
                "The striker scored twice in the second half to win the cup final.",
                "Engineers unveiled a faster chip for training machine-learning models.",
                "Leaders met at the summit to negotiate a ceasefire in the border region.",
            ]
            response = httpx.post(f"{url}/v1/classify", json={"texts": texts}, timeout=60)
            response.raise_for_status()
            for text, prediction in zip(texts, response.json()["predictions"], strict=True):
                console.print(
                    f"  [cyan]{prediction['label']:>10}[/] {prediction['score']:.2f}  {text}",
                    no_wrap=True,
                    overflow="ellipsis",
                )
            return len(texts), f"{url}/v1/classify", "POST /v1/classify answered"

        demo.stage("serve (Ray Serve)", run_endpoint)
    finally:
        serve.shutdown()
        ray.shutdown()
    console.print(demo.table())
    return demo.results


def summary_rows(results: list[StageResult]) -> list[dict[str, Any]]:
    """The summary as JSON-able rows."""
    return [
        {"stage": r.stage, "seconds": round(r.seconds, 1), "rows": r.rows, "output": r.output, "note": r.note}
        for r in results
    ]


@app.command("demo")
@corpus_options()
@option_group(spec_options(TrainSpec, ["base_model", "epochs"]), "train_flags")
def demo_command(
    data: Annotated[
        str | None, typer.Option("--data", help="Corpus to use instead of the bundled sample.")
    ] = None,
    workdir: Annotated[Path, typer.Option("--workdir", help="Where every stage writes.")] = Path(
        "bm-ray-demo"
    ),
    port: Annotated[int, typer.Option("--port", help="Loopback port of the demo endpoint.")] = 8000,
    json_file: Annotated[
        Path | None, typer.Option("--json-file", help="Also write the stage summary to this JSON file.")
    ] = None,
    as_json: JsonOpt = False,
    train_flags: dict[str, Any] | None = None,
    corpus_flags: dict[str, Any] | None = None,
) -> None:
    """Fetch weights, ingest, train (2 workers), evaluate, bulk-classify and serve on an embedded local Ray."""
    spec = None
    if data is not None:
        spec = validate_spec(IngestSpec, {**(corpus_flags or {}), "input": data}, "command line")
    with command_output(as_json) as out:
        rows = summary_rows(run_demo(workdir, spec, port=port, **(train_flags or {})))
        if json_file:
            json_file.write_text(json_text(rows), encoding="utf-8")
        out.result(rows)
