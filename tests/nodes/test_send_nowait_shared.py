"""``send_nowait`` on a log other processes append to (issue 15, part 1): a command decided
on a stale cached aggregate is decided again by the engine, whether or not its ``Pending``
is awaited; a rejection stands only if decided on the stream's durable version; the
retries are bounded (``ConcurrencyError`` past ``CONFLICT_RETRIES``, ``Overloaded`` past
the mailbox); a command pipelined on a failed one never commits as it was decided (the
log fails it: see test_shared_pipelining.py); an engine closing commits every command
already decided and answers one with a retry under way truthfully.

The other process is a second writer of the same schema: a ``PostgresEventLog(shared=True)``
appending straight to the stream, synchronously, right before the engine decides (so the
engine's follower cannot have seen it: nothing awaits in between), or an engine on the
same schema. Real server (skipped without ``ACTORLOG_TEST_POSTGRES``).
"""

from __future__ import annotations

import asyncio

import anyio
import msgspec
import pytest

from actorlog import (
    ConcurrencyError,
    Engine,
    EngineClosed,
    Overloaded,
    Pending,
    Rejected,
    UnknownCommand,
)
from actorlog.actors import Aggregate, applies, handles
from actorlog.engine._aggregates import CONFLICT_RETRIES
from actorlog.lowlevel import EventRegistry
from actorlog.storage import ANY, Append, PostgresEventLog
from benchmarks.bank import Account, Deposit, Deposited, InsufficientFunds, Withdraw, Withdrawn
from tests.support import Postgres

from .rival import amounts, append, balances


async def wait_settled(engine: Engine) -> None:
    """Wait until no send_nowait outcome is being settled and nothing is in flight
    (a counter: polled, there is no event to wait on)."""
    for _ in range(2000):
        stats = engine.statistics().aggregates
        if not stats.redeciding and not stats.in_flight:
            return
        await anyio.sleep(0.005)
    raise AssertionError("send_nowait's outcome was never settled")


# -- decided on a stale aggregate ------------------------------------------------------------


async def stale_decision_commits_after_a_retry(postgres: Postgres) -> None:
    schema = postgres.schema()
    rival = postgres.log(schema, shared=True)
    async with Engine.open(log=postgres.log(schema, shared=True), aggregates=[Account]) as b:
        await b.send(Account, "acct", Deposit(1))  # cached in B at version 1
        append(rival, "acct", Deposited(10))  # version 2, unseen by B's follower yet
        pending = b.send_nowait(Account, "acct", Deposit(5))  # decided on version 1
        done = await pending
        assert (done.version, done.events) == (3, 1)
        assert b.statistics().aggregates.retries >= 1
        assert b.statistics().aggregates.redeciding == 0
    # The other process's event is kept; versions are consecutive; nothing twice.
    assert amounts(rival, "acct") == [
        (1, "Deposited", 1),
        (2, "Deposited", 10),
        (3, "Deposited", 5),
    ]


async def test_a_stale_decision_commits_after_a_retry(postgres: Postgres) -> None:
    await stale_decision_commits_after_a_retry(postgres)


def test_a_stale_decision_commits_after_a_retry_on_asyncio(postgres: Postgres) -> None:
    asyncio.run(stale_decision_commits_after_a_retry(postgres))


async def test_a_pending_never_awaited_still_commits(postgres: Postgres) -> None:
    schema = postgres.schema()
    rival = postgres.log(schema, shared=True)
    async with Engine.open(log=postgres.log(schema, shared=True), aggregates=[Account]) as b:
        await b.send(Account, "acct", Deposit(1))
        append(rival, "acct", Deposited(10))
        for amount in (2, 3, 4):  # all three decided on version 1; none is awaited
            b.send_nowait(Account, "acct", Deposit(amount))
        await wait_settled(b)
    events = amounts(rival, "acct")
    assert [v for v, _, _ in events] == [1, 2, 3, 4, 5]
    assert events[:2] == [(1, "Deposited", 1), (2, "Deposited", 10)]
    assert sorted(a for _, _, a in events[2:]) == [2, 3, 4]


