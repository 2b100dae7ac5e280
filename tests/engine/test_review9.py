"""Review 9: adversarial probes of the conflict catch-up (issue 15, session 7) on the
shared memory log with the hand-cranked writer. Each scenario ends by checking the live
state against the state folded from the log (``Check`` is refused otherwise) and against
a fresh engine's replay of the log."""

from __future__ import annotations

from typing import Any, ClassVar, cast

import anyio
import pytest
import trio

from actorlog import StorageError, applies
from actorlog.engine._aggregates import Aggregates
from actorlog.lowlevel import EventRegistry, Writer
from actorlog.storage import ANY, Append

from .actor_host import ManualWriter
from .counters import Add, Added, Check, Counter, Mismatch, Scribble, fold
from .test_catch_up import SharedMemoryLog, crank, rival_add, shared_host


class Fragile(Counter):
    """A Counter whose applier raises the first time it meets a tag in ``flaky``."""

    flaky: ClassVar[set[str]] = set()

    @applies
    def added(self, e: Added) -> None:
        if e.tag in Fragile.flaky:
            Fragile.flaky.discard(e.tag)
            self.total += 1_000_000  # half its work done, then it raises
            raise RuntimeError(f"flaky applier on {e.tag}")
        self.total += e.amount
        self.tags = (*self.tags, e.tag)


class FailingReads(SharedMemoryLog):
    """Stream reads raise ``StorageError`` while ``fail_reads`` is positive."""

    fail_reads = 0

    def read_stream(self, stream_id: str, from_version: int = 1, limit: int | None = None) -> Any:
        if self.fail_reads:
            self.fail_reads -= 1
            raise StorageError("the read failed (test)")
        return super().read_stream(stream_id, from_version, limit)


async def _agrees(aggregates: Any, writer: Any, log: Any, kind: Any, stream_id: str) -> None:
    """The live state is the log's: ``Check`` with the folded state passes, one off fails."""
    total, tags = fold(log.read_stream(stream_id))
    ok = aggregates.send_nowait(kind, stream_id, Check(total, tags), None)
    await crank(writer)
    await ok
    wrong = aggregates.send_nowait(kind, stream_id, Check(total + 1, tags), None)
    await crank(writer)
    with pytest.raises(Mismatch):
        await wrong
    # A fresh host over the same log replays it to the log's state (folded again: the
    # cranks above may have committed redecided commands meanwhile).
    total, tags = fold(log.read_stream(stream_id))
    fresh = Aggregates(
        [kind],
        log=log,
        writer=cast(Writer, ManualWriter(log)),
        registry=EventRegistry(),
        mailbox_size=4,
        max_live=100,
    )
    replayed = fresh.send_nowait(kind, stream_id, Check(total, tags), None)
    cast(ManualWriter, fresh._writer).commit()
    await replayed


async def test_base_then_followers_advance_then_pipelined_failure() -> None:
    """A base recorded, the idle actor then advanced by apply_foreign, then a pipeline
    whose first append commits and whose second fails: the base restored is the one of
    the last idle decision and the catch-up reads from its version."""
    aggregates, writer, log = shared_host([Counter])
    with trio.fail_after(10):
        async with anyio.create_task_group() as tasks:
            aggregates.use_task_group(tasks)
            first = aggregates.send_nowait(Counter, "a", Add("own0", 1), None)
            await crank(writer)
            await first
            rival_add(log, "a", "f1", "f2")
            aggregates.apply_foreign(log.read_stream("a", 2))  # idle: applied in place
            one = aggregates.send_nowait(Counter, "a", Add("own1", 10), None)  # base v3
            two = aggregates.send_nowait(Counter, "a", Add("own2", 100), None)
            writer.commit(1)  # own1 commits
            rival_add(log, "a", "r1")  # own2 now conflicts
            writer.commit()
            await one
            await _agrees(aggregates, writer, log, Counter, "a")
            await two  # decided again, committed
            await _agrees(aggregates, writer, log, Counter, "a")
            assert aggregates.statistics().caught_up >= 1


async def test_applier_raising_in_apply_foreign_then_catch_up() -> None:
    """An applier of apply_foreign raises half-way: the actor is tainted, put back to its
    base and caught up (the applier works the second time): the log's state, not the
    half-applied one."""
    aggregates, writer, log = shared_host([Fragile])
    with trio.fail_after(10):
        async with anyio.create_task_group() as tasks:
            aggregates.use_task_group(tasks)
            first = aggregates.send_nowait(Fragile, "a", Add("own0", 1), None)
            await crank(writer)
            await first
            Fragile.flaky = {"boom"}
            rival_add(log, "a", "boom")
            aggregates.apply_foreign(log.read_stream("a", 2))
            await _agrees(aggregates, writer, log, Fragile, "a")
            assert aggregates.statistics().caught_up == 1


