"""Write nodes on one PostgreSQL log under faults (issue 15, part 6): kill -9 of one of
three write processes under load, connections dropped under an engine, and every node's
projectors converging to what a rebuild from the log gives. Real server, real processes
(skipped without ``ACTORLOG_TEST_POSTGRES``); ``ACTORLOG_NODES_SCALE`` multiplies counts.
"""

from __future__ import annotations

import os
import time
from collections import Counter

import msgspec
import trio

from actorlog import Engine, StorageError
from actorlog.storage import assert_log_consistent
from benchmarks.bank import Account, Balances, Deposit
from tests.support import Postgres

from .cluster import Node
from .node import Bumped, Pairs

SCALE = int(os.environ.get("ACTORLOG_NODES_SCALE", "1"))


def wait_for(condition: object, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_kill_one_of_three_write_nodes_under_load(postgres: Postgres) -> None:
    schema = postgres.schema()
    postgres.log(schema, shared=True)  # the tables exist before the nodes race to create them
    nodes = [Node("pg", postgres.url, schema, "writer") for _ in range(3)]
    try:
        for node in nodes:
            node.start_load(streams=12, concurrency=6)
        wait_for(lambda: all(len(node.acks) > 30 * SCALE for node in nodes))
        nodes[0].kill()
        # The others keep serving.
        counts = [len(node.acks) for node in nodes[1:]]
        wait_for(
            lambda: all(
                len(n.acks) > c + 30 * SCALE for n, c in zip(nodes[1:], counts, strict=True)
            )
        )
        for node in nodes[1:]:
            assert node.stop_load() == len(node.acks)
        log = postgres.log(schema, shared=True)
        assert_log_consistent(log)
        halves: dict[str, list[int]] = {}
        for event in log.read_all(1, 1_000_000):
            if event.type == "Bumped":
                half = msgspec.msgpack.decode(event.payload, type=Bumped).half
                halves.setdefault(event.stream_id, []).append(half)
        acked = Counter(stream for node in nodes for stream, _ in node.acks)
        acked_positions = {position for node in nodes for _, position in node.acks}
        assert len(acked_positions) == sum(acked.values())  # no position acknowledged twice
        for stream, count in acked.items():
            # Nothing acknowledged is lost; the killed node's commands in flight are in
            # the log whole (both events) or not at all.
            assert halves[stream] == [1, 2] * (len(halves[stream]) // 2)
            assert len(halves[stream]) >= 2 * count
        # Every surviving node's view is what a rebuild from the log gives.
        head = log.head_position()
        for node in nodes[1:]:
            assert node.ask("pairs", after=head, timeout=20) == {"pairs": halves}
    finally:
        for node in nodes:
            node.close()


def _terminate_other_connections(postgres: Postgres) -> int:
    rows = postgres.execute(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE pid <> pg_backend_pid() AND datname = current_database() "
        "AND backend_type = 'client backend'"
    )
    return int(rows[0][0])


async def test_dropped_connections_fail_typed_and_recover(postgres: Postgres) -> None:
    schema = postgres.schema()
    async with (
        Engine.open(
            log=postgres.log(schema, shared=True), aggregates=[Account], projectors=[Balances]
        ) as a,
        Engine.open(
            log=postgres.log(schema, shared=True), aggregates=[], projectors=[Balances]
        ) as b,
    ):
        first = await a.send(Account, "acct", Deposit(1))
        assert await b.query(Balances.balance, "acct", after=first.position, timeout=10) == 1
        assert _terminate_other_connections(postgres) >= 2
        # The writer's connection is gone: a command fails with StorageError (its commit
        # is never retried blindly) or succeeds on a new connection; either way the
        # engine recovers without being reopened.
        total, failures = 1, 0
        done = first
        with trio.fail_after(20):
            while total < 6:
                try:
                    done = await a.send(Account, "acct", Deposit(1))
                    total += 1
                except StorageError:
                    failures += 1
                    await trio.sleep(0.05)
        assert failures <= 3
        # The reader's follower lost its connection too, counted it, and follows again.
        assert await b.query(Balances.balance, "acct", after=done.position, timeout=10) == total
        for _ in range(200):
            stats = b.statistics().follower
            if stats is not None and stats.failures:
                break
            await trio.sleep(0.05)
        else:
            raise AssertionError("the follower never saw its connection fail")
        later = await a.send(Account, "acct", Deposit(1))
        assert await b.query(Balances.balance, "acct", after=later.position, timeout=10) == 7


async def test_every_node_converges_to_a_rebuild(postgres: Postgres) -> None:
    # Three engines writing the same streams concurrently, each with the views: each
    # view equals the one a fresh engine rebuilds from the log.
    schema = postgres.schema()
    kinds = {"aggregates": [Account], "projectors": [Balances]}
    async with (
        Engine.open(log=postgres.log(schema, shared=True), **kinds) as a,  # type: ignore[arg-type]
        Engine.open(log=postgres.log(schema, shared=True), **kinds) as b,  # type: ignore[arg-type]
        Engine.open(log=postgres.log(schema, shared=True), **kinds) as c,  # type: ignore[arg-type]
    ):

        async def deposits(engine: Engine, seed: int) -> None:
            for i in range(20 * SCALE):
                await engine.send(Account, f"acct-{(i * seed) % 5}", Deposit(i + 1))

        async with trio.open_nursery() as nursery:
            for seed, engine in enumerate((a, b, c), start=1):
                nursery.start_soon(deposits, engine, seed)
        head = a.log.head_position()
        views = [await e.query(Balances.all_balances, after=head, timeout=10) for e in (a, b, c)]
    async with Engine.open(
        log=postgres.log(schema, shared=True), aggregates=[], projectors=[Balances, Pairs]
    ) as rebuilt:
        assert await rebuilt.query(Balances.all_balances) == views[0] == views[1] == views[2]