async def test_two_engines_send_nowait_to_one_stream_lose_no_update(
    postgres: Postgres,
) -> None:
    # Two engines on one schema, each with pipelined send_nowait commands to one stream:
    # every Pending answers Committed, or ConcurrencyError once its retries are spent
    # (then nothing of it was appended); the log holds exactly the committed ones.
    import trio

    schema = postgres.schema()
    committed: list[int] = []
    refused = 0
    async with (
        Engine.open(log=postgres.log(schema, shared=True), aggregates=[Account]) as a,
        Engine.open(log=postgres.log(schema, shared=True), aggregates=[Account]) as b,
    ):

        async def client(engine: Engine) -> None:
            nonlocal refused
            for _ in range(5):
                pendings = [engine.send_nowait(Account, "hot", Deposit(1)) for _ in range(4)]
                for pending in pendings:
                    try:
                        committed.append((await pending).version)
                    except ConcurrencyError:
                        refused += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(client, a)
            nursery.start_soon(client, b)
        retries = a.statistics().aggregates.retries + b.statistics().aggregates.retries
    assert len(committed) + refused == 40
    assert sorted(committed) == list(range(1, len(committed) + 1))
    log = postgres.log(schema, shared=True)
    assert log.stream_version("hot") == len(committed)
    # A Pending fails with ConcurrencyError only once its retries are spent.
    assert retries >= CONFLICT_RETRIES * refused


# -- retries are bounded -------------------------------------------------------------------


class Bump(msgspec.Struct, frozen=True):
    """Add one."""


class Bumped(msgspec.Struct, frozen=True):
    """One was added."""


class Race:
    """Who races ``Contested``'s next decisions: a rival log, and how many times yet."""

    log: PostgresEventLog | None = None
    left = 0


RACE = Race()


class Contested(Aggregate):
    """A counter whose next ``RACE.left`` decisions each race another process: the
    handler (test-only) first appends that process's ``Bumped`` to its own stream."""

    count: int

    def __init__(self) -> None:
        self.count = 0

    @handles
    def bump(self, c: Bump) -> list[Bumped]:
        if RACE.log is not None and RACE.left > 0:
            RACE.left -= 1
            encoded = EventRegistry([Bumped]).encode(Bumped())
            outcomes, _ = RACE.log.append_batch([Append("c", ANY, (encoded,))])
            assert not any(isinstance(o, Exception) for o in outcomes)
        return [Bumped()]

    @applies
    def bumped(self, e: Bumped) -> None:
        self.count += 1


def rivals(log: PostgresEventLog | None, races: int) -> None:
    """Make the next ``races`` decisions of ``Contested`` stale (``log``: the rival)."""
    RACE.log, RACE.left = log, races


async def test_retries_exhausted_raise_concurrency_error_from_the_pending(
    postgres: Postgres,
) -> None:
    schema = postgres.schema()
    rival = postgres.log(schema, shared=True)
    try:
        async with Engine.open(log=postgres.log(schema, shared=True), aggregates=[Contested]) as b:
            await b.send(Contested, "c", Bump())  # version 1, cached
            rivals(rival, races=1000)  # every decision from now on is stale
            pending = b.send_nowait(Contested, "c", Bump())
            with pytest.raises(ConcurrencyError):
                await pending
            assert b.statistics().aggregates.retries == CONFLICT_RETRIES
            assert b.statistics().aggregates.redeciding == 0
            # The mailbox slot it held is free again.
            rivals(None, 0)
            done = await b.send_nowait(Contested, "c", Bump())
    finally:
        rivals(None, 0)
    # One decision first, then CONFLICT_RETRIES more: each lost to one rival append, and
    # none of the engine's was written; then the last command.
    decisions = CONFLICT_RETRIES + 1
    versions = [e.version for e in rival.read_stream("c")]
    assert versions == list(range(1, decisions + 3))
    assert done.version == decisions + 2


async def test_a_conflict_decided_again_commits_within_the_retries(postgres: Postgres) -> None:
    schema = postgres.schema()
    rival = postgres.log(schema, shared=True)
    try:
        async with Engine.open(log=postgres.log(schema, shared=True), aggregates=[Contested]) as b:
            await b.send(Contested, "c", Bump())
            rivals(rival, races=3)  # three stale decisions, then a fresh one
            done = await b.send_nowait(Contested, "c", Bump())
            assert b.statistics().aggregates.retries == 3
    finally:
        rivals(None, 0)
    assert done.version == 5 == rival.stream_version("c")


