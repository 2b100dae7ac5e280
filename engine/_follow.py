"""Following a log that other processes write: the head moves without this engine.

A log says so with ``others_append`` (a PostgreSQL log; an LMDB log opened read-only) and
offers two blocking hooks, run in worker threads:

- ``wait_for_head(known, timeout) -> int`` (required): the log's head, once it is past
  ``known`` or ``timeout`` seconds have passed;
- ``announce_head() -> None`` (optional): tell the other processes' followers that this
  one committed (PostgreSQL's NOTIFY; see ``_pg_follow.py``).

The follower task only moves the broadcast's head; the projectors then read what they
miss from the log, from ``checkpoint + 1``, checked gap-free, as after any hole in the
window (``_projectors.py``). So events committed by other processes reach projectors in
position order, none skipped, none twice, through the same code as catch-up:

    other process ── commit ──▶ log ──▶ follower thread: wait_for_head(head) ──▶ H
    follower task:  broadcast.advance(H) ──wake──▶ projectors read checkpoint+1 .. H

In an engine with aggregates the follower also reads what others committed itself
(inline, skipping this engine's own batches), hands it to the cached aggregates
(``Aggregates.apply_foreign``: an idle actor applies the next event, any other is marked
stale), and shares the read with the projectors. Its latency is the conflict rate under
random routing, which is why those reads run on the loop rather than in the thread; while
others keep committing it reads on from there, at most every ``HOT_PACE`` seconds and
without a look at the head first (each query counts: every node reads what every other
node writes), and only a read that finds nothing sends it back to the thread's wait
(``docs/design.md``).

The engine's own commits keep taking the writer's path (``publish``): a group commit
returns, and publishes, on the event loop, before the follower's thread can report a head
that includes it, so ``advance`` never runs ahead of a batch still to be published.

Cancellation: the follower's thread is never abandoned (anyio's default): it returns
within ``FOLLOW_WAIT``, which bounds how long the engine's close waits for it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Final

import anyio
import anyio.lowlevel
import anyio.to_thread
import msgspec

from ._errors import DefinitionError, StorageError
from ._log import EventLog, ReadBatch, reads_block
from ._projectors import Broadcast
from ._records import StoredEvent
from ._writer import CommitBatch

__all__ = ["FOLLOW_WAIT", "Follower", "FollowerStatistics", "follows_others"]

FOLLOW_WAIT: Final = 0.1
"""The longest one wait in the follower's thread lasts (then it waits again): what an
engine's close may wait for the thread."""
OWN_RANGES: Final = 4096
"""The most of this engine's own batches the follower remembers above what it has read."""
HOT_PACE: Final = 0.002
"""While others keep committing, the least time between two of the follower's reads."""
READ_BATCH: Final = 4096
"""The most events the follower reads at once (for an engine with aggregates)."""
RETRY_PAUSE: Final = 0.5
"""After a failed wait (the server unreachable, say), the pause before the next one."""


def follows_others(log: object) -> bool:
    """True if other processes may append to ``log`` (``others_append``), so the engine
    must follow its head rather than assume it moves only when this engine commits."""
    return bool(getattr(log, "others_append", False))


class FollowerStatistics(msgspec.Struct, frozen=True):
    """What the follower saw: the heads others moved the log to, and its failures."""

    advances: int
    """Times the log's head was found beyond this engine's (others committed)."""
    failures: int
    """Waits that failed (``StorageError``: the server unreachable); each is retried."""
    announcements: int
    """Notifications this engine sent for its own commits (coalesced: at most one in
    flight)."""
    foreign_events: int
    """Events of other processes the follower read for the cached aggregates."""
    reads: int
    """Reads of the log the follower made for them (each brings every event committed
    since the one before, up to ``READ_BATCH``)."""
    last_error: str | None


