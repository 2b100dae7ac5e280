"""Defining projectors (actors/_projector.py): appliers, queries and options."""

from __future__ import annotations

import msgspec
import pytest

from actorlog import DefinitionError, Engine, Projector, Recorded, applies
from actorlog.storage import MemoryEventLog, StoredEvent
from benchmarks.bank import Account, AccountOpened, Balances, Deposit, Deposited, Withdrawn


class Unfrozen(msgspec.Struct):
    amount: int


def meta(position: int = 1) -> StoredEvent:
    return StoredEvent(position, "a", position, "Deposited", 0.0, "corr", "cause")


class WithAndWithoutMeta(Projector):
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    @applies
    def deposited(self, e: Deposited, meta: Recorded) -> None:
        self.calls.append(("deposited", meta))

    @applies
    def withdrawn(self, e: Withdrawn) -> None:
        self.calls.append(("withdrawn", e))

    def count(self) -> int:
        return len(self.calls)

    def _private(self) -> int:
        return 0

    @staticmethod
    def helper() -> int:
        return 0

    @classmethod
    def make(cls) -> WithAndWithoutMeta:
        return cls()


def test_appliers_are_found_by_annotation_with_or_without_meta() -> None:
    appliers = WithAndWithoutMeta.event_appliers
    assert set(appliers) == {Deposited, Withdrawn}
    view = WithAndWithoutMeta()
    m = meta()
    appliers[Deposited](view, Deposited(1), m)
    appliers[Withdrawn](view, Withdrawn(2), m)  # called like the others; meta dropped
    assert view.calls == [("deposited", m), ("withdrawn", Withdrawn(2))]


def test_plain_public_methods_are_queries() -> None:
    assert WithAndWithoutMeta.query_functions == frozenset({WithAndWithoutMeta.count})
    assert WithAndWithoutMeta.name == "WithAndWithoutMeta"
    assert WithAndWithoutMeta.on_error == "halt"


def test_a_subclass_inherits_queries_and_may_replace_an_applier() -> None:
    class MoreBalances(Balances):
        name = "more"

        def __init__(self) -> None:
            super().__init__()
            self.deposits = 0

        @applies
        def deposited(self, e: Deposited, meta: Recorded) -> None:
            self.deposits += 1

        def deposit_count(self) -> int:
            return self.deposits

    assert MoreBalances.name == "more"
    assert {Balances.balance, MoreBalances.deposit_count} <= MoreBalances.query_functions
    assert MoreBalances.event_appliers[Deposited] is MoreBalances.deposited
    assert MoreBalances.event_appliers[AccountOpened] is Balances.opened


async def test_appliers_receive_the_recorded_metadata() -> None:
    async with Engine.open(
        log=MemoryEventLog(), aggregates=[Account], projectors=[WithAndWithoutMeta]
    ) as engine:
        await engine.send(Account, "a", Deposit(1))
        ack = await engine.send(
            Account, "a", Deposit(2), correlation_id="req-1", causation_id="cmd-2"
        )
        assert await engine.query(WithAndWithoutMeta.count, after=ack.position) == 2
        # The test reaches into the cache here on purpose: the query API copies.
        host = engine._projectors[WithAndWithoutMeta]
        recorded = host.instance.calls[1][1]
    assert isinstance(recorded, Recorded)
    assert (recorded.position, recorded.stream_id, recorded.version, recorded.type) == (
        ack.position,
        "a",
        2,
        "Deposited",
    )
    assert (recorded.correlation_id, recorded.causation_id) == ("req-1", "cmd-2")
    assert recorded.timestamp > 0


def test_two_appliers_for_one_event_type_are_refused() -> None:
    with pytest.raises(DefinitionError, match="two appliers for Deposited"):

        class Twice(Projector):
            @applies
            def one(self, e: Deposited) -> None: ...

            @applies
            def two(self, e: Deposited, meta: Recorded) -> None: ...


def test_on_error_must_be_halt_or_park() -> None:
    with pytest.raises(DefinitionError, match="on_error"):

        class Sloppy(Projector):
            on_error = "ignore"  # type: ignore[assignment]

    class Careful(Projector):
        on_error = "park"

    assert Careful.on_error == "park"


def test_an_applier_needs_an_event_annotation() -> None:
    with pytest.raises(DefinitionError, match="annotate"):

        class Bare(Projector):
            @applies
            def deposited(self, e) -> None:  # type: ignore[no-untyped-def]
                ...

    with pytest.raises(DefinitionError, match=r"not a msgspec\.Struct"):

        class NotAnEvent(Projector):
            @applies
            def deposited(self, e: int) -> None: ...


def test_an_applier_takes_the_event_and_at_most_meta() -> None:
    with pytest.raises(DefinitionError, match="nothing more"):

        class Greedy(Projector):
            @applies
            def deposited(self, e: Deposited, meta: Recorded, extra: int) -> None: ...

    with pytest.raises(DefinitionError, match="nothing more"):

        class KeywordOnly(Projector):
            @applies
            def deposited(self, e: Deposited, *, meta: Recorded) -> None: ...


def test_init_must_take_no_arguments() -> None:
    with pytest.raises(DefinitionError, match="no arguments"):

        class Configured(Projector):
            def __init__(self, currency: str) -> None:
                self.currency = currency


def test_name_must_be_a_non_empty_string() -> None:
    with pytest.raises(DefinitionError, match="name"):

        class Nameless(Projector):
            name = ""


async def test_two_projectors_with_one_name_are_refused_at_open() -> None:
    class Other(Projector):
        name = "Balances"

    with pytest.raises(DefinitionError, match="share a name"):
        async with Engine.open(log=MemoryEventLog(), aggregates=[], projectors=[Balances, Other]):
            pass  # pragma: no cover


def test_an_applier_for_a_mutable_event_type_is_refused_at_class_creation() -> None:
    with pytest.raises(DefinitionError, match="frozen"):

        class Loose(Projector):
            @applies
            def unfrozen(self, e: Unfrozen) -> None: ...
