"""CLI conventions every command shares: options made from the specs (help, shown defaults, choices), the
`--json` result on stdout, and the exit codes 0/1/2/3. No Ray and no training: the library is mocked."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import result_samples as samples
import typer.main
import yaml
from typer.testing import CliRunner

from bm_ray.cli import app
from bm_ray.cli.main import DONE, EXIT_CODES, JOB_FAILED, REFUSED, USAGE
from bm_ray.cli.model import EVALUATE_REPORT_KEYS, TRAIN_OPTIONS
from bm_ray.results import ClassifyResult, EvaluateResult, IngestResult, TrainResult
from bm_ray.specs import IngestSpec, TrainSpec

ROOT = Path(__file__).resolve().parents[2]
TRAIN_ARGS = ["train", "--data", "c.csv", "--output", "m"]


def walk(command: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """(path, command) of every leaf command under `command`."""
    subcommands = getattr(command, "commands", None)
    if not subcommands:
        return [(path, command)]
    return [leaf for name, sub in subcommands.items() for leaf in walk(sub, (*path, name))]


LEAVES = walk(typer.main.get_command(app))


def option(path: tuple[str, ...], name: str) -> Any:
    """The click parameter `name` of the command at `path`."""
    command = dict(LEAVES)[path]
    return next(p for p in command.params if p.name == name)


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


class Captured:
    """A mocked job function that keeps the spec it was called with and returns `result`."""

    def __init__(self, result: Any = None) -> None:
        self.result = result
        self.specs: list[Any] = []

    def __call__(self, spec: Any, *args: Any, **kwargs: Any) -> Any:
        self.specs.append(spec)
        return self.result


def raising(error: BaseException) -> Any:
    def run(*args: Any, **kwargs: Any) -> None:
        raise error

    return run


# --- options made from the spec models --------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("epochs", "3"),
        ("workers", "2"),
        ("learning_rate", "0.0001"),
        ("base_model", "minilm-l6"),
        ("split", "grouped"),
        ("refit", "no-refit"),
        ("calibrate", "calibrate"),
    ],
)
def test_train_help_shows_the_train_spec_defaults(name: str, shown: str) -> None:
    param = option(("train",), name)
    assert param.default is None  # a flag not given stays None: it cannot override a --spec file
    default = TrainSpec.model_fields[name].default
    if isinstance(default, bool):
        assert default is (shown == name)  # a bool shows the flag that is the default
    else:
        assert str(default) == shown
    assert param.show_default == shown
    help_text = param.get_help_record(typer.main.get_command(app).make_context("bm-ray", ["train"]))[1]
    assert f"[default: ({shown})]" in help_text
    assert TrainSpec.model_fields[name].description in help_text


def test_every_train_option_shows_its_spec_default_and_description() -> None:
    for name in TRAIN_OPTIONS:
        field, param = TrainSpec.model_fields[name], option(("train",), name)
        assert param.help == field.description, name
        default = field.get_default(call_default_factory=True)
        if default is None or isinstance(default, bool) or name in ("data", "output"):
            continue
        assert param.show_default == str(default), name


def test_every_option_of_every_command_has_help() -> None:
    missing = [
        f"bm-ray {' '.join(path)} {param.name}"
        for path, command in LEAVES
        for param in command.params
        if not (param.help or "").strip()
    ]
    assert len(LEAVES) > 20 and not missing


def test_help_of_every_command_renders() -> None:
    for path, _ in LEAVES:
        result = invoke(*path, "--help")
        assert result.exit_code == 0, (path, result.output)
    assert "--json-file" in invoke("demo", "--help").output


def test_a_spec_file_value_is_not_overridden_by_a_shown_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    spec = tmp_path / "train.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "data": {"input": "c.csv", "format": "csv"},
                "output": "m",
                "epochs": 7,
                "batch_size": 64,
                "calibrate": False,
                "split": "random",
            }
        )
    )
    train = Captured(TrainResult.model_validate(samples.train_metrics()))
    monkeypatch.setattr("bm_ray.jobs.train.job.train", train)
    result = invoke("train", "--spec", str(spec), "--learning-rate", "0.5", "--workers", "4")
    assert result.exit_code == DONE, result.output
    (got,) = train.specs
    assert (got.epochs, got.batch_size, got.calibrate, got.split) == (7, 64, False, "random")  # not given
    assert (got.learning_rate, got.workers) == (0.5, 4)  # given: they win
    assert (got.data.format, got.seed) == ("csv", TrainSpec.model_fields["seed"].default)

    result = invoke("train", "--spec", str(spec), "--calibrate", "--epochs", "1", "--dedupe", "none")
    assert result.exit_code == DONE, result.output
    assert (train.specs[-1].calibrate, train.specs[-1].epochs) == (True, 1)
    assert (train.specs[-1].data.dedupe, train.specs[-1].data.format) == ("none", "csv")


@pytest.mark.parametrize(
    ("args", "choices"),
    [
        (
            ["ingest", "--input", "c", "--output", "o", "--format", "xml"],
            ["jsonl", "csv", "parquet", "folders"],
        ),
        ([*TRAIN_ARGS, "--split", "halves"], ["grouped", "random"]),
        (["classify", "--precision", "fp8"], ["auto", "fp32", "bf16", "fp16", "int8"]),
        (
            ["evaluate", "--model", "m", "--data", "d", "--window-aggregation", "median"],
            ["confidence", "mean"],
        ),
        (["bench", "serve", "--model", "m", "--input", "c", "--mode", "soak"], ["perf", "load", "fault"]),
    ],
)
def test_choices_refuse_other_values_and_list_them(args: list[str], choices: list[str]) -> None:
    result = invoke(*args)
    assert result.exit_code == USAGE
    said = " ".join(result.output.split())
    assert all(f"'{choice}'" in said for choice in choices), said


def test_generated_choices_are_the_spec_literals_and_complete() -> None:
    ingest = dict(LEAVES)[("ingest",)]
    context = ingest.make_context("ingest", ["--input", "c", "--output", "o"])
    offered = [item.value for item in option(("ingest",), "format").shell_complete(context, "")]
    assert offered == ["jsonl", "csv", "parquet", "folders"]
    assert IngestSpec.model_fields["dedupe"].description in option(("ingest",), "dedupe").help


# --- --json: exactly one JSON document on stdout ----------------------------------------------------


def noisy(result: Any) -> Any:
    """A mocked library function that logs and prints to stdout, as the real jobs (and Ray) do."""

    def run(*args: Any, **kwargs: Any) -> Any:
        logging.getLogger("bm_ray.test").warning("a log line")
        print("progress on stdout")
        return result

    return run


CLASSIFY_SUMMARY = ClassifyResult.model_validate(samples.classify_summary())
CLUSTER = {"port": 6379, "dashboard_port": 8265, "workers": 2, "temp_dir": "/tmp/c", "token_path": None}


@pytest.mark.parametrize(
    ("args", "mocks", "expected"),
    [
        (
            ["ingest", "--input", "c.jsonl", "--output", "out"],
            {"bm_ray.jobs.ingest.ingest": noisy(IngestResult.model_validate(samples.ingest_summary(True)))},
            samples.ingest_summary(near_duplicates=True),
        ),
        (
            TRAIN_ARGS,
            {
                "bm_ray.jobs.train.job.train": noisy(
                    TrainResult.model_validate(samples.train_metrics(refit=True))
                )
            },
            samples.train_metrics(refit=True),
        ),
        (
            ["classify", "--model", "m", "--input", "c.jsonl", "--output", "out"],
            {
                "bm_ray.jobs.classify.classify": noisy(CLASSIFY_SUMMARY),
                "bm_ray.jobs.classify.summary_table": lambda summary: "the summary table",
            },
            samples.classify_summary(),
        ),
        (
            ["evaluate", "--model", "m", "--data", "c.jsonl"],
            {
                "bm_ray.jobs.evaluate.evaluate": noisy(
                    EvaluateResult.model_validate(samples.evaluate_metrics(True))
                )
            },
            {
                k: samples.evaluate_metrics(target=True)[k]
                # the headline figures evaluate prints, in the CLI's order (no leakage: no --train-data)
                for k in EVALUATE_REPORT_KEYS
                if k != "leakage"
            },
        ),
        (
            ["report", "out"],
            {"bm_ray.report.build_report": noisy("out/report.html")},
            {"report": "out/report.html"},
        ),
        (
            ["jobs", "status", "raysubmit_1"],
            {"bm_ray.deploy.submit.job_status": noisy({"status": "RUNNING"})},
            {"status": "RUNNING"},
        ),
        (
            ["bench", "ingest", "--rows", "10"],
            {"bm_ray.bench.ingest.bench_ingest": noisy({"runs": [{"rows": 10}]})},
            {"runs": [{"rows": 10}]},
        ),
    ],
    ids=["ingest", "train", "classify", "evaluate", "report", "jobs-status", "bench-ingest"],
)
def test_json_is_one_document_on_stdout(
    monkeypatch: pytest.MonkeyPatch, args: list[str], mocks: dict[str, Any], expected: Any
) -> None:
    for target, mock in mocks.items():
        monkeypatch.setattr(target, mock)
    result = invoke(*args, "--json")
    assert result.exit_code == DONE, result.output
    assert json.loads(result.stdout) == expected  # the whole of stdout: nothing else is printed there
    assert "progress on stdout" not in result.stdout and "a log line" not in result.stdout


def test_json_of_cluster_up_model_list_and_jobs_validate(monkeypatch: pytest.MonkeyPatch) -> None:
    from bm_ray.deploy.cluster import ClusterInfo

    monkeypatch.setattr("bm_ray.deploy.cluster.cluster_up", lambda *a, **k: ClusterInfo(**CLUSTER))
    up = json.loads(invoke("cluster", "up", "--json").stdout)
    assert up["address"] == "127.0.0.1:6379" and up["env"]["RAY_ADDRESS"] == "http://127.0.0.1:8265"
    assert "bm-ray train --spec" in invoke("cluster", "up").stdout  # without --json: today's lines

    presets = json.loads(invoke("model", "list", "--json").stdout)
    assert "minilm-l6" in {p["name"] for p in presets}
    assert "minilm-l6\t" in invoke("model", "list").stdout  # without --json: one line per preset

    checked = json.loads(invoke("jobs", "validate", str(ROOT / "jobs" / "train.yaml"), "--json").stdout)
    assert checked == [{"path": str(ROOT / "jobs" / "train.yaml"), "ok": True, "kind": "train"}]


def test_json_of_serve_is_its_url_before_it_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr("bm_ray.serve.run_serve", noisy("http://127.0.0.1:8000"))
    monkeypatch.setattr("time.sleep", interrupted)
    monkeypatch.setattr("ray.serve.shutdown", lambda: None)
    result = invoke("serve", "--model", "m", "--json")
    assert result.exit_code == DONE, result.output
    assert json.loads(result.stdout) == {
        "model": "m",
        "url": "http://127.0.0.1:8000",
        "docs": "http://127.0.0.1:8000/docs",
        "status": "serving",
    }
    assert "serving m at http://127.0.0.1:8000" in result.stderr


def test_without_json_the_output_is_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("bm_ray.jobs.classify.classify", Captured(CLASSIFY_SUMMARY))
    monkeypatch.setattr("bm_ray.jobs.classify.summary_table", lambda summary: "the summary table")
    result = invoke("classify", "--model", "m", "--input", "c.jsonl", "--output", "out")
    assert result.exit_code == DONE, result.output
    assert result.stdout == "out/summary.json\n" and "the summary table" in result.stderr


# --- exit codes -------------------------------------------------------------------------------------


def test_exit_0_done() -> None:
    assert invoke("model", "list").exit_code == DONE


def test_exit_1_when_the_job_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    from bm_ray.jobs.train.data import TrainError
    from bm_ray.output.driver import TooManyRejectsError

    monkeypatch.setattr("bm_ray.jobs.train.job.train", raising(TrainError("only one label in the data")))
    failed = invoke(*TRAIN_ARGS)
    assert failed.exit_code == JOB_FAILED and "only one label in the data" in failed.stderr
    assert "Traceback" not in failed.output

    monkeypatch.setattr("bm_ray.jobs.ingest.ingest", raising(TooManyRejectsError("95% of rows rejected")))
    assert invoke("ingest", "--input", "c", "--output", "o").exit_code == JOB_FAILED

    monkeypatch.setattr("bm_ray.jobs.classify.classify", raising(RuntimeError("a Ray actor died")))
    assert invoke("classify", "--model", "m", "--input", "c", "--output", "o").exit_code == JOB_FAILED


def test_exit_2_on_usage_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert invoke(*TRAIN_ARGS, "--epochs", "three").exit_code == USAGE  # not an int (Typer)
    assert invoke("train", "--no-such-flag").exit_code == USAGE
    invalid = invoke(*TRAIN_ARGS, "--workers", "0")  # the spec refuses the value
    assert invalid.exit_code == USAGE and "workers" in invalid.stderr
    bad_spec = tmp_path / "bad.yaml"
    bad_spec.write_text("epoch: 2\n")
    refused = invoke("train", "--spec", str(bad_spec))
    assert refused.exit_code == USAGE and "epoch" in refused.stderr
    missing = invoke("train", "--spec", str(tmp_path / "missing.yaml"))
    assert missing.exit_code == USAGE and "no such spec file" in missing.stderr
    monkeypatch.setattr("bm_ray.jobs.ingest.ingest", raising(FileNotFoundError("c.jsonl: no such file")))
    assert invoke("ingest", "--input", "c.jsonl", "--output", "o").exit_code == USAGE


def test_exit_3_when_the_output_belongs_to_another_job_or_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from bm_ray.jobs.train.resume import ResumeError
    from bm_ray.output.lease import OutputInUseError

    monkeypatch.setattr(
        "bm_ray.jobs.train.job.train", raising(ResumeError("m already holds a finished model"))
    )
    refused = invoke(*TRAIN_ARGS)
    assert refused.exit_code == REFUSED and "already holds a finished model" in refused.stderr
    monkeypatch.setattr("bm_ray.jobs.ingest.ingest", raising(OutputInUseError("o: held by job 42")))
    assert invoke("ingest", "--input", "c", "--output", "o").exit_code == REFUSED


def test_exit_3_for_real_on_an_overwrite_of_a_foreign_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The real ingest refuses before it reads a row (only the start of Ray is left out)."""
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"id": "1", "text": "a", "label": "x"}\n')
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("not a bm-ray output")
    monkeypatch.setattr("bm_ray.jobs.ingest.init_ray", lambda *args, **kwargs: None)
    result = invoke("ingest", "--input", str(corpus), "--output", str(foreign), "--overwrite")
    assert result.exit_code == REFUSED, result.output
    assert "refusing to overwrite" in result.stderr
    assert [p.name for p in foreign.iterdir()] == ["thesis.tex"]


def test_every_exit_code_entry_names_a_real_exception_class() -> None:
    sources = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "bm_ray").rglob("*.py"))
    for (package, name), code in EXIT_CODES.items():
        assert code in (JOB_FAILED, USAGE, REFUSED)
        if package == "bm_ray":
            assert re.search(rf"^class {name}\(", sources, flags=re.M), name
        else:
            module = __import__("builtins" if package == "builtins" else "ray.exceptions", fromlist=[name])
            assert issubclass(getattr(module, name), BaseException), name


def test_importing_the_cli_imports_no_tensorflow_and_no_ray() -> None:
    code = "import sys, bm_ray.cli; print(sorted(m for m in ('tensorflow', 'ray') if m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]"
