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
                     park until the next publish

Positions are consecutive, so "the next event I need" is always ``checkpoint + 1``: a
projector that starts late, falls behind the window, or is rebuilt reads the gap from the
log, then rejoins the window. Memory is bounded by the window, whatever a slow projector
does, and the writer never waits for a projector.
"""

from __future__ import annotations

import copy
import heapq
import itertools
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Literal, Protocol

import anyio.lowlevel
import msgspec

from ._codec import EventRegistry
from ._errors import EngineError, ProjectorFaulted, StorageError
from ._log import EventLog
from ._records import Recorded, StoredEvent
from ._reply import Reply, reply_factory
from ._writer import CommitBatch

__all__ = [
    "Broadcast",
    "Parked",
    "ProjectionHost",
    "ProjectorStatistics",
    "ProjectorType",
    "detach",
]

CATCH_UP_BATCH = 4096  # events per log read: long enough to amortise, short enough to yield


class ProjectorType(Protocol):
    """What the engine needs of a projector class (``actors.Projector`` provides it)."""

    event_appliers: ClassVar[Mapping[type, Callable[[Any, Any, Recorded], None]]]
    query_functions: ClassVar[frozenset[Callable[..., Any]]]
    on_error: ClassVar[Literal["halt", "park"]]
    name: ClassVar[str]

    def __call__(self) -> Any: ...


class Parked(msgspec.Struct, frozen=True):
    """An event a ``park`` projector could not apply and skipped."""

    position: int
    stream_id: str
    type: str
    error: str


class ProjectorStatistics(msgspec.Struct, frozen=True):
    """Where a projector stands.

    ``state`` is ``"catching_up"`` (reading the log), ``"live"`` (at the head or applying
    what was just broadcast), or ``"halted"`` (an applier raised; see ``fault``).
    """

    name: str
    state: str
    checkpoint: int
    head: int
    lag: int
    applied: int
    parked: int
    fault: str | None


class Broadcast:
    """The head position and a bounded window of the most recently committed events."""

    def __init__(self, head: int, *, window: int = 65536) -> None:
        self.head = head
        self._window = window
        self._batches: deque[CommitBatch] = deque()
        self._held = 0
        self._listeners: list[ProjectionHost] = []

    def subscribe(self, host: ProjectionHost) -> None:
        """Wake ``host`` after every publish."""
        self._listeners.append(host)

    def publish(self, batch: CommitBatch) -> None:
        """Record a committed batch (called by the writer, in log order) and wake readers."""
        if not batch:
            return
        self._batches.append(batch)
        self._held += len(batch)
        while self._held > self._window and len(self._batches) > 1:
            self._held -= len(self._batches.popleft())
        self.head = batch[-1][0].position
        for host in self._listeners:
            host.wake()

    def since(self, position: int, limit: int) -> CommitBatch | None:
        """Up to ``limit`` events from ``position`` on, or None if it left the window."""
        batches = self._batches
        if not batches or batches[0][0][0].position > position:
            return None
        out: CommitBatch = []
        # Readers are usually one batch behind: search from the newest end.
        for i in range(len(batches) - 1, -1, -1):
            first = batches[i][0][0].position
            if first <= position:
                for batch in itertools.islice(batches, i, None):
                    start = max(position - batch[0][0].position, 0)
                    out.extend(batch[start : start + limit - len(out)])
                    if len(out) >= limit:
                        break
                return out
        return None  # pragma: no cover - excluded by the first check


class ProjectionHost:
    """One projector actor: its cache, checkpoint, fault state and waiting queries."""

    def __init__(
        self,
        kind: ProjectorType,
        *,
        log: EventLog,
        broadcast: Broadcast,
        registry: EventRegistry,
    ) -> None:
        self.kind = kind
        self.name = kind.name
        self._log = log
        self._broadcast = broadcast
        self._appliers: dict[str, tuple[Callable[..., None], Any]] = {}
        for event_type, fn in kind.event_appliers.items():
            name = registry.register(event_type)
            self._appliers[name] = (fn, registry.decoder_for(name))
        self.instance: Any = kind()
        self.checkpoint = 0
        self.fault: ProjectorFaulted | None = None
        self.parked: list[Parked] = []
        self.applied = 0
        self.catching_up = True
        self._waiters: list[tuple[int, int, Reply]] = []  # (position, seq, reply): a heap
        self._seq = itertools.count()
        self._new_reply = reply_factory()
        self._wakeup: Reply | None = None
        broadcast.subscribe(self)

    # -- the actor loop --------------------------------------------------------------------

    def wake(self) -> None:
        """Called by the broadcast: there may be new events."""
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            wakeup.set_result(None)

    async def run(self) -> None:
        """Apply events forever: catch up from the log, then follow the broadcast."""
        while True:
            if self.fault is not None or self.checkpoint >= self._broadcast.head:
                if self.fault is None:
                    self.catching_up = False
                self._wakeup = self._new_reply()
                await self._wakeup.wait()
                continue
            start = self.checkpoint + 1
            batch = self._broadcast.since(start, CATCH_UP_BATCH)
            if batch is None:
                self.catching_up = True
                try:
                    stored = self._log.read_all(start, CATCH_UP_BATCH)
                except StorageError as e:
                    self._halt(start, "(log)", e)
                    continue
                self._apply([(event, None) for event in stored])
            else:
                self._apply(batch)
            self._release_waiters()
            # Between batches, let commands and queries run: catch-up never hogs the loop.
            await anyio.lowlevel.checkpoint()

    def _apply(self, batch: Sequence[tuple[StoredEvent, Any]]) -> None:
        appliers = self._appliers
        instance = self.instance
        applied = 0
        checkpoint = self.checkpoint
        for stored, event in batch:
            position = stored.position
            if position <= checkpoint:
                continue  # already applied (a rebuild racing a publish); never twice
            entry = appliers.get(stored.type)
            if entry is not None:
                fn, decoder = entry
                try:
                    if event is None:
                        event = decoder.decode(stored.payload)
                    fn(instance, event, stored)
                    applied += 1
                except Exception as e:
                    if self.kind.on_error == "park":
                        self.parked.append(
                            Parked(position, stored.stream_id, stored.type, repr(e))
                        )
                    else:
                        self.checkpoint = checkpoint
                        self.applied += applied
                        self._halt(position, stored.type, e)
                        return
            checkpoint = position
        self.checkpoint = checkpoint
        self.applied += applied

    def _halt(self, position: int, event_type: str, error: Exception) -> None:
        fault = ProjectorFaulted(self.name, position, event_type, repr(error))
        fault.__cause__ = error
        self.fault = fault
        waiting, self._waiters = self._waiters, []
        for _, _, reply in waiting:
            reply.set_error(fault)

    # -- queries ---------------------------------------------------------------------------

    async def wait_position(self, position: int) -> None:
        """Wait until the cache includes ``position``; raises if the projector halts.

        Event-driven: the projector wakes the waiter after applying that position.
        Cancelling the wait is safe.
        """
        if self.fault is not None:
            raise self.fault
        if self.checkpoint >= position:
            return
        reply = self._new_reply()
        heapq.heappush(self._waiters, (position, next(self._seq), reply))
        await reply.wait()

    def _release_waiters(self) -> None:
        waiters = self._waiters
        checkpoint = self.checkpoint
        if checkpoint >= self._broadcast.head:
            self.catching_up = False
        while waiters and waiters[0][0] <= checkpoint:
            heapq.heappop(waiters)[2].set_result(None)

    # -- control ---------------------------------------------------------------------------

    def rebuild(self) -> None:
        """Start over from position 0 with an empty cache (and no fault, nothing parked)."""
        self.instance = self.kind()
        self.checkpoint = 0
        self.applied = 0
        self.parked = []
        self.fault = None
        self.catching_up = True
        self.wake()

    def resume(self) -> None:
        """Clear a halt and retry the event that failed (after the code was fixed)."""
        self.fault = None
        self.wake()

    def statistics(self) -> ProjectorStatistics:
        """Where this projector stands (checkpoint, lag, state, parked, fault)."""
        head = self._broadcast.head
        state = (
            "halted" if self.fault is not None
            else "catching_up" if self.catching_up
            else "live"
        )
        return ProjectorStatistics(
            name=self.name,
            state=state,
            checkpoint=self.checkpoint,
            head=head,
            lag=head - self.checkpoint,
            applied=self.applied,
            parked=len(self.parked),
            fault=None if self.fault is None else str(self.fault),
        )

    def fail_waiters(self, error: EngineError) -> None:
        """Fail every waiting query (the engine is closing)."""
        waiting, self._waiters = self._waiters, []
        for _, _, reply in waiting:
            reply.set_error(error)


_IMMUTABLE = frozenset({int, float, str, bytes, bool, type(None), complex, range})


def detach(value: Any) -> Any:
    """Return ``value`` if it cannot alias mutable state, else a deep copy of it."""
    cls = type(value)
    if cls in _IMMUTABLE:
        return value
    if cls is tuple or cls is frozenset:
        if all(type(item) in _IMMUTABLE for item in value):
            return value
    return copy.deepcopy(value)
