"""Review 10: attacks on the resting follower (issue 15, session 8).

A write node of aggregates only rests (reads nothing, listens to nothing) while others'
events do not move its cached aggregates, and wakes on conflicts. These tests attack what
resting changes: commands decided on stale aggregates (``send_nowait``, command ids,
snapshots, eviction), the server failing while it rests or wakes, the engine closing
then, and engines that must never rest. The contract checked: typed errors, every
acknowledged command in the log exactly once, live state equal to the log's fold.
Real server (skipped without ``ACTORLOG_TEST_POSTGRES``).
"""

from __future__ import annotations

import contextlib
import random
from typing import Any

import pytest
import trio

from actorlog import ConcurrencyError, Engine, Rejected, StorageError
from actorlog.engine import _follow, _pg_follow
from actorlog.storage import ANY, Append, PostgresEventLog
from tests.engine.counters import (
    EVENTS,
    KINDS,
    Add,
    Added,
    Counter,
    SnappedCounter,
    Take,
    TooMuch,
)
from tests.nodes.test_conflict_catch_up import check_live, replayed, rival_add
from tests.nodes.test_follower_rest import (  # small_samples: an autouse fixture
    follower,
    listeners,
    small_samples,  # noqa: F401
    wait_until,
)
from tests.support import Postgres


async def rest(engine: Engine, rival: PostgresEventLog, stream: str = "elsewhere") -> None:
    """Make ``engine``'s follower rest: others write a stream it does not cache."""
    for i in range(100):
        if follower(engine).resting:
            return
        for j in range(20):
            rival_add(rival, stream, f"{stream}{i}.{j}", 1)
        await trio.sleep(0.02)
    await wait_until(lambda: follower(engine).resting, "the follower rests")


def rival_append(log: PostgresEventLog, stream_id: str, tag: str, command_id: str) -> None:
    """Another process's commit of a command with an id."""
    append = Append(stream_id, ANY, (EVENTS.encode(Added(tag, 1)),), None, None, None, command_id)
    outcomes, _ = log.append_batch([append])
    assert not any(isinstance(o, Exception) for o in outcomes), outcomes


def never_overdrawn(log: PostgresEventLog, stream_id: str) -> None:
    total = 0
    for stored in log.read_stream(stream_id):
        event = EVENTS.decode(stored.type, stored.payload)
        total += event.amount if isinstance(event, Added) else -event.amount
        assert total >= 0, (stream_id, stored.version)


async def test_send_nowait_and_command_ids_on_stale_aggregates_while_resting(
    postgres: Postgres,
) -> None:
    schema = postgres.schema()
    rival = postgres.log(schema, shared=True)
    async with Engine.open(log=postgres.log(schema, shared=True), aggregates=KINDS) as engine:
        await engine.send(Counter, "mine", Add("first", 5))
        await rest(engine, rival)
        # send_nowait on a stale aggregate: decided again in the engine's tasks.
        rival_add(rival, "mine", "r1", 1)
        pendings = [engine.send_nowait(Counter, "mine", Add(f"n{i}", 1)) for i in range(5)]
        # A take refused on the cached state (5 + 5), allowed on any the log can have
        # (at least 5 + 1 + 10: the commands decided again may be in any order).
        rival_add(rival, "mine", "r2", 10)
        take = engine.send_nowait(Counter, "mine", Take("t", 13))
        for pending in pendings:
            await pending
        assert (await take).version > 0
        await check_live(engine, Counter, "mine", rival)
        # A command id recorded by another process meanwhile is answered from the log.
        rival_append(rival, "mine", "rid", "cmd-1")
        again = await engine.send(Counter, "mine", Add("dup", 1), command_id="cmd-1")
        assert again.version == replayed(rival, "mine")[1].index("rid") + 1
        # Concurrent sends of one id on a stale aggregate: one append, one answer.
        rival_add(rival, "mine", "r3", 1)
        answers: list[Any] = []

        async def send_id() -> None:
            answers.append(await engine.send(Counter, "mine", Add("once", 1), command_id="cmd-2"))

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(send_id)
        assert len({(a.version, a.position) for a in answers}) == 1
        rival_add(rival, "mine", "r4", 1)
        later = await engine.send(Counter, "mine", Add("once", 1), command_id="cmd-2")
        assert (later.version, later.position) == (answers[0].version, answers[0].position)
        # send_nowait of an id another process recorded meanwhile: answered from the log.
        rival_append(rival, "mine", "rid3", "cmd-3")
        pending = engine.send_nowait(Counter, "mine", Add("dup3", 1), command_id="cmd-3")
        assert (await pending).version == replayed(rival, "mine")[1].index("rid3") + 1
        await check_live(engine, Counter, "mine", rival)
    tags = replayed(rival, "mine")[1]
    assert tags.count("once") == 1 and tags.count("dup") == 0 and tags.count("t") == 1
    assert tags.count("dup3") == 0
    assert sorted(t for t in tags if t.startswith("n")) == [f"n{i}" for i in range(5)]
    never_overdrawn(rival, "mine")


