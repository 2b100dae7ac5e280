"""Hosting projectors: catch-up, live delivery, faults, and read-your-writes waits.

Delivery is by position, not by message, so the catch-up/live hand-off cannot lose or
repeat an event:

    writer commit ──publish(batch)──▶ Broadcast: head position + the most recent batches
                                       (a bounded window) ──wake──▶ each projector task

    projector task:  while checkpoint < head:
                         events = window.since(checkpoint + 1)      # live: no decoding
                                  or log.read_all(checkpoint + 1)   # catch-up / fell behind
                         apply them in order; checkpoint = last applied position
                         wake queries waiting for positions <= checkpoint
                         yield to the event loop
                     park until the next publish

Positions are consecutive, so "the next event I need" is always ``checkpoint + 1``: a
projector that starts late, falls behind the window, or is rebuilt reads the gap from the
log, then rejoins the window. A log read that comes back with a hole halts the projector
rather than skip it. Memory is bounded by the window, whatever a slow projector does, and
the writer never waits for a projector. The window is bounded in events and in bytes
(``WINDOW_BYTES``, 64 MiB by default: a few huge events must not pin gigabytes), and keeps
nothing while no projector is subscribed. Batches adapt their size so that each holds the
event loop for a few milliseconds at most, and a log read about ``BATCH_BYTES`` of payload;
projectors catching up together share each batch read from the log (decoded once, kept
within a quarter of the window's byte budget).

Faults: an applier that raises halts its projector at that event (queries then raise
``ProjectorFaulted``) or, with ``on_error = "park"``, the event is recorded (the most
recent ``max_parked`` are kept, each error cut to 1 KB) and skipped.

Why one module over 450 lines: the broadcast window, the shared catch-up reads and the
projector task are one hand-off protocol (positions, the window's bounds and the waiters
woken at each checkpoint); split, the invariant that no event is lost or repeated between
catch-up and live would span files. The fold itself is ``_fold.py``.
That holds for any exception of the applier's, ``BaseException`` subclasses included; only
cancellation, ``KeyboardInterrupt`` and ``SystemExit`` propagate (``_reply.must_propagate``).

Queries waiting for a position sit in a heap; a cancelled one is only marked dead (O(1))
and skipped when popped, and the heap is compacted once the dead outnumber the living.

Saved caches: a projector with ``snapshot_every`` starts from its last saved cache (if its
format matches and it loads) at the position saved with it, and catches up from there; it
saves the cache, with its checkpoint, through the writer's next group commit every
``snapshot_every`` positions and when the engine closes. A halted projector saves nothing.

About 630 lines, one file on purpose: the broadcast, the fold loop and the waiters
form one hand-off protocol whose invariant (every batch starts at ``checkpoint + 1`` and is
consecutive) is easiest to check when it is all in view.
"""

from __future__ import annotations

import copy
import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol

import anyio
import anyio.lowlevel
import anyio.to_thread
import msgspec

from ._codec import EventRegistry, snapshot_bytes
from ._errors import DefinitionError, EngineClosed, EngineError, ProjectorFaulted, StorageError
from ._fold import (
    DEFAULT_MAX_PARKED,
    Parked,
    appliers_by_name,
    check_max_parked,
    fault_for,
    fold,
)
from ._log import EventLog, ReadBatch
from ._records import ProjectorCache, Recorded, StoredEvent
from ._reply import Reply, must_propagate, reply_factory
from ._telemetry import BatchObserver
from ._view_store import ViewStore, fold_and_commit, is_view_store, log_mark
from ._writer import CommitBatch

__all__ = [
    "WINDOW_BYTES",
    "Broadcast",
    "Parked",
    "ProjectorHost",
    "ProjectorStatistics",
    "ProjectorType",
    "WindowStatistics",
    "detach",
]

# Events per batch (a log read or a window slice). The size adapts so that one batch holds
# the event loop for about SLICE seconds: a fast projector reads big batches (a log read
# transaction costs ~10 us, amortised), a slow one small ones, so commands and queries
# never wait long behind a catch-up. It starts small and doubles while batches are quick.
SLICE = 0.004
MIN_BATCH = 16
FIRST_BATCH = 256
MAX_BATCH = 4096
SHARED_READS = 4  # log reads kept for other projectors catching up (<= 4 * MAX_BATCH events)