async def test_commands_being_settled_hold_mailbox_slots(postgres: Postgres) -> None:
    schema = postgres.schema()
    async with Engine.open(
        log=postgres.log(schema, shared=True), aggregates=[Account], mailbox_size=2
    ) as b:
        await b.send(Account, "acct", Deposit(1))
        # Two rejections being confirmed against the durable version fill the mailbox
        # (nothing awaits in between, so neither is settled yet).
        first = b.send_nowait(Account, "acct", Withdraw(50))
        second = b.send_nowait(Account, "acct", Withdraw(60))
        assert b.statistics().aggregates.redeciding == 2
        with pytest.raises(Overloaded):
            b.send_nowait(Account, "acct", Deposit(1))
        for pending in (first, second):
            with pytest.raises(InsufficientFunds):
                await pending
        assert (await b.send_nowait(Account, "acct", Deposit(1))).version == 2


# -- rejections ------------------------------------------------------------------------------


async def stale_rejection_is_decided_again(postgres: Postgres) -> None:
    schema = postgres.schema()
    rival = postgres.log(schema, shared=True)
    async with Engine.open(log=postgres.log(schema, shared=True), aggregates=[Account]) as b:
        await b.send(Account, "acct", Deposit(1))  # cached in B at balance 1
        append(rival, "acct", Deposited(10))  # balance 11 in the log
        # Refused on balance 1, which is stale: not raised here, not reported.
        pending = b.send_nowait(Account, "acct", Withdraw(5))
        done = await pending
        assert done.version == 3
        # A rejection that stands on the durable version reaches the awaiter.
        refused = b.send_nowait(Account, "acct", Withdraw(100))
        with pytest.raises(InsufficientFunds):
            await refused
        # ... also when it was decided on a stale one, as it is refused on both.
        append(rival, "acct", Deposited(1))
        with pytest.raises(InsufficientFunds):
            await b.send_nowait(Account, "acct", Withdraw(100))
        # A rejection on any state stands too.
        with pytest.raises(Rejected, match="positive"):
            await b.send_nowait(Account, "acct", Withdraw(0))
        # What is refused before deciding is still raised at once.
        with pytest.raises(UnknownCommand):
            b.send_nowait(Account, "acct", "not a command")
    assert amounts(rival, "acct") == [
        (1, "Deposited", 1),
        (2, "Deposited", 10),
        (3, "Withdrawn", 5),
        (4, "Deposited", 1),
    ]


async def test_a_stale_rejection_is_decided_again(postgres: Postgres) -> None:
    await stale_rejection_is_decided_again(postgres)


def test_a_stale_rejection_is_decided_again_on_asyncio(postgres: Postgres) -> None:
    asyncio.run(stale_rejection_is_decided_again(postgres))


async def test_a_rejection_behind_a_failed_command_is_decided_again(postgres: Postgres) -> None:
    schema = postgres.schema()
    rival = postgres.log(schema, shared=True)
    async with Engine.open(log=postgres.log(schema, shared=True), aggregates=[Account]) as b:
        await b.send(Account, "acct", Deposit(1))
        append(rival, "acct", Deposited(10))
        # Both decided on B's stale cache: the deposit conflicts, so the withdrawal's
        # refusal (balance 1 + 3 < 5) was decided on state that never existed.
        deposit = b.send_nowait(Account, "acct", Deposit(3))
        withdrawal = b.send_nowait(Account, "acct", Withdraw(5))
        done = {(await deposit).version, (await withdrawal).version}
        assert done == {3, 4}
    events = amounts(rival, "acct")
    assert sum(a if name == "Deposited" else -a for _, name, a in events) == 9


# -- commands pipelined on a failed one -----------------------------------------------------


async def pipelined_on_a_failed_command(postgres: Postgres) -> None:
    schema = postgres.schema()
    rival = postgres.log(schema, shared=True)
    async with Engine.open(log=postgres.log(schema, shared=True), aggregates=[Account]) as b:
        await b.send(Account, "acct", Deposit(10))  # cached in B: balance 10, version 1
        # Another process takes the 10 out and puts 1 back: versions 2 and 3, balance 1.
        append(rival, "acct", Withdrawn(10), Deposited(1))
        # B pipelines three commands on its stale cache: the deposits expect versions 1
        # and 2 (both conflict), the withdrawal version 3 -- the log's version, but it
        # was decided on a balance of 20 that never existed. It must not commit as it is.
        pendings = [
            b.send_nowait(Account, "acct", Deposit(5)),
            b.send_nowait(Account, "acct", Deposit(5)),
            b.send_nowait(Account, "acct", Withdraw(20)),
        ]
        outcomes: list[object] = []
        for pending in pendings:
            try:
                outcomes.append((await pending).version)
            except InsufficientFunds as refused:
                outcomes.append(refused)
    # The deposits were decided again and committed; the withdrawal, decided again on
    # the durable balance (at most 11), is refused.
    assert sorted(outcomes[:2]) == [4, 5]  # type: ignore[type-var]
    assert isinstance(outcomes[2], InsufficientFunds)
    assert balances(rival, "acct") == [10, 0, 1, 6, 11]