async def test_snapshots_and_eviction_while_resting_keep_live_state_equal_to_the_log(
    postgres: Postgres,
) -> None:
    schema = postgres.schema()
    rival = postgres.log(schema, shared=True)
    streams = [f"s-{i}" for i in range(5)]
    async with Engine.open(
        log=postgres.log(schema, shared=True), aggregates=KINDS, max_live_aggregates=2
    ) as engine:
        for stream_id in streams:
            await engine.send(SnappedCounter, stream_id, Add(f"{stream_id}.0", 4))
        await rest(engine, rival)
        for round_ in range(6):
            for n, stream_id in enumerate(streams):
                if (round_ + n) % 2:
                    rival_add(rival, stream_id, f"{stream_id}.r{round_}", 2)
                with contextlib.suppress(Rejected):
                    await engine.send(SnappedCounter, stream_id, Take(f"{stream_id}.t{round_}", 3))
                await engine.send(SnappedCounter, stream_id, Add(f"{stream_id}.a{round_}", 1))
        for stream_id in streams:
            await check_live(engine, SnappedCounter, stream_id, rival)
    for stream_id in streams:
        never_overdrawn(rival, stream_id)
    # A fresh engine (snapshot + tail) agrees: no snapshot held a stale decision.
    async with Engine.open(log=postgres.log(schema, shared=True), aggregates=KINDS) as fresh:
        for stream_id in streams:
            await check_live(fresh, SnappedCounter, stream_id, rival)


def terminate_connections(postgres: Postgres) -> int:
    rows = postgres.execute(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE pid <> pg_backend_pid() AND datname = current_database() "
        "AND backend_type = 'client backend'"
    )
    return int(rows[0][0])


async def test_connections_killed_while_resting(postgres: Postgres) -> None:
    schema = postgres.schema()
    rival = postgres.log(schema, shared=True)
    async with Engine.open(log=postgres.log(schema, shared=True), aggregates=KINDS) as engine:
        await engine.send(Counter, "mine", Add("first", 1))
        await rest(engine, rival)
        assert terminate_connections(postgres) >= 1
        total = 0
        with trio.fail_after(10):
            while total < 5:
                try:
                    await engine.send(Counter, "mine", Add(f"a{total}", 1))
                    total += 1
                except StorageError:
                    await trio.sleep(0.02)
        rival = postgres.log(schema, shared=True)  # the rival's connection was killed too
        rival_add(rival, "mine", "rival", 1)
        await engine.send(Counter, "mine", Add("after", 1))
        await check_live(engine, Counter, "mine", rival)
        if follower(engine).resting:
            assert listeners(postgres, schema) == 0
    assert replayed(rival, "mine")[1] == ("first", *(f"a{i}" for i in range(5)), "rival", "after")


async def test_close_while_waking_and_refresh_fails_then_recovers(postgres: Postgres) -> None:
    # Waking reads the log's head; while the log cannot be read the follower retries, and
    # the engine still closes (a hang fails the test); once the log is back, it follows.
    schema = postgres.schema()
    rival = postgres.log(schema, shared=True)
    for recover in (True, False):
        gone = False
        try:
            with trio.fail_after(10):  # a hang, not a speed
                async with Engine.open(
                    log=postgres.log(schema, shared=True), aggregates=KINDS
                ) as engine:
                    for i in range(8):  # cached: refusals are decided without a read
                        await engine.send(Counter, f"empty-{recover}-{i}", Add("zero", 0))
                    await rest(engine, rival, f"elsewhere-{recover}")
                    before = follower(engine).failures
                    postgres.execute(f'ALTER TABLE "{schema}".events RENAME TO events_gone')
                    gone = True

                    # Refusals decided while the log cannot be read: their probes fail,
                    # so each is decided again (a conflict) and then fails typed.
                    async def take(i: int, recover: bool = recover) -> None:
                        with pytest.raises(StorageError):
                            await engine.send(Counter, f"empty-{recover}-{i}", Take("t", 1))

                    async with trio.open_nursery() as nursery:
                        for i in range(8):
                            nursery.start_soon(take, i)
                    await wait_until(
                        lambda before=before: follower(engine).failures > before,
                        "the refresh fails",
                    )
                    assert follower(engine).resting  # it has not read the head yet
                    if recover:
                        postgres.execute(f'ALTER TABLE "{schema}".events_gone RENAME TO events')
                        gone = False
                        await wait_until(lambda: not follower(engine).resting, "it follows")
                        await wait_until(lambda: listeners(postgres, schema) == 1, "it listens")
                        rival_add(rival, "mine", "r", 1)
                        await engine.send(Counter, "mine", Add("a", 1))
                        await check_live(engine, Counter, "mine", rival)
        finally:
            if gone:
                postgres.execute(f'ALTER TABLE "{schema}".events_gone RENAME TO events')
    assert replayed(rival, "mine")[1] == ("r", "a")