# Memory is bounded in bytes as well as in events: a few huge events must not pin gigabytes.
WINDOW_EVENTS = 65536
WINDOW_BYTES = 64 * 1024 * 1024
"""The broadcast window's default byte budget (``Broadcast(window_bytes=...)``). A window
slice saves a live projector its log read and decode; 64 MiB holds a few seconds of W1
(~200-byte events) many times over, and projectors that fall out of it read the log."""
EVENT_OVERHEAD = 256
"""Bytes counted per event beside its payload: ``sys.getsizeof`` of a W1 event's
``StoredEvent`` (88), its ``Raw`` (48), the emitted object's shell (40) and its stream id
(57), rounded up for the numbers beside them."""
BATCH_BYTES = 4 * 1024 * 1024
"""Catch-up reads shrink towards this many payload bytes (big events, smaller batches)."""

State = Literal["catching_up", "live", "halted"]


class ProjectorType(Protocol):
    """What the engine needs of a projector class (``actors.Projector`` provides it).

    The protocol describes the class object itself (``Balances``, not an instance), so its
    members are read-only properties rather than ClassVars: type checkers never match a
    ClassVar protocol member against a class object, and a settable member would have to
    match exactly (``on_error = "park"`` is narrower than the Literal below).
    """

    @property
    def event_appliers(self) -> Mapping[type, Callable[[Any, Any, Recorded], None]]: ...

    @property
    def query_functions(self) -> frozenset[Callable[..., Any]]: ...

    @property
    def on_error(self) -> Literal["halt", "park"]: ...

    @property
    def name(self) -> str: ...

    @property
    def snapshot_every(self) -> int | None:
        """Save the cache every this many log positions; None: never."""

    @property
    def snapshot_format(self) -> int:
        """The saved cache's format; a saved cache of another is ignored."""

    def __call__(self) -> Any: ...

    def from_snapshot(self, data: bytes) -> Any:
        """A projector rebuilt from its instance's ``snapshot_state()`` bytes."""


class ProjectorStatistics(msgspec.Struct, frozen=True):
    """Where a projector stands.

    ``state`` is ``"catching_up"`` (reading the log), ``"live"`` (at the head or applying
    what was just broadcast), or ``"halted"`` (an applier raised; see ``fault``).
    """

    name: str
    state: State
    checkpoint: int
    head: int
    lag: int
    applied: int
    parked: int
    """Events parked since the start (or the last rebuild), all of them; ``Engine.parked``
    lists the most recent ``max_parked``."""
    fault: str | None
    restored_from: int = 0
    """The position of the saved cache it started from (0: it replayed the whole log)."""
    snapshot_failures: int = 0
    """Saves skipped because ``snapshot_state`` raised (the log stays the truth)."""


class WindowStatistics(msgspec.Struct, frozen=True):
    """What the broadcast holds for projectors, by its own accounting.

    ``bytes`` counts each event as twice its stored payload (the payload, and the object read
    back from it beside it) plus ``EVENT_OVERHEAD``; shared reads hold no objects.
    """

    events: int
    bytes: int
    shared_reads: int
    shared_bytes: int


def _payload_bytes(events: list[StoredEvent]) -> int:
    return sum([len(e.payload) for e in events])


