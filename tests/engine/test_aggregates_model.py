"""Property: ``Aggregates`` under random interleavings of senders, cancellations, commits
released in random batches and injected commit failures never strands a sender, answers
each one consistently with the log, and ends with clean counters. Some aggregate kinds
have a handler that changes the state and then refuses (``Meddle``): in place on a list
(undone by a reload) or by rebinding immutable values (undone by restoring them); every
decision must still be made on exactly the replayed state.

The hand-cranked writer of ``tests/engine/actor_host.py`` makes the test decide when each
group commits and which append fails; hypothesis picks the program, and trio's scheduling
is seeded by hypothesis (pytest-trio registers its random), so a failing example replays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, cast

import msgspec
import pytest
import trio
import trio.lowlevel
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from actorlog import (
    Committed,
    ConcurrencyError,
    HandlerError,
    Overloaded,
    Rejected,
    StorageError,
    UnknownCommand,
    applies,
    handles,
)
from actorlog.engine._aggregates import Aggregates, Pending
from actorlog.engine._metadata import CommandMeta
from actorlog.lowlevel import EventRegistry, Writer
from actorlog.storage import MemoryEventLog, StoredEvent

from .actor_host import ManualWriter, Sender, host, nowait, start
from .api_scenarios import (
    Add,
    Added,
    AddTwo,
    Explode,
    Ledger,
    Noop,
    Peek,
    Peeked,
    SnapLedger,
    Spend,
    Spent,
    TooLittle,
)

STREAMS = ("a", "b", "c")


class Meddle(msgspec.Struct, frozen=True):
    n: int


class Meddled(Rejected):
    """Meddle refused, after changing the state."""


class MeddlingLedger(Ledger):
    """A Ledger whose Meddle adds to the balance and the history, in place, and then
    refuses: a handler that breaks the rule, which the engine must undo (here by a reload,
    as a list changed in place cannot be restored)."""

    @handles
    def meddle(self, c: Meddle) -> None:
        self.balance += c.n
        self.history.append(c.n)
        raise Meddled(f"meddled with {c.n}")


class SnapMeddlingLedger(MeddlingLedger):
    aggregate_name = "MeddlingLedger"
    snapshot_every = 3


class TupleLedger(MeddlingLedger):
    """The same with an immutable history: a refusal is undone by restoring attributes."""

    history: tuple[int, ...]  # type: ignore[assignment]

    def __init__(self) -> None:
        self.balance = 0
        self.history = ()

    @handles
    def meddle(self, c: Meddle) -> None:
        self.balance += c.n
        self.history = (*self.history, c.n)
        raise Meddled(f"meddled with {c.n}")

    @applies
    def added(self, e: Added) -> None:
        self.balance += e.n
        self.history = (*self.history, e.n)


class SnapTupleLedger(TupleLedger):
    aggregate_name = "TupleLedger"
    snapshot_every = 3


KINDS = [Ledger, SnapLedger, MeddlingLedger, SnapMeddlingLedger, TupleLedger, SnapTupleLedger]

# -- the program ---------------------------------------------------------------------------

Pause = Literal["none", "checkpoint", "blocked"]
"""What the driver does after a step: nothing (woken tasks have not run yet), one
checkpoint (each runnable task takes one step), or wait until every task is blocked."""


@dataclass(frozen=True)
class Send:
    """Start a sender task running ``Aggregates.send``."""

    stream: str
    command: Any
    pause: Pause


@dataclass(frozen=True)
class SendNowait:
    """``send_nowait`` from the driver; its Pending is awaited at the end."""

    stream: str
    command: Any
    pause: Pause


@dataclass(frozen=True)
class Commit:
    """Commit the first ``count`` queued appends (all if None) as one group."""

    count: int | None
    pause: Pause


@dataclass(frozen=True)
class Fail:
    """Fail the first ``count`` queued appends with a StorageError, as one group."""

    count: int
    pause: Pause


@dataclass(frozen=True)
class Cancel:
    """Cancel a sender that has no answer yet (``index`` modulo their number)."""

    index: int
    pause: Pause


@dataclass(frozen=True)
class Sweep:
    """An idle sweep (passivates actors untouched since the previous one)."""

    pause: Pause


Step = Send | SendNowait | Commit | Fail | Cancel | Sweep

pauses = st.sampled_from(["none", "checkpoint", "blocked"])
streams = st.sampled_from(STREAMS)
commands = st.one_of(
    st.builds(Add, st.integers(1, 5)),
    st.builds(Spend, st.integers(1, 8)),
    st.builds(AddTwo, st.integers(1, 3), st.integers(1, 3)),
    st.just(Peek()),
    st.just(Noop()),
    st.just(Explode()),
    st.builds(Meddle, st.integers(1, 5)),  # UnknownCommand on the kinds without it
)
sends = st.builds(Send, streams, commands, pauses)
commits = st.builds(Commit, st.one_of(st.none(), st.integers(1, 3)), pauses)
cancels = st.builds(Cancel, st.integers(0, 30), pauses)
steps = st.one_of(  # repeated: senders, commits and cancellations are what races
    sends,
    commits,
    sends,
    cancels,
    sends,
    st.builds(Fail, st.integers(1, 2), pauses),
    commits,
    cancels,
    st.builds(SendNowait, streams, commands, pauses),
    st.builds(Sweep, pauses),
)

# -- the run -------------------------------------------------------------------------------


Outcome = Committed | Exception | Literal["cancelled"]


@dataclass
class Caller:
    """One ``send`` in its own task, with the stream's durable version around it."""

    ident: str
    stream: str
    command: Any
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    cancelled: bool = False  # the driver cancelled it (it may have finished before)
    durable_before: int = -1  # the stream's durable version when send was called
    durable_after: int = -1  # ... and when send returned or raised
    result: Outcome | None = None

    async def run(self, aggregates: Aggregates, kind: type[Ledger], log: MemoryEventLog) -> None:
        with self.scope:
            self.durable_before = log.stream_version(self.stream)
            try:
                self.result = await aggregates.send(
                    kind, self.stream, self.command, _tagged(self.ident)
                )
            except Exception as e:
                self.result = e
            except trio.Cancelled:
                self.result = "cancelled"
                raise
            finally:
                self.durable_after = log.stream_version(self.stream)


