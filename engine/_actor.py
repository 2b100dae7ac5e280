"""One aggregate actor: its state, its version, and its mailbox, as a small state machine.

An actor has no task of its own (see ``_aggregates.py``): the sender's task runs its turn.
What this object keeps is the mailbox window and the queues of senders waiting on it:

    inflight   commands decided but not yet durable (the mailbox's length, <= mailbox_size)
    handed     slots handed to woken senders that have not decided yet (reserved)
    room       senders waiting for a slot, FIFO
    drained    senders waiting for inflight == 0, to reload a stale state (or for the
               reload another sender runs in a worker thread, on a log whose reads block)
    settled    rejected senders waiting for what was in flight when they were refused
    retrying   send_nowait commands an engine task is settling (a log others append to:
               decided again after a conflict, or a rejection being confirmed); they
               hold mailbox slots for send_nowait only

Room in a full mailbox is handed out in arrival order::

    sender ─(full, or others already waiting)─▶ room queue ──┐
    commit done: inflight - 1 ─▶ hand_out: wake the first waiter and count the slot
                                 as ``handed`` (reserved), so no later sender barges in
    woken sender: handed - 1, decides at once (the reservation guarantees room)

A sender that is woken but leaves without deciding (cancelled, Rejected, a handler error,
the actor turned stale) passes its slot on, so a waiter is never stranded. Waiting senders
sit in insertion-ordered dicts keyed by their reply, so a cancelled one leaves in O(1) (a
``deque.remove`` is O(waiters): cancelling n waiters at once was quadratic).

The hot path (a command completing) touches the counters inline in ``Aggregates``; the
methods here run only when someone waits.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from ._codec import EventRegistry
from ._decide import AggregateType, kind_name
from ._errors import (
    CodecError,
    ConcurrencyError,
    DecodeError,
    DefinitionError,
    EngineError,
    HandlerError,
)
from ._log import EventLog
from ._records import Committed, StoredEvent
from ._reply import Reply, must_propagate
from ._schema import RETIRED, retired_events

__all__ = [
    "Actor",
    "Pending",
    "Waiters",
    "load_state",
    "replay",
    "stream_reader",
]

Waiters = OrderedDict[Reply, None]
"""Replies of waiting senders, oldest first; the value is unused."""


class Actor:
    """One live aggregate: its state, its version, and its mailbox counters."""

    __slots__ = (
        "base_state",
        "base_version",
        "closed",
        "commands",
        "completed",
        "conflicted_at",
        "drained",
        "failures",
        "handed",
        "inflight",
        "kind",
        "mailbox_size",
        "reloading",
        "retrying",
        "room",
        "seen",
        "settled",
        "snapshot_version",
        "stale",
        "state",
        "stream_id",
        "tainted",
        "touched",
        "version",
    )

    def __init__(
        self,
        kind: AggregateType,
        stream_id: str,
        state: Any,
        version: int,
        snapshot: int,
        mailbox_size: int,
    ) -> None:
        self.kind = kind
        self.stream_id = stream_id
        self.state = state
        self.version = version  # includes decisions still in flight
        self.snapshot_version = snapshot  # of the last snapshot saved or loaded (0: none)
        self.mailbox_size = mailbox_size
        self.inflight = 0  # decided, not yet durable: the mailbox's length
        self.handed = 0  # mailbox slots handed to woken senders that have not yet run
        self.room: Waiters = OrderedDict()  # senders waiting for a mailbox slot, FIFO
        self.drained: Waiters = OrderedDict()  # senders waiting for inflight == 0 (to reload)
        self.stale = False  # state may hold what never committed: reload before use
        self.reloading = False  # a sender is reloading it in a worker thread (blocking log)
        self.touched = True  # used since the last idle sweep
        self.completed = 0  # appends the writer has answered, ever (in order)
        self.failures = 0  # of which failed (then the actor is stale)
        # What a stale actor is caught up from (``Aggregates._catch_up_from``; on a log
        # others append to). ``tainted``: since the state was loaded, an append of it
        # failed or something changed it that could not be undone, so it is not the
        # durable state at ``version`` even once nothing is in flight (not tainted, it is:
        # a stale one was only moved on by others). ``base_state``: the state's attributes
        # as they were at the durable ``base_version`` (recorded by a decision made with
        # nothing in flight), to put back when tainted; None if none is recorded.
        self.tainted = False
        self.base_state: dict[str, Any] | None = None
        self.base_version = 0
        # What a catch-up may apply without reading the log (``Aggregates._seen_since``):
        # ``seen``, committed events of this stream the follower read while the actor could
        # not apply them (appends in flight, or stale), by version without a gap; and
        # ``conflicted_at``, the stream's version a failed append of it found (0: none
        # since the last reload): the events must reach it.
        self.seen: list[StoredEvent] | None = None
        self.conflicted_at = 0
        # Rejected senders waiting for ``completed`` to reach their count (see settle). Each
        # count is ``completed + inflight`` when the sender arrived, which never decreases,
        # so the dict is in count order too: the first entry is always the next one due.
        self.settled: OrderedDict[Reply, int] = OrderedDict()
        # Command ids in flight -> the replies of later sends of the same id (None until
        # one comes), which get the first one's outcome: an id commits once.
        self.commands: dict[str, list[Reply] | None] = {}
        self.closed = False  # the engine closed: waiters were failed, none is handed a slot
        # send_nowait's commands being decided again in an engine task (a log others append
        # to): they hold mailbox slots for send_nowait, and keep the actor live.
        self.retrying = 0

    def conflicted(self, error: EngineError) -> None:
        """Note the stream's version a failed append or probe of this actor found (a
        ``ConcurrencyError``'s ``actual``): what its catch-up must reach."""
        if type(error) is ConcurrencyError and error.actual > self.conflicted_at:
            self.conflicted_at = error.actual

    def busy(self) -> bool:
        """Commands in flight, senders waiting, or a reload under way: it must not be
        passivated."""
        return bool(
            self.inflight
            or self.handed
            or self.room
            or self.drained
            or self.settled
            or self.reloading
            or self.retrying
        )

    def full(self) -> bool:
        """True if ``send_nowait`` must refuse: the actor is stale, others are already
        waiting for room (first come, first served), or the mailbox is full (counting the
        commands of ``send_nowait`` being decided again on a log others append to)."""
        return bool(
            self.stale
            or self.room
            or self.inflight + self.handed + self.retrying >= self.mailbox_size
        )

    def hand_out(self) -> None:
        """Wake waiting senders, first come first served, while slots are free."""
        room = self.room
        while room and self.inflight + self.handed < self.mailbox_size:
            room.popitem(last=False)[0].set_result(None)
            self.handed += 1

    async def park(self, queue: Waiters, reply: Reply) -> None:
        """Wait in ``queue`` (``room`` or ``drained``) until ``reply`` is completed; fails
        with the engine's error if it closes. Cancelling it leaves nothing behind."""
        queue[reply] = None
        try:
            await reply.wait()
        except BaseException:
            if reply in queue:
                del queue[reply]  # never woken: leave no dead entry behind (O(1))
            elif queue is self.room and not self.closed:
                # Handed a slot, then cancelled before taking it (asyncio can do this):
                # give the slot back for the next waiter.
                self.handed -= 1
            raise

    async def settle(self, reply: Reply) -> None:
        """Wait until every append of this actor submitted so far has completed."""
        self.settled[reply] = self.completed + self.inflight  # every append submitted
        try:
            await reply.wait()
        finally:
            self.settled.pop(reply, None)

    def wake_settled(self) -> None:
        """Wake the rejected senders whose appends have all completed (in count order)."""
        settled = self.settled
        while settled:
            first = next(iter(settled))
            if settled[first] > self.completed:
                break
            del settled[first]
            first.set_result(None)

    def wake_drained(self) -> None:
        """Wake every sender waiting for nothing to be in flight."""
        waiting, self.drained = self.drained, OrderedDict()
        for waiter in waiting:
            waiter.set_result(None)

    def close(self, error: Callable[[], EngineError]) -> None:
        """Fail every sender waiting for room or for a reload with a fresh ``error()``."""
        self.closed = True
        for queue in (self.room, self.drained):
            waiting = list(queue)
            queue.clear()
            for waiter in waiting:
                waiter.set_error(error())