class Broadcast:
    """What every projector shares: the head position, a bounded window of the most
    recently committed events, and the last batches any of them read from the log.

    The window holds at most ``window`` events (the newest batch is kept whole even if it
    alone is larger) and at most ``window_bytes`` bytes (strictly: a batch bigger than
    that is not kept at all). With no projector subscribed it keeps nothing. Projectors
    that need what is not (or no longer) in the window read the log: memory never depends
    on how far behind a projector is. Shared reads get a quarter of ``window_bytes``.
    """

    def __init__(
        self, head: int, *, window: int = WINDOW_EVENTS, window_bytes: int = WINDOW_BYTES
    ) -> None:
        if window < 0 or window_bytes < 0:
            raise DefinitionError("the projector window's bounds must be >= 0")
        self.head = head
        self._window = window
        self._window_bytes = window_bytes
        self._batches: deque[CommitBatch] = deque()
        self._sizes: deque[int] = deque()  # bytes of each batch in _batches
        self._held = 0
        self._held_bytes = 0
        self._listeners: list[ProjectorHost] = []
        # Projectors catching up together (every one of them, when the engine starts) ask
        # for the same positions in turn: the first reads and decodes, the others reuse its
        # batch. A few are kept, as their batch sizes differ and one may trail another.
        # Positions below the head never change, so these can never be stale.
        self.recent_reads: deque[list[StoredEvent]] = deque()
        self._read_sizes: deque[int] = deque()
        self._read_bytes = 0
        self._reads_budget = window_bytes // 4

    def subscribe(self, host: ProjectorHost) -> None:
        """Wake ``host`` after every publish."""
        self._listeners.append(host)

    def unsubscribe(self, host: ProjectorHost) -> None:
        """Stop waking ``host`` (a process manager's router whose term ended)."""
        if host in self._listeners:
            self._listeners.remove(host)

    def publish(self, batch: CommitBatch) -> None:
        """Record a committed batch (called by the writer, in log order) and wake readers."""
        events = batch.events
        if not events:
            return
        if events[0].position != self.head + 1:
            # Something wrote to the log behind the writer's back: the window would have a
            # hole. Start it afresh; readers fill the gap from the log.
            self._drop()
        self.head = events[-1].position
        listeners = self._listeners
        if not listeners:
            return  # nobody would ever read it
        # The per-batch part of the writer's hot path: one list comprehension over the
        # payloads (~30 ns an event), and the trimming below only when over a bound.
        count = len(events)
        size = 2 * sum([len(e.payload) for e in events]) + EVENT_OVERHEAD * count
        batches, sizes = self._batches, self._sizes
        batches.append(batch)
        sizes.append(size)
        held = self._held = self._held + count
        held_bytes = self._held_bytes = self._held_bytes + size
        if held > self._window or held_bytes > self._window_bytes:
            self._trim()
        for host in listeners:
            host.wake()

    def advance(self, head: int) -> None:
        """Other processes committed up to ``head`` (a followed log: ``_follow.py``): move
        the head there and wake readers, who read the new positions from the log. The
        window is dropped, so that it stays consecutive (it cannot hold what this process
        did not commit)."""
        if head <= self.head:
            return
        self._drop()
        self.head = head
        for host in self._listeners:
            host.wake()

    def _trim(self) -> None:
        """Drop the oldest batches until within both bounds (the newest is kept past the
        event bound, never past the byte bound)."""
        batches, sizes = self._batches, self._sizes
        while batches and (
            self._held_bytes > self._window_bytes
            or (self._held > self._window and len(batches) > 1)
        ):
            self._held -= len(batches.popleft().events)
            self._held_bytes -= sizes.popleft()

    def _drop(self) -> None:
        self._batches.clear()
        self._sizes.clear()
        self._held = self._held_bytes = 0

    def share(self, events: list[StoredEvent], payload_bytes: int) -> None:
        """Keep a gap-free log read (``payload_bytes`` of payloads) for other projectors
        catching up, within budget."""
        size = payload_bytes + EVENT_OVERHEAD * len(events)
        if size > self._reads_budget:
            return
        reads, sizes = self.recent_reads, self._read_sizes
        reads.append(events)
        sizes.append(size)
        self._read_bytes += size
        while len(reads) > SHARED_READS or self._read_bytes > self._reads_budget:
            reads.popleft()
            self._read_bytes -= sizes.popleft()

    def statistics(self) -> WindowStatistics:
        """What the window and the shared reads hold right now."""
        return WindowStatistics(
            self._held, self._held_bytes, len(self.recent_reads), self._read_bytes
        )

    def since(self, position: int, limit: int) -> CommitBatch | None:
        """Up to ``limit`` events from ``position`` on, or None if it left the window."""
        batches = self._batches
        if not batches or batches[0].events[0].position > position:
            return None
        events: list[StoredEvent] = []
        objects: list[Any] = []
        # Readers are usually one batch behind: search from the newest end.
        for i in range(len(batches) - 1, -1, -1):
            if batches[i].events[0].position <= position:
                for batch in itertools.islice(batches, i, None):
                    start = max(position - batch.events[0].position, 0)
                    end = start + limit - len(events)
                    events.extend(batch.events[start:end])
                    objects.extend(batch.objects[start:end])
                    if len(events) >= limit:
                        break
                # Batches in the window are consecutive by construction (publish); check
                # the first anyway, since a wrong start would skip events silently.
                if events and events[0].position == position:
                    return CommitBatch(events, objects)
                return None
        return None  # pragma: no cover - excluded by the first check