@dataclass
class Run:
    """Everything the checks need once the program has run."""

    kind: type[Ledger]
    max_live: int
    aggregates: Aggregates
    writer: ManualWriter
    log: MemoryEventLog
    senders: list[Caller] = field(default_factory=list)
    pendings: list[tuple[str, str, Any, Pending]] = field(default_factory=list)
    nowait_results: list[tuple[str, str, Any, Committed | Exception]] = field(default_factory=list)
    injected: set[str] = field(default_factory=set)  # correlation ids of failed appends
    failed_streams: set[str] = field(default_factory=set)
    stuck: list[Caller] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)


async def pause(how: Pause) -> None:
    if how == "checkpoint":
        await trio.lowlevel.checkpoint()
    elif how == "blocked":
        await trio.testing.wait_all_tasks_blocked()


def check_capacity(run: Run, when: str) -> None:
    stats = run.aggregates.statistics()
    if stats.live > run.max_live or stats.peak_live > run.max_live:
        run.violations.append(f"{when}: {stats} exceeds max_live={run.max_live}")


def check_quiescent(run: Run, mailbox_size: int, when: str) -> None:
    """With every task blocked, each wait must be for something that has not happened yet:
    a wake-up lost now would otherwise only show if nothing later happened to repair it."""
    aggregates = run.aggregates
    live = aggregates._live
    if aggregates._capacity and (
        len(live) < run.max_live or not all(a.busy() for a in live.values())
    ):
        run.violations.append(f"{when}: a sender waits for a live slot, yet one is free")
    for actor in live.values():
        if actor.handed:
            run.violations.append(f"{when}: {actor.stream_id!r} has slots handed to nobody")
        if actor.drained and not actor.inflight:
            run.violations.append(f"{when}: {actor.stream_id!r} drained, senders still wait")
        full = actor.inflight >= mailbox_size or (actor.stale and actor.inflight > 0)
        if actor.room and not full:
            run.violations.append(f"{when}: {actor.stream_id!r} has room, senders still wait")
        if any(count <= actor.completed for count in actor.settled.values()):
            run.violations.append(f"{when}: {actor.stream_id!r} settled, senders still wait")