class Pending:
    """A command in an actor's mailbox; ``await`` it for its :class:`Committed`.

    Returned by ``send_nowait``. Awaiting is optional: the command commits either way
    (on a log other processes append to, the engine decides it again after a conflict
    whether or not it is awaited). It may be awaited again (one task at a time), also
    after a cancelled wait.
    """

    __slots__ = ("_reply",)

    def __init__(self, reply: Reply) -> None:
        self._reply = reply

    async def wait(self) -> Committed:
        """Wait until the command's events are durable.

        Raises the command's error (``StorageError``, ``ConcurrencyError``,
        ``EngineClosed``; on a log other processes append to also ``Rejected``, confirmed
        on the stream's durable version, or an error of the command decided again, such
        as ``HandlerError``). If cancelled, the command may still commit, and a later
        ``wait`` returns its outcome.
        """
        result: Committed = await self._reply.wait()
        return result

    def __await__(self) -> Any:
        return self._reply.wait().__await__()


def load_state(
    log: EventLog, registry: EventRegistry, kind: AggregateType, owner_name: str, stream_id: str
) -> tuple[Any, int, int]:
    """Rebuild an actor's state from its snapshot (if usable) and the log's events after it.

    Returns ``(state, version, version of the snapshot it started from)``.

    Events stored at an older version (or under a former name) are upcast as they are
    read; events of a name the aggregate retired are skipped (``stream_reader``).

    Raises:
        DefinitionError: another aggregate type created the stream.
        HandlerError: an applier (or ``kind()``) raised while replaying.
        UnknownEventType: an event's name is neither registered nor retired.
        UpcastError: an older event's upcaster raised or gave invalid data (the message
            names the stream, version and position; a ``DecodeError`` likewise).
        StorageError: the log could not be read.
    """
    state: Any = None
    version = 0
    if kind.snapshot_every is not None:
        try:
            snapshot = log.load_snapshot(stream_id)
        except CodecError:
            snapshot = None  # unreadable: only a lost shortcut, the events remain
        if snapshot is not None and snapshot.aggregate not in (None, owner_name):
            # Another type's snapshot is no use to this one; whether this type may
            # load the stream at all is for its events to say (below).
            snapshot = None
        if snapshot is not None and snapshot.format == kind.snapshot_format:
            try:
                state = kind.from_snapshot(snapshot.state)
                version = snapshot.version
            except BaseException as e:
                if must_propagate(e):
                    raise
                # An unreadable snapshot is only a lost shortcut: replay everything.
                state = None
    try:
        if state is None:
            state = kind()
            version = 0
    except BaseException as e:
        if must_propagate(e):
            raise
        raise _cannot_rebuild(kind, stream_id, e) from e
    snapshot_version = version
    events = log.read_stream(stream_id, version + 1)
    version = replay(events, registry, kind, owner_name, stream_id, state, version)
    return state, version, snapshot_version


