"""The README's commands cannot drift: every `bm-ray` line parses against the real CLI, cheap ones run."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer.main

from bm_ray.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def readme_commands() -> list[str]:
    """`bm-ray ...` lines of the README's bash blocks (continuation lines joined)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith("bm-ray "):
                commands.append(line)
    return commands


def resolve(args: list[str]) -> tuple[Any, list[str], list[str]]:
    """Walk groups down to the leaf command; returns (command, its path, its remaining args)."""
    command = typer.main.get_command(app)  # Typer's own click: groups are recognised by `commands`
    path = ["bm-ray"]
    while hasattr(command, "commands") and args and args[0] in command.commands:
        path.append(args[0])
        command, args = command.commands[args[0]], args[1:]
    return command, path, args


def test_readme_has_the_two_setup_commands() -> None:
    quickstart = README.split("## Quickstart", 1)[1].split("##", 1)[0]
    assert "make demo" in quickstart and "make test" in quickstart
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "\ndemo:" in makefile and "\ntest:" in makefile
    assert "make test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


@pytest.mark.parametrize("line", readme_commands())
def test_readme_command_parses(line: str) -> None:
    """Each documented command names a real (sub)command and only options it accepts, with valid values."""
    command, path, args = resolve(shlex.split(line)[1:])
    assert not hasattr(command, "commands"), f"{line!r}: {' '.join(path)} needs a subcommand"
    command.make_context(" ".join(path), list(args))


def test_readme_covers_every_command() -> None:
    documented = {tuple(resolve(shlex.split(line)[1:])[1][1:]) for line in readme_commands()}
    root = typer.main.get_command(app)
    for name, command in root.commands.items():
        subcommands = getattr(command, "commands", None)
        for path in [(name, sub) for sub in subcommands] if subcommands else [(name,)]:
            if path != ("demo",):  # the quickstart's `make demo` runs it
                assert path in documented, f"README's CLI reference lacks `bm-ray {' '.join(path)}`"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The installed CLI as a user runs it."""
    return subprocess.run(
        [sys.executable, "-c", "from bm_ray.cli import run_cli; run_cli()", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )


def test_cheap_readme_commands_run_for_real(tmp_path: Path) -> None:
    assert "minilm-l6" in run_cli("model", "list").stdout
    validated = run_cli("jobs", "validate", "jobs/train.yaml", "jobs/classify.yaml", "jobs/serve.yaml")
    assert validated.returncode == 0, validated.stderr
    ingest = run_cli(
        "ingest",
        "--input",
        "bm_ray/data/sample_news.jsonl",
        "--text-fields",
        "title,body",
        "--output",
        str(tmp_path),
    )
    assert ingest.returncode == 0, ingest.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["rows_read"] == summary["rows_ok"] + summary["rows_rejected"]
    assert summary["rows_ok"] == 400 and summary["blank_lines"] == 1