async def play(run: Run, program: list[Step], mailbox_size: int) -> None:
    aggregates, writer = run.aggregates, run.writer
    async with trio.open_nursery() as nursery:
        for number, step in enumerate(program):
            if isinstance(step, Send):
                sender = Caller(f"s{len(run.senders)}", step.stream, step.command)
                run.senders.append(sender)
                nursery.start_soon(sender.run, aggregates, run.kind, run.log)
            elif isinstance(step, SendNowait):
                ident = f"n{len(run.pendings)}"
                try:
                    pending = aggregates.send_nowait(
                        run.kind, step.stream, step.command, _tagged(ident)
                    )
                except (Overloaded, Rejected, HandlerError, UnknownCommand):
                    pass  # decided on state maybe still in flight: nothing was queued
                else:
                    run.pendings.append((ident, step.stream, step.command, pending))
            elif isinstance(step, Commit):
                writer.commit(None if step.count is None else min(step.count, len(writer.queue)))
            elif isinstance(step, Fail):
                for _ in range(min(step.count, len(writer.queue))):
                    append = writer.queue[0][0]
                    assert append.correlation_id is not None
                    run.injected.add(append.correlation_id)
                    run.failed_streams.add(append.stream_id)
                    writer.fail_first(StorageError("injected"))
            elif isinstance(step, Cancel):
                running = [s for s in run.senders if s.result is None]
                if running:
                    cancelled = running[step.index % len(running)]
                    cancelled.cancelled = True
                    cancelled.scope.cancel()
            else:
                aggregates.sweep_idle()
            await pause(step.pause)
            when = f"after step {number} ({step})"
            check_capacity(run, when)
            if step.pause == "blocked":
                check_quiescent(run, mailbox_size, when)
        # Stop injecting: commit whatever is queued until nothing is left to commit.
        for _ in range(10 * len(program) + 10):
            await trio.testing.wait_all_tasks_blocked()
            check_quiescent(run, mailbox_size, "while draining")
            if not writer.queue:
                break
            writer.commit()
            check_capacity(run, "while draining")
        run.stuck = [s for s in run.senders if s.result is None]
        nursery.cancel_scope.cancel()  # only stuck senders are left to cancel


# -- the checks ----------------------------------------------------------------------------

State = tuple[int, list[int]]


def replay(events: list[StoredEvent]) -> list[State]:
    """The (balance, history) a Ledger has after each prefix of its stream: [v] = after v."""
    balance, history = 0, list[int]()
    states: list[State] = [(0, [])]
    for event in events:
        if event.type == "Added":
            n = msgspec.msgpack.decode(event.payload, type=Added).n
            balance, history = balance + n, [*history, n]
        else:
            assert event.type == "Spent", event
            balance -= msgspec.msgpack.decode(event.payload, type=Spent).n
        states.append((balance, history))
    return states


def expected_events(command: Any) -> list[tuple[str, int]]:
    if isinstance(command, Add):
        return [("Added", command.n)]
    if isinstance(command, AddTwo):
        return [("Added", command.a), ("Added", command.b)]
    if isinstance(command, Spend):
        return [("Spent", command.n)]
    return []


def payload_n(event: StoredEvent) -> int:
    if event.type == "Added":
        return msgspec.msgpack.decode(event.payload, type=Added).n
    return msgspec.msgpack.decode(event.payload, type=Spent).n


def check_committed(
    ident: str, command: Any, result: Committed, mine: list[StoredEvent], durable: range | None
) -> None:
    """``result`` matches the events stored under ``ident`` (the command's correlation id)."""
    wanted = expected_events(command)
    assert result.events == len(wanted) == len(mine), (ident, result, mine)
    assert [(e.type, payload_n(e)) for e in mine] == wanted, (ident, mine)
    if not mine:  # a command without events checks the version only
        assert result.position == 0, (ident, result)
        if durable is not None:
            assert result.version in durable, (ident, result, durable)
        return
    assert {e.stream_id for e in mine} == {result.stream_id}, (ident, mine)
    assert [e.position for e in mine] == list(
        range(result.position - len(mine) + 1, result.position + 1)
    ), (ident, result, mine)
    assert [e.version for e in mine] == list(
        range(result.version - len(mine) + 1, result.version + 1)
    ), (ident, result, mine)


