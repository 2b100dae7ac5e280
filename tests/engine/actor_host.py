"""An aggregates host driven by hand: a writer double that commits when told, and
senders to drive it (shared by the aggregate host tests and its model test)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import msgspec
import pytest
import trio
import trio.testing

from actorlog import (
    Committed,
    EngineClosed,
    StorageError,
)
from actorlog.engine._aggregates import Aggregates, Pending
from actorlog.engine._log import AppendOutcome
from actorlog.lowlevel import EventRegistry, Writer
from actorlog.storage import Append, MemoryEventLog, Snapshot

from .api_scenarios import Add, Ledger, Peek, Peeked, SnapLedger

Done = Callable[[AppendOutcome], None]


class ManualWriter:
    """Stands in for the Writer: appends wait until the test calls :meth:`commit`."""

    def __init__(self, log: MemoryEventLog) -> None:
        self.log = log
        self.queue: list[tuple[Append, Done]] = []
        self.snapshots: list[tuple[str, Snapshot]] = []
        self.closed = False

    def submit(
        self,
        append: Append,
        done: Done,
        objects: Sequence[Any] | None = None,
        *,
        checked: bool = False,
    ) -> None:
        if self.closed:
            raise EngineClosed("the writer is closed")
        self.queue.append((append, done))

    def save_snapshot(self, stream_id: str, snapshot: Snapshot) -> None:
        self.snapshots.append((stream_id, snapshot))

    def commit(self, count: int | None = None) -> None:
        """Commit the first ``count`` queued appends (all by default) as one group."""
        count = len(self.queue) if count is None else count
        batch, self.queue = self.queue[:count], self.queue[count:]
        snapshots, self.snapshots = self.snapshots, []
        outcomes, _ = self.log.append_batch([a for a, _ in batch], snapshots=snapshots)
        for (_, done), outcome in zip(batch, outcomes, strict=True):
            done(outcome)

    def fail_first(self, error: StorageError) -> None:
        (_, done), *self.queue = self.queue
        done(error)


def host(
    *, mailbox_size: int = 2, max_live: int = 100, kinds: Sequence[Any] = (Ledger, SnapLedger)
) -> tuple[Aggregates, ManualWriter, MemoryEventLog]:
    log = MemoryEventLog()
    writer = ManualWriter(log)
    aggregates = Aggregates(
        kinds,
        log=log,
        writer=cast(Writer, writer),
        registry=EventRegistry(),
        mailbox_size=mailbox_size,
        max_live=max_live,
    )
    return aggregates, writer, log


def nowait(aggregates: Aggregates, command: Any, stream_id: str = "a") -> Pending:
    return aggregates.send_nowait(Ledger, stream_id, command, None)


def peek(aggregates: Aggregates, stream_id: str = "a") -> tuple[int, list[int]]:
    with pytest.raises(Peeked) as seen:
        nowait(aggregates, Peek(), stream_id)
    return seen.value.balance, seen.value.history


def amounts(log: MemoryEventLog, stream_id: str = "a") -> list[int]:
    return [
        msgspec.msgpack.decode(e.payload, type=Add).n
        for e in log.read_stream(stream_id)
        if e.type == "Added"
    ]


class Sender:
    """Runs ``send`` in a task and keeps its outcome."""

    def __init__(self, aggregates: Aggregates, command: Any, stream_id: str = "a") -> None:
        self.aggregates = aggregates
        self.command = command
        self.stream_id = stream_id
        self.result: Committed | BaseException | None = None
        self.scope = trio.CancelScope()

    async def __call__(self) -> None:
        with self.scope:
            try:
                self.result = await self.aggregates.send(Ledger, self.stream_id, self.command, None)
            except Exception as e:
                self.result = e
            except trio.Cancelled:
                self.result = trio.Cancelled.__new__(trio.Cancelled)
                raise


async def start(nursery: trio.Nursery, *senders: Sender) -> None:
    """Start each sender and let it run until it blocks, in this order."""
    for sender in senders:
        nursery.start_soon(sender)
        await trio.testing.wait_all_tasks_blocked()


# -- the mailbox -------------------------------------------------------------------------
