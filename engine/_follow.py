"""Following a log that other processes write: the head moves without this engine.

A log says so with ``others_append`` (a PostgreSQL log; an LMDB log opened read-only) and
offers blocking hooks, run in worker threads:

- ``wait_for_head(known, timeout) -> int`` (required): the log's head, once it is past
  ``known`` or ``timeout`` seconds have passed;
- ``wait_for_notice(timeout) -> bool`` (optional): wait for another process's
  notification that it committed (PostgreSQL's NOTIFY, sent by the log in each group
  commit; see ``_pg_follow.py``), without reading the head (a follower that reads the
  log next anyway saves that query);
- ``drain_notices()`` (optional, non-blocking, called on the loop): drop the
  notifications received meanwhile, for a follower that reads on its own schedule while
  others keep committing (unread, they would hold back the server's queue);
- ``stop_listening()`` (optional, blocking): stop receiving notifications until the next
  wait, for a follower that rests (``Follower.feed``).

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

import math
from collections import deque
from collections.abc import Callable
from typing import Final

import anyio
import anyio.lowlevel
import anyio.to_thread
import msgspec

from ._errors import DefinitionError, StorageError
from ._log import EventLog, ReadBatch, reads_block
from ._projectors import EVENT_OVERHEAD, Broadcast
from ._records import StoredEvent
from ._writer import CommitBatch

__all__ = ["FOLLOW_WAIT", "Follower", "FollowerStatistics", "follows_others"]

FOLLOW_WAIT: Final = 0.1
"""The longest one wait in the follower's thread lasts (then it waits again): what an
engine's close may wait for the thread."""
OWN_RANGES: Final = 4096
"""The most of this engine's own batches the follower remembers above what it has read."""
HOT_PACE: Final = 0.005
"""While others keep committing, the least time between two of the follower's reads."""
HOT_LINGER: Final = 0.05
"""How long after its last read that found others' events the follower keeps reading at
that pace (an empty read costs one query; waking from the thread costs a hand-off)."""
READ_BATCH: Final = 4096
"""The most events the follower reads at once (for an engine with aggregates)."""
RETRY_PAUSE: Final = 0.5
"""After a failed wait (the server unreachable, say), the pause before the next one."""
HELD_EVENTS: Final = 4096
"""The most events of this engine's own batches held back for the follower to publish in
order (``Follower.on_commit``); past it they are let go and the projectors read them."""
HELD_BYTES: Final = 16 * 1024 * 1024
"""The same bound in bytes, counted as the broadcast window counts them (payload plus
``EVENT_OVERHEAD`` an event)."""
REST_SAMPLE: Final = 1024
"""Events a follower feeding only cached aggregates sees (others' it read, and this
engine's appends) before it weighs whether following pays (``REST_RATIO``); doubled each
time it has to resume, up to ``REST_SAMPLE_MAX``, so that a load on the edge does not flip
it back and forth."""
REST_SAMPLE_MAX: Final = 65536
"""The largest sample (see ``REST_SAMPLE``)."""
REST_RATIO: Final = 64
"""Following pays while at least 1 in ``REST_RATIO`` of the events seen (see
``REST_SAMPLE``) were others' that moved a cached aggregate, and is missed once more than
1 in ``REST_RATIO`` of the events committed while it rests were this engine's commands
decided on a stale aggregate (``Follower._rest``). Reading an event costs a few µs of
this process's and the server's CPU, a conflict a few hundred (decided again, caught up,
resent; docs/design.md): either side of this ratio, the cheaper one wins."""
REST_CHECK: Final = 0.05
"""While resting, how often the follower looks at the conflicts (``Follower._rest``)."""
WAKE_CONFLICTS: Final = 16
"""The fewest conflicts that wake a resting follower (with ``REST_RATIO``; see
``Follower._rest``): a few commands routed here by chance do not."""


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
    foreign_events: int
    """Events of other processes the follower read for the cached aggregates."""
    reads: int
    """Reads of the log the follower made for them (each brings every event committed
    since the one before, up to ``READ_BATCH``)."""
    last_error: str | None
    held_events: int = 0
    """This engine's own events held back right now, until the follower has read the
    others' events before them (``HELD_EVENTS`` at most)."""
    held_bytes: int = 0
    """Their size, counted as the broadcast window counts (``HELD_BYTES`` at most)."""
    rests: int = 0
    """Times the follower stopped reading others' events because they did not move this
    engine's cached aggregates (an engine of aggregates only; see ``Follower.feed``)."""
    resting: bool = False
    """Resting now: others' events are not read; an aggregate they moved is caught up
    when its append conflicts."""


