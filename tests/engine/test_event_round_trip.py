"""Live state equals replayed state even for values that do not survive encoding unchanged.

msgpack keeps a datetime as UTC, a list given for a ``tuple`` field reads back as a tuple,
a ``set`` as a ``frozenset``, a tuple in an ``Any`` field as a list, an int in a ``float``
field as a float. The aggregate's appliers and the live projectors get the event as read
back (the decode the read-back check does anyway), never the handler's object; and a
default snapshot leaves the live state as restoring it gives.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

from actorlog import Aggregate, Engine, Projector, Recorded, Rejected, applies, handles
from actorlog.testing import given

TZ5 = datetime.timezone(datetime.timedelta(hours=5))
NOON_AT_TZ5 = datetime.datetime(2026, 1, 1, 12, tzinfo=TZ5)  # 07:00 UTC


class Book(msgspec.Struct, frozen=True):
    when: datetime.datetime
    tags: Any  # whatever the caller passes, handed on as it is


class Booked(msgspec.Struct, frozen=True):
    when: datetime.datetime
    tags: tuple[str, ...]


class Mixed(msgspec.Struct, frozen=True):
    members: Any
    anything: Any
    amount: Any


class Mixes(msgspec.Struct, frozen=True):
    members: frozenset[str]
    anything: Any
    amount: float


class Show(msgspec.Struct, frozen=True):
    pass


class Slot(Aggregate):
    def __init__(self) -> None:
        self.hour = -1
        self.tags: object = ()
        self.kinds = ""

    @handles
    def book(self, c: Book) -> list[Booked]:
        return [Booked(c.when, c.tags)]

    @handles
    def mix(self, c: Mixed) -> list[Mixes]:
        return [Mixes(c.members, c.anything, c.amount)]

    @handles
    def show(self, c: Show) -> list[Booked]:
        raise Rejected(f"hour={self.hour} tags={type(self.tags).__name__} {self.kinds}")

    @applies
    def booked(self, e: Booked) -> None:
        self.hour = e.when.hour
        self.tags = e.tags

    @applies
    def mixes(self, e: Mixes) -> None:
        self.kinds = " ".join(type(v).__name__ for v in (e.members, e.anything, e.amount))


class Hours(Projector):
    def __init__(self) -> None:
        self.hours: dict[str, int] = {}
        self.tags: dict[str, Any] = {}
        self.kinds: dict[str, str] = {}

    @applies
    def booked(self, e: Booked, meta: Recorded) -> None:
        self.hours[meta.stream_id] = e.when.hour
        self.tags[meta.stream_id] = e.tags  # kept by reference: must not be the caller's

    @applies
    def mixes(self, e: Mixes, meta: Recorded) -> None:
        self.kinds[meta.stream_id] = " ".join(
            type(v).__name__ for v in (e.members, e.anything, e.amount)
        )

    def hour(self, stream_id: str) -> int | None:
        return self.hours.get(stream_id)

    def tags_of(self, stream_id: str) -> tuple[str, Any]:
        tags = self.tags.get(stream_id, ())
        return type(tags).__name__, list(tags)

    def kinds_of(self, stream_id: str) -> str | None:
        return self.kinds.get(stream_id)


async def shown(engine: Engine, stream_id: str) -> str:
    with pytest.raises(Rejected) as caught:
        await engine.send(Slot, stream_id, Show())
    return str(caught.value)


async def test_live_state_is_the_read_back_event_not_the_emitted_one(tmp_path: Path) -> None:
    tags = ["a"]
    async with Engine.open(tmp_path, aggregates=[Slot], projectors=[Hours]) as engine:
        ack = await engine.send(Slot, "s", Book(NOON_AT_TZ5, tags))
        await engine.send(Slot, "s", Mixed({"m"}, ("t",), 1))
        live = await shown(engine, "s")
        await engine.wait_projected()
        live_view = (
            await engine.query(Hours.hour, "s", after=ack.position),
            await engine.query(Hours.tags_of, "s"),
            await engine.query(Hours.kinds_of, "s"),
        )
        tags.append("changed by the caller after the ack")
        assert await engine.query(Hours.tags_of, "s") == ("tuple", ["a"])  # no aliasing
    assert live == "hour=7 tags=tuple frozenset list float"
    assert live_view == (7, ("tuple", ["a"]), "frozenset list float")
    async with Engine.open(tmp_path, aggregates=[Slot], projectors=[Hours]) as engine:
        assert await shown(engine, "s") == live
        await engine.wait_projected()
        assert live_view == (
            await engine.query(Hours.hour, "s"),
            await engine.query(Hours.tags_of, "s"),
            await engine.query(Hours.kinds_of, "s"),
        )


async def test_passivation_does_not_change_the_state(tmp_path: Path) -> None:
    async with Engine.open(tmp_path, aggregates=[Slot], max_live_aggregates=1) as engine:
        await engine.send(Slot, "a", Book(NOON_AT_TZ5, ["x"]))
        before = await shown(engine, "a")
        await shown(engine, "b")  # passivates "a"
        assert not engine._aggregates.is_live("a")
        assert await shown(engine, "a") == before == "hour=7 tags=tuple "


def test_the_kit_applies_the_read_back_event_too() -> None:
    state = given(Slot).when(Book(NOON_AT_TZ5, ("x",))).state
    assert (state.hour, state.tags) == (7, ("x",))


# -- default snapshots: the live state is what restoring the snapshot gives ----------------


class Note(msgspec.Struct, frozen=True):
    when: datetime.datetime
    n: int


class Noted(msgspec.Struct, frozen=True):
    when: datetime.datetime
    n: int


class Local(Aggregate):
    """State whose annotations lose something: a datetime with an offset (UTC once
    encoded), an int in a float field, a list in a tuple field."""

    snapshot_every = 1
    local: datetime.datetime | None
    total: float
    seen: tuple[int, ...]

    def __init__(self) -> None:
        self.local = None
        self.total = 0
        self.seen = ()

    @handles
    def note(self, c: Note) -> list[Noted]:
        return [Noted(c.when, c.n)]

    @handles
    def show(self, c: Show) -> list[Noted]:
        hour = None if self.local is None else self.local.hour
        raise Rejected(f"{hour} {self.total!r} {type(self.seen).__name__}")

    @applies
    def noted(self, e: Noted) -> None:
        self.local = e.when.astimezone(TZ5)
        self.total += e.n
        self.seen = [*self.seen, e.n]  # type: ignore[assignment]


async def test_a_snapshot_leaves_the_live_state_as_restoring_it_gives(tmp_path: Path) -> None:
    when = datetime.datetime(2026, 1, 1, 7, tzinfo=datetime.UTC)
    async with Engine.open(tmp_path, aggregates=[Local]) as engine:
        await engine.send(Local, "l", Note(when, 2))
        with pytest.raises(Rejected) as live:
            await engine.send(Local, "l", Show())
        assert engine.statistics().aggregates.snapshot_failures == 0
    async with Engine.open(tmp_path, aggregates=[Local]) as engine:
        with pytest.raises(Rejected) as restored:
            await engine.send(Local, "l", Show())
    assert str(live.value) == str(restored.value) == "7 2.0 tuple"


class Count(Projector):
    snapshot_every = 1
    total: float
    seen: tuple[int, ...]

    def __init__(self) -> None:
        self.total = 0
        self.seen = ()

    @applies
    def noted(self, e: Noted) -> None:
        self.total += e.n
        self.seen = [*self.seen, e.n]  # type: ignore[assignment]

    def kinds(self) -> str:
        return f"{self.total!r} {type(self.seen).__name__}"


async def test_a_saved_cache_leaves_the_live_cache_as_restoring_it_gives(tmp_path: Path) -> None:
    when = datetime.datetime(2026, 1, 1, 7, tzinfo=datetime.UTC)
    async with Engine.open(tmp_path, aggregates=[Local], projectors=[Count]) as engine:
        ack = await engine.send(Local, "l", Note(when, 2))
        await engine.wait_projected()
        await engine.send(Local, "l", Note(when, 1))  # a save is due after each position
        await engine.wait_projected()
        live = await engine.query(Count.kinds, after=ack.position)
    async with Engine.open(tmp_path, aggregates=[Local], projectors=[Count]) as engine:
        assert engine.statistics().projectors[0].restored_from > 0
        assert await engine.query(Count.kinds) == live == "3.0 tuple"


def test_plain_scalar_state_is_snapshotted_without_a_read_back() -> None:
    class Plain(Aggregate):
        snapshot_every = 1
        n: int
        name: str

        def __init__(self) -> None:
            self.n = 0
            self.name = "x"

    state = Plain()
    kept = state.__dict__.copy()
    state.snapshot_state()
    assert all(state.__dict__[k] is v for k, v in kept.items())
