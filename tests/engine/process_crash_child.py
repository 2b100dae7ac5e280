"""A child that is SIGKILLed at a chosen point of a process manager's outbox.

    python -m tests.engine.process_crash_child DIR MODE

``MODE`` says where the kill lands, the first time only (a marker file in DIR remembers):

- ``dispatch``: in the target aggregate's handler, so the process manager's step (and its
  outbox) is durable but the command it sent never committed;
- ``ack``: in a projector, once the command's event committed, so its acknowledgement was
  never written;
- ``scheduled``: in the target aggregate's handler, of a command scheduled 60 s ahead (on a
  ``FakeClock``, moved by hand), so the step that fired it is durable but the command never
  committed.

Without a kill to do (the marker exists) it runs until the process manager settles and
exits 0. The parent (``test_process_manager_crashes.py``) checks the effect happened once.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import msgspec
import trio

from actorlog import (
    Aggregate,
    Engine,
    Finish,
    ProcessManager,
    Projector,
    Schedule,
    Send,
    applies,
    handles,
    starts,
)
from actorlog.testing import FakeClock

__all__ = ["DelayedRelay", "Mark", "Marked", "Relay", "Target", "main"]

_directory = Path(".")
_mode = "dispatch"


def _kill_once(where: str) -> None:
    marker = _directory / "killed"
    if _mode == where and not marker.exists():
        marker.write_text(where)
        os.kill(os.getpid(), signal.SIGKILL)


class Start(msgspec.Struct, frozen=True):
    job: str


class Started(msgspec.Struct, frozen=True):
    job: str


class Mark(msgspec.Struct, frozen=True):
    job: str


class Marked(msgspec.Struct, frozen=True):
    job: str


class Target(Aggregate):
    """Counts every Mark it takes: an effect done twice would show as two Marked."""

    def __init__(self) -> None:
        self.marks = 0

    @handles
    def start(self, c: Start) -> list[Started]:
        return [Started(c.job)]

    @handles
    def mark(self, c: Mark) -> list[Marked]:
        _kill_once("dispatch")
        _kill_once("scheduled")
        return [Marked(c.job)]

    @applies
    def started(self, e: Started) -> None:
        pass

    @applies
    def marked(self, e: Marked) -> None:
        self.marks += 1


class Watcher(Projector):
    def __init__(self) -> None:
        self.seen = 0

    @applies
    def marked(self, e: Marked) -> None:
        _kill_once("ack")
        self.seen += 1


class Relay(ProcessManager):
    """On Started, mark the job's target once; finished when the mark lands."""

    @starts("job")
    def started(self, e: Started) -> list[Any]:
        return [Send(Target, f"target-{e.job}", Mark(e.job))]

    @starts("job")
    def marked(self, e: Marked) -> list[Any]:
        return [Finish()]


class DelayedRelay(ProcessManager):
    """On Started, schedule the job's mark 60 s ahead; finished when the mark lands."""

    @starts("job")
    def started(self, e: Started) -> list[Any]:
        return [Schedule(Send(Target, f"target-{e.job}", Mark(e.job)), after=60)]

    @starts("job")
    def marked(self, e: Marked) -> list[Any]:
        return [Finish()]


async def main(directory: Path, mode: str) -> None:
    global _directory, _mode
    _directory, _mode = directory, mode
    clock = FakeClock()
    async with Engine.open(
        directory / "log",
        aggregates=[Target],
        projectors=[Watcher],
        process_managers=[DelayedRelay if mode == "scheduled" else Relay],
        clock=clock,
    ) as engine:
        if not engine.log.read_stream("job-1"):
            await engine.send(Target, "job-1", Start("1"))
        await engine.wait_settled(timeout=30)
        if mode == "scheduled":
            clock.advance(60)  # the mark is due; wait_settled does not wait for a firing
            with trio.fail_after(30):
                # (a condition on the log: no event to wait on)
                while len(engine.log.read_stream("$pm:DelayedRelay:1")) < 2:  # noqa: ASYNC110
                    await trio.sleep(0.01)
            await engine.wait_settled(timeout=30)


if __name__ == "__main__":
    trio.run(main, Path(sys.argv[1]), sys.argv[2])
