"""Review 12: a conflict's catch-up that waits for the follower's next read
(``Aggregates._await_follower``), attacked white-box with the hand-cranked writer on a log
whose reads block (the PostgreSQL path): a wait that cannot be served (this engine's own
committed events among those missed: the follower never hands them over), cancellation
and close around the wait, two actors waiting on the same read, eviction pressure while it
waits, a probe's conflict raised mid-wait, and a randomised fuzz in the style of review 11
with ``blocking_reads`` (the wait runs) checking state == fold after every step."""

from __future__ import annotations

import contextlib
import functools
import os
import random
from collections.abc import Iterator
from typing import Any, cast

import anyio
import pytest
import trio
import trio.testing

from actorlog import EngineClosed, EngineError, Overloaded
from actorlog.engine import _aggregates
from actorlog.engine._aggregates import Aggregates
from actorlog.lowlevel import EventRegistry, Writer

from .actor_host import ManualWriter
from .counters import Add, Counter, Take, TooMuch, fold
from .test_catch_up import SharedMemoryLog, crank, rival_add, shared_host
from .test_catch_up_follower_wait import follower_reading
from .test_catch_up_unread import BlockingLog, check_live, followed, opened
from .test_review11 import (
    STREAMS,
    ChainedLog,
    FuzzWriter,
    check_invariant,
    commit_step,
    finish,
    follow_step,
    random_command,
    rival_step,
    settle,
)


@pytest.fixture(autouse=True)
def patient_follower(monkeypatch: pytest.MonkeyPatch) -> None:
    """A wait bound no test reaches: a wait that should have ended shows as a hang (``guard``
    fails it), not as a read after the bound (a test may set its own)."""
    monkeypatch.setattr(_aggregates, "FOLLOWER_WAIT", 60.0)


def host(max_live: int = 100) -> tuple[Aggregates, ManualWriter, BlockingLog]:
    log = BlockingLog()
    aggregates, writer, _ = shared_host([Counter], log, max_live=max_live)
    return aggregates, writer, log


@contextlib.contextmanager
def guard(aggregates: Aggregates) -> Iterator[None]:
    """Fail a test that hangs, or fails, without sitting out a shielded redecision's long
    wait for the follower: the engine closes (which wakes it) before the task group ends."""
    try:
        with trio.fail_after(10):
            yield
    except BaseException:
        aggregates.close()
        raise


def tags_of(log: BlockingLog, stream: str = "a") -> tuple[int, tuple[str, ...]]:
    return fold(SharedMemoryLog.read_stream(log, stream))


async def test_a_wait_the_follower_cannot_serve_ends_at_the_hand_over_that_says_so() -> None:
    # Two pipelined appends: the first commits (version 2, this engine's own), another
    # process commits 3, the second fails (actual 3). The catch-up starts from version 1
    # (the state the first was decided on) and must reach 3, but the follower never hands
    # this engine's own 2 over: once it hands 3 over (kept from 3, a gap after 1), the
    # kept events can never reach from 2, and the wait must end there and read, not sit
    # out FOLLOWER_WAIT (every such conflict would pay the whole wait).
    aggregates, writer, log = host()
    async with anyio.create_task_group() as tasks:
        aggregates.use_task_group(tasks)
        with guard(aggregates):
            await opened(aggregates, writer)
            follower_reading(aggregates, log)
            first = aggregates.send_nowait(Counter, "a", Add("m1", 1), None)
            second = aggregates.send_nowait(Counter, "a", Add("m2", 1), None)
            writer.commit(1)  # m1: version 2
            rival_add(log, "a", "r1")  # 3
            writer.commit(1)  # m2 fails: actual 3
            await trio.testing.wait_all_tasks_blocked()
            actor = aggregates._live["a"]
            assert actor.stale and actor.reloading  # waiting for the follower
            # The follower's read: only the other process's 3 (its own 2 is skipped).
            aggregates.apply_foreign([e for e in followed(log, "a", 2)])
            await trio.testing.wait_all_tasks_blocked()
            try:
                assert not actor.reloading, "still waiting for events that cannot come"
                assert writer.queue  # caught up (read), decided again, submitted
            except AssertionError:
                aggregates.close()  # the redecision's task is shielded: end its wait
                raise
            await crank(writer)
            await first
            await second
            await check_live(aggregates, writer, log)
            stats = aggregates.statistics()
            assert stats.caught_up_waits == stats.caught_up_wait_misses == 1
    assert tags_of(log) == (4, ("own", "m1", "r1", "m2"))