def check(run: Run) -> dict[str, State]:
    """Every answer against the log; returns each stream's final durable state."""
    events = run.log.read_all(1, 1_000_000)
    assert [e.position for e in events] == list(range(1, len(events) + 1))
    by_stream = {s: [e for e in events if e.stream_id == s] for s in STREAMS}
    states = {}
    for stream, stream_events in by_stream.items():
        assert [e.version for e in stream_events] == list(range(1, len(stream_events) + 1))
        states[stream] = replay(stream_events)
        # Each Spend was decided on exactly the durable state before it.
        assert all(balance >= 0 for balance, _ in states[stream]), (stream, states[stream])
    by_ident: dict[str, list[StoredEvent]] = {}
    for event in events:
        assert event.correlation_id is not None
        by_ident.setdefault(event.correlation_id, []).append(event)

    for sender in run.senders:
        result, mine = sender.result, by_ident.pop(sender.ident, [])
        durable = range(sender.durable_before, sender.durable_after + 1)
        prefixes = states[sender.stream][sender.durable_before : sender.durable_after + 1]
        if result == "cancelled":
            assert sender.cancelled, sender
            assert len(mine) == len(expected_events(sender.command)) or not mine, (sender, mine)
        elif isinstance(result, Committed):
            assert result.stream_id == sender.stream, sender
            check_committed(sender.ident, sender.command, result, mine, durable)
        else:
            assert not mine, (sender, mine)  # no error leaves an event behind
            if isinstance(result, Peeked):
                # Decided on state that is durable by the time send raises.
                assert (result.balance, result.history) in prefixes, (sender, prefixes)
            elif isinstance(result, TooLittle):
                assert isinstance(sender.command, Spend)
                assert any(balance < sender.command.n for balance, _ in prefixes), (
                    sender,
                    prefixes,
                )
            elif isinstance(result, Meddled):
                assert isinstance(sender.command, Meddle), sender
            elif isinstance(result, UnknownCommand):
                assert isinstance(sender.command, Meddle), sender
                assert not issubclass(run.kind, MeddlingLedger), sender
            elif isinstance(result, HandlerError):
                assert isinstance(sender.command, Explode), sender
            elif isinstance(result, ConcurrencyError):
                assert sender.stream in run.failed_streams, sender  # only failures cause one
            else:
                assert isinstance(result, StorageError), sender
                assert sender.ident in run.injected, sender

    for ident, stream, command, outcome in run.nowait_results:
        mine = by_ident.pop(ident, [])
        if isinstance(outcome, Committed):
            assert outcome.stream_id == stream, (ident, outcome)
            check_committed(ident, command, outcome, mine, None)
        else:
            assert not mine, (ident, mine)
            if isinstance(outcome, ConcurrencyError):
                assert stream in run.failed_streams, (ident, outcome)
            else:
                assert isinstance(outcome, StorageError) and ident in run.injected, ident
    assert not by_ident, f"events nobody was told about: {by_ident}"
    return {stream: stream_states[-1] for stream, stream_states in states.items()}


async def collect_pendings(run: Run) -> None:
    """Every Pending has its outcome by now: awaiting one must not block."""
    for ident, stream, command, pending in run.pendings:
        outcome: Committed | Exception
        with trio.fail_after(1):
            try:
                outcome = await pending.wait()
            except (StorageError, ConcurrencyError) as e:
                outcome = e
        run.nowait_results.append((ident, stream, command, outcome))


def check_idle(run: Run) -> None:
    stats = run.aggregates.statistics()
    assert (stats.in_flight, stats.waiting) == (0, 0), stats
    assert stats.live <= run.max_live, stats
    for actor in run.aggregates._live.values():
        assert not actor.busy(), (actor.stream_id, actor.handed, actor.settled, actor.room)


async def check_usable(run: Run, final: dict[str, State]) -> None:
    """Each actor now sees exactly its durable state, and takes one more command."""
    for stream in STREAMS:
        with pytest.raises(Peeked) as seen:
            run.aggregates.send_nowait(run.kind, stream, Peek(), _tagged("final"))
        assert (seen.value.balance, seen.value.history) == final[stream], stream
        pending = run.aggregates.send_nowait(run.kind, stream, Add(1), _tagged("final"))
        run.writer.commit()
        with trio.fail_after(1):
            result = await pending.wait()
        assert result == Committed(
            stream, len(run.log.read_stream(stream)), run.log.head_position(), 1
        )
    check_idle(run)


