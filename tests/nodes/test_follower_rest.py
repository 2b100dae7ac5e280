"""A write node's follower rests while others' events do not move its cached aggregates
(issue 15, session 8).

An engine of aggregates only (no projectors, no process managers) on a shared log reads
what other processes commit only to keep its cached aggregates fresh. When the host routes
each stream to one process, none of those events moves one of them, and the reads (N-1
times every command, over all nodes) are pure cost: the follower stops reading and closes
its LISTEN connection, and the log's expected-version check stays the safety net (a stale
aggregate's append conflicts, is caught up and decided again). Once conflicts show that the
routing changed, it resumes from the log's head.

The contract checked here: it rests only where it may, it listens to nothing while it
rests, it wakes on conflicts, and whatever it does, live state equals the log's fold and
every acknowledged command is in the log exactly once. The sample sizes and windows are
made small here (module constants of ``_follow``), so a test needs a few hundred events,
not tens of thousands. Real server (skipped without ``ACTORLOG_TEST_POSTGRES``).
"""

from __future__ import annotations

import random
from typing import Any

import pytest
import trio

from actorlog import ConcurrencyError, Engine, Projector, Recorded, Rejected, applies
from actorlog.engine import _follow
from actorlog.engine._pg_follow import channel_name
from tests.engine.counters import EVENTS, KINDS, Add, Added, Counter, Take, TooMuch
from tests.nodes.test_conflict_catch_up import check_live, replayed, rival_add
from tests.support import Postgres


@pytest.fixture(autouse=True)
def small_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rest after 32 events read that moved nothing; wake on 2 conflicts a window."""
    monkeypatch.setattr(_follow, "REST_SAMPLE", 32)
    monkeypatch.setattr(_follow, "REST_CHECK", 0.05)
    monkeypatch.setattr(_follow, "WAKE_CONFLICTS", 2)


def listeners(postgres: Postgres, schema: str) -> int:
    """Sessions on the server whose last statement LISTENs on the log's channel."""
    rows = postgres.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE query = %s",
        (f'LISTEN "{channel_name(schema)}"',),
    )
    return int(rows[0][0])


async def wait_until(condition: Any, what: str, seconds: float = 10.0) -> None:
    with trio.move_on_after(seconds):
        while not condition():  # noqa: ASYNC110 (a condition on statistics: no event)
            await trio.sleep(0.01)
        return
    raise AssertionError(f"not within {seconds} s: {what}")


def follower(engine: Engine) -> Any:
    stats = engine.statistics().follower
    assert stats is not None
    return stats


async def test_a_node_whose_aggregates_others_never_touch_rests_and_listens_to_nothing(
    postgres: Postgres,
) -> None:
    schema = postgres.schema()
    rival = postgres.log(schema, shared=True)
    async with Engine.open(log=postgres.log(schema, shared=True), aggregates=KINDS) as engine:
        for i in range(4):
            await engine.send(Counter, f"own-{i}", Add(f"own{i}", 1))
        await wait_until(lambda: listeners(postgres, schema) == 1, "the follower listens")
        assert not follower(engine).resting
        for i in range(40):  # others' streams only: nothing of them is cached here
            rival_add(rival, f"other-{i % 5}", f"r{i}", 1)
        await wait_until(lambda: follower(engine).resting, "the follower rests")
        assert follower(engine).rests == 1
        read = follower(engine).foreign_events
        assert read <= 40
        await wait_until(lambda: listeners(postgres, schema) == 0, "the LISTEN is closed")
        for i in range(20):
            rival_add(rival, f"other-{i % 5}", f"s{i}", 1)
        await trio.sleep(0.2)  # a follower still reading would have read them by now
        assert follower(engine).foreign_events == read
        # Its own commands go on as before, and are what the log says.
        for i in range(4):
            await engine.send(Counter, f"own-{i}", Add(f"again{i}", 2))
            await check_live(engine, Counter, f"own-{i}", rival)
        assert follower(engine).resting
    for i in range(4):
        assert replayed(rival, f"own-{i}") == (3, (f"own{i}", f"again{i}"))