class Follower:
    """The task that moves the broadcast's head when other processes commit, and the
    announcer of this engine's own commits (see the module doc)."""

    def __init__(self, log: EventLog, broadcast: Broadcast) -> None:
        wait = getattr(log, "wait_for_head", None)
        if wait is None:
            raise DefinitionError(
                f"{type(log).__name__} says others append to it (others_append) but has no "
                "wait_for_head(known, timeout) to follow them with"
            )
        self._wait: Callable[[int, float], int] = wait
        self._announce: Callable[[], None] | None = getattr(log, "announce_head", None)
        self._log = log
        self._broadcast = broadcast
        self._on_events: Callable[[list[StoredEvent]], None] | None = None
        # Every position up to here was handed to the aggregates, or is this engine's own.
        self._followed = broadcast.head
        # This engine's batches above ``_followed`` (first, last), in order; bounded: a
        # range dropped is read back and skipped by version, never lost.
        self._own: deque[tuple[int, int]] = deque(maxlen=OWN_RANGES)
        self.foreign_events = 0
        self.reads = 0
        self._blocking = reads_block(log)
        # Threads of their own: a follower parked on LISTEN must not hold one of the
        # engine's read threads (activations, catch-up).
        self._limiter = anyio.CapacityLimiter(1)
        self._announce_limiter = anyio.CapacityLimiter(1)
        # A query's look at the head must not queue behind the follower's long wait.
        self._refresh_limiter = anyio.CapacityLimiter(1)
        self._committed = anyio.Event()  # set by on_commit, taken by the announcer
        self.advances = 0
        self.failures = 0
        self.announcements = 0
        self.last_error: str | None = None

    # -- following ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Follow the log until cancelled (the engine's task group owns this task).

        Feeding aggregates, while others keep committing the follower reads on inline
        (one round trip on the loop: a thread's hand-offs of the GIL back to a busy loop
        add latency, and latency here is conflicts), at most once every ``HOT_PACE``
        seconds, and without asking for the head first: the read itself says what is
        new, and one read brings every group committed since the last one. Only when a
        read finds nothing does it go back to waiting in the thread (LISTEN/NOTIFY).
        """
        hot = False
        last_read = 0.0
        while True:
            if hot:
                # Others are committing: read on, paced, so that one round trip brings
                # several of their groups (fewer queries for the server and for this
                # process) at the price of up to HOT_PACE of staleness.
                pause = last_read + HOT_PACE - anyio.current_time()
                if pause > 0:
                    await anyio.sleep(pause)
                else:
                    await anyio.lowlevel.checkpoint()
                head = self._followed
            else:
                # Feeding aggregates, the follower waits for anything it has not handed
                # on; else for a head beyond the broadcast's.
                known = self._followed if self._on_events is not None else self._broadcast.head
                try:
                    head = await anyio.to_thread.run_sync(
                        self._wait, known, FOLLOW_WAIT, limiter=self._limiter
                    )
                except StorageError as e:
                    # The server is gone for now: projectors keep what they have; retry.
                    self.failures += 1
                    self.last_error = str(e)
                    await anyio.sleep(RETRY_PAUSE)
                    continue
            was_hot, hot = hot, False
            if self._on_events is not None and (was_hot or head > self._followed):
                seen = self.foreign_events
                last_read = anyio.current_time()
                try:
                    # Hot, the read finds its own end (the log's head as of the read).
                    await self._read_foreign(None if was_hot else head)
                except StorageError as e:
                    # Only a shortcut: the projectors read for themselves, and a stale
                    # aggregate is caught by its append's expected version.
                    self.failures += 1
                    self.last_error = str(e)
                hot = self.foreign_events > seen
                head = max(head, self._followed)
            self._advance(head)

    def feed(self, on_events: Callable[[list[StoredEvent]], None] | None) -> None:
        """Have the follower read what others commit itself and hand it to ``on_events``
        (the engine's cached aggregates), sharing each read with the projectors, who would
        have read it anyway. None: only move the head (a reader engine)."""
        self._on_events = on_events

    async def _read_foreign(self, head: int | None) -> None:
        """Read what other processes committed after ``_followed`` (skipping this engine's
        own batches, ``_own``), hand it to the aggregates, and share it with the
        projectors: up to ``head`` if given, else until a read comes back short (the log's
        head as of that read). Stops early at anything not gap-free (the projectors and
        the appends' version checks do not depend on this)."""
        on_events = self._on_events
        assert on_events is not None
        own = self._own
        while head is None or self._followed < head:
            start = self._followed + 1
            while own and own[0][1] < start:
                own.popleft()  # passed already
            if own and own[0][0] <= start:
                self._followed = own.popleft()[1]  # ours: the aggregates decided it
                continue
            end = own[0][0] - 1 if own else None
            if head is not None:
                end = head if end is None else min(end, head)
            limit = READ_BATCH if end is None else min(end - start + 1, READ_BATCH)
            # Inline, like the writer's commit: one round trip on the loop costs less than
            # a thread's hand-offs of the GIL back to a busy loop (measured: the lag from
            # another process's commit to its apply, p50, 250 ms in a thread under load).
            events = self._log.read_all(start, limit)
            self.reads += 1
            if not events or events[0].position != start:
                return
            if events[-1].position != start + len(events) - 1:
                return
            size = events.nbytes if type(events) is ReadBatch else _payload_bytes(events)
            self._broadcast.share(events, size)
            on_events(events)
            self.foreign_events += len(events)
            self._followed = max(self._followed, events[-1].position)
            if head is None and len(events) < limit:
                return  # caught up with the log as of this read

    def _advance(self, head: int) -> None:
        if head > self._broadcast.head:
            self.advances += 1
            self._broadcast.advance(head)

    async def refresh(self) -> int:
        """Read the log's head now (a position a caller got from another process may be
        beyond what the follower has seen yet), advance to it, and return it.

        Raises:
            StorageError: the log cannot be read.
        """
        read = self._log.head_position
        if self._blocking:
            head = await anyio.to_thread.run_sync(read, limiter=self._refresh_limiter)
        else:
            head = read()
        self._advance(head)
        return self._broadcast.head

    # -- announcing ----------------------------------------------------------------------------

    def on_commit(self, batch: CommitBatch) -> None:
        """The writer's commit callback on a followed log: publish, note the batch as this
        engine's own (the follower need not read it back), and let the announcer know (no
        await: the writer's path)."""
        self._broadcast.publish(batch)
        events = batch.events
        if events:
            first, last = events[0].position, events[-1].position
            if first == self._followed + 1 and not self._own:
                self._followed = last
            else:  # others committed in between: the follower reads that gap
                self._own.append((first, last))
        self._committed.set()

    @property
    def announces(self) -> bool:
        """True if the log can announce commits (``announce_head``)."""
        return self._announce is not None

    async def run_announcer(self) -> None:
        """Send one announcement for each run of commits (coalesced: commits that land while
        one is in flight share the next), until cancelled."""
        announce = self._announce
        if announce is None:
            return
        while True:
            await self._committed.wait()
            self._committed = anyio.Event()
            try:
                await anyio.to_thread.run_sync(announce, limiter=self._announce_limiter)
                self.announcements += 1
            except StorageError as e:
                # Lost: the other followers' bounded poll finds the head anyway.
                self.failures += 1
                self.last_error = str(e)
                await anyio.sleep(RETRY_PAUSE)

    def statistics(self) -> FollowerStatistics:
        """What the follower saw so far."""
        return FollowerStatistics(
            self.advances,
            self.failures,
            self.announcements,
            self.foreign_events,
            self.reads,
            self.last_error,
        )


def _payload_bytes(events: list[StoredEvent]) -> int:
    return sum([len(e.payload) for e in events])