class ProjectorHost:
    """One projector actor: its cache, checkpoint, fault state and waiting queries."""

    def __init__(
        self,
        kind: ProjectorType,
        *,
        log: EventLog,
        broadcast: Broadcast,
        registry: EventRegistry,
        save: Callable[[str, ProjectorCache], None] | None = None,
        read_limiter: anyio.CapacityLimiter | None = None,
    ) -> None:
        self.kind = kind
        self.name = kind.name
        self._log = log
        # Set for a log whose reads block: catch-up reads run in worker threads (its bound).
        self._limiter = read_limiter
        self._rebuilds = 0  # a rebuild while a read is in a thread voids that read
        self._broadcast = broadcast
        # Stored name -> (applier, payload decoder), for every name a type is read under
        # (older versions and former names upcast). Names missing here are never decoded.
        self._appliers = appliers_by_name(registry, kind.event_appliers)
        self.instance: Any = kind()
        self.checkpoint = 0
        self.fault: ProjectorFaulted | None = None
        # The most recent parked events only (the class's ``max_parked``), and how many
        # were parked in all: a projector that parks every event must stay bounded.
        self._max_parked = check_max_parked(kind, getattr(kind, "max_parked", DEFAULT_MAX_PARKED))
        self.parked: deque[Parked] = deque(maxlen=self._max_parked)
        self.parked_total = 0
        self.applied = 0
        self.catching_up = True
        self._batch = FIRST_BATCH
        # A heap of [position, seq, reply]; a cancelled waiter only sets its reply to None
        # (O(1); removing it from the heap was O(waiters)) and is skipped when popped.
        # ``_dead`` counts those; once they outnumber the live ones the heap is compacted,
        # so its size stays within twice the live waiters.
        self._waiters: list[list[Any]] = []
        self._dead = 0
        self._seq = itertools.count()
        self._new_reply = reply_factory()
        self._wakeup: Reply | None = None
        self._save = save
        self._closed: EngineError | None = None  # set by fail_waiters when the engine closes
        self._snapshot_every = getattr(kind, "snapshot_every", None) if save else None
        self._saved_at = 0  # the checkpoint of the last cache saved or loaded
        self.restored_from = 0
        self.snapshot_failures = 0
        # Set by an instrumentation (engine/_telemetry.py): told of each batch applied.
        self.observer: BatchObserver | None = None
        # A view kept in a store of its own (``_view_store.py``): batches are folded and
        # committed with their checkpoint in a worker thread; it starts from the store's.
        self._store: ViewStore | None = None
        self._reset = False  # a rebuild is due: the next committed batch empties the store
        if is_view_store(kind):
            self._snapshot_every = None
            self._store = self.instance
            self.checkpoint = self.restored_from = self.instance.open_view(
                log.head_position(), lambda position: log_mark(log, position)
            )
            self.catching_up = self.checkpoint < broadcast.head
        elif self._snapshot_every is not None:
            self._restore()
        broadcast.subscribe(self)

    # -- saved caches ----------------------------------------------------------------------

    def _restore(self) -> None:
        """Start from the saved cache if there is a usable one; else from position 0."""
        load = getattr(self._log, "load_projector_cache", None)
        if load is None:  # a backend written before caches could be saved
            raise DefinitionError(
                f"projector {self.name} saves its cache (snapshot_every), but the log "
                f"{type(self._log).__name__} cannot store it (no load_projector_cache)"
            )
        saved: ProjectorCache | None = load(self.name)
        if saved is None or saved.format != self.kind.snapshot_format:
            return
        if not 0 < saved.position <= self._log.head_position():
            return  # saved against another log: only the log itself can be trusted
        try:
            instance = self.kind.from_snapshot(saved.state)
        except BaseException as e:
            if must_propagate(e):
                raise
            return  # an unreadable cache is only a lost shortcut: replay the log
        self.instance = instance
        self.checkpoint = self._saved_at = self.restored_from = saved.position

    def queue_save(self) -> None:
        """Queue the cache, with its checkpoint, for the writer's next group commit, if it
        moved since the last save and the projector is not halted (called on close, and
        when due). Durable once that commit is; a failed save is retried when next due."""
        if self._save is None or self._snapshot_every is None:
            return
        if self.fault is not None or self.checkpoint <= self._saved_at:
            return
        self._saved_at = self.checkpoint  # even if it fails: retried ``every`` later
        data = snapshot_bytes(self.instance)
        if data is None:
            self.snapshot_failures += 1
            return
        self._save(self.name, ProjectorCache(self.checkpoint, self.kind.snapshot_format, data))

    # -- the actor loop --------------------------------------------------------------------

    def wake(self) -> None:
        """Called by the broadcast: there may be new events."""
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            wakeup.set_result(None)

    async def run(self) -> None:
        """Apply events forever: catch up from the log, then follow the broadcast.

        Each turn applies one batch starting exactly at ``checkpoint + 1`` (from the window
        if it still holds that position, else from the log), then yields. The test and the
        park below happen with no await in between, so a publish cannot slip through.
        """
        while True:
            if self.fault is not None or self.checkpoint >= self._broadcast.head:
                if self.fault is None:
                    self.catching_up = False
                self._wakeup = self._new_reply()
                await self._wakeup.wait()
                continue
            start = self.checkpoint + 1
            began = time.perf_counter()
            live = self._broadcast.since(start, self._batch)
            size = 0  # payload bytes read from the log (a window slice is in memory already)
            if live is not None:
                if self._store is None:
                    self._fold(live.events, live.objects)
                else:
                    await self._fold_into_store(live.events, live.objects)
                    began = time.perf_counter()  # the loop was free during the fold
            else:
                self.catching_up = True
                try:
                    if self._limiter is None:
                        events, size = _read_consecutive(
                            self._broadcast, self._log, start, self._batch
                        )
                    else:
                        rebuilds = self._rebuilds
                        events, size = await _read_consecutive_off_loop(
                            self._broadcast, self._log, start, self._batch, self._limiter
                        )
                        if rebuilds != self._rebuilds:
                            continue  # rebuilt meanwhile: the read is for the old checkpoint
                        began = time.perf_counter()  # the loop was free during the read
                    if self._store is None:
                        self._fold(events, None)
                    else:
                        await self._fold_into_store(events, None)
                        began = time.perf_counter()  # the loop was free during the fold
                except StorageError as e:
                    self._halt(start, "(log)", e)
            observer = self.observer  # per batch: free when None
            if observer is not None:
                observer(self, start, began, live is None)
            self._release_waiters()
            every = self._snapshot_every
            if every is not None and self.checkpoint - self._saved_at >= every:
                self.queue_save()
            self._batch = _next_batch(self._batch, time.perf_counter() - began, size)
            if self.checkpoint < self._broadcast.head:
                # Between batches, let commands and queries run: catch-up never hogs the
                # loop. (Caught up, the park above yields anyway: no second task switch.)
                await anyio.lowlevel.checkpoint()

    def _fold(self, events: list[StoredEvent], objects: list[Any] | None) -> None:
        """Fold a batch that starts at ``checkpoint + 1`` (see ``_fold.fold``)."""
        applied, self.checkpoint, parked, failure = fold(
            self._appliers, self.instance, events, objects, self.kind.on_error
        )
        self.applied += applied
        if parked:
            self.parked_total += len(parked)
            self.parked.extend(parked)
        if failure is not None:
            stored, error = failure
            self._halt(stored.position, stored.type, error)

    async def _fold_into_store(self, events: list[StoredEvent], objects: list[Any] | None) -> None:
        """Fold a batch that starts at ``checkpoint + 1`` into the view's store and commit
        it with its checkpoint, in a worker thread (not abandoned if cancelled: the batch
        commits or not, whole); the checkpoint moves only once the commit is done, so a
        query's ``after=`` sees the rows. A store failure halts the projector."""
        store = self._store
        assert store is not None
        rebuilds, reset = self._rebuilds, self._reset
        try:
            outcome = await anyio.to_thread.run_sync(
                fold_and_commit, self._appliers, store, events, objects, self.kind.on_error, reset
            )
        except StorageError as e:
            if rebuilds == self._rebuilds:
                self._halt(events[0].position, "(view store)", e)
            return
        if rebuilds != self._rebuilds:
            return  # rebuilt meanwhile: the next batch starts over (and empties the store)
        if reset:
            self._reset = False
        self.applied += outcome.applied
        self.checkpoint = outcome.checkpoint
        if outcome.parked:
            self.parked_total += len(outcome.parked)
            self.parked.extend(outcome.parked)
        if outcome.failure is not None:
            stored, error = outcome.failure
            self._halt(stored.position, stored.type, error)

    def _halt(self, position: int, event_type: str, error: BaseException) -> None:
        self.fault = fault_for(self.name, position, event_type, error)
        # Even waiters for positions already applied fail: the failing applier may have
        # left part of its work in the cache, which no query may see.
        for reply in self._take_waiters():
            reply.set_error(self.fault_error())

    def fault_error(self) -> ProjectorFaulted:
        """A fresh copy of the fault to raise; the projector must be halted.

        Raise a copy, never ``self.fault`` itself: every raise of one exception object
        prepends frames to its traceback, so a halted projector queried in a loop would
        grow it without bound (and concurrent waiters would share one traceback).
        """
        fault = self.fault
        if fault is None:
            raise RuntimeError(f"projector {self.name} is not halted")
        error = ProjectorFaulted(fault.projector, fault.position, fault.event_type, fault.error)
        error.__cause__ = fault.__cause__
        return error

    # -- queries ---------------------------------------------------------------------------

    async def wait_position(self, position: int) -> None:
        """Wait until the cache includes ``position``; raises if the projector halts.

        Event-driven: the projector wakes the waiter after applying that position.
        Cancelling the wait is safe.

        Raises:
            ProjectorFaulted: the projector is halted, or halts before ``position``.
        """
        if self.fault is not None:
            raise self.fault_error()
        if self.checkpoint >= position:
            return
        if self._closed is not None:
            # Its task is gone: nothing would ever wake this wait.
            raise EngineClosed(str(self._closed))
        reply = self._new_reply()
        entry = [position, next(self._seq), reply]
        heapq.heappush(self._waiters, entry)
        try:
            await reply.wait()
        except BaseException:
            # Cancelled (or failed) while still queued: mark the entry dead, and compact
            # once dead ones are the majority, so cancelled waits never pile up.
            if entry[2] is not None:
                entry[2] = None
                self._dead += 1
                waiters = self._waiters
                if 2 * self._dead > len(waiters):
                    waiters[:] = [e for e in waiters if e[2] is not None]
                    heapq.heapify(waiters)
                    self._dead = 0
            raise

    def _release_waiters(self) -> None:
        waiters = self._waiters
        checkpoint = self.checkpoint
        if checkpoint >= self._broadcast.head:
            self.catching_up = False
        while waiters and waiters[0][0] <= checkpoint:
            entry = heapq.heappop(waiters)
            reply = entry[2]
            if reply is None:
                self._dead -= 1  # cancelled: nothing to wake
                continue
            entry[2] = None  # no longer queued (its waiter may still be cancelled)
            reply.set_result(None)

    # -- control ---------------------------------------------------------------------------

    def rebuild(self) -> None:
        """Start over from position 0 with an empty cache (and no fault, nothing parked).

        A view kept in a store is emptied by the first batch it commits after this, in the
        same transaction (until then its queries read the old view)."""
        if self._store is None:
            self.instance = self.kind()
        else:
            self._reset = True
        self.checkpoint = 0
        self._rebuilds += 1
        # Below any checkpoint, so the next save (at the latest, at close) replaces the
        # cache saved before: a rebuild must not come back from the log after a restart.
        self._saved_at = -1
        self.restored_from = 0
        self.applied = 0
        self.parked = deque(maxlen=self._max_parked)
        self.parked_total = 0
        self.fault = None
        self.catching_up = True
        self.wake()

    def resume(self) -> None:
        """Clear a halt and retry the event that failed (after the code was fixed).

        The failed applier must not have changed the cache before it raised; if it may
        have, rebuild instead.
        """
        self.fault = None
        self.wake()

    def statistics(self) -> ProjectorStatistics:
        """Where this projector stands (checkpoint, lag, state, parked, fault)."""
        head = self._broadcast.head
        state: State = (
            "halted" if self.fault is not None else "catching_up" if self.catching_up else "live"
        )
        return ProjectorStatistics(
            name=self.name,
            state=state,
            checkpoint=self.checkpoint,
            head=head,
            lag=head - self.checkpoint,
            applied=self.applied,
            parked=self.parked_total,
            fault=None if self.fault is None else str(self.fault),
            restored_from=self.restored_from,
            snapshot_failures=self.snapshot_failures,
        )

    def close(self) -> None:
        """Release what the projector holds outside the process's memory (a view's store);
        called once its task has ended."""
        if self._store is not None:
            self._store.close_view()

    def fail_waiters(self, error: EngineError) -> None:
        """Fail every waiting query, and every later one (the engine is closing)."""
        self._closed = error
        for reply in self._take_waiters():
            reply.set_error(error)

    def _take_waiters(self) -> list[Reply]:
        """Empty the waiter heap; the replies of the live waiters, to complete."""
        waiting, self._waiters, self._dead = self._waiters, [], 0
        replies = []
        for entry in waiting:
            if entry[2] is not None:
                replies.append(entry[2])
                entry[2] = None
        return replies