async def test_a_resting_node_wakes_on_conflicts_and_follows_again(postgres: Postgres) -> None:
    schema = postgres.schema()
    rival = postgres.log(schema, shared=True)
    async with Engine.open(log=postgres.log(schema, shared=True), aggregates=KINDS) as engine:
        await engine.send(Counter, "mine", Add("first", 1))
        for i in range(40):
            rival_add(rival, "other", f"r{i}", 1)
        await wait_until(lambda: follower(engine).resting, "the follower rests")
        # The routing changes: another process now writes this node's stream too. Each
        # command here is decided on a stale aggregate (nothing read the rival's event),
        # conflicts, is caught up and decided again; enough of them wake the follower.
        before = engine.statistics().aggregates.retries
        for i in range(200):
            rival_add(rival, "mine", f"rival{i}", 1)
            await engine.send(Counter, "mine", Add(f"own{i}", 1))
            if not follower(engine).resting:
                break
        else:
            raise AssertionError("200 conflicts did not wake the follower")
        assert engine.statistics().aggregates.retries - before >= 2
        await check_live(engine, Counter, "mine", rival)
        await wait_until(lambda: listeners(postgres, schema) == 1, "the follower listens")
        # Following again: a rival's event is applied to the cached aggregate by the
        # follower (refreshed), and the next command does not conflict.
        refreshed = engine.statistics().aggregates.refreshed
        rival_add(rival, "mine", "late", 1)
        await wait_until(
            lambda: engine.statistics().aggregates.refreshed > refreshed, "the event applied"
        )
        retries = engine.statistics().aggregates.retries
        await engine.send(Counter, "mine", Add("after", 1))
        assert engine.statistics().aggregates.retries == retries
        await check_live(engine, Counter, "mine", rival)
        assert follower(engine).rests == 1


class Seen(Projector):
    """Counts the ``Added`` events it applied."""

    def __init__(self) -> None:
        self.count = 0

    @applies
    def added(self, e: Added, meta: Recorded) -> None:
        self.count += 1

    def seen(self) -> int:
        """How many it applied."""
        return self.count


async def test_a_node_with_projectors_keeps_following(postgres: Postgres) -> None:
    # Its projectors need every event whichever aggregates they move: it never rests.
    schema = postgres.schema()
    rival = postgres.log(schema, shared=True)
    log = postgres.log(schema, shared=True)
    async with Engine.open(log=log, aggregates=KINDS, projectors=[Seen]) as engine:
        await engine.send(Counter, "mine", Add("first", 1))
        for i in range(100):
            rival_add(rival, f"other-{i % 5}", f"r{i}", 1)
        head = rival.head_position()
        assert await engine.query(Seen.seen, after=head, timeout=10) == 101
        assert not follower(engine).resting
        assert follower(engine).rests == 0
        assert listeners(postgres, schema) == 1


async def test_resting_and_waking_under_changing_routing_keeps_every_command(
    postgres: Postgres,
) -> None:
    # Two write nodes: by affinity first (both rest), then at random (conflicts wake
    # them), then by affinity again. Whatever the followers do, every acknowledged
    # command is in the log exactly once, nothing is overdrawn, and every live state is
    # the log's fold.
    schema = postgres.schema()
    oracle = postgres.log(schema, shared=True)
    streams = [f"c-{i}" for i in range(6)]
    acknowledged: set[str] = set()
    given_up: set[str] = set()

    def open_node() -> Any:
        return Engine.open(log=postgres.log(schema, shared=True), aggregates=KINDS)

    async with open_node() as a, open_node() as b:
        nodes = (a, b)

        async def client(number: int, phase: str, commands: int) -> None:
            rng = random.Random(f"{phase}{number}")
            for i in range(commands):
                at = rng.randrange(len(streams))
                engine = nodes[at % 2] if phase != "random" else rng.choice(nodes)
                tag = f"{phase}.{number}.{i}"
                command: Any = Take(tag, rng.randint(1, 6)) if rng.random() < 0.4 else Add(tag, 3)
                try:
                    await engine.send(Counter, streams[at], command)
                except (TooMuch, Rejected):
                    pass
                except ConcurrencyError:
                    given_up.add(tag)
                else:
                    acknowledged.add(tag)

        async def phase(name: str, commands: int) -> None:
            async with trio.open_nursery() as nursery:
                for number in range(6):
                    nursery.start_soon(client, number, name, commands)

        await phase("affinity", 30)
        await wait_until(lambda: all(follower(n).resting for n in nodes), "both rest")
        await phase("random", 40)
        assert not all(follower(n).resting for n in nodes), [follower(n) for n in nodes]
        await phase("again", 30)
        for engine in nodes:
            for stream_id in streams:
                await check_live(engine, Counter, stream_id, oracle)
        stats = [engine.statistics().aggregates for engine in nodes]
    assert sum(s.retries for s in stats) > 0
    logged = [tag for stream_id in streams for tag in replayed(oracle, stream_id)[1]]
    assert sorted(logged) == sorted(acknowledged)
    assert not set(logged) & given_up
    for stream_id in streams:  # never overdrawn: no take decided on a stale state
        total = 0
        for stored in oracle.read_stream(stream_id):
            event = EVENTS.decode(stored.type, stored.payload)
            total += event.amount if isinstance(event, Added) else -event.amount
            assert total >= 0, (stream_id, stored.version)
