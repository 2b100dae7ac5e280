"""actorlog.testing: given/then for projectors, checked against the engine itself."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from actorlog import (
    DefinitionError,
    EncodeError,
    Engine,
    HandlerError,
    Parked,
    Projector,
    ProjectorFaulted,
    Recorded,
    UnknownQuery,
    applies,
)
from actorlog.lowlevel import EventRegistry
from actorlog.storage import MemoryEventLog, StoredEvent
from actorlog.testing import given_events
from benchmarks.bank import (
    Account,
    AccountOpened,
    Balances,
    Deposit,
    Deposited,
    OpenAccount,
    Totals,
    Withdraw,
    Withdrawn,
)


class Renamed(msgspec.Struct, frozen=True, tag="renamed-v1"):
    owner: str


class Ledger(Projector):
    """Keeps every event and its metadata exactly as the applier received them."""

    def __init__(self) -> None:
        self.seen: list[tuple[Any, Recorded]] = []

    @applies
    def deposited(self, e: Deposited, meta: Recorded) -> None:
        self.seen.append((e, meta))

    @applies
    def renamed(self, e: Renamed, meta: Recorded) -> None:
        self.seen.append((e, meta))

    def count(self) -> int:
        return len(self.seen)


class Picky(Projector):
    """Sums movements; its applier raises on a withdrawal of exactly 3."""

    def __init__(self) -> None:
        self.sum = 0

    @applies
    def deposited(self, e: Deposited) -> None:
        self.sum += e.amount

    @applies
    def withdrawn(self, e: Withdrawn) -> None:
        if e.amount == 3:
            raise ValueError(f"cannot take {e.amount}")
        self.sum -= e.amount

    def total(self) -> int:
        return self.sum


class PickyParked(Picky):
    on_error = "park"

    # Its own query: the engine routes an inherited one (Picky.total) to Picky's host.
    def parked_total(self) -> int:
        return self.sum


HISTORY = [
    ("acct-1", AccountOpened("ann")),
    ("acct-1", Deposited(10)),
    ("acct-2", AccountOpened("bob")),
    ("acct-1", Withdrawn(3)),
    ("acct-2", Deposited(7)),
    ("acct-1", Withdrawn(2)),
]


def test_then_query_sees_the_folded_events() -> None:
    (
        given_events(Balances, [("acct-1", AccountOpened("ann")), ("acct-1", Deposited(5))])
        .then_query(Balances.balance, "acct-1", equals=5)
        .then_query(Balances.balance, "acct-2", equals=0)
        .then_query(Balances.all_balances, equals={"acct-1": 5})
    )


def test_then_query_with_another_result_raises_assertion() -> None:
    scenario = given_events(Balances, [("acct-1", Deposited(5))])
    with pytest.raises(
        AssertionError, match=r"Balances.balance\('acct-1'\) returned 5; expected 6"
    ):
        scenario.then_query(Balances.balance, "acct-1", equals=6)


def test_query_passes_keyword_arguments() -> None:
    scenario = given_events(Balances, [("acct-1", Deposited(5))])
    assert scenario.query(Balances.balance, account="acct-1") == 5
    with pytest.raises(AssertionError, match=r"balance\(account='acct-1'\) returned 5"):
        scenario.then_query(Balances.balance, account="acct-1", equals=4)


def test_query_result_is_a_copy_like_the_engine_returns() -> None:
    scenario = given_events(Balances, [("acct-1", Deposited(5))])
    balances = scenario.query(Balances.all_balances)
    balances["acct-1"] = 99
    assert scenario.query(Balances.all_balances) == {"acct-1": 5}
    assert scenario.instance.by_account == {"acct-1": 5}


def test_metadata_has_consecutive_positions_and_per_stream_versions() -> None:
    events = [
        ("a", Deposited(1)),
        ("b", Deposited(2)),
        ("a", Renamed("x")),
        ("a", Deposited(3)),
    ]
    scenario = given_events(Ledger, events, timestamp=1234.5)
    metas = [meta for _, meta in scenario.instance.seen]
    assert [(m.position, m.stream_id, m.version, m.type) for m in metas] == [
        (1, "a", 1, "Deposited"),
        (2, "b", 1, "Deposited"),
        (3, "a", 2, "renamed-v1"),
        (4, "a", 3, "Deposited"),
    ]
    assert all(m.timestamp == 1234.5 for m in metas)
    assert all(m.correlation_id is None and m.causation_id is None for m in metas)
    assert metas == scenario.recorded


def test_appliers_get_the_event_read_back_and_its_stored_record() -> None:
    event = Deposited(4)
    scenario = given_events(Ledger, [("a", event)])
    received, meta = scenario.instance.seen[0]
    assert received == event and received is not event
    assert isinstance(meta, StoredEvent)
    assert msgspec.msgpack.decode(meta.payload, type=Deposited) == event
    assert meta.timestamp == 0.0


def test_events_the_projector_ignores_still_take_positions_and_versions() -> None:
    scenario = given_events(Ledger, [("a", AccountOpened("ann")), ("a", Deposited(1))])
    [(_, meta)] = scenario.instance.seen
    assert (meta.position, meta.version) == (2, 2)
    scenario.then_query(Ledger.count, equals=1)


def test_no_events_gives_the_empty_cache() -> None:
    given_events(Totals).then_query(Totals.net, equals=0).then_parked([])


def test_events_may_come_from_any_iterable() -> None:
    given_events(Totals, (pair for pair in HISTORY)).then_query(Totals.net, equals=12)


def test_a_function_that_is_not_a_query_of_the_projector_raises_unknown_query() -> None:
    scenario = given_events(Totals, [("a", Deposited(1))])
    with pytest.raises(UnknownQuery, match=r"Balances\.balance is not a query of Totals"):
        scenario.query(Balances.balance, "a")  # type: ignore[arg-type]  # mypy sees it too
    with pytest.raises(UnknownQuery):
        scenario.then_query(Totals.deposited, Deposited(1), equals=None)  # an applier


def test_halt_projector_stops_at_the_failing_event() -> None:
    scenario = given_events(Picky, HISTORY)
    assert scenario.fault is not None
    assert (scenario.fault.position, scenario.fault.event_type) == (4, "Withdrawn")
    assert scenario.instance.sum == 10  # the events after the failure were not applied
    assert scenario.parked == []


def test_querying_a_halted_projector_raises_projector_faulted_with_the_cause() -> None:
    scenario = given_events(Picky, HISTORY)
    with pytest.raises(ProjectorFaulted, match=r"Picky halted at position 4 \(Withdrawn\)") as a:
        scenario.query(Picky.total)
    assert isinstance(a.value.__cause__, ValueError)
    with pytest.raises(ProjectorFaulted) as b:
        scenario.then_query(Picky.total, equals=10)
    assert b.value is not a.value  # a fresh error per raise, as the engine raises them


def test_then_halted_checks_the_error_the_event_and_the_message() -> None:
    scenario = given_events(Picky, HISTORY)
    scenario.then_halted().then_halted(ValueError, at=("acct-1", Withdrawn(3)), match="take 3")
    with pytest.raises(AssertionError, match="expected KeyError"):
        scenario.then_halted(KeyError)
    with pytest.raises(AssertionError, match=r"halted at \('acct-1', Withdrawn\(amount=3\)\)"):
        scenario.then_halted(at=("acct-2", Withdrawn(3)))
    with pytest.raises(AssertionError, match="does not match"):
        scenario.then_halted(match="take 4")


def test_then_halted_on_a_projector_that_applied_everything_raises_assertion() -> None:
    with pytest.raises(AssertionError, match="Picky applied every event; expected it to halt"):
        given_events(Picky, [("a", Withdrawn(2))]).then_halted()


def test_then_halted_on_a_park_projector_names_the_parked_events() -> None:
    with pytest.raises(AssertionError, match=r"parked: .*Withdrawn\(amount=3\).*ValueError"):
        given_events(PickyParked, HISTORY).then_halted()


def test_park_projector_skips_the_failing_event_and_lists_it() -> None:
    scenario = given_events(PickyParked, HISTORY)
    scenario.then_parked([("acct-1", Withdrawn(3))]).then_query(PickyParked.parked_total, equals=15)
    assert scenario.fault is None
    assert scenario.parked == [
        Parked(4, "acct-1", "Withdrawn", repr(ValueError("cannot take 3"))),
    ]


def test_then_parked_with_other_events_raises_assertion() -> None:
    scenario = given_events(PickyParked, HISTORY)
    with pytest.raises(AssertionError, match=r"PickyParked parked \[\('acct-1', Withdrawn"):
        scenario.then_parked([])


def test_then_parked_on_a_halted_projector_raises_assertion() -> None:
    with pytest.raises(AssertionError, match="halted at position 4"):
        given_events(Picky, HISTORY).then_parked([("acct-1", Withdrawn(3))])


def test_then_parked_on_a_halt_projector_says_it_never_parks() -> None:
    with pytest.raises(AssertionError, match="on_error is 'halt'"):
        given_events(Picky, [("a", Deposited(1))]).then_parked([("a", Deposited(1))])


def test_then_query_failure_on_a_park_projector_names_the_parked_events() -> None:
    scenario = given_events(PickyParked, HISTORY)
    with pytest.raises(AssertionError, match=r"returned 15; expected 12 \(parked: .*position 4"):
        scenario.then_query(PickyParked.parked_total, equals=12)


def test_a_user_base_exception_from_an_applier_halts_as_in_the_engine() -> None:
    # The kit folds with the engine's code, so a user's BaseException subclass is an
    # applier fault there too (it was passed through before the kit shared the fold).
    class Stop(BaseException):
        pass

    class Stopper(Projector):
        @applies
        def deposited(self, e: Deposited) -> None:
            raise Stop

    given_events(Stopper, [("a", Deposited(1))]).then_halted(Stop, at=("a", Deposited(1)))


def test_ctrl_c_from_an_applier_passes_through() -> None:
    class Interrupted(Projector):
        @applies
        def deposited(self, e: Deposited) -> None:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        given_events(Interrupted, [("a", Deposited(1))])


def test_a_bare_event_instead_of_a_pair_raises_type_error() -> None:
    with pytest.raises(TypeError, match=r"expected a \(stream_id, event\) pair"):
        given_events(Balances, [Deposited(5)])  # type: ignore[list-item]


def test_an_event_that_is_not_a_struct_raises_definition_error() -> None:
    with pytest.raises(DefinitionError, match=r"not a msgspec\.Struct"):
        given_events(Balances, [("a", {"amount": 5})])


def test_a_mutable_event_type_raises_definition_error() -> None:
    class Loose(msgspec.Struct):
        amount: int

    with pytest.raises(DefinitionError, match="must be frozen"):
        given_events(Balances, [("a", Loose(5))])


def test_an_event_msgspec_cannot_encode_raises_encode_error() -> None:
    class Opaque(msgspec.Struct, frozen=True):
        thing: object

    with pytest.raises(EncodeError, match="cannot store") as info:
        given_events(Balances, [("a", Opaque(object()))])
    assert info.value.__cause__ is not None


def test_an_event_read_back_as_something_else_raises_assertion() -> None:
    class Lossy(msgspec.Struct, frozen=True):
        value: float

    with pytest.raises(AssertionError, match="does not survive encoding"):
        given_events(Balances, [("a", Lossy(float("nan")))])  # nan != nan


def test_an_event_that_cannot_be_read_back_raises_encode_error() -> None:
    with pytest.raises(EncodeError, match="cannot store"):
        given_events(Balances, [("a", Deposited("5"))])  # type: ignore[arg-type]


async def test_the_kit_folds_the_log_exactly_as_the_engine_does() -> None:
    commands = [
        ("acct-1", OpenAccount("ann")),
        ("acct-1", Deposit(10)),
        ("acct-2", OpenAccount("bob")),
        ("acct-1", Withdraw(3)),
        ("acct-2", Deposit(7)),
        ("acct-1", Withdraw(2)),
        ("acct-2", Withdraw(3)),
    ]
    async with Engine.open(
        log=MemoryEventLog(), aggregates=[Account], projectors=[Balances, Picky, PickyParked]
    ) as engine:
        for stream_id, command in commands:
            head = (await engine.send(Account, stream_id, command)).position
        with pytest.raises(ProjectorFaulted) as engine_fault:
            await engine.query(Picky.total, after=head)
        balances = await engine.query(Balances.all_balances, after=head)
        parked_total = await engine.query(PickyParked.parked_total, after=head)
        engine_parked = engine.parked(PickyParked)
        stored = engine.log.read_all(1, 100)
    registry = EventRegistry([AccountOpened, Deposited, Withdrawn])
    history = [(s.stream_id, registry.decode(s.type, s.payload)) for s in stored]

    given_events(Balances, history).then_query(Balances.all_balances, equals=balances)
    parked = given_events(PickyParked, history)
    parked.then_query(PickyParked.parked_total, equals=parked_total)
    assert parked.parked == engine_parked and len(engine_parked) == 2
    with pytest.raises(ProjectorFaulted) as kit_fault:
        given_events(Picky, history).query(Picky.total)
    assert str(kit_fault.value) == str(engine_fault.value)
    assert repr(kit_fault.value.__cause__) == repr(engine_fault.value.__cause__)
    # The metadata and payloads the kit records are the ones the log holds.
    kit = given_events(Balances, history).recorded
    assert [(r.position, r.stream_id, r.version, r.type) for r in kit] == [
        (s.position, s.stream_id, s.version, s.type) for s in stored
    ]
    assert [bytes(r.payload) for r in kit] == [bytes(s.payload) for s in stored]


class Fussy(Projector):
    """Queries that fail the way user code does: one raises, one returns a generator."""

    def __init__(self) -> None:
        self.total = 0

    @applies
    def deposited(self, e: Deposited, meta: Recorded) -> None:
        self.total += e.amount

    def broken(self) -> int:
        raise KeyError("no such account")

    def lazily(self) -> Any:
        return (n for n in range(self.total))


async def test_a_failing_query_is_the_same_handler_error_in_the_kit_and_the_engine() -> None:
    history = [("acct-1", Deposited(3))]
    kit = given_events(Fussy, history)
    async with Engine.open(
        log=MemoryEventLog(), aggregates=[Account], projectors=[Fussy]
    ) as engine:
        await engine.send(Account, "acct-1", OpenAccount("ann"))
        ack = await engine.send(Account, "acct-1", Deposit(3))
        for query in (Fussy.broken, Fussy.lazily):
            with pytest.raises(HandlerError) as in_engine:
                await engine.query(query, after=ack.position)
            with pytest.raises(HandlerError) as in_kit:
                kit.query(query)
            assert str(in_kit.value) == str(in_engine.value)
            assert type(in_kit.value.__cause__) is type(in_engine.value.__cause__)