async def test_a_node_with_process_managers_never_rests(postgres: Postgres) -> None:
    from benchmarks.bank import TransferAccount, TransferProcess

    schema = postgres.schema()
    rival = postgres.log(schema, shared=True)
    async with Engine.open(
        log=postgres.log(schema, shared=True),
        aggregates=[*KINDS, TransferAccount],
        process_managers=[TransferProcess],
    ) as engine:
        await engine.send(Counter, "mine", Add("first", 1))
        for i in range(100):
            rival_add(rival, f"other-{i % 5}", f"r{i}", 1)
        await trio.sleep(0.3)
        assert not follower(engine).resting
        assert follower(engine).rests == 0


async def test_flapping_between_rest_and_follow_keeps_every_command(
    postgres: Postgres,
) -> None:
    schema = postgres.schema()
    rival = postgres.log(schema, shared=True)
    acknowledged: list[str] = []
    async with Engine.open(log=postgres.log(schema, shared=True), aggregates=KINDS) as engine:
        for cycle in range(3):
            await rest(engine, rival, f"elsewhere-{cycle}")
            for i in range(200):
                rival_add(rival, "mine", f"r{cycle}.{i}", 1)
                tag = f"c{cycle}.{i}"
                try:
                    await engine.send(Counter, "mine", Take(tag, 1))
                except ConcurrencyError:
                    continue
                acknowledged.append(tag)
                if not follower(engine).resting:
                    break
            else:
                raise AssertionError("conflicts did not wake the follower")
            await check_live(engine, Counter, "mine", rival)
        assert follower(engine).rests == 3
    logged = [t for t in replayed(rival, "mine")[1] if t.startswith("c")]
    assert logged == acknowledged
    never_overdrawn(rival, "mine")