async def test_applier_raising_in_the_catch_up_then_full_reload() -> None:
    """The catch-up's replay raises half-way: the sender gets the error, and the next
    one finds the log's state (a full reload), never the half-applied one."""
    aggregates, writer, log = shared_host([Fragile])
    with trio.fail_after(10):
        async with anyio.create_task_group() as tasks:
            aggregates.use_task_group(tasks)
            first = aggregates.send_nowait(Fragile, "a", Add("own0", 1), None)
            await crank(writer)
            await first
            rival_add(log, "a", "r1", "boom", "r2")
            late = aggregates.send_nowait(Fragile, "a", Add("late", 5), None)
            Fragile.flaky = {"boom"}
            writer.commit()  # late conflicts: tainted; its redecision reloads
            await crank(writer)
            with pytest.raises(Exception, match="flaky applier"):
                await late
            await _agrees(aggregates, writer, log, Fragile, "a")


async def test_storage_error_during_the_catch_up_read() -> None:
    """The catch-up's read fails after the base was put back: the sender gets the
    StorageError, and the next one catches up from that base to the log's state."""
    log = FailingReads()
    aggregates, writer, _ = shared_host([Counter])
    aggregates._log = log  # the same harness, on the failing log
    writer.log = log
    with trio.fail_after(10):
        async with anyio.create_task_group() as tasks:
            aggregates.use_task_group(tasks)
            first = aggregates.send_nowait(Counter, "a", Add("own0", 1), None)
            await crank(writer)
            await first
            rival_add(log, "a", "r1")
            a = aggregates.send_nowait(Counter, "a", Add("x", 10), None)
            b = aggregates.send_nowait(Counter, "a", Add("y", 100), None)
            writer.commit()  # both fail: tainted, stale
            log.fail_reads = 1
            with pytest.raises(StorageError):
                aggregates.send_nowait(Counter, "a", Add("z", 1000), None)
            await crank(writer)
            await a
            await b
            await _agrees(aggregates, writer, log, Counter, "a")


async def test_scribble_rejected_while_appends_in_flight_that_fail() -> None:
    """A handler changes the state and refuses while two appends are in flight, which
    then fail: the undo, the taint and the catch-up leave the log's state."""
    aggregates, writer, log = shared_host([Counter])
    with trio.fail_after(10):
        async with anyio.create_task_group() as tasks:
            aggregates.use_task_group(tasks)
            first = aggregates.send_nowait(Counter, "a", Add("own0", 1), None)
            await crank(writer)
            await first
            a = aggregates.send_nowait(Counter, "a", Add("x", 10), None)
            s = aggregates.send_nowait(Counter, "a", Scribble(), None)
            b = aggregates.send_nowait(Counter, "a", Add("y", 100), None)
            rival_add(log, "a", "r1")
            writer.commit()
            await crank(writer)
            for pending in (a, b):
                await pending
            with pytest.raises(Exception, match="scribbled"):
                await s
            await _agrees(aggregates, writer, log, Counter, "a")


class Retiring(Counter):
    """A Counter that retired an event name others may still write."""

    retired_events = ("Noise",)


async def test_retired_events_in_the_caught_up_range() -> None:
    """Events of a retired name among those a catch-up reads (and those apply_foreign
    meets) are skipped as a full load skips them: the version still moves past them."""
    aggregates, writer, log = shared_host([Retiring])
    with trio.fail_after(10):
        async with anyio.create_task_group() as tasks:
            aggregates.use_task_group(tasks)
            first = aggregates.send_nowait(Retiring, "a", Add("own0", 1), None)
            await crank(writer)
            await first
            noise = ("Noise", b"\x80")
            outcomes, _ = log.append_batch([Append("a", ANY, (noise,))])
            assert not any(isinstance(o, Exception) for o in outcomes)
            rival_add(log, "a", "r1")
            late = aggregates.send_nowait(Retiring, "a", Add("late", 10), None)
            writer.commit()  # conflicts: caught up over the retired event, decided again
            await crank(writer)
            await late
            assert [s.type for s in log.read_stream("a")] == ["Added", "Noise", "Added", "Added"]
            total, tags = fold(s for s in log.read_stream("a") if s.type != "Noise")
            ok = aggregates.send_nowait(Retiring, "a", Check(total, tags), None)
            await crank(writer)
            await ok
            assert aggregates.statistics().caught_up == 1


class Slotted(Counter):
    """A Counter whose values live in slots: ``restore`` cannot put a base back."""

    __slots__ = ("tags", "total")


async def test_a_slotted_state_takes_the_full_reload() -> None:
    """Pipelined failures on a state kept in slots: no catch-up (a base of its
    ``__dict__`` would miss the slots), a full reload, and the log's state."""
    aggregates, writer, log = shared_host([Slotted])
    with trio.fail_after(10):
        async with anyio.create_task_group() as tasks:
            aggregates.use_task_group(tasks)
            first = aggregates.send_nowait(Slotted, "a", Add("own0", 1), None)
            await crank(writer)
            await first
            rival_add(log, "a", "r1")
            late = [aggregates.send_nowait(Slotted, "a", Add(f"l{i}", 10), None) for i in range(2)]
            writer.commit()
            await crank(writer)
            for pending in late:
                await pending
            await _agrees(aggregates, writer, log, Slotted, "a")
            stats = aggregates.statistics()
            assert stats.reloads >= 1 and stats.caught_up == 0, stats
