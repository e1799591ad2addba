"""The README's test command is the one `.ci/run` runs (the design card's promise)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def ci_command() -> str:
    """The command `.ci/run` runs: its last line."""
    return (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]


def readme_commands() -> list[str]:
    """Every line of the README's shell blocks."""
    commands: list[str] = []
    inside = False
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("```"):
            inside = line.strip() in ("```sh", "```bash", "```shell")
            continue
        if inside:
            commands.append(line.strip())
    return commands


def test_ci_runs_exactly_the_readmes_test_command() -> None:
    assert ci_command() in readme_commands()


def test_the_readme_has_a_command_that_runs_the_main_job() -> None:
    assert any("python examples/echo.py" in command for command in readme_commands())
