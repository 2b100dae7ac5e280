"""Group commit: every append waiting right now, from every actor, in ONE write transaction.

::

    actor/caller ──submit(append, done)──┐        (sync: no await, no task wake-up
    actor/caller ──submit(append, done)──┤         unless the writer was idle)
    caller ──await append(...)───────────┤
                                         ▼
                               pending appends (list)
                                         │  writer task wakes once per batch
                                         ▼
               log.append_batch(all pending, snapshots, projector caches)
                 one transaction, one fsync (sync=True), inline on the event loop
                                         │
                    ┌────────────────────┴───────────────────┐
                    ▼                                        ▼
          on_commit(batch) → broadcast           done(outcome) for each append, in
          to projectors (log order)              order: its positions, or its own error

Why inline: py-lmdb releases the GIL during commit, so a worker thread looks attractive,
but on this 2-core machine getting the GIL back waits out the interpreter's switch
interval, and the hand-off costs two more wake-ups. Measured with 64 tasks, sync=True:
inline ~73k appends/s vs ~63k in a thread (inline 1.05-1.4x faster over several runs; both
~20x one transaction per append; the figures are in docs/design.md, and the threaded mode
is gone since). While the loop
is blocked in a commit, new appends simply queue up and form the next batch, so batching
still happens; and with one append in flight per caller there is nothing a thread could
overlap with the fsync anyway.

Durability: an append's ``done`` is called only after the transaction that holds it has
committed (fsync'd with ``sync=True``). A failed transaction fails every append in it with
the same ``StorageError`` and writes nothing; the writer itself carries on. Every field of
an append (stream id, metadata, event names and payloads, ...) is checked at ``submit``,
so one caller's bad append is refused alone, before it is queued: it can neither fail the
group it would have joined nor be written and then not read back. (Events that come with
their read-back objects were checked by ``EventRegistry.encode_read_back`` already.)
"""

from __future__ import annotations

import copy
import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import anyio
import anyio.lowlevel
import msgspec

from ._errors import (
    DefinitionError,
    EngineClosed,
    EngineError,
    InvalidArgument,
    StorageError,
    describe,
)
from ._log import (
    AppendOutcome,
    EventLog,
    check_append,
    check_events,
    check_name,
    check_projector_cache,
    check_snapshot,
    check_stream_id,
)
from ._records import Append, AppendResult, ProjectorCache, Snapshot, StoredEvent
from ._reply import Reply, reply_factory
from ._telemetry import CommitObserver

__all__ = ["CommitBatch", "Writer", "WriterStatistics", "completing"]


class CommitBatch:
    """What the writer broadcasts after a commit: the stored events in log order, and beside
    each the object it was encoded from (None where a reader must decode the payload).

    Two parallel lists rather than a list of pairs: the command path then builds no tuple
    per event, and readers slice both alike. Iterating yields ``(event, object)`` pairs.
    """

    __slots__ = ("events", "objects")

    def __init__(self, events: list[StoredEvent], objects: list[Any]) -> None:
        self.events = events
        self.objects = objects

    def __len__(self) -> int:
        return len(self.events)

    def __iter__(self) -> Iterator[tuple[StoredEvent, Any]]:
        return zip(self.events, self.objects, strict=True)


Done = Callable[[AppendOutcome], None]


def completing(reply: Reply) -> Done:
    """A ``done`` that completes ``reply`` with an append's outcome: its result, or the
    ``EngineError`` it failed with."""

    def done(outcome: AppendOutcome) -> None:
        if isinstance(outcome, EngineError):
            reply.set_error(outcome)
        else:
            reply.set_result(outcome)

    return done


class WriterStatistics(msgspec.Struct, frozen=True):
    """A snapshot of the writer's counters."""

    commits: int
    appends: int
    events: int
    failed_appends: int
    largest_batch: int
    mean_batch: float
    pending: int