async def conflict_waiting(
    aggregates: Aggregates, writer: ManualWriter, log: BlockingLog, stream: str, tasks: Any
) -> list[Any]:
    """A ``send`` on ``stream`` (at version 1) whose append conflicts with another
    process's 2: its catch-up waits for the follower. Returns where its outcome lands."""
    outcome: list[Any] = []

    async def send_it() -> None:
        try:
            outcome.append(await aggregates.send(Counter, stream, Add(f"m{stream}", 1), None))
        except EngineClosed as e:
            outcome.append(e)

    tasks.start_soon(send_it)
    await trio.testing.wait_all_tasks_blocked()
    rival_add(log, stream, f"r{stream}")
    return outcome


async def test_two_catch_ups_wait_on_one_read_each_served_in_turn() -> None:
    aggregates, writer, log = host()
    async with anyio.create_task_group() as tasks:
        aggregates.use_task_group(tasks)
        with guard(aggregates):
            await opened(aggregates, writer, stream="a")
            await opened(aggregates, writer, stream="b")
            follower_reading(aggregates, log)
            a = await conflict_waiting(aggregates, writer, log, "a", tasks)
            b = await conflict_waiting(aggregates, writer, log, "b", tasks)
            writer.commit()  # both fail: a at 2, b at 2
            await trio.testing.wait_all_tasks_blocked()
            actor_a, actor_b = aggregates._live["a"], aggregates._live["b"]
            assert actor_a.reloading and actor_b.reloading
            # One read brings only b's event: b goes on, a waits again (on a new event).
            aggregates.apply_foreign(followed(log, "b", 1))
            await trio.testing.wait_all_tasks_blocked()
            assert actor_a.reloading and not actor_b.reloading
            aggregates.apply_foreign(followed(log, "a", 1))
            await crank(writer)
            assert len(a) == len(b) == 1 and not isinstance(a[0], Exception)
            stats = aggregates.statistics()
            assert stats.caught_up_waits == 2 and stats.caught_up_wait_misses == 0
            await check_live(aggregates, writer, log)
    assert tags_of(log, "a") == (3, ("own", "ra", "ma"))
    assert tags_of(log, "b") == (3, ("own", "rb", "mb"))


async def test_closing_wakes_every_catch_up_waiting_for_the_follower() -> None:
    aggregates, writer, log = host()
    async with anyio.create_task_group() as tasks:
        aggregates.use_task_group(tasks)
        with guard(aggregates):
            await opened(aggregates, writer, stream="a")
            await opened(aggregates, writer, stream="b")
            follower_reading(aggregates, log)
            a = await conflict_waiting(aggregates, writer, log, "a", tasks)
            b = await conflict_waiting(aggregates, writer, log, "b", tasks)
            # And a send_nowait's redecision (a shielded engine task) waiting too.
            aggregates.apply_foreign([])  # the follower read just now
            writer.commit()
            await trio.testing.wait_all_tasks_blocked()
            assert aggregates._live["a"].reloading and aggregates._live["b"].reloading
            reads = log.reads
            aggregates.close()
            await trio.testing.wait_all_tasks_blocked()
            assert [type(x) for x in a + b] == [EngineClosed, EngineClosed]
            assert log.reads == reads  # closed: nothing more read for it
    assert tags_of(log, "a") == (2, ("own", "ra"))


