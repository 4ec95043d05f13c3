"""The CLI is a thin face over the spec models: every corpus-reading option reaches the job's IngestSpec."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

from bm_ray.cli import app, options

# One value per shared corpus option (options.CORPUS_OPTIONS), and the IngestSpec value it must become.
CORPUS_ARGS: dict[str, tuple[list[str], Any]] = {
    "format": (["--format", "csv"], "csv"),
    "text_fields": (["--text-fields", "Title,Description"], ["Title", "Description"]),
    "label_field": (["--label-field", "Class"], "Class"),
    "id_field": (["--id-field", "doc"], "doc"),
    "keep_fields": (["--keep-fields", "url,source"], ["url", "source"]),
    "clean_text": (["--no-clean-text"], False),
    "csv_header": (["--no-csv-header"], False),
    "csv_columns": (["--csv-columns", "Class,Title,Description"], ["Class", "Title", "Description"]),
    "dedupe": (["--dedupe", "none"], "none"),
    "max_line_bytes": (["--max-line-bytes", "1234"], 1234),
    "max_reject_fraction": (["--max-reject-fraction", "0.5"], 0.5),
}


def test_the_shared_table_is_the_whole_ingest_spec() -> None:
    from bm_ray.specs import IngestSpec

    assert set(CORPUS_ARGS) == set(options.CORPUS_OPTIONS)
    assert set(options.CORPUS_OPTIONS) <= set(IngestSpec.model_fields)


def _captured_spec(monkeypatch: pytest.MonkeyPatch, target: str, argv: list[str], names: list[str]) -> Any:
    """Run `bm-ray ARGV` with the job function at `target` replaced by one that keeps its spec."""
    seen: list[Any] = []

    class Stop(Exception):
        pass

    def keep(spec: Any, *args: Any, **kwargs: Any) -> None:
        seen.append(spec)
        raise Stop

    monkeypatch.setattr(target, keep)
    extra = [arg for name in names for arg in CORPUS_ARGS[name][0]]
    result = CliRunner().invoke(app, argv + extra)
    assert isinstance(result.exception, Stop), result.output
    return seen[0]


ALL = list(CORPUS_ARGS)
NO_KEEP = [n for n in ALL if n != "keep_fields"]


@pytest.mark.parametrize(
    ("argv", "target", "names", "ingest_of"),
    [
        (["ingest", "--input", "c.csv", "--output", "out"], "bm_ray.jobs.ingest.ingest", ALL, lambda s: s),
        (
            ["classify", "--model", "m", "--input", "c.csv", "--output", "out"],
            "bm_ray.jobs.classify.classify",
            ALL,
            lambda s: s.input,
        ),
        (
            ["train", "--data", "c.csv", "--output", "m"],
            "bm_ray.jobs.train.job.train",
            NO_KEEP,
            lambda s: s.data,
        ),
        (
            ["evaluate", "--model", "m", "--data", "c.csv"],
            "bm_ray.jobs.evaluate.evaluate",
            NO_KEEP,
            lambda s: s.data,
        ),
    ],
    ids=["ingest", "classify", "train", "evaluate"],
)
def test_every_corpus_option_reaches_the_job_spec(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], target: str, names: list[str], ingest_of: Any
) -> None:
    ingest = ingest_of(_captured_spec(monkeypatch, target, argv, names))
    assert ingest.input == ["c.csv"]
    for name in names:
        assert getattr(ingest, name) == CORPUS_ARGS[name][1], name


WINDOW_ARGS = [
    "--long-text",
    "window",
    "--window-stride",
    "16",
    "--max-windows",
    "5",
    "--window-aggregation",
    "max",
    "--max-batch-tokens",
    "999",
]


@pytest.mark.parametrize(
    ("argv", "target"),
    [
        (
            ["classify", "--model", "m", "--input", "c.csv", "--output", "out"],
            "bm_ray.jobs.classify.classify",
        ),
        (["evaluate", "--model", "m", "--data", "c.csv"], "bm_ray.jobs.evaluate.evaluate"),
    ],
    ids=["classify", "evaluate"],
)
def test_every_long_text_option_reaches_the_job_spec(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], target: str
) -> None:
    spec = _captured_spec(monkeypatch, target, argv + WINDOW_ARGS, ["format"])
    assert set(options.LONG_TEXT_OPTIONS) <= set(type(spec).model_fields)
    got = {name: getattr(spec, name) for name in options.LONG_TEXT_OPTIONS}
    assert got == {
        "long_text": "window",
        "window_stride": 16,
        "max_windows": 5,
        "window_aggregation": "max",
        "max_batch_tokens": 999,
    }
    assert spec.data.format == "csv" if hasattr(spec, "data") else spec.input.format == "csv"


def test_commands_without_per_row_output_do_not_offer_keep_fields() -> None:
    result = CliRunner().invoke(app, ["train", "--data", "c.csv", "--output", "m", "--keep-fields", "url"])
    assert result.exit_code != 0
    assert "--keep-fields" in result.output


def test_train_validation_corpus_is_read_with_the_same_options(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _captured_spec(
        monkeypatch,
        "bm_ray.jobs.train.job.train",
        ["train", "--data", "c.csv", "--val-data", "v.csv", "--output", "m"],
        ["format", "text_fields", "csv_header"],
    )
    assert spec.val_data.input == ["v.csv"]
    assert (spec.val_data.format, spec.val_data.text_fields, spec.val_data.csv_header) == (
        "csv",
        ["Title", "Description"],
        False,
    )


@pytest.mark.parametrize(
    ("argv", "target"),
    [
        (
            ["classify", "--model", "m", "--input", "c.csv", "--output", "out"],
            "bm_ray.jobs.classify.classify",
        ),
        (
            ["compare", "--model", "a", "--model", "b", "--input", "c.csv", "--output", "out"],
            "bm_ray.jobs.compare.compare",
        ),
    ],
    ids=["classify", "compare"],
)
def test_every_actor_pool_option_reaches_the_job_spec(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], target: str
) -> None:
    pool = ["--batch-size", "48", "--actors", "1,3", "--cpus-per-actor", "0.5", "--gpus-per-actor", "0"]
    spec = _captured_spec(monkeypatch, target, argv + pool + ["--precision", "bf16"], ["format"])
    assert set(options.ACTOR_POOL_OPTIONS) <= set(type(spec).model_fields)
    assert (spec.batch_size, spec.actors.min, spec.actors.max) == (48, 1, 3)
    assert (spec.cpus_per_actor, spec.gpus_per_actor, spec.precision) == (0.5, 0, "bf16")
    assert spec.input.format == "csv"
