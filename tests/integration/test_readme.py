"""The commands shown to users cannot drift: every ```bash block of the README and of docs/ either runs
here (each `bm-ray` line parses against the real CLI, each `make` line names a real target, the cheap
ones run for real) or is marked `<!-- not run: REASON -->` just above it. None points at ../shared."""

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
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
"""Every page shown to users: the README and the docs site's sources."""
NOT_RUN = re.compile(r"<!--\s*not run:\s*(?P<reason>[^>]*?)\s*-->\s*$")
BLOCK = re.compile(r"```bash\n(.*?)```", flags=re.S)


def bash_blocks(page: Path) -> list[tuple[str, str | None]]:
    """(block text, not-run reason or None) of each ```bash block of `page`."""
    text = page.read_text(encoding="utf-8")
    blocks = []
    for match in BLOCK.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marked = NOT_RUN.search(before)
        blocks.append((match.group(1), marked.group("reason") if marked else None))
    return blocks


def block_lines(block: str) -> list[str]:
    """The commands of a block: continuation lines joined, comments and blank lines dropped."""
    lines = []
    for line in block.replace("\\\n", " ").splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def shown_commands() -> list[str]:
    """`bm-ray ...` lines of every block that runs in the suite (README and docs)."""
    return [
        line
        for page in PAGES
        for block, reason in bash_blocks(page)
        if reason is None
        for line in block_lines(block)
        if line.startswith("bm-ray ")
    ]


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


@pytest.mark.parametrize("line", shown_commands())
def test_readme_command_parses(line: str) -> None:
    """Each documented command names a real (sub)command and only options it accepts, with valid values."""
    command, path, args = resolve(shlex.split(line)[1:])
    assert not hasattr(command, "commands"), f"{line!r}: {' '.join(path)} needs a subcommand"
    command.make_context(" ".join(path), list(args))


def test_the_docs_show_every_command() -> None:
    documented = {tuple(resolve(shlex.split(line)[1:])[1][1:]) for line in shown_commands()}
    root = typer.main.get_command(app)
    for name, command in root.commands.items():
        subcommands = getattr(command, "commands", None)
        for path in [(name, sub) for sub in subcommands] if subcommands else [(name,)]:
            if path != ("demo",):  # the quickstart's `make demo` runs it
                assert path in documented, f"no page of README.md or docs/ shows `bm-ray {' '.join(path)}`"


def test_every_block_runs_here_or_says_why_not() -> None:
    """An unmarked block holds only commands this suite checks: `bm-ray` lines and `make` targets."""
    targets = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(encoding="utf-8"), re.M))
    for page in PAGES:
        for block, reason in bash_blocks(page):
            if reason is not None:
                assert reason, f"{page.relative_to(ROOT)}: a `not run:` mark needs a reason"
                continue
            for line in block_lines(block):
                if line.startswith("make "):
                    assert set(line.split()[1:]) <= targets, f"{page.relative_to(ROOT)}: {line!r}"
                else:
                    assert line.startswith("bm-ray "), (
                        f"{page.relative_to(ROOT)}: {line!r} is neither run here nor marked "
                        "<!-- not run: REASON --> above its block"
                    )


def test_no_page_points_at_the_projects_shared_data() -> None:
    for page in PAGES:
        assert "../shared" not in page.read_text(encoding="utf-8"), (
            f"{page.relative_to(ROOT)} names ../shared"
        )


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
