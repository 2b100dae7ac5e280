"""Counters for the tests of conflict recovery (issue 15, session 7): ``Counter`` holds
only immutable values (an int and a tuple), so a failed decision can be undone exactly
and the aggregate caught up; ``Tally`` holds a list, so it is rebuilt from the log.
Every command carries a ``tag`` its event keeps, so a test can tell which commands are in
the log; ``Check`` is refused unless the live state is the one given."""

from __future__ import annotations

from typing import Any

import msgspec

from actorlog import Aggregate, Rejected, applies, handles
from actorlog.lowlevel import EventRegistry

__all__ = [
    "EVENTS",
    "KINDS",
    "Add",
    "Added",
    "Check",
    "Counter",
    "Mismatch",
    "Scribble",
    "SnappedCounter",
    "Take",
    "Taken",
    "Tally",
    "TooMuch",
    "fold",
]


class Add(msgspec.Struct, frozen=True):
    """Add ``amount``; ``tag`` names this command in the log."""

    tag: str
    amount: int


class Take(msgspec.Struct, frozen=True):
    """Take ``amount`` away, refused beyond the total."""

    tag: str
    amount: int


class Scribble(msgspec.Struct, frozen=True):
    """A handler that changes the state and then refuses (always refused)."""


class Check(msgspec.Struct, frozen=True):
    """Refused unless the live state is exactly this (no events either way)."""

    total: int
    tags: tuple[str, ...]


class Added(msgspec.Struct, frozen=True):
    tag: str
    amount: int


class Taken(msgspec.Struct, frozen=True):
    tag: str
    amount: int


class TooMuch(Rejected):
    """A take beyond the total."""


class Mismatch(Rejected):
    """The live state is not the one the test replayed from the log."""


class Counter(Aggregate):
    """Immutable values only (an int and a tuple): a conflict puts the state back exactly
    and catches it up."""

    total: int
    tags: tuple[str, ...]

    def __init__(self) -> None:
        self.total = 0
        self.tags = ()

    @handles
    def add(self, c: Add) -> list[Added]:
        return [Added(c.tag, c.amount)]

    @handles
    def take(self, c: Take) -> list[Taken]:
        if c.amount > self.total:
            raise TooMuch(f"{self.total} < {c.amount}")
        return [Taken(c.tag, c.amount)]

    @handles
    def scribble(self, c: Scribble) -> list[Added]:
        self.total = -1_000  # rebound, then refused: restored exactly
        raise Rejected("scribbled")

    @handles
    def check(self, c: Check) -> list[Added]:
        if (self.total, self.tags) != (c.total, c.tags):
            raise Mismatch(f"live {(self.total, self.tags)} != replayed {(c.total, c.tags)}")
        return []

    @applies
    def added(self, e: Added) -> None:
        self.total += e.amount
        self.tags = (*self.tags, e.tag)

    @applies
    def taken(self, e: Taken) -> None:
        self.total -= e.amount
        self.tags = (*self.tags, e.tag)


class SnappedCounter(Counter):
    """The same, snapshotted every 3 events: snapshots must never hold a failed decision."""

    snapshot_every = 3


class Tally(Aggregate):
    """A list in its state: a conflict cannot put it back exactly, so it reloads fully;
    ``Scribble`` changes the list in place and refuses."""

    total: int
    tags: list[str]

    def __init__(self) -> None:
        self.total = 0
        self.tags = []

    @handles
    def add(self, c: Add) -> list[Added]:
        return [Added(c.tag, c.amount)]

    @handles
    def take(self, c: Take) -> list[Taken]:
        if c.amount > self.total:
            raise TooMuch(f"{self.total} < {c.amount}")
        return [Taken(c.tag, c.amount)]

    @handles
    def scribble(self, c: Scribble) -> list[Added]:
        self.tags.append("scribbled")  # in place: only a reload undoes it
        raise Rejected("scribbled")

    @handles
    def check(self, c: Check) -> list[Added]:
        if (self.total, tuple(self.tags)) != (c.total, c.tags):
            raise Mismatch(f"live {(self.total, self.tags)} != replayed {(c.total, c.tags)}")
        return []

    @applies
    def added(self, e: Added) -> None:
        self.total += e.amount
        self.tags.append(e.tag)

    @applies
    def taken(self, e: Taken) -> None:
        self.total -= e.amount
        self.tags.append(e.tag)


KINDS: list[Any] = [Counter, SnappedCounter, Tally]
EVENTS = EventRegistry([Added, Taken])


def fold(events: Any) -> tuple[int, tuple[str, ...]]:
    """The oracle: (total, tags) folded from stored events, independently of the engine."""
    total, tags = 0, []
    for stored in events:
        event = EVENTS.decode(stored.type, stored.payload)
        total += event.amount if isinstance(event, Added) else -event.amount
        tags.append(event.tag)
    return total, tuple(tags)