async def test_a_send_nowait_redecision_waiting_is_woken_by_close() -> None:
    # The redecision runs shielded in the engine's task group: only the close (or the
    # follower) ends its wait; the Pending then says the engine closed, nothing appended.
    aggregates, writer, log = host()
    async with anyio.create_task_group() as tasks:
        aggregates.use_task_group(tasks)
        with guard(aggregates):
            await opened(aggregates, writer)
            follower_reading(aggregates, log)
            mine = aggregates.send_nowait(Counter, "a", Add("mine", 5), None)
            rival_add(log, "a", "r1")
            writer.commit()
            await trio.testing.wait_all_tasks_blocked()
            assert aggregates._live["a"].reloading
            aggregates.close()
            with pytest.raises(EngineClosed):
                await mine
            assert not writer.queue
    assert tags_of(log) == (2, ("own", "r1"))


async def test_a_waiting_catch_up_is_not_evicted_and_a_sender_for_another_stream_waits() -> None:
    aggregates, writer, log = host(max_live=1)
    other: list[Any] = []
    async with anyio.create_task_group() as tasks:
        aggregates.use_task_group(tasks)
        with guard(aggregates):
            await opened(aggregates, writer)
            follower_reading(aggregates, log)
            a = await conflict_waiting(aggregates, writer, log, "a", tasks)
            writer.commit()
            await trio.testing.wait_all_tasks_blocked()
            actor = aggregates._live["a"]
            assert actor.reloading

            async def send_b() -> None:
                other.append(await aggregates.send(Counter, "b", Add("b1", 1), None))

            tasks.start_soon(send_b)
            await trio.testing.wait_all_tasks_blocked()
            assert aggregates._live.get("a") is actor and not other  # not evicted mid-wait
            aggregates.apply_foreign(followed(log, "a", 1))
            await crank(writer)
            assert len(a) == 1 and not isinstance(a[0], Exception)
            with trio.fail_after(5):  # b is loaded in a worker thread once a is idle
                while not other:
                    await trio.sleep(0.001)
                    await crank(writer)
    assert tags_of(log, "a") == (3, ("own", "ra", "ma"))
    assert tags_of(log, "b") == (1, ("b1",))


async def test_a_probe_conflict_during_the_wait_raises_what_it_must_reach() -> None:
    # A rejection's probe (not counted in flight) fails while a catch-up waits: the
    # conflict's version it found is further; the wait must reach that one, not the first.
    aggregates, writer, log = host()
    async with anyio.create_task_group() as tasks:
        aggregates.use_task_group(tasks)
        with guard(aggregates):
            await opened(aggregates, writer)
            follower_reading(aggregates, log)
            add = aggregates.send_nowait(Counter, "a", Add("mine", 1), None)  # expects 1
            take = aggregates.send_nowait(Counter, "a", Take("take", 50), None)  # refused: probe 2
            rival_add(log, "a", "r1", "r2")  # 2, 3
            writer.commit(1)  # the add fails: actual 3
            await trio.testing.wait_all_tasks_blocked()
            actor = aggregates._live["a"]
            # The probe is still queued: the actor is stale with nothing counted in flight.
            assert actor.conflicted_at == 3
            aggregates.apply_foreign(followed(log, "a", 1)[:1])  # only 2 so far
            rival_add(log, "a", "r3")  # 4
            assert actor.reloading  # kept 2: short of 3
            writer.commit(1)  # the probe (expects 2) fails: actual 4
            await trio.testing.wait_all_tasks_blocked()
            assert actor.conflicted_at == 4 and actor.reloading
            aggregates.apply_foreign(followed(log, "a", 2)[:1])  # 3: what the first needed
            await trio.testing.wait_all_tasks_blocked()
            assert actor.reloading  # but the probe found 4: still short
            aggregates.apply_foreign(followed(log, "a", 3))  # 4
            await crank(writer)
            await add
            with pytest.raises(TooMuch):
                await take
            await check_live(aggregates, writer, log)
    total, tags = tags_of(log)
    assert tags == ("own", "r1", "r2", "r3", "mine") and total == 5
    stats = aggregates.statistics()
    assert stats.caught_up_waits == 1 and stats.caught_up_wait_misses == 0


# -- the randomised fuzz (review 11's, on a log whose reads block) ----------------------------


class BlockingChainedLog(ChainedLog):
    """Review 11's memory log with PostgreSQL's chain rule, saying its reads block: the
    catch-up is ``_reload_async``, which waits for the follower."""

    blocking_reads = True


# The live state is checked while a catch-up waits for the follower too.
check_all = functools.partial(check_invariant, reloading=True)


async def blocking_fuzz(seed: int, steps: int = 80) -> None:
    rng = random.Random(seed)
    max_live = 1 + seed % 3
    log = BlockingChainedLog()
    writer = FuzzWriter(log)
    aggregates = Aggregates(
        list(STREAMS.values()),
        log=log,
        writer=cast(Writer, writer),
        registry=EventRegistry(),
        mailbox_size=4,
        max_live=max_live,
    )
    delivered = dict.fromkeys(STREAMS, 0)  # of each stream's events, handed over so far
    pending: list[Any] = []
    scopes: list[trio.CancelScope] = []
    acknowledged: list[str] = []  # tags of commands whose send returned Committed
    outstanding = [0]
    trace: list[str] = []
    n = 0

    async def send(kind: Any, stream: str, command: Any, scope: trio.CancelScope) -> None:
        try:
            with scope:
                await aggregates.send(kind, stream, command, None)
                acknowledged.append(command.tag)
        except (EngineError, Exception):
            pass
        finally:
            outstanding[0] -= 1

    async with trio.open_nursery() as nursery:
        aggregates.use_task_group(cast(Any, nursery))
        try:
            for _ in range(steps):
                action = rng.random()
                stream = rng.choice(list(STREAMS))
                kind = STREAMS[stream]
                if action < 0.15:
                    n = rival_step(rng, log, stream, n, trace)
                elif action < 0.35:
                    follow_step(rng, aggregates, log, stream, delivered, trace, skip_own=0.8)
                elif action < 0.62:
                    n += 1
                    command = random_command(rng, n)
                    if rng.random() < 0.4:
                        outstanding[0] += 1
                        scope = trio.CancelScope()
                        scopes.append(scope)
                        nursery.start_soon(send, kind, stream, command, scope)
                        trace.append(f"send (awaited) {stream} {command}")
                        continue
                    try:
                        pending.append(aggregates.send_nowait(kind, stream, command, None))
                        trace.append(f"send {stream} {command}")
                    except Overloaded:
                        trace.append("overloaded")
                elif action < 0.67:
                    if scopes:
                        scopes.pop(rng.randrange(len(scopes))).cancel()
                        trace.append("cancel a send")
                elif action < 0.72:
                    await trio.sleep(rng.choice([0.001, 0.01]))  # waits may time out
                    trace.append("time passes")
                else:
                    commit_step(rng, writer, trace, lost=action >= 0.92)
                await settle()
                check_all(aggregates, log, "\n".join(trace))
            await finish(
                nursery,
                aggregates,
                log,
                writer,
                pending,
                outstanding,
                delivered,
                trace,
                check_all,
            )
            BLOCKING_STATS.append(aggregates.statistics())
        except BaseException:
            aggregates.close()  # its shielded redecisions end: the nursery can exit
            raise
        nursery.cancel_scope.cancel()
    # Every acknowledged command is in the log exactly once; none twice.
    tags = [tag for stream in STREAMS for tag in fold(SharedMemoryLog.read_stream(log, stream))[1]]
    assert len(tags) == len(set(tags)), "\n".join(trace)
    assert set(acknowledged) <= set(tags), "\n".join(trace)


BLOCKING_STATS: list[Any] = []


