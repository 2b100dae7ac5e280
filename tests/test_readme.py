"""The README's quick start stays true: CI runs exactly its test command."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```\n(.+?)\n```", section)


def test_quick_start_has_exactly_two_one_line_commands() -> None:
    commands = _quick_start_commands()
    assert len(commands) == 2
    assert all("\n" not in c for c in commands)
    assert "python -m benchmarks" in commands[0]
    assert "pytest" in commands[1]


def test_ci_runs_the_readmes_test_command_verbatim() -> None:
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _quick_start_commands()[1] in ci


def test_the_readmes_example_runs_as_written(tmp_path: Path) -> None:
    """The example under "Using it" is a whole program: run it, twice (the second run
    opens the log the first one left)."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Using it", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.+?)\n```", section, flags=re.S)
    script = tmp_path / "example.py"
    script.write_text(code)
    # Run where a user would: their own folder, with actorlog importable (from this checkout).
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for expected in ("a-1 holds 5 after event 1", "a-1 holds 10 after event 2"):
        done = subprocess.run(
            [sys.executable, str(script)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == expected
    assert (tmp_path / "data").is_dir()


def test_the_service_example_runs_as_written(tmp_path: Path) -> None:
    """The example under "Service commands" continues the one under "Using it": run the
    two as one program (the first without its last line, which runs it)."""
    readme = (ROOT / "README.md").read_text()
    using = readme.split("## Using it", 1)[1].split("\n## ", 1)[0]
    service = readme.split("## Service commands", 1)[1].split("\n## ", 1)[0]
    (first,) = re.findall(r"```python\n(.+?)\n```", using, flags=re.S)
    (second,) = re.findall(r"```python\n(.+?)\n```", service, flags=re.S)
    program = first.rsplit("\ntrio.run(", 1)[0] + "\n\n" + second
    assert _run(program, tmp_path).splitlines() == ["refused: only tellers deposit", "5"]


def test_the_process_manager_example_runs_as_written(tmp_path: Path) -> None:
    """The example under "Work across aggregates" is a whole program: a transfer credited,
    one refunded."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Work across aggregates", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.+?)\n```", section, flags=re.S)
    assert _run(code, tmp_path).splitlines() == ["ann 70", "bob 0", "cat 30"]


def test_the_sqlite_view_example_runs_as_written(tmp_path: Path) -> None:
    """The SQLite example under "Operating" continues the one under "Using it": run the two
    as one program, twice; the second run resumes the view where the first left it."""
    readme = (ROOT / "README.md").read_text()
    using = readme.split("## Using it", 1)[1].split("\n## ", 1)[0]
    operating = readme.split("## Operating", 1)[1].split("\n## ", 1)[0]
    (first,) = re.findall(r"```python\n(.+?)\n```", using, flags=re.S)
    (second,) = re.findall(r"```python\n(.+?)\n```", operating, flags=re.S)
    program = first.rsplit("\ntrio.run(", 1)[0] + "\n\n" + second
    assert _run(program, tmp_path) == "a-1 holds 5; the view resumed at 0\n"
    assert _run(program, tmp_path) == "a-1 holds 10; the view resumed at 1\n"
    assert (tmp_path / "views" / "balances.sqlite").is_file()


def test_the_readmes_evolving_events_example_runs_as_written(tmp_path: Path) -> None:
    """The example under "Evolving events" is a whole program that asserts what it shows."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Evolving events", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.+?)\n```", section, flags=re.S)
    _run(code, tmp_path)


def _run(program: str, where: Path) -> str:
    """Run ``program`` as a user would (their own folder, actorlog importable from this
    checkout); return what it printed, after checking it exited cleanly."""
    script = where / "example.py"
    script.write_text(program)
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=where,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout
