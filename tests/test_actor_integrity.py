"""Live state equals replayed state whatever user code does, memory is bounded in bytes,
cancelling waiters is O(1) each, and user code's ``BaseException`` is its own failure.

Real LMDB (``Engine.open(tmp_path)``) wherever the log matters; the aggregate host's
hand-cranked writer (``tests/test_aggregates.py``) where the test must decide when a
group commits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from actors import Aggregate, Projector, applies, handles
from engine import Engine, HandlerError, ProjectorFaulted, Recorded, Rejected

# -- 1. a handler that changes its actor and then refuses ------------------------------------


class Add(msgspec.Struct, frozen=True):
    n: int


class Totalled(msgspec.Struct, frozen=True):
    total: int


class Meddler(Aggregate):
    """Adds to its total, then refuses negative amounts: after the change (the bug class)."""

    total: int

    def __init__(self) -> None:
        self.total = 0

    @handles
    def add(self, c: Add) -> list[Totalled]:
        self.total += c.n  # decides on a changed state ...
        if c.n < 0:
            raise Rejected(f"{c.n} is negative")  # ... and refuses after the change
        return [Totalled(self.total)]

    @applies
    def totalled(self, e: Totalled) -> None:
        self.total = e.total


class SnapMeddler(Meddler):
    aggregate_name = "Meddler"
    snapshot_every = 1


class ListMeddler(Meddler):
    """The same, with a mutable attribute changed in place: not undoable by restoring."""

    aggregate_name = "Meddler"
    amounts: list[int]

    def __init__(self) -> None:
        super().__init__()
        self.amounts = []

    @handles
    def add(self, c: Add) -> list[Totalled]:
        self.amounts.append(c.n)
        return super().add(c)

    @applies
    def totalled(self, e: Totalled) -> None:
        self.amounts = [*self.amounts, e.total]
        self.total = e.total


class SnapListMeddler(ListMeddler):
    aggregate_name = "Meddler"
    snapshot_every = 1


MEDDLERS = [Meddler, SnapMeddler, ListMeddler, SnapListMeddler]


def totals(engine: Engine, stream_id: str = "m") -> list[int]:
    return [
        msgspec.msgpack.decode(e.payload, type=Totalled).total
        for e in engine.log.read_stream(stream_id)
    ]


@pytest.mark.parametrize("kind", MEDDLERS, ids=lambda k: k.__name__)
async def test_a_handler_that_changes_its_state_then_rejects_leaves_no_trace(
    tmp_path: Path, kind: type[Meddler]
) -> None:
    async with Engine.open(tmp_path, aggregates=[kind]) as engine:
        await engine.send(kind, "m", Add(1))
        with pytest.raises(Rejected):
            await engine.send(kind, "m", Add(-100))
        await engine.send(kind, "m", Add(1))
        assert totals(engine) == [1, 2]  # not [1, -98]: decided on the replayed state


@pytest.mark.parametrize("kind", MEDDLERS, ids=lambda k: k.__name__)
async def test_a_rejection_while_earlier_commands_are_in_flight_leaves_no_trace_across_a_restart(
    tmp_path: Path, kind: type[Meddler]
) -> None:
    async with Engine.open(tmp_path, aggregates=[kind]) as engine:
        first = engine.send_nowait(kind, "m", Add(1))  # in flight while the next is refused
        second = engine.send_nowait(kind, "m", Add(1))
        with pytest.raises(Rejected):
            await engine.send(kind, "m", Add(-100))
        await first
        await second
        # The state is all durable now: a snapshot (snapshot_every = 1) may be taken here,
        # and must hold the replayed state, not the refused change.
        await engine.send(kind, "m", Add(1))
        assert totals(engine) == [1, 2, 3]
        with pytest.raises(Rejected):
            await engine.send(kind, "m", Add(-5))  # the last thing before closing
    async with Engine.open(tmp_path, aggregates=[kind]) as engine:
        await engine.send(kind, "m", Add(1))
        assert totals(engine) == [1, 2, 3, 4]


async def test_a_rejection_on_immutable_state_is_undone_without_a_reload(tmp_path: Path) -> None:
    async with Engine.open(tmp_path, aggregates=[Meddler]) as engine:
        await engine.send(Meddler, "m", Add(1))
        for _ in range(3):
            with pytest.raises(Rejected):
                await engine.send(Meddler, "m", Add(-100))
        await engine.send(Meddler, "m", Add(1))
        assert totals(engine) == [1, 2]
        assert engine.statistics().aggregates.reloads == 0


class Frozen(msgspec.Struct, frozen=True):
    items: tuple[int, ...]


class Holder(msgspec.Struct, frozen=True):
    items: list[int]  # frozen, yet what it holds can change


class Shapes(Aggregate):
    """Attributes of several shapes; ``Poke`` changes one of them and then refuses."""

    def __init__(self) -> None:
        self.frozen = Frozen((1, 2))
        self.holder = Holder([1, 2])
        self.pairs: tuple[Any, ...] = (1, (2, 3))
        self.nested = (1, [2, 3])

    @handles
    def poke(self, c: Add) -> None:
        if c.n == 0:
            self.frozen = Frozen((9,))  # rebound: undone by restoring
        elif c.n == 1:
            self.holder.items.append(9)  # changed in place inside a frozen struct
        elif c.n == 2:
            self.pairs = (0,)
            self.extra = "new"  # a new attribute goes too
        else:
            self.nested[1].append(9)  # changed in place inside a tuple
        raise Rejected("poked")

    @handles
    def show(self, c: Totalled) -> None:
        raise Rejected(repr((self.frozen, self.holder, self.pairs, self.nested, vars(self))))


@pytest.mark.parametrize("poke", [0, 1, 2, 3])
async def test_whatever_a_refusing_handler_changed_is_gone_before_the_next_command(
    poke: int,
) -> None:
    async with Engine.open(None, aggregates=[Shapes]) as engine:
        with pytest.raises(Rejected) as fresh:
            await engine.send(Shapes, "s", Totalled(0))
        with pytest.raises(Rejected):
            await engine.send(Shapes, "s", Add(poke))
        with pytest.raises(Rejected) as after:
            await engine.send(Shapes, "s", Totalled(0))
        assert str(after.value) == str(fresh.value)


# -- 4. BaseException from user code ---------------------------------------------------------


class Boom(BaseException):
    """A user's exception outside the Exception tree."""


class Detonate(msgspec.Struct, frozen=True):
    where: str  # "handler" or "applier"
    error: str  # "boom" or "generator_exit"


class Detonated(msgspec.Struct, frozen=True):
    error: str


def _raise(error: str) -> None:
    raise Boom("boom") if error == "boom" else GeneratorExit()


class Bomb(Aggregate):
    total: int

    def __init__(self) -> None:
        self.total = 0

    @handles
    def add(self, c: Add) -> list[Totalled]:
        return [Totalled(self.total + c.n)]

    @handles
    def detonate(self, c: Detonate) -> list[Detonated]:
        self.total = -1
        if c.where == "handler":
            _raise(c.error)
        return [Detonated(c.error)]

    @applies
    def totalled(self, e: Totalled) -> None:
        self.total = e.total

    @applies
    def detonated(self, e: Detonated) -> None:
        self.total = -2
        _raise(e.error)


@pytest.mark.parametrize("error", ["boom", "generator_exit"])
@pytest.mark.parametrize("where", ["handler", "applier"])
async def test_a_base_exception_from_aggregate_code_is_a_handler_error(
    tmp_path: Path, where: str, error: str
) -> None:
    async with Engine.open(tmp_path, aggregates=[Bomb]) as engine:
        await engine.send(Bomb, "b", Add(1))
        with pytest.raises(HandlerError) as caught:
            await engine.send(Bomb, "b", Detonate(where, error))
        assert isinstance(caught.value.__cause__, Boom if error == "boom" else GeneratorExit)
        ack = await engine.send(Bomb, "b", Add(1))  # the engine and the actor carry on
        assert ack.version == 2
        assert [
            msgspec.msgpack.decode(e.payload, type=Totalled).total
            for e in engine.log.read_stream("b")
        ] == [1, 2]


async def test_system_exit_from_a_handler_reaches_the_caller_unchanged() -> None:
    class Quitter(Aggregate):
        @handles
        def add(self, c: Add) -> None:
            raise SystemExit(3)

    async with Engine.open(None, aggregates=[Quitter]) as engine:
        with pytest.raises(SystemExit):
            await engine.send(Quitter, "q", Add(1))


class Seen(Projector):
    def __init__(self) -> None:
        self.totals: list[int] = []

    @applies
    def totalled(self, e: Totalled, meta: Recorded) -> None:
        self.totals.append(e.total)

    def all(self) -> list[int]:
        return self.totals


class Fragile(Projector):
    """Raises a BaseException that is not an Exception on the total 2."""

    error = "boom"

    def __init__(self) -> None:
        self.totals: list[int] = []

    @applies
    def totalled(self, e: Totalled) -> None:
        if e.total == 2:
            _raise(type(self).error)
        self.totals.append(e.total)

    def all(self) -> list[int]:
        return self.totals


class ParkingFragile(Fragile):
    on_error = "park"
    error = "generator_exit"

    def parked_all(self) -> list[int]:  # its own query: an inherited one goes to Fragile
        return self.totals


@pytest.mark.parametrize("error", ["boom", "generator_exit"])
async def test_a_base_exception_from_a_projector_applier_halts_only_that_projector(
    tmp_path: Path, error: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Fragile, "error", error)
    async with Engine.open(
        tmp_path, aggregates=[Meddler], projectors=[Seen, Fragile, ParkingFragile]
    ) as engine:
        for _ in range(3):
            ack = await engine.send(Meddler, "m", Add(1))
        assert await engine.query(Seen.all, after=ack.position) == [1, 2, 3]
        with pytest.raises(ProjectorFaulted) as caught:
            await engine.query(Fragile.all, after=ack.position)
        assert caught.value.position == 2
        assert isinstance(caught.value.__cause__, Boom if error == "boom" else GeneratorExit)
        assert await engine.query(ParkingFragile.parked_all, after=ack.position) == [1, 3]
        assert [p.position for p in engine.parked(ParkingFragile)] == [2]
        ack = await engine.send(Meddler, "m", Add(1))  # the write side carries on
        assert await engine.query(Seen.all, after=ack.position) == [1, 2, 3, 4]