def _read_consecutive(
    broadcast: Broadcast, log: EventLog, start: int, limit: int
) -> tuple[list[StoredEvent], int]:
    """Up to ``limit`` events from ``start`` on, checked to be gap-free, and the payload
    bytes this call read from the log (0 when served from a shared read, which is in memory
    already). The size is summed once here: on W4 each pass over the payloads costs ~25 ns
    an event, ~3% of the rebuild.

    Served from a batch another projector just read when one holds ``start``.

    Raises:
        StorageError: a position is missing from the log (below its head).
    """
    for read in reversed(broadcast.recent_reads):
        first = read[0].position
        if first <= start <= read[-1].position:
            return read[start - first : start - first + limit], 0
    return _consecutive(broadcast, log.read_all(start, limit), start)


async def _read_consecutive_off_loop(
    broadcast: Broadcast, log: EventLog, start: int, limit: int, limiter: anyio.CapacityLimiter
) -> tuple[list[StoredEvent], int]:
    """``_read_consecutive`` for a log whose reads block: the read runs in a worker thread
    (not abandoned if the task is cancelled: it ends with its one query), so the event loop
    serves commands and queries meanwhile."""
    for read in reversed(broadcast.recent_reads):
        first = read[0].position
        if first <= start <= read[-1].position:
            return read[start - first : start - first + limit], 0
    events = await anyio.to_thread.run_sync(log.read_all, start, limit, limiter=limiter)
    return _consecutive(broadcast, events, start)


