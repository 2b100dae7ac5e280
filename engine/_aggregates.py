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

Wake-ups per command: one (the caller, when its commit lands), plus the writer's one per
batch. Passivation evicts idle actors (LRU beyond ``max_live``, and after ``idle_timeout``)
but never one with commands in flight or waiting.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Protocol

import anyio
import msgspec

from ._codec import EventRegistry
from ._errors import (
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
from ._reply import Reply, reply_factory
from ._writer import Writer

__all__ = ["AggregateType", "Aggregates", "AggregatesStatistics", "Pending"]


class AggregateType(Protocol):
    """What the engine needs of an aggregate class (``actors.Aggregate`` provides it)."""

    command_handlers: ClassVar[Mapping[type, Callable[[Any, Any], Sequence[Any] | None]]]
    event_appliers: ClassVar[Mapping[type, Callable[[Any, Any], None]]]
    emitted_types: ClassVar[frozenset[type]]
    snapshot_every: ClassVar[int | None]
    snapshot_format: ClassVar[int]
    __name__: str
    __qualname__: str

    def __call__(self) -> Any: ...

    def from_snapshot(self, data: bytes) -> Any: ...


class AggregatesStatistics(msgspec.Struct, frozen=True):
    """Counters of the aggregate actors."""

    live: int
    peak_live: int
    activations: int
    passivations: int
    reloads: int
    in_flight: int
    waiting: int


class _Actor:
    """One live aggregate: its state, its version, and its mailbox counters."""

    __slots__ = (
        "drained",
        "inflight",
        "kind",
        "room",
        "snapshot_version",
        "state",
        "stale",
        "stream_id",
        "touched",
        "version",
    )

    def __init__(self, kind: AggregateType, stream_id: str, state: Any, version: int) -> None:
        self.kind = kind
        self.stream_id = stream_id
        self.state = state
        self.version = version  # includes decisions still in flight
        self.snapshot_version = version
        self.inflight = 0  # decided, not yet durable: the mailbox's length
        self.room: list[Reply] = []  # senders waiting for a mailbox slot, FIFO
        self.drained: list[Reply] = []  # senders waiting for inflight == 0
        self.stale = False  # state may hold what never committed: reload before use
        self.touched = True  # used since the last idle sweep


class Pending:
    """A command in an actor's mailbox; ``await`` it for its :class:`Committed`.

    Returned by ``send_nowait``. Awaiting is optional: the command commits either way.
    """

    __slots__ = ("_reply",)

    def __init__(self, reply: Reply) -> None:
        self._reply = reply

    async def wait(self) -> Committed:
        """Wait until the command's events are durable.

        Raises the command's error (``StorageError``, ``ConcurrencyError``,
        ``EngineClosed``). If cancelled, the command may still commit.
        """
        result: Committed = await self._reply.wait()
        return result

    def __await__(self) -> Any:
        return self.wait().__await__()


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
        for kind in kinds:
            for event_type in kind.event_appliers:
                registry.register(event_type)
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
        woken = False  # once woken for room, this sender is next in line
        while True:
            actor = self._actor(kind, stream_id)
            if actor.stale:
                if actor.inflight:
                    await self._wait(actor.drained, front=False)
                else:
                    self._reload(actor)
                continue
            if actor.inflight >= self._mailbox_size or (actor.room and not woken):
                await self._wait(actor.room, front=woken)
                woken = True
                continue
            break
        result: Committed = await self._decide(
            actor, handler, command, correlation_id, causation_id
        ).wait()
        return result

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
            actor = self._actor(kind, stream_id)
        if actor.stale or actor.inflight >= self._mailbox_size or actor.room:
            raise Overloaded(
                f"the mailbox of {kind.__name__} {stream_id!r} is full "
                f"({self._mailbox_size} commands in flight)"
            )
        return self._decide(actor, handler, command, correlation_id, causation_id)

    def _handler(self, kind: AggregateType, command: Any) -> Callable[[Any, Any], Any]:
        if self._closed:
            raise EngineClosed("the engine is closed")
        if kind not in self._kinds:
            raise UnknownCommand(f"{getattr(kind, '__name__', kind)!r} is not hosted here")
        handler = kind.command_handlers.get(type(command))
        if handler is None:
            raise UnknownCommand(
                f"{kind.__name__} has no handler for {type(command).__name__}"
            )
        return handler

    async def _wait(self, queue: list[Reply], *, front: bool) -> None:
        """Park in ``queue`` until woken; fails with EngineClosed if the engine closes."""
        if self._closed:
            raise EngineClosed("the engine is closed")
        reply = self._new_reply()
        if front:
            queue.insert(0, reply)
        else:
            queue.append(reply)
        try:
            await reply.wait()
        finally:
            # Cancelled or closed: leave no dead entry that would swallow a wake-up.
            if reply in queue:
                queue.remove(reply)

    def _decide(
        self,
        actor: _Actor,
        handler: Callable[[Any, Any], Any],
        command: Any,
        correlation_id: str | None,
        causation_id: str | None,
    ) -> Pending:
        """The actor's turn: decide, evolve, submit. Synchronous, so nothing interleaves."""
        kind = actor.kind
        state = actor.state
        try:
            events = handler(state, command)
        except Rejected:
            raise
        except Exception as e:
            actor.stale = True  # the handler may have touched the state
            raise HandlerError(
                f"{kind.__name__}.{getattr(handler, '__name__', 'handler')} raised "
                f"{type(e).__name__}: {e}"
            ) from e
        except BaseException:
            actor.stale = True
            raise
        if events is None:
            events = ()
        elif not isinstance(events, list | tuple):
            actor.stale = True
            raise HandlerError(
                f"{kind.__name__} handler returned {type(events).__name__}, not a list of events"
            )
        appliers = kind.event_appliers
        encode = self._registry.encode
        encoded = []
        try:
            for event in events:
                applier = appliers.get(type(event))
                if applier is None:
                    raise HandlerError(
                        f"{kind.__name__} emitted {type(event).__name__}, which it cannot apply"
                    )
                # Encode first: an event that cannot be stored must not evolve the state.
                encoded.append(encode(event))
                applier(state, event)
        except BaseException as e:
            actor.stale = True
            if isinstance(e, EngineError) or not isinstance(e, Exception):
                raise
            raise HandlerError(f"{kind.__name__} failed to apply its events: {e!r}") from e
        expected = actor.version
        actor.version = expected + len(encoded)
        actor.inflight += 1
        actor.touched = True
        reply = self._new_reply()
        stream_id = actor.stream_id
        count = len(encoded)

        def done(outcome: AppendOutcome) -> None:
            actor.inflight -= 1
            if isinstance(outcome, EngineError):
                actor.stale = True
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
            # Hand the freed slot to the first sender still waiting (skip ones cancelled).
            while actor.room and not actor.room.pop(0).set_result(None):
                pass
            if not actor.inflight:
                if actor.drained:
                    waiting, actor.drained = actor.drained, []
                    for waiter in waiting:
                        waiter.set_result(None)
                self._maybe_snapshot(actor)

        self._writer.submit(
            Append(stream_id, expected, tuple(encoded), correlation_id, causation_id),
            done,
            events,
        )
        return Pending(reply)

    # -- activation, reload, passivation --------------------------------------------------

    def _actor(self, kind: AggregateType, stream_id: str) -> _Actor:
        actor = self._live.get(stream_id)
        if actor is None:
            return self._activate(kind, stream_id)
        if actor.kind is not kind:
            raise DefinitionError(
                f"stream {stream_id!r} is a live {actor.kind.__name__}, not a {kind.__name__}; "
                "stream ids are shared by all aggregate types"
            )
        self._live.move_to_end(stream_id)
        return actor

    def _activate(self, kind: AggregateType, stream_id: str) -> _Actor:
        """Load snapshot + tail from the log (synchronously) and make the actor live."""
        check_stream_id(stream_id)
        state, version = self._load(kind, stream_id)
        actor = _Actor(kind, stream_id, state, version)
        self._live[stream_id] = actor
        self._activations += 1
        if len(self._live) > self._max_live:
            self._evict_lru()
        self._peak = max(self._peak, len(self._live))
        return actor

    def _load(self, kind: AggregateType, stream_id: str) -> tuple[Any, int]:
        state: Any = None
        version = 0
        if kind.snapshot_every is not None:
            snapshot = self._log.load_snapshot(stream_id)
            if snapshot is not None and snapshot.format == kind.snapshot_format:
                try:
                    state = kind.from_snapshot(snapshot.state)
                    version = snapshot.version
                except Exception:
                    # An unreadable snapshot is only a lost shortcut: replay everything.
                    state = None
        try:
            if state is None:
                state = kind()
                version = 0
            appliers = kind.event_appliers
            decode = self._registry.decode
            for stored in self._log.read_stream(stream_id, version + 1):
                event = decode(stored.type, stored.payload)
                appliers[type(event)](state, event)
                version = stored.version
        except EngineError:
            raise
        except Exception as e:
            raise HandlerError(
                f"cannot rebuild {kind.__name__} {stream_id!r} from its events: {e!r}"
            ) from e
        return state, version

    def _reload(self, actor: _Actor) -> None:
        """Replace a stale actor (nothing in flight) with one rebuilt from the log."""
        self._reloads += 1
        state, version = self._load(actor.kind, actor.stream_id)
        actor.state, actor.version, actor.stale = state, version, False
        actor.snapshot_version = version

    def _maybe_snapshot(self, actor: _Actor) -> None:
        every = actor.kind.snapshot_every
        if every is None or actor.stale or actor.version - actor.snapshot_version < every:
            return
        try:
            data = actor.state.snapshot_state()
        except Exception:
            return  # a snapshot is an optimisation; the events remain the truth
        actor.snapshot_version = actor.version
        self._writer.save_snapshot(
            actor.stream_id, Snapshot(actor.version, actor.kind.snapshot_format, data)
        )

    def _evict_lru(self) -> None:
        """Passivate least recently used idle actors until within ``max_live``."""
        live = self._live
        for _ in range(len(live)):
            if len(live) <= self._max_live:
                return
            stream_id, actor = next(iter(live.items()))
            if actor.inflight or actor.room or actor.drained:
                live.move_to_end(stream_id)  # busy: it stays, and costs no wake-up
                continue
            del live[stream_id]
            self._passivations += 1

    def sweep_idle(self) -> int:
        """Passivate actors not used since the previous sweep; returns how many."""
        gone = [
            sid
            for sid, actor in self._live.items()
            if not actor.touched and not (actor.inflight or actor.room or actor.drained)
        ]
        for sid in gone:
            del self._live[sid]
        for actor in self._live.values():
            actor.touched = False
        self._passivations += len(gone)
        return len(gone)

    async def run_idle_sweeper(self, idle_timeout: float) -> None:
        """Passivate actors idle for between ``idle_timeout`` and twice that, forever."""
        while True:
            await anyio.sleep(idle_timeout)
            self.sweep_idle()

    def close(self) -> None:
        """Refuse new commands and fail every sender still waiting for room."""
        self._closed = True
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
            waiting=sum(len(a.room) + len(a.drained) for a in actors),
        )