async def test_a_command_pipelined_on_a_failed_one_is_decided_again(postgres: Postgres) -> None:
    await pipelined_on_a_failed_command(postgres)


def test_a_command_pipelined_on_a_failed_one_on_asyncio(postgres: Postgres) -> None:
    asyncio.run(pipelined_on_a_failed_command(postgres))


# -- closing ---------------------------------------------------------------------------------


async def test_a_conflict_arriving_at_close_fails_with_engine_closed(postgres: Postgres) -> None:
    schema = postgres.schema()
    rival = postgres.log(schema, shared=True)
    async with Engine.open(log=postgres.log(schema, shared=True), aggregates=[Account]) as b:
        await b.send(Account, "acct", Deposit(1))
        append(rival, "acct", Deposited(10))
        pending = b.send_nowait(Account, "acct", Deposit(5))
        # The block ends with nothing awaited: the engine closes before the writer runs,
        # and the conflict comes back to an engine that decides nothing more.
    with pytest.raises(EngineClosed):
        await pending
    assert [v for v, _, _ in amounts(rival, "acct")] == [1, 2]


async def test_close_commits_every_command_already_decided(postgres: Postgres) -> None:
    # Pipelined decisions go to the writer at once, as on a log only this engine writes:
    # the closing writer commits every one of them (Engine.open's contract), none awaited.
    schema = postgres.schema()
    rival = postgres.log(schema, shared=True)
    async with Engine.open(log=postgres.log(schema, shared=True), aggregates=[Account]) as b:
        await b.send(Account, "acct", Deposit(1))
        pendings = [b.send_nowait(Account, "acct", Deposit(n)) for n in (2, 3, 4)]
    assert [(await pending).version for pending in pendings] == [2, 3, 4]
    assert amounts(rival, "acct") == [(n, "Deposited", n) for n in (1, 2, 3, 4)]


async def close_with_retries_under_way(postgres: Postgres, races: int, after: int) -> None:
    schema = postgres.schema()
    rival = postgres.log(schema, shared=True)
    pendings: list[Pending] = []
    try:
        async with Engine.open(log=postgres.log(schema, shared=True), aggregates=[Contested]) as b:
            await b.send(Contested, "c", Bump())
            rivals(rival, races=races)
            for _ in range(4):
                pendings.append(b.send_nowait(Contested, "c", Bump()))
            for _ in range(5000):  # polled: a counter, there is no event to wait on
                if b.statistics().aggregates.retries >= after:
                    break  # retries under way: close now
                await anyio.sleep(0.001)
            else:
                raise AssertionError("no conflict was ever decided again")
        raced = races - RACE.left
    finally:
        rivals(None, 0)
    committed: list[int] = []
    for pending in pendings:
        try:
            committed.append((await pending).version)
        except (EngineClosed, ConcurrencyError):
            continue  # nothing of it was appended: counted below
    # Every Pending answered; each Committed is in the log, and everything in the log is
    # the first command, the rival's, or one of them (versions consecutive).
    stored = rival.read_stream("c")
    assert [e.version for e in stored] == list(range(1, len(stored) + 1))
    # One initial command; each rival append raced a decision; the rest are Committed.
    assert len(stored) == 1 + raced + len(committed)


async def test_close_with_retries_under_way_answers_each_truthfully(postgres: Postgres) -> None:
    await close_with_retries_under_way(postgres, races=2, after=2)


def test_close_with_retries_under_way_on_asyncio(postgres: Postgres) -> None:
    # asyncio can cancel a task whose reply just arrived: the retries are not cancelled at
    # close (they end by themselves), so a Committed is never reported as EngineClosed.
    asyncio.run(close_with_retries_under_way(postgres, races=2, after=2))
