"""Hosting aggregates as actors: activation, the command path, passivation.

One actor per stream id. An actor has no task of its own: that would cost two task
wake-ups per command (caller → actor → caller) on top of the writer's. Instead the
caller's own task runs the actor's turn, synchronously and so atomically on the event loop:

    send ─▶ (wait for room in the mailbox) ─▶ decide(state, command) ─▶ evolve(state, events)
         ─▶ writer.submit(append, expected_version = version before) ─▶ park until committed

A command is decided as soon as it reaches the front of the actor's mailbox. The mailbox
holds the commands that were decided but are not yet durable (at most ``mailbox_size``);
they form a pipeline through the group commit, so a hot aggregate still gets many
commands into one transaction. Each decision sees the state evolved by every earlier
decision, including ones still in flight: the same state the commands would see one by
one, because the writer commits them in the same order. If any of them fails to commit,
the later ones fail their expected-version check, and the actor is reloaded from the log
(once nothing of it is in flight), so state that never became durable never survives.

Room in a full mailbox is handed out in arrival order::

    sender ─(full, or others already waiting)─▶ room queue ──┐
    commit done: inflight - 1 ─▶ _hand_out: wake the first waiter and count the slot
                                 as ``handed`` (reserved), so no later sender barges in
    woken sender: handed - 1, decides at once (the reservation guarantees room)

A sender that is woken but leaves without deciding (cancelled, Rejected, a handler error,
the actor turned stale) passes its slot on, so a waiter is never stranded. Waiting senders
sit in insertion-ordered dicts keyed by their reply, so a cancelled one leaves in O(1).

Live state always equals replayed state, whatever user code did before raising. Handlers
should decide without touching the state, but a handler that changes it and then raises
(``Rejected`` included), or an applier that raises half-way, must leave no trace: later
decisions would see the change and persist events computed from it, and a snapshot would
keep it across restarts. So ``_decide`` copies the state's ``__dict__`` (a small dict, one
copy per command) before the handler runs, and after any raise ``_undo`` either restores it
exactly, when every value in it is immutable all the way down (ints, strings, tuples and
frozen Structs of such: the usual shape, and no reload), or marks the actor stale: it is
reloaded from its snapshot and the log once nothing of it is in flight, exactly as after a
failed append, and no snapshot is taken from it meanwhile. A state holding lists or dicts
thus pays a reload per rejection (snapshot + tail; on a 10,000-event stream without
snapshots a full replay, ~14 ms here, where a restore costs ~1 us): give such aggregates
``snapshot_every``, or hold tuples and frozensets.

User code's exceptions that are not ``Exception`` (a user's ``BaseException`` subclass)
are ``HandlerError`` too; only cancellation, ``KeyboardInterrupt`` and ``SystemExit`` reach
the caller unchanged (``_reply.must_propagate``).

Wake-ups per command: one (the caller, when its commit lands), plus the writer's one per
batch; two more only for a sender that had to wait for room. Passivation evicts idle
actors (LRU beyond ``max_live``, and after ``idle_timeout``) but never one with commands
in flight or senders waiting, nor the one being activated: a busy actor stays live, so
``max_live`` is exceeded only by actors that are busy right now.
Why one file over 400 lines: activation, the mailbox window and passivation all read and
write the same per-actor counters inside one synchronous turn; split apart, each piece would
need the others' invariants restated.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import msgspec

from ._codec import EventRegistry, snapshot_bytes
from ._decide import AggregateType, decide, kind_name, restore
from ._errors import (
    CodecError,
    DefinitionError,
    EngineClosed,
    EngineError,
    HandlerError,
    Overloaded,
    Rejected,
    UnknownCommand,
)
from ._log import AppendOutcome, EventLog, check_stream_id
from ._records import Append, Committed, Snapshot
from ._reply import Reply, must_propagate, reply_factory
from ._writer import Writer

__all__ = ["AggregateType", "Aggregates", "AggregatesStatistics", "Pending"]


class _AtCapacity(Overloaded):
    """Every live actor is busy and the cap is reached: ``send`` waits, ``send_nowait``
    raises it (an :class:`Overloaded`)."""


_EVICTION_SCAN = 16
"""How many actors a commit looks at to get back under the cap: bounded, so that with
many busy actors each commit costs O(1), not O(live)."""


def _check_owner(name: str, stream_id: str, owner: str | None) -> None:
    """Refuse to load ``stream_id`` as type ``name`` if another aggregate type created it."""
    if owner is not None and owner != name:
        raise DefinitionError(
            f"stream {stream_id!r} belongs to aggregate type {owner!r}, not {name!r}; "
            "stream ids are shared by all aggregate types (set aggregate_name to the old "
            "name if the class was renamed)"
        )


class AggregatesStatistics(msgspec.Struct, frozen=True):
    """Counters of the aggregate actors."""

    live: int
    peak_live: int
    activations: int
    passivations: int
    reloads: int
    in_flight: int
    waiting: int
    snapshot_failures: int = 0


Waiters = OrderedDict[Reply, None]
"""Replies of waiting senders, oldest first; the value is unused."""


class _Actor:
    """One live aggregate: its state, its version, and its mailbox counters."""

    __slots__ = (
        "completed",
        "drained",
        "failures",
        "handed",
        "inflight",
        "kind",
        "room",
        "settled",
        "snapshot_version",
        "stale",
        "state",
        "stream_id",
        "touched",
        "version",
    )

    def __init__(
        self, kind: AggregateType, stream_id: str, state: Any, version: int, snapshot: int
    ) -> None:
        self.kind = kind
        self.stream_id = stream_id
        self.state = state
        self.version = version  # includes decisions still in flight
        self.snapshot_version = snapshot  # of the last snapshot saved or loaded (0: none)
        self.inflight = 0  # decided, not yet durable: the mailbox's length
        self.handed = 0  # mailbox slots handed to woken senders that have not yet run
        # Waiters are insertion-ordered dicts keyed by their reply: FIFO like a deque, and
        # a cancelled waiter leaves in O(1) (a deque.remove is O(waiters): cancelling n
        # waiters at once was quadratic).
        self.room: Waiters = OrderedDict()  # senders waiting for a mailbox slot, FIFO
        self.drained: Waiters = OrderedDict()  # senders waiting for inflight == 0 (to reload)
        self.stale = False  # state may hold what never committed: reload before use
        self.touched = True  # used since the last idle sweep
        self.completed = 0  # appends the writer has answered, ever (in order)
        self.failures = 0  # of which failed (then the actor is stale)
        # Rejected senders waiting for ``completed`` to reach their count (see send). Each
        # count is ``completed + inflight`` when the sender arrived, which never decreases,
        # so the dict is in count order too: the first entry is always the next one due.
        self.settled: OrderedDict[Reply, int] = OrderedDict()

    def busy(self) -> bool:
        """Commands in flight or senders waiting: it must not be passivated."""
        return bool(self.inflight or self.handed or self.room or self.drained or self.settled)


class Pending:
    """A command in an actor's mailbox; ``await`` it for its :class:`Committed`.

    Returned by ``send_nowait``. Awaiting is optional: the command commits either way.
    It may be awaited again (one task at a time), also after a cancelled wait.
    """

    __slots__ = ("_reply",)

    def __init__(self, reply: Reply) -> None:
        self._reply = reply

    async def wait(self) -> Committed:
        """Wait until the command's events are durable.

        Raises the command's error (``StorageError``, ``ConcurrencyError``,
        ``EngineClosed``). If cancelled, the command may still commit, and a later
        ``wait`` returns its outcome.
        """
        result: Committed = await self._reply.wait()
        return result

    def __await__(self) -> Any:
        return self._reply.wait().__await__()


class Aggregates:
    """The live aggregate actors of one engine, and the command path through them."""

    def __init__(
        self,
        kinds: Sequence[AggregateType],
        *,
        log: EventLog,
        writer: Writer,
        registry: EventRegistry,
        mailbox_size: int,
        max_live: int,
    ) -> None:
        if mailbox_size < 1:
            raise DefinitionError("mailbox_size must be >= 1")
        if max_live < 1:
            raise DefinitionError("max_live_aggregates must be >= 1")
        self._kinds = set(kinds)
        # The type's name in the log; a kind that is not an actors.Aggregate may lack it.
        self._owner_names: dict[AggregateType, str] = {
            kind: getattr(kind, "aggregate_name", None) or kind_name(kind) for kind in kinds
        }
        for kind in kinds:
            for event_type in kind.event_appliers:
                registry.register(event_type)
        # Kinds whose every event type is immutable all the way down (the usual case):
        # their events go to live projectors as they are, with no per-event check.
        self._immutable_kinds = {
            kind for kind in kinds if all(registry.shareable(t) for t in kind.event_appliers)
        }
        self._log = log
        self._writer = writer
        self._registry = registry
        self._mailbox_size = mailbox_size
        self._max_live = max_live
        self._live: OrderedDict[str, _Actor] = OrderedDict()
        self._new_reply = reply_factory()
        self._closed = False
        self._peak = 0
        self._activations = 0
        self._passivations = 0
        self._reloads = 0
        self._capacity: Waiters = OrderedDict()  # senders waiting for a live-actor slot
        self._snapshot_failures = 0

    # -- the command path ------------------------------------------------------------------

    async def send(
        self,
        kind: AggregateType,
        stream_id: str,
        command: Any,
        correlation_id: str | None,
        causation_id: str | None,
    ) -> Committed:
        """Run ``command`` on the actor, waiting for mailbox room; see ``Engine.send``."""
        handler = self._handler(kind, command)
        try:
            actor = self._actor(kind, stream_id)
        except _AtCapacity:
            actor = await self._wait_for_capacity(kind, stream_id)
        try:
            if actor.stale or actor.room or actor.inflight + actor.handed >= self._mailbox_size:
                reply = await self._wait_and_decide(
                    actor, handler, command, correlation_id, causation_id
                )
            else:  # the hot path: no wait before deciding
                try:
                    reply = self._decide(actor, handler, command, correlation_id, causation_id)
                except BaseException:
                    if self._capacity and not actor.busy():
                        # Refused on an idle actor (perhaps activated just for this): a
                        # sender waiting for a live slot may evict it.
                        self._pass_capacity()
                    raise
        except Rejected as rejection:
            # The actor it was decided on: the slow path may have re-activated the stream
            # (and _decide raised synchronously, so it is the live one now).
            actor = self._live.get(stream_id, actor)
            if not actor.inflight:
                raise
            # Rejected on state that is not all durable yet: if what is in flight fails,
            # the rejection was decided on state that never existed. Wait for it to land.
            # (A failure count, not ``stale``: another sender may have reloaded already.)
            failures = actor.failures
            await self._settle(actor)
            if actor.failures == failures:
                raise rejection from None
            return await self.send(kind, stream_id, command, correlation_id, causation_id)
        result: Committed = await reply.wait()
        return result

    async def _settle(self, actor: _Actor) -> None:
        """Wait until every append of ``actor`` submitted so far has completed."""
        reply = self._new_reply()
        actor.settled[reply] = actor.completed + actor.inflight  # every append submitted
        try:
            await reply.wait()
        finally:
            actor.settled.pop(reply, None)

    def send_nowait(
        self,
        kind: AggregateType,
        stream_id: str,
        command: Any,
        correlation_id: str | None,
        causation_id: str | None,
    ) -> Pending:
        """Put ``command`` in the mailbox now or raise ``Overloaded``; see ``Engine``."""
        handler = self._handler(kind, command)
        actor = self._actor(kind, stream_id)
        if actor.stale and not actor.inflight:
            self._reload(actor)
        if actor.stale or actor.room or actor.inflight + actor.handed >= self._mailbox_size:
            raise Overloaded(
                f"the mailbox of {kind_name(kind)} {stream_id!r} is full "
                f"({self._mailbox_size} commands in flight, or senders waiting for room)"
            )
        return Pending(self._decide(actor, handler, command, correlation_id, causation_id))

    async def _wait_for_capacity(self, kind: AggregateType, stream_id: str) -> _Actor:
        """Wait until an actor goes idle (so it can be passivated), then activate ours.

        A wake-up is a free slot handed to one waiter: one that leaves without taking it
        (cancelled after the wake-up, or its stream refused to load) hands it on.
        """
        while True:
            reply = self._new_reply()
            self._capacity[reply] = None
            try:
                await reply.wait()
            except BaseException:
                if reply in self._capacity:
                    del self._capacity[reply]
                else:
                    self._pass_capacity()
                raise
            if self._closed:
                raise EngineClosed("the engine closed before this command ran")
            if stream_id in self._live:
                # Another woken sender activated our stream: the slot freed for us is
                # someone else's to take.
                self._pass_capacity()
            try:
                return self._actor(kind, stream_id)
            except _AtCapacity:
                continue
            except BaseException:
                self._pass_capacity()
                raise

    def _pass_capacity(self) -> None:
        """Wake the next sender waiting for a live slot. Unconditionally: an idle actor
        still counts as live until the woken sender's activation passivates it, and a
        sender that finds no room simply waits again."""
        if self._capacity:
            self._capacity.popitem(last=False)[0].set_result(None)

    def _handler(self, kind: AggregateType, command: Any) -> Callable[[Any, Any], Any]:
        if self._closed:
            raise EngineClosed("the engine is closed")
        try:
            hosted = kind in self._kinds
        except TypeError:  # unhashable: certainly not a hosted class
            hosted = False
        if not hosted:
            raise UnknownCommand(f"{kind_name(kind)!r} is not hosted here")
        handler = kind.command_handlers.get(type(command))
        if handler is None:
            raise UnknownCommand(f"{kind_name(kind)} has no handler for {type(command).__name__}")
        return handler

    async def _wait_and_decide(
        self,
        actor: _Actor,
        handler: Callable[[Any, Any], Any],
        command: Any,
        correlation_id: str | None,
        causation_id: str | None,
    ) -> Reply:
        """The slow path of ``send``: wait until the actor is usable and has room, decide."""
        kind, stream_id = actor.kind, actor.stream_id
        try:
            while True:
                if self._closed:
                    raise EngineClosed("the engine closed before this command ran")
                if actor.stale:
                    if actor.inflight:
                        await self._park(actor, actor.drained)
                        # Drained actors have no waiters left: it may have been passivated.
                        try:
                            actor = self._actor(kind, stream_id)
                        except _AtCapacity:
                            actor = await self._wait_for_capacity(kind, stream_id)
                        continue
                    self._reload(actor)
                if actor.room or actor.inflight + actor.handed >= self._mailbox_size:
                    await self._park(actor, actor.room)
                    actor.handed -= 1  # the slot handed to this sender is its own now
                    if actor.stale or self._closed:
                        continue  # not usable after all; the loop passes the slot on
                return self._decide(actor, handler, command, correlation_id, causation_id)
        except BaseException:
            # Leaving without a slot (Rejected, HandlerError, cancelled, closed): a slot
            # this sender was handed, or one that freed meanwhile, goes to the next waiter;
            # and if that leaves the actor idle, a sender waiting for a live slot may use it.
            self._hand_out(actor)
            if not actor.busy():
                self._pass_capacity()
            raise

    async def _park(self, actor: _Actor, queue: Waiters) -> None:
        """Wait in ``queue`` until woken; fails with EngineClosed if the engine closes."""
        reply = self._new_reply()
        queue[reply] = None
        try:
            await reply.wait()
        except BaseException:
            if reply in queue:
                del queue[reply]  # never woken: leave no dead entry behind (O(1))
            elif queue is actor.room and not self._closed:
                # Handed a slot, then cancelled before taking it (asyncio can do this):
                # give the slot back for the next waiter.
                actor.handed -= 1
            raise

    def _hand_out(self, actor: _Actor) -> None:
        """Wake waiting senders, first come first served, while slots are free."""
        room = actor.room
        while room and actor.inflight + actor.handed < self._mailbox_size:
            room.popitem(last=False)[0].set_result(None)
            actor.handed += 1

    def _decide(
        self,
        actor: _Actor,
        handler: Callable[[Any, Any], Any],
        command: Any,
        correlation_id: str | None,
        causation_id: str | None,
    ) -> Reply:
        """The actor's turn: decide, evolve, submit. Synchronous, so nothing interleaves."""
        kind = actor.kind
        state = actor.state
        # The attributes as the handler finds them, to undo whatever it (or an applier)
        # changes before raising: see _undo. One copy of a small dict per command.
        try:
            before: dict[str, Any] | None = state.__dict__.copy()
        except AttributeError:  # no __dict__ (slots only): a failure reloads it instead
            before = None
        try:
            events, encoded = decide(kind, state, handler, command, self._registry.encode)
        except BaseException:
            # Rejected included: handlers should decide without touching the state, but
            # nothing enforces it, and a change left behind would outlive the refusal.
            self._undo(actor, before)
            raise
        expected = actor.version
        count = len(encoded)
        reply = self._new_reply()
        stream_id = actor.stream_id

        def done(outcome: AppendOutcome) -> None:
            actor.inflight -= 1
            actor.completed += 1
            settled = actor.settled
            while settled:  # in count order: wake the due ones from the front
                first = next(iter(settled))
                if settled[first] > actor.completed:
                    break
                del settled[first]
                first.set_result(None)
            if isinstance(outcome, EngineError):
                actor.stale = True
                actor.failures += 1
                reply.set_error(outcome)
            else:
                reply.set_result(
                    Committed(
                        stream_id,
                        outcome.last_version,
                        outcome.last_position if count else 0,
                        count,
                    )
                )
            if actor.room:
                self._hand_out(actor)
            if not actor.inflight:
                if actor.drained:
                    waiting, actor.drained = actor.drained, OrderedDict()
                    for waiter in waiting:
                        waiter.set_result(None)
                self._maybe_snapshot(actor)
                if self._capacity:
                    # A sender is waiting for an actor to go idle: this one just did.
                    self._capacity.popitem(last=False)[0].set_result(None)

        if kind not in self._immutable_kinds:
            # A mutable part (a list field, say) must not reach live projectors by
            # reference: they decode those events from the stored bytes instead.
            shareable = self._registry.shareable
            events = [event if shareable(type(event)) else None for event in events]
        try:
            self._writer.submit(
                Append(
                    stream_id,
                    expected,
                    tuple(encoded),
                    correlation_id,
                    causation_id,
                    # Recorded by the append that creates the stream (see _load).
                    None if expected else self._owner_names[kind],
                ),
                done,
                events,
                checked=True,  # stream id at activation, metadata at send, name at open
            )
        except BaseException:
            self._undo(actor, before)  # evolved by events that will never be written
            raise
        actor.version = expected + count
        actor.inflight += 1
        return reply

    def _undo(self, actor: _Actor, before: dict[str, Any] | None) -> None:
        """Put the state back exactly as the handler found it, or mark the actor stale.

        ``before`` is restored when that is exact (``_decide.restore``). Any other state is marked
        stale: reloaded from its snapshot and the log (once nothing of it is in flight)
        before its next command, and never snapshotted meanwhile. Either way the next
        decision sees exactly what replaying the log would give.
        """
        if not restore(actor.state, actor.kind, before):
            actor.stale = True

    # -- activation, reload, passivation --------------------------------------------------

    def _actor(self, kind: AggregateType, stream_id: str) -> _Actor:
        actor = self._live.get(stream_id)
        if actor is None:
            return self._activate(kind, stream_id)
        if actor.kind is not kind:
            raise DefinitionError(
                f"stream {stream_id!r} is a live {kind_name(actor.kind)}, not a {kind_name(kind)}; "
                "stream ids are shared by all aggregate types"
            )
        self._live.move_to_end(stream_id)
        actor.touched = True
        return actor

    def _activate(self, kind: AggregateType, stream_id: str) -> _Actor:
        """Load snapshot + tail from the log (synchronously) and make the actor live."""
        check_stream_id(stream_id)
        if len(self._live) >= self._max_live:
            # A bounded look at the least recently used: O(1) per activation, and busy
            # actors move to the back so the next look starts with likelier candidates.
            self._evict_lru(scan=_EVICTION_SCAN, room_for=1)
            if len(self._live) >= self._max_live:
                raise _AtCapacity(
                    f"{self._max_live} aggregates are live and busy (max_live_aggregates)"
                )
        try:
            loaded = self._load(kind, stream_id)
        except BaseException:
            self._pass_capacity()  # the eviction above may have freed a slot
            raise
        actor = _Actor(kind, stream_id, *loaded)
        self._live[stream_id] = actor
        self._activations += 1
        self._peak = max(self._peak, len(self._live))
        return actor

    def _load(self, kind: AggregateType, stream_id: str) -> tuple[Any, int, int]:
        """Rebuild the state: (state, version, version of the snapshot it started from)."""
        state: Any = None
        version = 0
        owner_name = self._owner_names[kind]
        if kind.snapshot_every is not None:
            try:
                snapshot = self._log.load_snapshot(stream_id)
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
            snapshot_version = version
            appliers = kind.event_appliers
            decode = self._registry.decode
            for stored in self._log.read_stream(stream_id, version + 1):
                if stored.aggregate is not None:
                    _check_owner(owner_name, stream_id, stored.aggregate)
                event = decode(stored.type, stored.payload)
                appliers[type(event)](state, event)
                version = stored.version
        except EngineError:
            raise
        except BaseException as e:
            if must_propagate(e):
                raise
            raise HandlerError(
                f"cannot rebuild {kind_name(kind)} {stream_id!r} from its events: {e!r}"
            ) from e
        return state, version, snapshot_version

    def _reload(self, actor: _Actor) -> None:
        """Replace a stale actor's state (nothing in flight) with one rebuilt from the log."""
        self._reloads += 1
        state, version, snapshot_version = self._load(actor.kind, actor.stream_id)
        actor.state, actor.version, actor.stale = state, version, False
        actor.snapshot_version = snapshot_version
        self._hand_out(actor)  # slots given back while it was stale

    def _maybe_snapshot(self, actor: _Actor) -> None:
        """Snapshot an actor whose state is all durable, if ``snapshot_every`` says so."""
        every = actor.kind.snapshot_every
        if every is None or actor.stale or actor.version - actor.snapshot_version < every:
            return
        # Counted as taken even if it fails, so a broken snapshot_state is tried once per
        # ``every`` events, not after every commit.
        actor.snapshot_version = actor.version
        data = snapshot_bytes(actor.state)
        if data is None:
            self._snapshot_failures += 1
            return
        self._writer.save_snapshot(
            actor.stream_id,
            Snapshot(
                actor.version, actor.kind.snapshot_format, data, self._owner_names[actor.kind]
            ),
        )

    def _evict_lru(self, scan: int, room_for: int = 0) -> None:
        """Passivate least recently used idle actors until ``room_for`` more fit.

        Looks at ``scan`` actors at most; busy ones go to the back.
        """
        live = self._live
        for _ in range(min(scan, len(live))):
            if len(live) + room_for <= self._max_live:
                return
            stream_id, actor = next(iter(live.items()))
            if actor.busy():
                live.move_to_end(stream_id)  # it stays, and costs no wake-up
                continue
            del live[stream_id]
            self._passivations += 1

    def sweep_idle(self) -> int:
        """Passivate actors not used since the previous sweep; returns how many."""
        gone = [sid for sid, actor in self._live.items() if not actor.touched and not actor.busy()]
        for sid in gone:
            del self._live[sid]
        for actor in self._live.values():
            actor.touched = False
        self._passivations += len(gone)
        for _ in gone:  # each freed slot may let a sender waiting for one in
            self._pass_capacity()
        return len(gone)

    async def run_idle_sweeper(self, idle_timeout: float) -> None:
        """Passivate actors idle for between ``idle_timeout`` and twice that, forever."""
        while True:
            await anyio.sleep(idle_timeout)
            self.sweep_idle()

    def close(self) -> None:
        """Refuse new commands and fail every sender still waiting for room."""
        self._closed = True
        while self._capacity:
            self._capacity.popitem(last=False)[0].set_error(
                EngineClosed("the engine closed before this command ran")
            )
        for actor in self._live.values():
            for queue in (actor.room, actor.drained):
                waiting = list(queue)
                queue.clear()
                for waiter in waiting:
                    waiter.set_error(EngineClosed("the engine closed before this command ran"))

    def is_live(self, stream_id: str) -> bool:
        """True if the stream's actor is in memory (a test and statistics aid)."""
        return stream_id in self._live

    def statistics(self) -> AggregatesStatistics:
        """Counters of the live actors."""
        actors = self._live.values()
        return AggregatesStatistics(
            live=len(self._live),
            peak_live=self._peak,
            activations=self._activations,
            passivations=self._passivations,
            reloads=self._reloads,
            in_flight=sum(a.inflight for a in actors),
            waiting=sum(len(a.room) + len(a.drained) for a in actors) + len(self._capacity),
            snapshot_failures=self._snapshot_failures,
        )
