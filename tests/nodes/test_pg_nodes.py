"""Several engines on one PostgreSQL log, each accepting any command (issue 15, parts 1,
3 and 4): foreign commits reach every node's projectors, ``after=`` works across nodes, a
command decided on a stale cached aggregate is decided again, a rejection stands only if
decided on the stream's durable version, and N processes x M increments of one counter
commit exactly N*M. Real server, real processes (skipped without
``ACTORLOG_TEST_POSTGRES``); ``ACTORLOG_NODES_SCALE`` multiplies the counts.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import pytest

from actorlog import ConcurrencyError, Engine, UnknownPosition
from benchmarks.bank import Account, Balances, Deposit, Deposited, InsufficientFunds, Withdraw
from tests.support import Postgres

from .cluster import Node

SCALE = int(os.environ.get("ACTORLOG_NODES_SCALE", "1"))


async def two_engines_on_one_log(postgres: Postgres) -> None:
    schema = postgres.schema()
    kinds = {"aggregates": [Account], "projectors": [Balances]}
    async with (
        Engine.open(log=postgres.log(schema, shared=True), **kinds) as a,  # type: ignore[arg-type]
        Engine.open(log=postgres.log(schema, shared=True), **kinds) as b,  # type: ignore[arg-type]
    ):
        # B has the account cached at balance 0 (a rejection on its own, current state).
        with pytest.raises(InsufficientFunds):
            await b.send(Account, "acct", Withdraw(5))
        done = await a.send(Account, "acct", Deposit(10))
        # Read-your-writes across engines: B waits for A's position.
        assert await b.query(Balances.balance, "acct", after=done.position, timeout=10) == 10
        await b.wait_projected(done.position, timeout=10)
        # B's cached aggregate was at balance 0, where the withdrawal is refused. Either
        # B's follower brought it up to date already (refreshed), or the rejection is
        # checked against the stream's durable version and decided again (retries).
        taken = await b.send(Account, "acct", Withdraw(5))
        assert taken.version == 2
        stats = b.statistics().aggregates
        assert stats.retries + stats.refreshed >= 1
        # A's cached aggregate did not see the withdrawal: updated by its follower, or
        # its append conflicts and it is decided again, transparently.
        again = await a.send(Account, "acct", Deposit(1))
        assert again.version == 3
        stats = a.statistics().aggregates
        assert stats.retries + stats.refreshed >= 1
        # A now-stale rejection stays a rejection when it is one on the durable state.
        with pytest.raises(InsufficientFunds):
            await a.send(Account, "acct", Withdraw(100))
        for engine in (a, b):
            assert (
                await engine.query(Balances.balance, "acct", after=again.position, timeout=10) == 6
            )
        # A position no one has written is still refused at once.
        with pytest.raises(UnknownPosition):
            await b.query(Balances.balance, "acct", after=again.position + 1000)
        follower = b.statistics().follower
        assert follower is not None and follower.failures == 0


async def test_followers_keep_cached_aggregates_current(postgres: Postgres) -> None:
    import trio

    schema = postgres.schema()
    async with (
        Engine.open(log=postgres.log(schema, shared=True), aggregates=[Account]) as a,
        Engine.open(log=postgres.log(schema, shared=True), aggregates=[Account]) as b,
    ):
        await b.send(Account, "acct", Deposit(1))  # cached in B, idle
        await a.send(Account, "acct", Deposit(10))  # A loads it from the log
        for _ in range(1000):  # a counter: polled, there is no event to wait on
            if b.statistics().aggregates.refreshed:
                break
            await trio.sleep(0.01)
        else:
            raise AssertionError("B's follower never brought its cached aggregate up to date")
        # B's follower applied A's deposit to B's cached aggregate: no conflict, no retry.
        taken = await b.send(Account, "acct", Withdraw(11))
        assert taken.version == 3
        assert b.statistics().aggregates.retries == 0


async def test_two_engines_on_one_log(postgres: Postgres) -> None:
    await two_engines_on_one_log(postgres)


def test_two_engines_on_one_log_on_asyncio(postgres: Postgres) -> None:
    asyncio.run(two_engines_on_one_log(postgres))


async def test_contending_engines_append_each_acknowledged_command_once(
    postgres: Postgres,
) -> None:
    # Many concurrent senders on two engines, one stream: a command that exhausts its
    # retries raises ConcurrencyError and appends nothing; every acknowledged one is in
    # the log exactly once.
    import trio

    schema = postgres.schema()
    acked = 0
    refused = 0
    async with (
        Engine.open(log=postgres.log(schema, shared=True), aggregates=[Account]) as a,
        Engine.open(log=postgres.log(schema, shared=True), aggregates=[Account]) as b,
    ):

        async def sender(engine: Engine) -> None:
            nonlocal acked, refused
            for _ in range(10):
                try:
                    await engine.send(Account, "hot", Deposit(1))
                    acked += 1
                except ConcurrencyError:
                    refused += 1

        async with trio.open_nursery() as nursery:
            for engine in (a, b) * 4:
                nursery.start_soon(sender, engine)
        assert acked + refused == 80
        assert a.log.stream_version("hot") == acked


def test_processes_count_every_increment(postgres: Postgres) -> None:
    schema = postgres.schema()
    postgres.log(schema, shared=True)  # the tables exist before the nodes race to create them
    n, m = 3, 20 * SCALE
    nodes = [Node("pg", postgres.url, schema, "writer", b) for b in ("trio", "asyncio", "trio")]
    try:
        # Requests go out together, then the answers are read: the nodes run at once.
        for node in nodes:
            node.request("increment", stream="counter", n=m, concurrency=4)
        answers = [node.answer() for node in nodes]
        positions = [p for answer in answers for p in answer["positions"]]
        assert len(positions) == n * m == len(set(positions))
        log = postgres.log(schema, shared=True)
        assert log.stream_version("counter") == n * m
        events = log.read_stream("counter")
        assert sorted(e.position for e in events) == sorted(positions)
        last = max(positions)
        for node in nodes:
            assert node.ask("query", stream="counter", after=last, timeout=20) == {"balance": n * m}
    finally:
        for node in nodes:
            node.close()


def test_one_writer_two_reader_nodes(postgres: Postgres) -> None:
    schema = postgres.schema()
    writer = Node("pg", postgres.url, schema, "writer")
    readers = [Node("pg", postgres.url, schema, "reader", b) for b in ("trio", "asyncio")]
    try:
        expected: dict[str, int] = {}
        for i in range(30 * SCALE):
            stream = f"acct-{i % 5}"
            ack = writer.ask("send", stream=stream, amount=i + 1)
            expected[stream] = expected.get(stream, 0) + i + 1
            reader = readers[i % 2]
            # Read-your-writes on another node: the writer's acknowledgement, then a read.
            assert reader.ask("query", stream=stream, after=ack["position"], timeout=10) == {
                "balance": expected[stream]
            }
        for reader in readers:
            assert reader.ask("balances", after=ack["position"], timeout=10) == {
                "balances": expected
            }
            # A reader node hosts no aggregates: it serves queries only.
            assert reader.ask("send", stream="acct-0", amount=1)["error"] == "UnknownCommand"
    finally:
        for node in [writer, *readers]:
            node.close()


@pytest.mark.usefixtures("quick_writer_refusal")
async def test_an_unshared_log_is_not_followed(postgres: Postgres) -> None:
    from actorlog import DefinitionError
    from actorlog.storage import PostgresEventLog

    with pytest.raises(DefinitionError):
        PostgresEventLog(postgres.url, schema=postgres.schema(), shared=1)  # type: ignore[arg-type]
    schema = postgres.schema()
    # Unshared is the default: the single-process log.
    default = postgres.log(schema)
    assert not default.others_append
    default.close()
    async with Engine.open(
        log=postgres.log(schema, shared=False), aggregates=[Account], projectors=[Balances]
    ) as engine:
        assert engine.statistics().follower is None
        done = await engine.send(Account, "acct", Deposit(3))
        assert await engine.query(Balances.balance, "acct", after=done.position) == 3
        with pytest.raises(InsufficientFunds):  # no confirming read: the old path
            await engine.send(Account, "acct", Withdraw(5))
        # Another writer is refused: the unshared log holds the schema's writer lock.
        from actorlog import StorageLocked
        from actorlog.storage import Append

        for other in (postgres.log(schema), postgres.log(schema, shared=True)):
            outcomes, _ = other.append_batch(
                [Append("acct", 1, (("Deposited", b"\x81\xa6amount\x01"),))]
            )
            assert isinstance(outcomes[0], StorageLocked)
            other.close()
        done = await engine.send(Account, "acct", Deposit(1))
        assert await engine.query(Balances.balance, "acct", after=done.position) == 4


async def commit_behind_others(postgres: Postgres, check: Callable[[Engine], None]) -> None:
    """20 commands, each committed right after another process's event its follower has
    not read yet; ``check`` looks at the engine after each. The projector must apply both,
    in position order, and after= with the engine's own position must wait for its commit,
    not refuse it."""
    from actorlog.storage import Append

    from .rival import EVENTS

    schema = postgres.schema()
    rival = postgres.log(schema, shared=True)
    log = postgres.log(schema, shared=True)
    async with Engine.open(log=log, aggregates=[Account], projectors=[Balances]) as engine:
        for n in range(1, 21):
            outcomes, stored = rival.append_batch(
                [Append("other", n - 1, (EVENTS.encode(Deposited(100)),))]
            )
            assert not isinstance(outcomes[0], Exception), outcomes
            committed = await engine.send(Account, "acct", Deposit(5))
            assert committed.position > stored[0].position
            check(engine)
            at = committed.position
            assert await engine.query(Balances.balance, "acct", after=at, timeout=10) == 5 * n
            assert await engine.query(Balances.balance, "other", after=at, timeout=10) == 100 * n


async def test_own_commits_behind_others_reach_the_projectors_in_order(
    postgres: Postgres,
) -> None:
    # The engine holds each own batch back and publishes it once the follower has read
    # and published the other's (Follower.on_commit).
    await commit_behind_others(postgres, lambda engine: None)


async def test_held_batches_past_their_byte_bound_are_let_go(
    postgres: Postgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With a byte bound smaller than one event, each batch is let go at once (the
    # projectors read it from the log): nothing is ever held, and the view is still whole.
    from actorlog.engine import _follow

    monkeypatch.setattr(_follow, "HELD_BYTES", 1)

    def nothing_held(engine: Engine) -> None:
        follower = engine.statistics().follower
        assert follower is not None
        assert (follower.held_events, follower.held_bytes) == (0, 0)

    await commit_behind_others(postgres, nothing_held)