class Follower:
    """The task that moves the broadcast's head when other processes commit (see the
    module doc)."""

    def __init__(self, log: EventLog, broadcast: Broadcast) -> None:
        wait = getattr(log, "wait_for_head", None)
        if wait is None:
            raise DefinitionError(
                f"{type(log).__name__} says others append to it (others_append) but has no "
                "wait_for_head(known, timeout) to follow them with"
            )
        self._wait: Callable[[int, float], int] = wait
        self._notice: Callable[[float], bool] | None = getattr(log, "wait_for_notice", None)
        # Optional, non-blocking: drop the notifications received while reading hot.
        self._drain: Callable[[], None] | None = getattr(log, "drain_notices", None)
        self._log = log
        self._broadcast = broadcast
        self._on_events: Callable[[list[StoredEvent]], int] | None = None
        # Given (an engine whose only readers of others' events are its cached
        # aggregates): (commands decided again, appends) so far; the follower may rest.
        self._conflicts: Callable[[], tuple[int, int]] | None = None
        self._resting = False
        self._sample = REST_SAMPLE
        self._sampled = 0  # others' events read since the sample began
        self._moved = 0  # of them, those that moved a cached aggregate
        self._appended = 0  # this engine's appends when the sample began
        self.rests = 0
        # Every position up to here was handed to the aggregates, or is this engine's own.
        self._followed = broadcast.head
        # This engine's batches above ``_followed`` (first, last), in order; bounded: a
        # range dropped is read back and skipped by version, never lost.
        self._own: deque[tuple[int, int]] = deque(maxlen=OWN_RANGES)
        # This engine's batches committed after positions others took that the follower
        # has not read yet: held back, in order, until it has (see on_commit).
        self._held: deque[CommitBatch] = deque()
        self._held_events = 0
        self._held_bytes = 0
        self.foreign_events = 0
        self.reads = 0
        self._blocking = reads_block(log)
        # Threads of their own: a follower parked on LISTEN must not hold one of the
        # engine's read threads (activations, catch-up).
        self._limiter = anyio.CapacityLimiter(1)
        # A query's look at the head must not queue behind the follower's long wait.
        self._refresh_limiter = anyio.CapacityLimiter(1)
        self.advances = 0
        self.failures = 0
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
        last_read = hot_until = -math.inf
        while True:
            if self._resting:
                await self._rest()
                last_read = hot_until = -math.inf
                continue
            feeding = self._on_events is not None
            head: int | None
            if feeding and anyio.current_time() < hot_until:
                # Others are committing: read on, paced, so that one round trip brings
                # several of their groups (fewer queries for the server and for this
                # process) at the price of up to HOT_PACE of staleness.
                pause = last_read + HOT_PACE - anyio.current_time()
                if pause > 0:
                    await anyio.sleep(pause)
                else:
                    await anyio.lowlevel.checkpoint()
                if self._drain is not None:
                    # Nothing waits for notifications while reading hot: read them here,
                    # or they pile up until the server's queue is held back (review 10).
                    self._drain()
                head = None  # the read finds its own end: the log's head as of the read
            else:
                try:
                    if feeding and self._notice is not None:
                        # The read below is the look: no read of the head first.
                        await anyio.to_thread.run_sync(
                            self._notice, FOLLOW_WAIT, limiter=self._limiter
                        )
                        head = None
                    else:
                        # Feeding aggregates, wait for anything not handed on yet; else
                        # for a head beyond the broadcast's.
                        known = self._followed if feeding else self._broadcast.head
                        head = await anyio.to_thread.run_sync(
                            self._wait, known, FOLLOW_WAIT, limiter=self._limiter
                        )
                except StorageError as e:
                    # The server is gone for now: projectors keep what they have; retry.
                    # This engine's own batches held back are let go first: they wait
                    # for a read that may not come for a while (the listening connection
                    # refused, say, while the writer and readers work), and the
                    # projectors can read them from the log.
                    self._failed(e)
                    await anyio.sleep(RETRY_PAUSE)
                    continue
            if feeding and (head is None or head > self._followed):
                seen = self.foreign_events
                last_read = anyio.current_time()
                try:
                    await self._read_foreign(head)
                except StorageError as e:
                    # Only a shortcut: the projectors read for themselves, and a stale
                    # aggregate is caught by its append's expected version.
                    self._failed(e)
                if self.foreign_events > seen:
                    hot_until = last_read + HOT_LINGER
                elif self._conflicts is not None and not self._resting:
                    self._weigh(0, 0)  # this engine's appends count towards the sample
            self._advance(self._followed if head is None else max(head, self._followed))

    def feed(
        self,
        on_events: Callable[[list[StoredEvent]], int] | None,
        *,
        conflicts: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        """Have the follower read what others commit itself and hand it to ``on_events``
        (the engine's cached aggregates; it returns how many events moved one), sharing
        each read with the projectors, who would have read it anyway. None: only move the
        head (a reader engine).

        ``conflicts`` (an engine with nothing else that reads others' events: no
        projectors, no process managers) returns (commands decided again because decided
        on a stale aggregate, appends) so far, and lets the follower rest: when fewer than
        1 in ``REST_RATIO`` of the events it reads moved a cached aggregate (the host
        routes each stream to one process), reading them costs more than the conflicts it
        saves, and the log's expected-version check is the safety net it always was (a
        stale aggregate's append fails, it is caught up and decides again). It resumes,
        from the log's head, once more than 1 in ``REST_RATIO`` of the events committed
        meanwhile were this engine's commands decided on a stale aggregate (``_rest``)."""
        self._on_events = on_events
        self._conflicts = conflicts
        if conflicts is not None:
            self._new_sample()

    async def _read_foreign(self, head: int | None) -> None:
        """Read what other processes committed after ``_followed``, hand it to the
        aggregates (without this engine's own batches, ``_own``), and share it with the
        projectors: up to ``head`` if given, else until a read comes back short (the log's
        head as of that read). Stops early at anything not gap-free (the projectors and
        the appends' version checks do not depend on this).

        One query a turn: own batches inside the range are read back with the rest and
        dropped here (a few rows cost less than the round trip that skipping them
        would take); only an own batch right at the start is skipped unread.
        """
        on_events = self._on_events
        assert on_events is not None
        own = self._own
        while head is None or self._followed < head:
            start = self._followed + 1
            while own and own[0][1] < start:
                own.popleft()  # passed already
            if own and own[0][0] <= start:
                self._followed = own.popleft()[1]  # ours: the aggregates decided it
                self._release_held()
                continue
            limit = READ_BATCH if head is None else min(head - start + 1, READ_BATCH)
            # Inline, like the writer's commit: one round trip on the loop costs less than
            # a thread's hand-offs of the GIL back to a busy loop (measured: the lag from
            # another process's commit to its apply, p50, 250 ms in a thread under load).
            events = self._log.read_all(start, limit)
            self.reads += 1
            if not events or events[0].position != start:
                return
            last = events[-1].position
            if last != start + len(events) - 1:
                return
            size = events.nbytes if type(events) is ReadBatch else _payload_bytes(events)
            self._broadcast.share(events, size)
            self._publish_read(events)
            foreign = events if not own or own[0][0] > last else self._without_own(events)
            if foreign:
                moved = on_events(foreign)
                self.foreign_events += len(foreign)
                if self._conflicts is not None:
                    self._weigh(len(foreign), moved)
            self._followed = max(self._followed, last)
            if self._resting or (head is None and len(events) < limit):
                return  # resting now, or caught up with the log as of this read

    def _weigh(self, read: int, moved: int) -> None:
        """Count a read of others' events (none: a turn that read nothing); at the end of a
        sample (others' events read and this engine's appends), rest if too few of them
        were others' events that moved a cached aggregate (``REST_RATIO``): the host
        routes by stream, or nobody else writes."""
        assert self._conflicts is not None
        self._sampled += read
        self._moved += moved
        appended = self._conflicts()[1]
        seen = self._sampled + appended - self._appended
        if seen < self._sample:
            return
        self._appended = appended
        if self._moved * REST_RATIO < seen:
            # From here this engine's batches are published as they commit (no projector
            # waits for them in order): nothing stays held back.
            self._resting = True
            self.rests += 1
            self._let_held_go()
            self._own.clear()
        self._sampled = self._moved = 0

    async def _rest(self) -> None:
        """Rest: read nothing and listen to nothing (the LISTEN connection is closed, so
        the server queues no notifications for it) until at least ``WAKE_CONFLICTS``
        commands were decided on a stale aggregate, and more than 1 in ``REST_RATIO`` of
        the events committed to the log meanwhile (others' and this engine's, the events
        a follower would have seen: the rule that made it rest, turned round); then
        resume from the log's head. What others committed meanwhile is not read: an
        aggregate it moved is caught up when its next append conflicts, as any stale one.

        The conflicts are counted over as many ``REST_CHECK``s as it takes (a node whose
        commands come slower than ``WAKE_CONFLICTS`` a ``REST_CHECK``, each a conflict,
        wakes too), and the log's head is read only once they are that many, when this
        engine's own appends do not already say they are rare (review 10)."""
        conflicts = self._conflicts
        assert conflicts is not None
        stop = getattr(self._log, "stop_listening", None)
        if stop is not None:
            await anyio.to_thread.run_sync(stop, limiter=self._limiter)
        retried, appended = conflicts()
        since = max(self._followed, self._broadcast.head)  # the log's head, as last known
        while True:
            await anyio.sleep(REST_CHECK)
            now_retried, now_appended = conflicts()
            again = now_retried - retried
            if again < WAKE_CONFLICTS:
                continue  # too few to judge by yet
            if again * REST_RATIO > now_appended - appended:
                head = await self._read_head()
                if again * REST_RATIO > head - since:
                    break
                since = head
            else:  # rare among this engine's appends alone, so among the log's events
                since = max(since, self._broadcast.head)
            retried, appended = now_retried, now_appended
        self._followed = max(self._followed, self._broadcast.head)
        self._own.clear()
        self._resting = False
        self._sample = min(self._sample * 2, REST_SAMPLE_MAX)
        self._new_sample()

    def _new_sample(self) -> None:
        """Begin a sample (``_weigh``): nothing read or moved yet, appends counted from
        here."""
        assert self._conflicts is not None
        self._sampled = self._moved = 0
        self._appended = self._conflicts()[1]

    def _failed(self, error: StorageError) -> None:
        """Count a failed wait or read, and let this engine's own batches held back go
        (they wait for a read that may not come for a while; the projectors can read
        them from the log)."""
        self.failures += 1
        self.last_error = str(error)
        self._let_held_go()

    async def _read_head(self) -> int:
        """``refresh``, retried (after ``RETRY_PAUSE``) until the log answers."""
        while True:
            try:
                return await self.refresh()
            except StorageError as e:
                self._failed(e)
                await anyio.sleep(RETRY_PAUSE)

    def _without_own(self, events: list[StoredEvent]) -> list[StoredEvent]:
        """``events`` (gap-free, in order) without those of this engine's own batches;
        the batches they cover are forgotten."""
        own = self._own
        foreign: list[StoredEvent] = []
        first = events[0].position
        at = 0
        while own and own[0][0] <= events[-1].position:
            begin, end = own[0]
            foreign.extend(events[at : max(at, begin - first)])
            at = max(at, end - first + 1)
            if end > events[-1].position:
                break  # the rest of this batch is beyond the read: keep it for the next
            own.popleft()
        foreign.extend(events[at:])
        return foreign

    def _publish_read(self, events: list[StoredEvent]) -> None:
        """Publish what a gap-free read brought beyond the broadcast's head, in order:
        others' events as read (the projectors decode them), this engine's own as held
        back (with the objects they were encoded from). A read that does not reach the
        head publishes nothing (``_advance`` then moves the head, and the projectors
        read the log)."""
        broadcast, held = self._broadcast, self._held
        first = events[0].position
        at = broadcast.head + 1 - first  # the first event beyond the head
        if at < 0:
            return
        while at < len(events):
            end = len(events)
            if held:
                end = min(end, held[0].events[0].position - first)
            if end > at:
                run = events[at:end]
                broadcast.publish(CommitBatch(run, [None] * len(run)))
            self._release_held()
            following = broadcast.head + 1 - first
            if following <= at:  # pragma: no cover - each turn publishes something
                return
            at = following

    def _release_held(self) -> None:
        """Publish the held batches that follow the broadcast's head now; forget those it
        has passed (the projectors read them from the log)."""
        broadcast, held = self._broadcast, self._held
        while held:
            batch = held[0]
            events = batch.events
            head = broadcast.head
            if events[0].position > head + 1:
                return
            held.popleft()
            self._held_events -= len(events)
            self._held_bytes -= _held_size(events)
            if events[-1].position > head:
                skip = head + 1 - events[0].position  # 0 unless an advance passed a part
                if skip:
                    batch = CommitBatch(events[skip:], batch.objects[skip:])
                broadcast.publish(batch)

    def _advance(self, head: int) -> None:
        if head > self._broadcast.head:
            self.advances += 1
            self._broadcast.advance(head)
        if self._held:
            self._release_held()

    def _let_held_go(self) -> None:
        """Stop holding this engine's own batches back: move the head past them (every
        position before them is committed too); the projectors read them from the log."""
        if self._held:
            self._advance(self._held[-1].events[-1].position)

    def written(self) -> int:
        """The last position this engine knows committed: the broadcast's head, or its own
        last batch if that is still held back."""
        head = self._broadcast.head
        return max(head, self._held[-1].events[-1].position) if self._held else head

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

    # -- this engine's own commits --------------------------------------------------------------

    def on_commit(self, batch: CommitBatch) -> None:
        """The writer's commit callback on a followed log: publish, and note the batch as
        this engine's own (the follower need not read it back). No await: the writer's
        path.

        Feeding aggregates, a batch that does not follow the broadcast's head (others
        committed in between, and the follower has not read them yet) is held back, and
        published once the follower has read and published what comes before it
        (``_publish_read``): the projectors then get the others' events from the read
        the follower makes anyway, and their own with their objects. Published at once,
        it would break the window's run of positions, and each projector would read the
        log from its checkpoint, this engine's own events included (measured: 3.4 events
        read a command at two processes, 6.2 at four, where every node reading every other's
        once is 1 and 3)."""
        events = batch.events
        if not events:
            return
        if self._resting:
            self._broadcast.publish(batch)
            return
        first, last = events[0].position, events[-1].position
        if first == self._followed + 1 and not self._own:
            self._followed = last
        else:  # others committed in between: the follower reads that gap
            self._own.append((first, last))
        broadcast = self._broadcast
        if self._on_events is None or (not self._held and first == broadcast.head + 1):
            broadcast.publish(batch)
            return
        self._held.append(batch)
        self._held_events += len(events)
        self._held_bytes += _held_size(events)
        if self._held_events > HELD_EVENTS or self._held_bytes > HELD_BYTES:
            self._advance(last)  # let them go: the projectors read the log

    def statistics(self) -> FollowerStatistics:
        """What the follower saw so far."""
        return FollowerStatistics(
            self.advances,
            self.failures,
            self.foreign_events,
            self.reads,
            self.last_error,
            self._held_events,
            self._held_bytes,
            self.rests,
            self._resting,
        )


def _held_size(events: list[StoredEvent]) -> int:
    return sum([len(e.payload) for e in events]) + EVENT_OVERHEAD * len(events)


def _payload_bytes(events: list[StoredEvent]) -> int:
    return sum([len(e.payload) for e in events])