def replay(
    events: Iterable[StoredEvent],
    registry: EventRegistry,
    kind: AggregateType,
    owner_name: str,
    stream_id: str,
    state: Any,
    version: int,
) -> int:
    """Apply ``events`` (one stream's, in version order, from ``version + 1``) to ``state``,
    as every rebuild does: upcast and retired events as ``stream_reader`` reads them, each
    checked to belong to ``owner_name``. Returns the version reached. ``load_state`` runs
    it on a snapshot or a fresh state; ``Aggregates`` on a state it knows durable at
    ``version`` (catching a stale actor up: see ``Actor.base_state``).

    Raises ``load_state``'s errors but ``StorageError`` (``events`` is read by then); after
    a raise, ``state`` may hold part of the events.
    """
    try:
        decode, appliers = stream_reader(registry, kind)
        for stored in events:
            if stored.aggregate is not None:
                _check_owner(owner_name, stream_id, stored.aggregate)
            try:  # free until it raises (3.11's zero-cost try)
                event = decode(stored.type, stored.payload)
            except DecodeError as e:
                raise at_event(e, stored) from e
            appliers[type(event)](state, event)
            version = stored.version
    except EngineError:
        raise
    except BaseException as e:
        if must_propagate(e):
            raise
        raise _cannot_rebuild(kind, stream_id, e) from e
    return version


def _cannot_rebuild(kind: AggregateType, stream_id: str, error: BaseException) -> HandlerError:
    """What a rebuild raises when user code (``kind()``, an applier) raised."""
    return HandlerError(
        f"cannot rebuild {kind_name(kind)} {stream_id!r} from its events: {error!r}"
    )


def _skip(state: Any, event: Any) -> None:
    """The applier of a retired event: nothing to apply."""


def stream_reader(
    registry: EventRegistry, kind: AggregateType
) -> tuple[Callable[[str, Any], Any], Any]:
    """How ``kind`` reads the events of its streams: ``(decode, appliers)``.

    ``decode(stored name, payload)`` gives the event at its current version (upcast if it
    was stored at an older one); ``appliers[type(event)]`` applies it. An event of a name
    the aggregate retired (``retired_events``) decodes to ``RETIRED``, whose applier does
    nothing: an aggregate that retires nothing pays nothing. ``load_state`` and the test
    kit's ``given`` read through this, so both skip and upcast alike.

    Raises:
        DefinitionError: ``retired_events`` is malformed.
    """
    retired = retired_events(kind)
    if not retired:
        return registry.decode, kind.event_appliers
    return registry.retiring_decode(retired), {**kind.event_appliers, type(RETIRED): _skip}


def at_event(error: DecodeError, stored: StoredEvent) -> DecodeError:
    """``error`` (of the same class) with the event it was raised for named in front."""
    return type(error)(
        f"stream {stored.stream_id!r} version {stored.version} (position {stored.position}): "
        f"{error}"
    )


def _check_owner(name: str, stream_id: str, owner: str | None) -> None:
    """Refuse to load ``stream_id`` as type ``name`` if another aggregate type created it."""
    if owner is not None and owner != name:
        raise DefinitionError(
            f"stream {stream_id!r} belongs to aggregate type {owner!r}, not {name!r}; "
            "stream ids are shared by all aggregate types (set aggregate_name to the old "
            "name if the class was renamed)"
        )