class Writer:
    """The one owner of every write transaction. Run :meth:`run` in a task group.

    Args:
        log: the backend to write to.
        on_commit: called (synchronously, in the writer task) with each committed batch,
            before the appenders are told; must not raise.
        max_pending: how many appends :meth:`append` lets wait before it waits for room.

    Raises:
        DefinitionError: ``max_pending`` is not an int of at least 1.
    """

    def __init__(
        self,
        log: EventLog,
        *,
        on_commit: Callable[[CommitBatch], None] | None = None,
        max_pending: int = 4096,
    ) -> None:
        if type(max_pending) is not int or max_pending < 1:
            raise DefinitionError(
                f"max_pending must be an int of at least 1, not {describe(max_pending)}"
            )
        self._log = log
        self._on_commit = on_commit
        self._max_pending = max_pending
        self._appends: list[Append] = []
        self._dones: list[Done] = []
        self._objects: list[Sequence[Any] | None] = []
        self._unvouched = 0  # queued appends without objects (at least: never fewer)
        self._snapshots: list[tuple[str, Snapshot]] = []
        self._caches: list[tuple[str, ProjectorCache]] = []
        self._wakeup: Reply | None = None
        # Set (and replaced) after each commit: every append() waiting for room rechecks.
        # Waking them all is what keeps a cancelled waiter from stranding the others.
        self._room: anyio.Event | None = None
        self._new_reply = reply_factory()
        self._closing = False
        self._stopped = anyio.Event()
        self._commits = 0
        self._appended = 0
        self._events = 0
        self._failed = 0
        self._largest = 0
        # Set by an instrumentation (engine/_telemetry.py): told of each group commit.
        self.observer: CommitObserver | None = None

    # -- submitting ------------------------------------------------------------------------

    def submit(
        self,
        append: Append,
        done: Done,
        objects: Sequence[Any] | None = None,
        *,
        checked: bool = False,
    ) -> None:
        """Queue an append for the next group commit; never waits.

        ``done`` is called with the append's outcome after its transaction ends. ``objects``
        are the events as objects, handed to projectors so they need not decode them: each
        must be what its payload decodes to (``EventRegistry.encode_read_back`` gives both,
        the aggregates' path), so they vouch for the payloads. Without them each event is
        checked here.

        Every other field is checked too (a malformed append is refused alone, before it
        could fail the group commit it would have joined or be written unreadable), unless
        ``checked``: the caller has validated every field with the same rules already. The
        aggregates have (stream ids at activation, metadata at ``send``, the aggregate name
        at open, versions they count themselves): checking again cost ~0.1 µs a command.

        Raises:
            EngineClosed: the writer is closing.
            InvalidArgument: a field of the append is malformed (see ``check_append`` and
                ``check_events``); nothing was queued.
        """
        if self._closing:
            raise EngineClosed("the writer is closed")
        if not checked:
            append = check_append(append)
        if objects is None:
            self._unvouched += 1  # counted on the slow path only; see _objects_for
            check_events(append.events)
        elif len(objects) != len(append.events):
            # Projectors pair objects with events by position across the whole batch: one
            # short list would hand every later append's events the wrong objects.
            raise InvalidArgument(
                f"{len(objects)} objects for {len(append.events)} events; one per event"
            )
        self._appends.append(append)
        self._dones.append(done)
        self._objects.append(objects)
        # _wake(), inline: every command submits, and the writer is usually awake already
        # (a call that finds nothing to do was ~500 of W1's instructions a command).
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            wakeup.set_result(None)

    def save_snapshot(self, stream_id: str, snapshot: Snapshot) -> None:
        """Write a snapshot in the next group commit (best effort: a lost one is retaken).

        Dropped if the writer is closing, or if the snapshot is malformed (a format beyond
        64 bits, say), which would fail the whole group commit it rode in: that costs only
        the shortcut, the events stay the truth.

        Raises:
            InvalidArgument: ``stream_id`` is invalid.
        """
        stream_id = check_stream_id(stream_id)
        if not self._closing and _well_formed(snapshot, check_snapshot):
            self._snapshots.append((stream_id, snapshot))
            self._wake()

    def save_projector_cache(self, name: str, cache: ProjectorCache) -> None:
        """Write a projector's cache in the next group commit; best effort, and dropped
        when malformed, like a snapshot.

        Raises:
            InvalidArgument: ``name`` is invalid.
        """
        name = check_name(name)
        if not self._closing and _well_formed(cache, check_projector_cache):
            self._caches.append((name, cache))
            self._wake()

    async def append(self, append: Append) -> AppendResult:
        """Append through the group commit and return the result once it is durable.

        Waits for room if ``max_pending`` appends are already queued. If cancelled after
        the append was queued, it may still commit.

        Raises:
            ConcurrencyError: the stream's version did not match ``expected_version``.
            StorageError: the transaction failed; nothing of it was written.
            EngineClosed: the writer is closing.
            InvalidArgument: a field of the append is malformed; nothing was queued.
        """
        while len(self._appends) >= self._max_pending and not self._closing:
            if self._room is None:
                self._room = anyio.Event()
            await self._room.wait()
        reply = self._new_reply()
        self.submit(append, completing(reply))
        result: AppendResult = await reply.wait()
        return result

    def _wake(self) -> None:
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            wakeup.set_result(None)

    # -- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        """Commit batches until :meth:`close`; then commit what is left and return.

        Cancelling it abandons queued appends (their callers are failed with EngineClosed);
        a commit already running completes and its callers are told.
        """
        try:
            while True:
                if not (self._appends or self._snapshots or self._caches):
                    if self._closing:
                        return
                    self._wakeup = self._new_reply()
                    await self._wakeup.wait()
                    continue
                # Let every task that is runnable right now queue its append first: one
                # scheduler pass costs less than the fsync it saves.
                await anyio.lowlevel.checkpoint()
                # Synchronous, so no cancellation can land between the commit and telling
                # its callers.
                self._commit_pending()
        finally:
            self._closing = True
            self._fail_pending(EngineClosed("the engine closed before this append was written"))
            self._stopped.set()

    def _commit_pending(self) -> None:
        appends, self._appends = self._appends, []
        dones, self._dones = self._dones, []
        objects, self._objects = self._objects, []
        unvouched, self._unvouched = self._unvouched, 0
        snapshots, self._snapshots = self._snapshots, []
        caches, self._caches = self._caches, []
        # Passed only when there are some, so a backend written without projector caches
        # keeps working for every engine whose projectors do not save their cache.
        extra: dict[str, Any] = {"projector_caches": caches} if caches else {}
        outcomes: list[AppendOutcome]
        observer = self.observer  # per batch, not per command: free when None
        if observer is not None:
            started, began = time.time_ns(), time.perf_counter_ns()
        try:
            outcomes, stored = self._log.append_batch(appends, snapshots=snapshots, **extra)
        except EngineError as e:
            # The backend refused the group as a whole (e.g. it was closed): nothing was
            # written; each append learns why and the writer goes on.
            outcomes, stored = [e] * len(appends), []
        except Exception as e:
            failed = StorageError(f"the log failed: {e!r}")
            failed.__cause__ = e
            outcomes, stored = [failed] * len(appends), []
        except BaseException:
            for done in dones:
                done(EngineClosed("the writer stopped during this append's commit"))
            raise
        self._commits += 1
        self._appended += len(appends)
        self._events += len(stored)
        self._largest = max(self._largest, len(appends))
        if observer is not None:
            observer(started, time.perf_counter_ns() - began, len(appends), len(stored), outcomes)
        if stored and self._on_commit is not None:
            self._on_commit(
                CommitBatch(stored, _objects_for(outcomes, objects, len(stored), unvouched))
            )
        for done, outcome in zip(dones, outcomes, strict=True):
            if isinstance(outcome, EngineError):
                self._failed += 1
                outcome = _own_copy(outcome)
            done(outcome)
        self._release_room()

    def _release_room(self) -> None:
        room, self._room = self._room, None
        if room is not None:
            room.set()

    def _fail_pending(self, error: EngineError) -> None:
        dones, self._dones = self._dones, []
        self._appends, self._objects = [], []
        self._unvouched = 0
        for done in dones:
            done(_own_copy(error))
        self._release_room()

    def close(self) -> None:
        """Stop accepting appends; :meth:`run` commits what is queued and returns.

        Appends waiting for room are refused with ``EngineClosed``. Idempotent.
        """
        self._closing = True
        self._wake()
        self._release_room()

    async def wait_stopped(self) -> None:
        """Wait until :meth:`run` has returned."""
        await self._stopped.wait()

    @property
    def appended(self) -> int:
        """Appends committed or refused so far (each caller's, in the group commits)."""
        return self._appended

    def statistics(self) -> WriterStatistics:
        """Counters since start: commits, appends, events, batch sizes, queue length."""
        return WriterStatistics(
            commits=self._commits,
            appends=self._appended,
            events=self._events,
            failed_appends=self._failed,
            largest_batch=self._largest,
            mean_batch=self._appended / self._commits if self._commits else 0.0,
            pending=len(self._appends),
        )


def _well_formed(record: Any, check: Callable[[Any], object]) -> bool:
    """True if ``check`` accepts the snapshot or cache. Never raises: saving one is best
    effort, and its callers run inside commit callbacks that must not fail."""
    try:
        check(record)
    except InvalidArgument:
        return False
    return True


def _own_copy(error: EngineError) -> EngineError:
    """A copy of a group-wide error for one caller: raised in many tasks, one shared object
    would collect every task's traceback frames and keep them all alive."""
    twin = copy.copy(error)
    twin.__cause__ = error.__cause__
    return twin


def _objects_for(
    outcomes: list[AppendOutcome],
    objects: list[Sequence[Any] | None],
    stored: int,
    unvouched: int,
) -> list[Any]:
    """The objects of the committed appends' events (``stored`` of them), in log order
    (None where unknown). ``unvouched`` is 0 only if every append came with objects."""
    if not unvouched:
        # The usual group: every append came with its objects, one per event (checked at
        # submit). A failed append stores nothing, so if the objects of them all are as
        # many as the events stored, every append with events committed: one C-level
        # pass, not a Python one an append (~300 of W1's instructions a command).
        flat = list(itertools.chain.from_iterable(objects))  # type: ignore[arg-type]
        if len(flat) == stored:
            return flat
    flat = []
    for outcome, objs in zip(outcomes, objects, strict=True):
        if isinstance(outcome, EngineError):
            continue
        if objs is None:
            flat.extend(itertools.repeat(None, outcome.last_position - outcome.first_position + 1))
        else:
            flat.extend(objs)
    return flat