async def scenario(
    program: list[Step], kind: type[Ledger], mailbox_size: int, max_live: int
) -> None:
    log = MemoryEventLog()
    writer = ManualWriter(log)
    aggregates = Aggregates(
        [kind],
        log=log,
        writer=cast(Writer, writer),
        registry=EventRegistry(),
        mailbox_size=mailbox_size,
        max_live=max_live,
    )
    run = Run(kind, max_live, aggregates, writer, log)
    await play(run, program, mailbox_size)
    assert not run.stuck, f"senders never answered after everything committed: {run.stuck}"
    assert not run.violations, run.violations
    await collect_pendings(run)
    check_idle(run)
    final = check(run)
    await check_usable(run, final)


@settings(max_examples=300, deadline=None)
@given(
    program=st.lists(steps, min_size=6, max_size=40),
    kind=st.sampled_from(KINDS),
    mailbox_size=st.integers(1, 3),
    max_live=st.integers(1, 3),
)
def test_random_interleavings_answer_every_sender_consistently_with_the_log(
    program: list[Step], kind: type[Ledger], mailbox_size: int, max_live: int
) -> None:
    trio.run(scenario, program, kind, mailbox_size, max_live)


# -- engine bugs found by the random runs ----------------------------------------------------


@pytest.mark.parametrize(
    ("command", "error"),
    [(Spend(5), TooLittle), (Explode(), HandlerError)],
    ids=["rejected", "handler_error"],
)
async def test_a_sender_refused_after_its_live_slot_wake_up_passes_the_wake_up_on(
    command: Any, error: type[Exception]
) -> None:
    aggregates, writer, _log = host(max_live=1, mailbox_size=1)
    nowait(aggregates, Add(1), "b")  # the only live slot is busy
    refused, next_ = Sender(aggregates, command, "a"), Sender(aggregates, Add(2), "a")
    async with trio.open_nursery() as nursery:
        await start(nursery, refused, next_)  # both wait for a live slot
        writer.commit()  # "b" goes idle and wakes `refused`, which activates "a" ...
        await trio.testing.wait_all_tasks_blocked()  # ... is refused, leaves "a" idle
        writer.commit()  # nothing queued: `next_` was never woken
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert isinstance(refused.result, error)
    assert next_.result == Committed("a", 1, 2, 1)


async def test_a_sender_woken_for_a_live_slot_it_does_not_need_passes_the_wake_up_on() -> None:
    aggregates, writer, _log = host(max_live=2, mailbox_size=2)
    nowait(aggregates, Add(1), "b")
    nowait(aggregates, Add(1), "c")  # both live slots are busy
    first, second = Sender(aggregates, Add(2), "a"), Sender(aggregates, Add(3), "a")
    other = Sender(aggregates, Add(4), "d")
    async with trio.open_nursery() as nursery:
        await start(nursery, first, second, other)  # all three wait for a live slot
        # "b" and "c" go idle and wake `first` and `second`: one activates "a" in the place
        # of "b"; the other finds "a" live and needs no slot, yet keeps the wake-up ...
        writer.commit()
        await trio.testing.wait_all_tasks_blocked()
        # ... so `other` waits while "c" is idle, until "a" next goes idle: never, if "a"
        # is kept busy.
        stranded = aggregates.statistics().waiting
        for _ in range(3):
            writer.commit()
            await trio.testing.wait_all_tasks_blocked()
    assert isinstance(other.result, Committed) and other.result.stream_id == "d"
    versions = sorted(s.result.version for s in (first, second) if isinstance(s.result, Committed))
    assert versions == [1, 2]  # either of the two may have activated "a"
    assert stranded == 0, "the sender for 'd' still waits although 'c' has been idle all along"


def _tagged(ident: str | None) -> CommandMeta | None:
    """A command's metadata carrying ``ident`` as its correlation id, which names the
    command in the log."""
    return None if ident is None else CommandMeta(ident, None, None, None, None)
