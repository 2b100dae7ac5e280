"""kill -9 between a process manager's durable step and its command's commit, between that
commit and its acknowledgement, and between a scheduled command's firing and its commit:
after a restart the command has taken effect once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from actorlog.storage import LmdbEventLog

ROOT = Path(__file__).resolve().parent.parent.parent


def _run(directory: Path, mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-m", "tests.engine.process_crash_child", str(directory), mode],
        cwd=ROOT,
        timeout=60,
        capture_output=True,
    )
    return done.returncode


@pytest.mark.parametrize("mode", ["dispatch", "ack"])
def test_a_crash_in_the_outbox_only_delays_the_command(tmp_path: Path, mode: str) -> None:
    assert _run(tmp_path, mode) == -9  # SIGKILLed where the mode says
    assert (tmp_path / "killed").read_text() == mode
    assert _run(tmp_path, mode) == 0  # restarted: re-sent, settled
    log = LmdbEventLog(tmp_path / "log")
    try:
        marks = [e for e in log.read_stream("target-1") if e.type == "Marked"]
        steps = log.read_stream("$pm:Relay:1")
    finally:
        log.close()
    assert len(marks) == 1  # the command took effect exactly once
    assert marks[0].command_id == "$pm:Relay:1/1.0"  # the id the step derived
    assert len(steps) == 2  # started (the send), then finished on the mark


def test_a_crash_after_a_scheduled_command_fired_only_delays_it(tmp_path: Path) -> None:
    assert _run(tmp_path, "scheduled") == -9  # killed in the handler of the fired command
    assert _run(tmp_path, "scheduled") == 0  # restarted (its clock before the due time)
    log = LmdbEventLog(tmp_path / "log")
    try:
        marks = [e for e in log.read_stream("target-1") if e.type == "Marked"]
        steps = log.read_stream("$pm:DelayedRelay:1")
    finally:
        log.close()
    assert len(marks) == 1  # the command took effect exactly once
    # The id derived from the firing step (the instance's second), the same after restart.
    assert marks[0].command_id == "$pm:DelayedRelay:1/2.0"
    assert marks[0].causation_id == "$pm:DelayedRelay:1#deadline:Mark"
    assert len(steps) == 3  # started (the schedule), fired (the outbox), finished