@pytest.mark.parametrize("seed", range(int(os.environ.get("REVIEW12_SEEDS", "120"))))
async def test_fuzz_catch_up_waiting_for_the_follower(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A wait that a hand-over or a "time passes" step ends, either way.
    monkeypatch.setattr(_aggregates, "FOLLOWER_WAIT", [0.005, 0.05][seed % 2])
    with trio.fail_after(20):
        await blocking_fuzz(seed)


async def test_the_blocking_fuzz_takes_the_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_aggregates, "FOLLOWER_WAIT", 0.05)
    BLOCKING_STATS.clear()
    for seed in range(30):
        with trio.fail_after(20):
            await blocking_fuzz(1000 + seed)
    waits = sum(s.caught_up_waits for s in BLOCKING_STATS)
    misses = sum(s.caught_up_wait_misses for s in BLOCKING_STATS)
    assert waits > misses > 0, (waits, misses)
    assert sum(s.passivations for s in BLOCKING_STATS) > 0


async def test_send_nowait_while_a_catch_up_waits_for_the_follower_is_not_refused() -> None:
    # Before the wait, a stale aggregate with nothing in flight was caught up by whoever
    # came first, inline: send_nowait (which cannot wait) then reloaded it itself and put
    # its command in the mailbox. While a catch-up waits for the follower (a conflict's
    # usual path on PostgreSQL, up to FOLLOWER_WAIT) it must not answer Overloaded, which
    # says the mailbox is full: nothing is in it.
    aggregates, writer, log = host()
    async with anyio.create_task_group() as tasks:
        aggregates.use_task_group(tasks)
        with guard(aggregates):
            await opened(aggregates, writer)
            follower_reading(aggregates, log)
            mine = aggregates.send_nowait(Counter, "a", Add("mine", 5), None)
            rival_add(log, "a", "r1")
            writer.commit()  # mine fails: actual 2; its redecision's catch-up waits
            await trio.testing.wait_all_tasks_blocked()
            actor = aggregates._live["a"]
            assert actor.stale and not actor.inflight
            nxt = aggregates.send_nowait(Counter, "a", Add("next", 1), None)
            assert aggregates._live["a"] is actor and not actor.stale
            await trio.testing.wait_all_tasks_blocked()
            assert not actor.reloading  # the waiting sender has left its wait: taken over
            stats = aggregates.statistics()
            assert stats.caught_up_wait_misses == 0
            assert stats.reloads == stats.caught_up == 1  # one catch-up, counted once
            aggregates.apply_foreign(followed(log, "a", 1))  # the follower's read, late
            await crank(writer)
            await nxt
            await mine
            await check_live(aggregates, writer, log)
    assert tags_of(log) == (8, ("own", "r1", "next", "mine"))


async def test_a_takeover_by_send_nowait_that_conflicts_again_before_the_waiter_runs() -> None:
    # send_nowait catches the waiting actor up and decides; that append fails too (another
    # process again) before the waiting sender runs: the waiter must not go on from the
    # durable state it was waiting from (the actor has moved past it since), but start
    # over, from what the new conflict says.
    aggregates, writer, log = host()
    async with anyio.create_task_group() as tasks:
        aggregates.use_task_group(tasks)
        with guard(aggregates):
            await opened(aggregates, writer)
            follower_reading(aggregates, log)
            mine = aggregates.send_nowait(Counter, "a", Add("mine", 5), None)
            rival_add(log, "a", "r1")  # 2
            writer.commit()  # mine fails: actual 2; its redecision waits
            await trio.testing.wait_all_tasks_blocked()
            actor = aggregates._live["a"]
            assert actor.reloading
            nxt = aggregates.send_nowait(Counter, "a", Add("next", 1), None)  # expects 2
            rival_add(log, "a", "r2")  # 3
            writer.commit()  # next fails: actual 3 (the waiter has not run yet)
            assert actor.stale and actor.conflicted_at == 3
            await trio.testing.wait_all_tasks_blocked()
            aggregates.apply_foreign(followed(log, "a", 1))  # 2 and 3
            await crank(writer)
            await nxt
            await mine
            await check_live(aggregates, writer, log)
    total, tags = tags_of(log)
    assert sorted(tags) == sorted(("own", "r1", "r2", "next", "mine")) and total == 9
