"""Time for durable deadlines: the clock protocol, the system clock, a fake one for tests.

Deadlines survive restarts, so they are wall-clock times (seconds since the epoch), not
the event loop's monotonic clock. The engine reads the time and sleeps only through a
:class:`Clock`, so tests pass a :class:`FakeClock` and move time by hand: no test sleeps
for a real deadline.
"""

from __future__ import annotations

import math
import time
from typing import Protocol, runtime_checkable

import anyio

from ._errors import InvalidArgument, describe

__all__ = ["Clock", "FakeClock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """What the engine needs of a clock: the time, and a sleep until a time."""

    def now(self) -> float:
        """Seconds since the epoch."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Return once ``now() >= deadline``. Cancelling it is safe."""
        ...


class SystemClock:
    """The machine's wall clock (``time.time``); sleeps with the event loop's timer."""

    def now(self) -> float:
        """Seconds since the epoch."""
        return time.time()

    async def sleep_until(self, deadline: float) -> None:
        """Sleep until the wall clock reads ``deadline`` (re-checked after each sleep, as
        the wall clock may be set back meanwhile)."""
        while True:
            left = deadline - time.time()
            if left <= 0:
                return
            await anyio.sleep(left)


class FakeClock:
    """A clock that moves only when told: ``advance(seconds)`` or ``set(time)``.

    Sleepers whose deadline has come are woken by the move (in the move's task: they run
    at their next scheduling point). Starts at ``start`` seconds since the epoch.
    """

    def __init__(self, start: float = 1_000_000.0) -> None:
        self._now = _finite(start, "start")
        # Made by the first sleeper: an Event needs a running event loop (anyio < 4.5),
        # and a clock is often made before one runs.
        self._moved: anyio.Event | None = None

    def now(self) -> float:
        """The fake time."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` (>= 0) and wake every sleeper now due.

        Raises:
            InvalidArgument: ``seconds`` is negative or not a finite number.
        """
        seconds = _finite(seconds, "seconds")
        if seconds < 0:
            raise InvalidArgument("a FakeClock only moves forward")
        self.set(self._now + seconds)

    def set(self, now: float) -> None:
        """Set the time (forward only) and wake every sleeper now due.

        Raises:
            InvalidArgument: ``now`` is before the current time or not finite.
        """
        now = _finite(now, "now")
        if now < self._now:
            raise InvalidArgument("a FakeClock only moves forward")
        self._now = now
        moved, self._moved = self._moved, None
        if moved is not None:
            moved.set()

    async def sleep_until(self, deadline: float) -> None:
        """Wait until the fake time reaches ``deadline``."""
        while self._now < deadline:
            if self._moved is None:
                self._moved = anyio.Event()
            await self._moved.wait()


def _finite(value: object, name: str) -> float:
    try:
        # float() first: an int beyond a float's range raises OverflowError there.
        ok = type(value) in (int, float) and math.isfinite(float(value))  # type: ignore[arg-type]
    except OverflowError:
        ok = False
    if not ok:
        raise InvalidArgument(f"{name} must be a finite number, not {describe(value)}")
    return float(value)  # type: ignore[arg-type]
