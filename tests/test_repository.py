"""The repository's promises to a new user: the README's commands are the ones CI runs, and the pins agree."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Set up and run", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section)


def test_ci_runs_the_readme_test_command_exactly():
    commands = _readme_commands()
    assert len(commands) == 2, "the README's set-up section must give exactly two commands"
    test_command = commands[1]
    assert "pytest" in test_command
    ci_lines = [line for line in (ROOT / ".ci/run").read_text().splitlines() if line and not line.startswith("#")]
    assert test_command in ci_lines


def test_readme_commands_start_from_nothing_and_use_the_constraints():
    for command in _readme_commands():
        assert command.startswith("python3.11 -m venv .venv && .venv/bin/pip install")
        assert "-c .ci/constraints.txt" in command
    assert "snakemake --cores" in _readme_commands()[0] and "suite=demo" in _readme_commands()[0]


def test_runtime_stack_is_pinned():
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = {re.split(r"[=<>~]", dep)[0]: dep for dep in dependencies}
    for name, pin in {"torch": "torch==2.14.1", "torchvision": "torchvision==0.29.1"}.items():
        assert pinned[name] == pin
    for name in ("transformers", "peft", "snakemake", "snakemake-executor-plugin-slurm", "decord", "polars", "pyarrow"):
        assert "==" in pinned[name], f"{name} is not pinned"