async def test_a_resting_node_whose_every_command_conflicts_wakes_at_a_modest_rate(
    postgres: Postgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The routing changed: another process now writes every stream this node writes, and
    # each of this node's commands conflicts (decided on a stale aggregate, caught up,
    # decided again). Following would save every one of those conflicts, far more than 1
    # in REST_RATIO of its appends, so the follower must wake, however slowly the
    # commands come: a rate below WAKE_CONFLICTS a REST_CHECK (320 a second with the
    # defaults) must not keep it resting for ever, paying a conflict per command.
    monkeypatch.setattr(_follow, "REST_CHECK", 0.02)
    schema = postgres.schema()
    rival = postgres.log(schema, shared=True)
    async with Engine.open(log=postgres.log(schema, shared=True), aggregates=KINDS) as engine:
        await engine.send(Counter, "mine", Add("first", 1))
        await rest(engine, rival)
        before = engine.statistics().aggregates.retries
        for i in range(40):
            rival_add(rival, "mine", f"rival{i}", 1)
            await engine.send(Counter, "mine", Add(f"own{i}", 1))
            if not follower(engine).resting:
                break
            await trio.sleep(0.03)  # one command a REST_CHECK or so, each a conflict
        else:
            conflicts = engine.statistics().aggregates.retries - before
            raise AssertionError(f"{conflicts} conflicts in 40 commands did not wake it")
        await check_live(engine, Counter, "mine", rival)


async def test_a_node_whose_cached_aggregates_others_move_keeps_following(
    postgres: Postgres,
) -> None:
    # Others write the streams it caches: every event read saves a conflict, so it never
    # rests, and its own batches are published as they commit meanwhile.
    schema = postgres.schema()
    rival = postgres.log(schema, shared=True)
    async with Engine.open(log=postgres.log(schema, shared=True), aggregates=KINDS) as engine:
        for i in range(4):
            await engine.send(Counter, f"mine-{i}", Add("first", 1))
        refreshed = engine.statistics().aggregates.refreshed
        for i in range(100):
            rival_add(rival, f"mine-{i % 4}", f"r{i}", 1)
            if i % 10 == 9:
                await wait_until(
                    lambda i=i: engine.statistics().aggregates.refreshed > refreshed + i - 9,
                    "the follower applies others' events",
                )
        assert follower(engine).rests == 0 and not follower(engine).resting
        for i in range(4):
            await check_live(engine, Counter, f"mine-{i}", rival)


async def test_own_batches_are_not_held_while_resting(postgres: Postgres) -> None:
    schema = postgres.schema()
    rival = postgres.log(schema, shared=True)
    async with Engine.open(log=postgres.log(schema, shared=True), aggregates=KINDS) as engine:
        await engine.send(Counter, "mine", Add("first", 1))
        await rest(engine, rival)
        for i in range(20):
            rival_add(rival, "elsewhere", f"gap{i}", 1)  # others commit between own batches
            done = await engine.send(Counter, "mine", Add(f"a{i}", 1))
            assert follower(engine).held_events == 0
            assert engine.statistics().head >= done.position
        await engine.wait_projected(done.position, timeout=5)
        assert follower(engine).resting


async def test_own_batches_held_when_it_starts_resting_are_let_go(
    postgres: Postgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Following, an own batch committed after others' events it has not read yet is held
    # back until it has; the read that makes it rest may stop short of it (READ_BATCH):
    # it is let go then, not held for as long as the follower rests.
    monkeypatch.setattr(_follow, "READ_BATCH", 4)
    # The follower reads only when notified (no poll within the test).
    monkeypatch.setattr(_follow, "FOLLOW_WAIT", 5.0)
    monkeypatch.setattr(_pg_follow, "POLL", 5.0)
    schema = postgres.schema()
    rival = postgres.log(schema, shared=True)
    quiet = postgres.log(schema)  # not shared: its commits notify nobody
    async with Engine.open(log=postgres.log(schema, shared=True), aggregates=KINDS) as engine:
        await wait_until(lambda: listeners(postgres, schema) == 1, "the follower listens")
        for i in range(40):
            rival_add(quiet, "elsewhere", f"q{i}", 1)
        quiet.close()  # it locked the schema against shared writers while open
        await engine.send(Counter, "mine", Add("a", 1))
        assert follower(engine).held_events == 1  # others' events before it are unread
        rival_add(rival, "elsewhere", "notify", 1)  # the follower reads; 32 make it rest
        await wait_until(lambda: follower(engine).resting, "the follower rests")
        assert follower(engine).held_events == 0
        assert engine.statistics().head >= 41
        # It read no further than the read that made it rest (32 of the 41 others').
        assert follower(engine).foreign_events < 40


async def test_a_woken_follower_reads_on_from_the_head(postgres: Postgres) -> None:
    # What others committed while it rested is not read when it wakes: an aggregate it
    # moved is caught up by its next conflict, as while resting.
    schema = postgres.schema()
    rival = postgres.log(schema, shared=True)
    async with Engine.open(log=postgres.log(schema, shared=True), aggregates=KINDS) as engine:
        await engine.send(Counter, "mine", Add("first", 1))
        await rest(engine, rival)
        read = follower(engine).foreign_events
        for i in range(200):
            rival_add(rival, "elsewhere", f"unread{i}", 1)
        for i in range(100):
            rival_add(rival, "mine", f"rival{i}", 1)
            await engine.send(Counter, "mine", Add(f"own{i}", 1))
            if not follower(engine).resting:
                break
        else:
            raise AssertionError("100 conflicts did not wake the follower")
        refreshed = engine.statistics().aggregates.refreshed
        rival_add(rival, "mine", "late", 1)
        await wait_until(
            lambda: engine.statistics().aggregates.refreshed > refreshed, "the event applied"
        )
        assert follower(engine).foreign_events - read < 200
        await check_live(engine, Counter, "mine", rival)


async def test_a_resting_node_stays_resting_while_its_conflicts_are_rare_in_the_log(
    postgres: Postgres,
) -> None:
    # Others commit far more than this node, and only now and then to a stream it caches:
    # fewer than 1 in REST_RATIO of the log's events would move one of its aggregates,
    # so following (reading them all) costs more than those conflicts, and it would rest
    # again as soon as it had read a sample: it must not wake for them (flapping), even
    # though most of its own few commands conflict.
    schema = postgres.schema()
    rival = postgres.log(schema, shared=True)
    async with Engine.open(log=postgres.log(schema, shared=True), aggregates=KINDS) as engine:
        await engine.send(Counter, "mine", Add("first", 1))
        await rest(engine, rival)
        before = engine.statistics().aggregates.retries
        for i in range(4):
            for j in range(100):
                rival_add(rival, f"elsewhere-{j % 7}", f"busy{i}.{j}", 1)
            rival_add(rival, "mine", f"rival{i}", 1)
            await engine.send(Counter, "mine", Add(f"own{i}", 1))  # a conflict
            await trio.sleep(0.06)  # a REST_CHECK or so: the follower looks
        assert engine.statistics().aggregates.retries - before >= 4
        assert follower(engine).resting and follower(engine).rests == 1
        # Then the busy writer stops and the other one writes only this node's stream:
        # now its conflicts are most of what the log gets, and a few of them wake it.
        for i in range(4):
            rival_add(rival, "mine", f"routed{i}", 1)
            await engine.send(Counter, "mine", Add(f"conflict{i}", 1))
            if not follower(engine).resting:
                break
            await trio.sleep(0.03)
        else:
            raise AssertionError("4 conflicts, most of the log's events, did not wake it")
        await check_live(engine, Counter, "mine", rival)


async def test_a_rejection_decided_on_a_stale_aggregate_while_resting_is_decided_again(
    postgres: Postgres,
) -> None:
    schema = postgres.schema()
    rival = postgres.log(schema, shared=True)
    async with Engine.open(log=postgres.log(schema, shared=True), aggregates=KINDS) as engine:
        await engine.send(Counter, "mine", Add("first", 1))
        await rest(engine, rival)
        rival_add(rival, "mine", "rival", 10)
        await engine.send(Counter, "mine", Take("take", 5))  # refused on 1, allowed on 11
        rival_add(rival, "mine", "rival2", 1)
        before = engine.statistics().aggregates.retries
        with pytest.raises(TooMuch):  # refused on 6 (stale), then on the log's 7
            await engine.send(Counter, "mine", Take("too much", 8))
        assert engine.statistics().aggregates.retries - before == 1  # confirmed, not final
        await check_live(engine, Counter, "mine", rival)
        assert follower(engine).resting
    assert replayed(rival, "mine") == (7, ("first", "rival", "take", "rival2"))


async def test_two_resting_nodes_sharing_streams_in_a_busy_log_lose_nothing(
    postgres: Postgres,
) -> None:
    # Both rest (their conflicts are few among a busy writer's events; one may wake for
    # a while), yet both write the same streams: mostly only the log's expected-version
    # check and the probes keep them right. Every acknowledged command is in the log
    # once, nothing is overdrawn, and every live state is the log's fold.
    schema = postgres.schema()
    busy = postgres.log(schema, shared=True)
    streams = ["x", "y"]
    acknowledged: set[str] = set()
    given_up: set[str] = set()

    def open_node() -> Any:
        return Engine.open(log=postgres.log(schema, shared=True), aggregates=KINDS)

    async with open_node() as a, open_node() as b:
        for node in (a, b):
            for stream_id in streams:
                await node.send(Counter, stream_id, Add(f"{stream_id}.seed.{id(node)}", 5))
        await rest(a, busy)
        await rest(b, busy)

        async def client(number: int, round_: int) -> None:
            rng = random.Random(f"{number}.{round_}")
            for i in range(3):
                node = rng.choice((a, b))
                tag = f"{number}.{round_}.{i}"
                command: Any = Take(tag, rng.randint(1, 4)) if rng.random() < 0.5 else Add(tag, 2)
                try:
                    await node.send(Counter, rng.choice(streams), command)
                except TooMuch:
                    pass
                except ConcurrencyError:
                    given_up.add(tag)
                else:
                    acknowledged.add(tag)

        for round_ in range(4):
            for j in range(200):
                rival_add(busy, f"elsewhere-{j % 7}", f"busy{round_}.{j}", 1)
            async with trio.open_nursery() as nursery:
                for number in range(4):
                    nursery.start_soon(client, number, round_)
        for node in (a, b):
            for stream_id in streams:
                await check_live(node, Counter, stream_id, busy)
        retries = sum(node.statistics().aggregates.retries for node in (a, b))
        assert retries > 0
    logged = [t for s in streams for t in replayed(busy, s)[1] if ".seed." not in t]
    assert sorted(logged) == sorted(acknowledged)
    assert not set(logged) & given_up
    for stream_id in streams:
        never_overdrawn(busy, stream_id)