def _consecutive(
    broadcast: Broadcast, events: list[StoredEvent], start: int
) -> tuple[list[StoredEvent], int]:
    """``events`` read from ``start`` on, checked gap-free and shared (see above)."""
    if events and events[-1].position == start + len(events) - 1:
        # The backend's own count when it gives one (a C pass over its records), else a
        # pass over the payloads (~1,300 instructions an event on a W4 rebuild).
        size = events.nbytes if type(events) is ReadBatch else _payload_bytes(events)
        broadcast.share(events, size)
        return events, size  # the first must be ``start`` too: positions only grow
    missing = start
    for event in events:
        if event.position != missing:
            break
        missing += 1
    raise StorageError(f"position {missing} is missing from the log (its head is beyond it)")


def _next_batch(batch: int, seconds: float, size: int = 0) -> int:
    """Adapt the batch size so that one batch holds the event loop about ``SLICE``, and a
    log read about ``BATCH_BYTES`` of payload at most (``size``: the last read's)."""
    if size > BATCH_BYTES:
        return max(1, batch * BATCH_BYTES // size)
    if seconds > SLICE and batch > MIN_BATCH:
        return batch // 2
    if seconds < SLICE / 4 and batch < MAX_BATCH and 2 * size <= BATCH_BYTES:
        return batch * 2
    return batch


_IMMUTABLE = frozenset({int, float, str, bytes, bool, type(None), complex, range})


def detach(value: Any) -> Any:
    """Return ``value`` if it cannot alias mutable state, else a deep copy of it."""
    cls = type(value)
    if cls in _IMMUTABLE:
        return value
    if (cls is tuple or cls is frozenset) and all(type(item) in _IMMUTABLE for item in value):
        return value
    return copy.deepcopy(value)
