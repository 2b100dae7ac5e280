"""Hosting process managers: routing, durable steps, the outbox, deadlines, failures.

No table of its own: the log gives every guarantee, on any backend (LMDB, PostgreSQL,
memory)::

    committed event ──▶ router (a projector over the log, one per process manager)
                          route(event) -> process id -> instance (live, or replayed from
                          its stream "$pm:<name>:<id>")
                          apply + react (synchronous: one atomic turn on the event loop)
                          ONE append to the instance's stream: a ProcessStep holding the
                          message, the commands decided (the outbox, each with a command
                          id derived from the step), the deadlines set/cancelled/fired,
                          and whether it finished          ── one group commit ──┐
    router reads the step back from the log ◀─────────────────────────────────────┘
       -> pending sends (dispatched to the aggregates, bounded concurrency)
       -> pending deadlines (one task sleeps until the earliest)
    a dispatched command commits   -> its id is acknowledged ("$pm:<name>", one ProcessAcks
                                      event per batch of acknowledgements)
    a dispatched command is refused -> a SendFailed step on the instance (its reaction)

Exactly once in effect: a step is written whole or not at all; a crash before it is
durable re-routes the event after restart (the router starts from its saved position, and
an instance skips events at or below the last position it reacted to); a crash after it
re-dispatches what was not acknowledged with the same command id, which the log answers
with the original result (within the command-id retention, a day by default). A deadline
fires by a step that records it; the instance (its stream is the truth) ignores a firing
of a deadline it no longer has. A scheduled command (``Schedule(Send(...))``) fires the
same way, by a step whose outbox holds the command: from there it is any ``Send``.
Dispatch and deadlines start once the router has read the log up to its head at open, so
what is pending is exactly what the log says.

The router's position and its pending work are saved like a projector's cache, at a
position no later than the oldest step not yet durable; replaying from a saved position
only re-adds what later events remove again (every change is keyed, last one wins).

On a log several engines write, one engine at a time hosts this (``_process_leader.py``,
a term per lease held), and two that both do for a moment double nothing: a step expects
its instance's version (the loser's term restarts from the log: ``on_conflict``), an
instance reloaded from its stream skips what it reacted to and ignores a deadline it no
longer has or a refusal it was told already, and a command's id is its step's.

About 1,000 lines, one file on purpose: routing, the step's write and its read-back,
dispatch, acknowledgements and deadlines are one protocol whose invariant (every effect is
in the log before it happens, and what is pending is what the log says) is easiest to
check in one view. The records and the turn itself are ``_process_steps.py``.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import anyio
import msgspec

from ._aggregates import Aggregates, AggregateType
from ._codec import EventRegistry, snapshot_bytes
from ._decide import kind_name
from ._errors import (
    ConcurrencyError,
    DefinitionError,
    EngineClosed,
    EngineError,
    InvalidArgument,
    Overloaded,
    ProjectorFaulted,
    Rejected,
    StorageError,
    describe,
)
from ._fold import Parked, fault_for
from ._log import EventLog, check_stream_id
from ._metadata import CommandMeta
from ._process_steps import (
    SCHEDULED_SEND,
    STEP_NAME,
    Outgoing,
    ProcessAcks,
    ProcessManagerStatistics,
    ProcessStep,
    Timer,
    react,
)
from ._projectors import Broadcast, ProjectorHost
from ._records import ANY, Append, ProjectorCache, Recorded, StoredEvent
from ._reply import must_propagate
from ._timers import Clock
from ._writer import Writer

__all__ = ["ProcessManagers"]

_encoder = msgspec.msgpack.Encoder()

DISPATCH_CONCURRENCY = 256
"""Commands a process manager has in flight at once (a bound, not a tuning: each waits
for its aggregate's group commit, so more only queue in mailboxes)."""
RETRY_SECONDS = 0.05
"""Before retrying a dispatch or an acknowledgement that failed for a passing reason
(``StorageError``, ``Overloaded``)."""


class _PendingSend(msgspec.Struct, array_like=True, gc=False):
    process_stream: str
    correlation_id: str | None
    causation_id: str | None
    out: Outgoing


class _RouterCache(msgspec.Struct, array_like=True):
    sends: dict[str, _PendingSend] = {}
    timers: dict[str, dict[str, float]] = {}


class _Router:
    """The router's cache: the outbox not yet acknowledged and the deadlines set, as of
    its checkpoint (saved with it)."""

    def __init__(self) -> None:
        self.sends: dict[str, _PendingSend] = {}
        self.timers: dict[str, dict[str, float]] = {}

    def snapshot_state(self) -> bytes:
        return msgspec.msgpack.encode(_RouterCache(self.sends, self.timers))


class _Instance:
    """One process instance: the user's state and what its stream says of it."""

    __slots__ = (
        "correlation_id",
        "failed",
        "finished",
        "last_position",
        "process_id",
        "state",
        "stream_id",
        "timers",
        "unconfirmed",
        "version",
    )

    def __init__(self, stream_id: str, process_id: str, state: Any) -> None:
        self.stream_id = stream_id
        self.process_id = process_id
        self.state = state
        self.version = 0
        self.last_position = 0
        self.timers: dict[str, Timer] = {}
        self.finished = False
        self.correlation_id: str | None = None
        self.unconfirmed = 0
        # The commands whose refusal its stream records (a SendFailed step): delivered
        # once, even if another engine that also ran it was refused the same command.
        self.failed: set[str] | None = None


_encoder = msgspec.msgpack.Encoder()
_step_decoder = msgspec.msgpack.Decoder(ProcessStep)
_outgoing_decoder = msgspec.msgpack.Decoder(Outgoing)
_cache_decoder = msgspec.msgpack.Decoder(_RouterCache)


class _RouterHost(ProjectorHost):
    """A projector host whose cache is saved no later than its oldest step in flight."""

    manager: ProcessManagerHost

    def queue_save(self) -> None:
        if self._save is None or self._snapshot_every is None or self.fault is not None:
            return
        position = min(self.checkpoint, self.manager.oldest_unconfirmed() - 1)
        if position <= self._saved_at:
            return
        self._saved_at = position
        data = snapshot_bytes(self.instance)
        if data is None:
            self.snapshot_failures += 1
            return
        self._save(self.name, ProjectorCache(position, self.kind.snapshot_format, data))

    def resume(self) -> None:
        """Clear the router's halt, and retry every halted instance."""
        super().resume()
        self.manager.resume_instances()


class ProcessManagerHost:
    """One process manager: its router, live instances, outbox dispatch and acks."""

    def __init__(self, kind: Any, hub: ProcessManagers) -> None:
        from ..actors._process_manager import SendFailed

        self.kind = kind
        self.name: str = kind.name
        self.prefix = f"$pm:{self.name}:"
        self.acks_stream = f"$pm:{self.name}"
        self.hub = hub
        self._send_failed = SendFailed
        self.live: OrderedDict[str, _Instance] = OrderedDict()
        # Messages delivered to instances (deadlines, SendFailed), by stored name: any type
        # it reacts to or applies may be a deadline's message (what Schedule accepts), a
        # routed event type too; an unrouted one wins a clash of names.
        self._messages: dict[str, type] = {SendFailed.__name__: SendFailed}
        messages = (*kind.reactions, *kind.message_appliers)
        for routed in (False, True):
            for message in messages:
                if (kind.routes.get(message, (False, None))[1] is not None) == routed:
                    self._messages.setdefault(message.__name__, message)
        self._unconfirmed: dict[int, int] = {}  # trigger position -> steps in flight
        self._steps_in_flight = 0  # of every kind (deadlines' and failures' too)
        # Halted instances: stream -> (the log position it halted at, 0 for a deadline or
        # a failure; the message's type; the error). Their messages wait for the resume.
        self.halted: dict[str, tuple[int, str, BaseException]] = {}
        self._queue: deque[str] = deque()  # command ids to dispatch
        self._inflight: set[str] = set()
        self._acks: list[str] = []
        self._acks_due = anyio.Event()
        self._queued = anyio.Event()
        self.ready = False  # the router has read the log as it was at open
        self.started = self.finished = self.steps = self.ignored = 0
        self.dispatched = self.failures_delivered = self.fired = 0
        self.host = self._router_host()

    # -- the router ------------------------------------------------------------------------

    def _router_host(self) -> _RouterHost:
        manager = self
        appliers: dict[type, Callable[[Any, Any, Recorded], None]] = {
            ProcessStep: lambda router, step, meta: manager.on_step(router, step, meta),
            ProcessAcks: lambda router, acks, meta: manager.on_acks(router, acks, meta),
        }
        for message, (_, key) in self.kind.routes.items():
            if key is not None:
                appliers[message] = lambda router, event, meta: manager.route(event, meta)

        class Router(_Router):
            event_appliers = appliers
            query_functions: frozenset[Callable[..., Any]] = frozenset()
            on_error = self.kind.on_error
            max_parked = self.kind.max_parked
            name = self.acks_stream
            snapshot_every = self.kind.cache_every
            snapshot_format = 1

            @classmethod
            def from_snapshot(cls, data: bytes) -> Router:
                cache = _cache_decoder.decode(data)
                router = cls()
                router.sends, router.timers = dict(cache.sends), dict(cache.timers)
                return router

        hub = self.hub
        router_kind: Any = Router  # a ProjectorType, as far as the host can tell
        host = _RouterHost(
            router_kind,
            log=hub.log,
            broadcast=hub.broadcast,
            registry=hub.registry,
            save=hub.writer.save_projector_cache,
            read_limiter=hub.read_limiter,
        )
        host.manager = self
        return host

    @property
    def router(self) -> _Router:
        router: _Router = self.host.instance
        return router

    def route(self, event: Any, meta: Recorded) -> None:
        """Turn the instance ``event`` is for (the router's applier of routed events)."""
        start, key = self.kind.routes[type(event)]
        process_id = key(event, meta)
        if process_id is None:
            return
        if type(process_id) is not str or not process_id:
            raise InvalidArgument(f"a process id must be a non-empty str, not {process_id!r}")
        stream_id = self.prefix + process_id
        halted = self.halted.get(stream_id)
        if halted is not None:
            if not halted[0]:  # halted on a deadline or a failure: mark its first miss
                self.halted[stream_id] = (meta.position, halted[1], halted[2])
            return  # read again when it resumes (or after a restart)
        try:
            # A process id no stream can be named after (a NUL, too long) halts (or parks)
            # that process only: one bad event must not stop every other process.
            check_stream_id(stream_id)
            instance = self._instance(stream_id, process_id)
            if instance.finished or (instance.version == 0 and not start):
                self.ignored += 1
                return
            if meta.position <= instance.last_position:
                return  # reacted to before a restart: its step is in the log
            if instance.version == 0:
                instance.correlation_id = meta.correlation_id or stream_id
            payload = bytes(meta.payload) if isinstance(meta, StoredEvent) else b""
            self._turn(
                instance, event, meta.type, payload, meta.position, f"position:{meta.position}"
            )
            if instance.version == 1:
                self.started += 1
        except BaseException as e:
            if must_propagate(e) or self.kind.on_error == "park":
                raise  # the router parks it (the fold's own path)
            self.halted[stream_id] = (meta.position, meta.type, e)

    def on_step(self, router: _Router, step: ProcessStep, meta: Recorded) -> None:
        """Record a durable step's outbox and deadlines (the router's applier of steps)."""
        stream_id = meta.stream_id
        if not stream_id.startswith(self.prefix):
            return
        for out in step.sends:
            router.sends[out.command_id] = _PendingSend(
                stream_id, meta.correlation_id, meta.causation_id, out
            )
            if self.ready:
                self._queue.append(out.command_id)
        if step.sends and self.ready:
            self._queued.set()
        if step.failed is not None:
            router.sends.pop(step.failed, None)
        timers = router.timers.get(stream_id)
        if step.finished:
            router.timers.pop(stream_id, None)
            return
        if step.schedules or step.cancels or step.fired is not None:
            if timers is None:
                timers = router.timers[stream_id] = {}
            for key in step.cancels:
                timers.pop(key, None)
            if step.fired is not None:
                timers.pop(step.fired, None)
            for timer in step.schedules:
                timers[timer.key] = timer.due
                if self.ready:
                    self.hub.arm(self, stream_id, timer.key, timer.due)
            if not timers:
                del router.timers[stream_id]

    def on_acks(self, router: _Router, acks: ProcessAcks, meta: Recorded) -> None:
        """Forget acknowledged commands (the router's applier of acknowledgements)."""
        if meta.stream_id == self.acks_stream:
            for command_id in acks.command_ids:
                router.sends.pop(command_id, None)

    # -- instances -------------------------------------------------------------------------

    def _instance(self, stream_id: str, process_id: str) -> _Instance:
        instance = self.live.get(stream_id)
        if instance is not None:
            self.live.move_to_end(stream_id)
            return instance
        instance = self._load(stream_id, process_id)
        self.live[stream_id] = instance
        if len(self.live) > self.kind.max_live:
            self._passivate()
        return instance

    def _passivate(self) -> None:
        """Drop the least recently used idle instances beyond ``max_live`` (one with a step
        in flight stays: its state is ahead of its stream)."""
        excess = len(self.live) - self.kind.max_live
        for stream_id in list(itertools.islice(self.live, excess * 2 + 1)):
            if excess <= 0:
                break
            if self.live[stream_id].unconfirmed == 0:
                del self.live[stream_id]
                excess -= 1

    def _load(self, stream_id: str, process_id: str) -> _Instance:
        """The instance as its stream says: every step's message replayed through the
        appliers (reactions do not run again: their effects are in the steps)."""
        instance = _Instance(stream_id, process_id, self.kind())
        for stored in self.hub.log.read_stream(stream_id):
            if stored.type != STEP_NAME:
                raise DefinitionError(
                    f"stream {stream_id!r} is not process manager {self.name}'s instance"
                )
            step = _step_decoder.decode(stored.payload)
            if step.message_type != SCHEDULED_SEND:  # a scheduled command's firing: none
                message = self._message(step)
                applier = self.kind.message_appliers.get(type(message))
                if applier is not None:
                    applier(instance.state, message)
            instance.version = stored.version
            if instance.correlation_id is None:
                instance.correlation_id = stored.correlation_id
            self._evolve(instance, step)
        return instance

    def _message(self, step: ProcessStep) -> Any:
        if step.trigger > 0:
            return self.hub.registry.decode(step.message_type, step.message)
        cls = self._messages.get(step.message_type)
        if cls is None:
            raise DefinitionError(
                f"process manager {self.name} no longer knows message {step.message_type!r}"
            )
        return msgspec.msgpack.decode(step.message, type=cls)

    @staticmethod
    def _evolve(instance: _Instance, step: ProcessStep) -> None:
        if step.trigger > instance.last_position:
            instance.last_position = step.trigger
        if step.failed is not None:
            if instance.failed is None:
                instance.failed = set()
            instance.failed.add(step.failed)
        for key in step.cancels:
            instance.timers.pop(key, None)
        if step.fired is not None:
            instance.timers.pop(step.fired, None)
        for timer in step.schedules:
            instance.timers[timer.key] = timer
        if step.finished:
            instance.finished = True
            instance.timers.clear()

    def _turn(
        self,
        instance: _Instance,
        message: Any,
        message_type: str,
        payload: bytes,
        trigger: int,
        causation_id: str,
        *,
        fired: str | None = None,
        failed: str | None = None,
    ) -> None:
        """Apply, react, and submit the step: synchronous, so atomic on the event loop.

        If anything raises, the instance is dropped from memory (its state may be half
        changed) and reloaded from its stream when next needed; the caller decides
        whether that halts or parks the process manager.
        """
        try:
            effects, _ = react(self.kind, instance.state, message, self.hub.clock.now())
            version = instance.version + 1
            sends = tuple(
                self._outgoing(send, f"{instance.stream_id}/{version}.{index}")
                for index, send in enumerate(effects.sends)
            )
            schedules = tuple(self._timer(key, due, m) for key, due, m in effects.schedules)
            if trigger == 0:
                payload = _encoder.encode(message)
            step = ProcessStep(
                instance.process_id,
                trigger,
                message_type,
                payload,
                sends,
                schedules,
                effects.cancels,
                fired,
                failed,
                effects.finished,
            )
            entry, back = self.hub.registry.encode_read_back(step)
            append = Append(
                instance.stream_id,
                instance.version,
                (entry,),
                correlation_id=instance.correlation_id,
                causation_id=causation_id,
                aggregate_name=self.acks_stream if instance.version == 0 else None,
            )
        except BaseException as e:
            if not must_propagate(e):
                self.live.pop(instance.stream_id, None)
            raise
        self._submit(instance, append, back, trigger)

    def _fire_send(self, instance: _Instance, timer: Timer, causation_id: str) -> None:
        """Fire a scheduled command: a step whose outbox holds it, with the command id a
        ``Send`` decided by this step would get; no reaction runs. Dispatched, retried
        and acknowledged by the outbox, as any ``Send``."""
        scheduled = _outgoing_decoder.decode(timer.message)
        out = Outgoing(
            f"{instance.stream_id}/{instance.version + 1}.0",
            scheduled.aggregate,
            scheduled.stream_id,
            scheduled.command_type,
            scheduled.command,
        )
        step = ProcessStep(instance.process_id, 0, SCHEDULED_SEND, b"", (out,), fired=timer.key)
        entry, back = self.hub.registry.encode_read_back(step)
        append = Append(
            instance.stream_id,
            instance.version,
            (entry,),
            correlation_id=instance.correlation_id,
            causation_id=causation_id,
        )
        self._submit(instance, append, back, 0)

    def _submit(self, instance: _Instance, append: Append, back: ProcessStep, trigger: int) -> None:
        """Hand a step to the writer and count it in flight (its state is ahead of its
        stream until it is durable)."""
        version = instance.version + 1
        self.hub.writer.submit(append, self._confirmation(instance, trigger), [back])
        instance.version = version
        instance.unconfirmed += 1
        self._steps_in_flight += 1
        if trigger:
            self._unconfirmed[trigger] = self._unconfirmed.get(trigger, 0) + 1
        self._evolve(instance, back)
        if back.finished:
            self.finished += 1

    def _timer(self, key: str, due: float, message: Any) -> Timer:
        """A deadline as stored: a scheduled ``Send`` is checked now (a bad one fails the
        turn that decided it, as a ``Send`` does) and stored without its command id."""
        from ..actors._process_manager import Send

        if type(message) is Send:
            out = self._outgoing(message, "")
            return Timer(key, due, SCHEDULED_SEND, _encoder.encode(out))
        return Timer(key, due, type(message).__name__, _encoder.encode(message))

    def _outgoing(self, send: Any, command_id: str) -> Outgoing:
        kind = self.hub.aggregate(send.aggregate)
        if type(send.command) not in kind.command_handlers:
            raise InvalidArgument(
                f"{describe(send.aggregate)} has no handler for {describe(send.command)}"
            )
        stream_id = check_stream_id(send.stream_id)
        try:
            data = _encoder.encode(send.command)
        except (TypeError, msgspec.EncodeError) as e:
            raise InvalidArgument(f"cannot store {describe(send.command)}: {e}") from e
        return Outgoing(
            command_id,
            self.hub.aggregate_name(kind),
            stream_id,
            type(send.command).__name__,
            data,
        )

    def _confirmation(self, instance: _Instance, trigger: int) -> Callable[[Any], None]:
        def done(outcome: Any) -> None:
            instance.unconfirmed -= 1
            self._steps_in_flight -= 1
            if trigger:
                left = self._unconfirmed[trigger] - 1
                if left:
                    self._unconfirmed[trigger] = left
                else:
                    del self._unconfirmed[trigger]
            if isinstance(outcome, EngineError):
                # Its state is ahead of its stream: reload it, and read the event again.
                self.live.pop(instance.stream_id, None)
                on_conflict = self.hub.on_conflict
                if on_conflict is not None and isinstance(outcome, ConcurrencyError):
                    # Another engine wrote this instance (on a shared log, a leader that
                    # lost its lease): this term's memory is stale; start afresh.
                    on_conflict()
                    return
                if not isinstance(outcome, EngineClosed):
                    self._halt_at(trigger, outcome)
                return
            self.steps += 1
            if instance.finished and instance.unconfirmed == 0:
                self.live.pop(instance.stream_id, None)  # finished: forgotten

        return done

    def oldest_unconfirmed(self) -> int:
        """The trigger position of the oldest step not yet durable, or of the oldest event
        an instance halted at (beyond the head if none): the router's cache is saved no
        later than just before it, so a restart reads it again."""
        halted = [position for position, _, _ in self.halted.values() if position]
        return min([*self._unconfirmed, *halted], default=2**63)

    def _halt_at(self, trigger: int, error: BaseException) -> None:
        host = self.host
        if trigger:
            host.checkpoint = min(host.checkpoint, trigger - 1)
        if host.fault is None:
            host._halt(trigger or host.checkpoint, self.name, error)

    def _fail_turn(self, stream_id: str, what: str, error: BaseException) -> bool:
        """A deadline's or a failure's turn raised: park it, or halt the instance. True if
        parked (the message is dropped for the instance)."""
        if self.kind.on_error == "park":
            self.host.parked_total += 1
            self.host.parked.append(
                Parked(0, stream_id, what, repr(error)[:1024])  # no log position
            )
            return True
        self.halted.setdefault(stream_id, (0, what, error))
        return False

    def fault(self) -> ProjectorFaulted | None:
        """The error of the oldest halted instance (None if none is halted)."""
        if not self.halted:
            return None
        stream_id, (position, what, error) = next(iter(self.halted.items()))
        return fault_for(f"{self.name} {stream_id}", position, what, error)

    def resume_instances(self) -> None:
        """Retry every halted instance: from the event it halted at, each event routed to
        it up to the router's checkpoint, read from the log now (synchronously: nothing
        else is routed meanwhile, so it rejoins the router exactly at its checkpoint)."""
        halted, self.halted = self.halted, {}
        if not halted:
            return
        names = {
            name
            for message, (_, key) in self.kind.routes.items()
            if key is not None
            for name, _ in self.hub.registry.readers(message)
        }
        start = min((p for p, _, _ in halted.values() if p), default=0)
        if not start:
            return
        position, checkpoint = start, self.host.checkpoint
        while position <= checkpoint:
            batch = self.hub.log.read_all(position, 1024)
            if not batch:
                break
            for stored in batch:
                if stored.position > checkpoint:
                    break
                if stored.type in names:
                    event = self.hub.registry.decode(stored.type, stored.payload)
                    _, key = self.kind.routes[type(event)]
                    process_id = key(event, stored)
                    stream_id = None if process_id is None else self.prefix + process_id
                    if stream_id in halted and halted[stream_id][0] <= stored.position:
                        self.route(event, stored)
            position = batch[-1].position + 1

    # -- dispatch --------------------------------------------------------------------------

    def start_dispatch(self) -> None:
        """The router has read the log as it was at open: dispatch what it left pending,
        arm its deadlines, and from now on what each new step adds."""
        self.ready = True
        router = self.router
        self._queue.extend(router.sends)
        if self._queue:
            self._queued.set()
        for stream_id, timers in router.timers.items():
            for key, due in timers.items():
                self.hub.arm(self, stream_id, key, due)

    async def run_dispatch(self, limiter: anyio.Semaphore) -> None:
        """Send each queued command, at most ``DISPATCH_CONCURRENCY`` at once."""
        async with anyio.create_task_group() as tg:
            while True:
                if not self._queue:
                    self._queued = anyio.Event()
                    await self._queued.wait()
                    continue
                command_id = self._queue.popleft()
                pending = self.router.sends.get(command_id)
                if pending is None or command_id in self._inflight:
                    continue
                try:  # no checkpoint while there is room: a batch of sends goes at once
                    limiter.acquire_nowait()
                except anyio.WouldBlock:
                    await limiter.acquire()
                self._inflight.add(command_id)
                tg.start_soon(self._dispatch, command_id, pending, limiter)

    async def _dispatch(
        self, command_id: str, pending: _PendingSend, limiter: anyio.Semaphore
    ) -> None:
        try:
            out = pending.out
            meta = CommandMeta(
                pending.correlation_id, pending.causation_id, command_id, self.acks_stream, None
            )
            while True:
                try:
                    kind = self.hub.aggregate_named(out.aggregate)
                    command = self.hub.decode_command(kind, out.command_type, out.command)
                    await self.hub.aggregates.send(kind, out.stream_id, command, meta)
                except (StorageError, ConcurrencyError, Overloaded):
                    await anyio.sleep(RETRY_SECONDS)  # passing: the command decides again
                    continue
                except EngineClosed:
                    return
                except EngineError as e:
                    if (
                        self.host.fault is None
                        and pending.process_stream not in self.halted
                        and self._failed(command_id, pending, e)
                    ):
                        return
                    # Halted: the instance cannot be told now. Decided again later (a
                    # refusal records nothing), once it resumes.
                    await anyio.sleep(RETRY_SECONDS * 20)
                    continue
                self.dispatched += 1
                self.router.sends.pop(command_id, None)
                self._acks.append(command_id)
                self._acks_due.set()
                return
        finally:
            self._inflight.discard(command_id)
            limiter.release()

    def _failed(self, command_id: str, pending: _PendingSend, error: EngineError) -> bool:
        """Deliver a refused command back to its instance as a ``SendFailed`` step; False
        if the instance halted on it (then it stays pending)."""
        out = pending.out
        process_id = pending.process_stream[len(self.prefix) :]
        try:
            instance = self._instance(pending.process_stream, process_id)
            if instance.failed is not None and command_id in instance.failed:
                # Its refusal is delivered already (by another engine that ran it too):
                # the step that says so retires it from the outbox when read back.
                return True
            if instance.finished or instance.version == 0:
                self.router.sends.pop(command_id, None)
                self._acks.append(command_id)  # nobody to tell: not retried either
                self._acks_due.set()
                return True
            failure = self._send_failed(
                command_id,
                out.aggregate,
                out.stream_id,
                out.command_type,
                type(error).__name__,
                str(error),
                isinstance(error, Rejected),
            )
            self._turn(instance, failure, "SendFailed", b"", 0, command_id, failed=command_id)
            # Still pending until its step is read back (``on_step`` retires it then): a
            # cache saved before that must not have dropped it, as the step may yet fail
            # alone (on a shared log, a conflict with another engine's step).
            self.failures_delivered += 1
            return True
        except BaseException as e:
            if must_propagate(e):
                raise
            if not self._fail_turn(pending.process_stream, "SendFailed", e):
                return False
            self.router.sends.pop(command_id, None)
            self._acks.append(command_id)
            self._acks_due.set()
            return True

    async def run_acks(self) -> None:
        """Write acknowledged command ids, a batch per append (riding group commits)."""
        registry = self.hub.registry
        while True:
            if not self._acks:
                self._acks_due = anyio.Event()
                await self._acks_due.wait()
                continue
            ids, self._acks = self._acks, []
            entry, _ = registry.encode_read_back(ProcessAcks(tuple(ids)))
            try:
                await self.hub.writer.append(Append(self.acks_stream, ANY, (entry,)))
            except EngineClosed:
                return
            except EngineError:
                self._acks[:0] = ids  # retried: an id not acknowledged is only re-sent
                await anyio.sleep(RETRY_SECONDS)

    def flush_acks(self) -> None:
        """Queue what is left to acknowledge into the writer's last commit (at close)."""
        if self._acks:
            entry, _ = self.hub.registry.encode_read_back(ProcessAcks(tuple(self._acks)))
            self._acks = []
            with contextlib.suppress(EngineClosed):  # closed: re-sent after the restart
                self.hub.writer.submit(Append(self.acks_stream, ANY, (entry,)), _ignore)

    # -- deadlines -------------------------------------------------------------------------

    def fire(self, stream_id: str, key: str, due: float) -> None:
        """A deadline is due: deliver its message, unless the instance no longer has it."""
        if self.host.fault is not None or stream_id in self.halted:
            # Halted: put off, tried again in a second, so a resume finds it armed.
            self.hub.arm(self, stream_id, key, due, self.hub.clock.now() + 1.0)
            return
        try:
            instance = self._instance(stream_id, stream_id[len(self.prefix) :])
            timer = instance.timers.get(key)
            if timer is None or timer.due != due or instance.finished:
                return
            causation_id = f"{stream_id}#deadline:{key}"
            if timer.message_type == SCHEDULED_SEND:
                self._fire_send(instance, timer, causation_id)
            else:
                message = self._messages[timer.message_type]
                decoded: Any = msgspec.msgpack.decode(timer.message, type=message)
                self._turn(instance, decoded, timer.message_type, b"", 0, causation_id, fired=key)
            self.fired += 1
        except BaseException as e:
            if must_propagate(e):
                raise
            if not self._fail_turn(stream_id, key, e):
                self.hub.arm(self, stream_id, key, due, self.hub.clock.now() + 1.0)

    # -- inspection ------------------------------------------------------------------------

    def settled(self) -> bool:
        """Caught up with the head, nothing in flight, nothing left to send or to ack."""
        host = self.host
        return (
            self.ready
            and host.fault is None
            and not self.halted
            and host.checkpoint >= self.hub.broadcast.head
            and not self.router.sends
            and not self._inflight
            and not self._acks
            and not self._steps_in_flight
        )

    def statistics(self) -> ProcessManagerStatistics:
        """Counters of this process manager (see :class:`ProcessManagerStatistics`)."""
        host = self.host
        stats = host.statistics()
        return ProcessManagerStatistics(
            name=self.name,
            state="halted" if self.halted else stats.state,
            checkpoint=host.checkpoint,
            lag=stats.lag,
            live_instances=len(self.live),
            started=self.started,
            finished=self.finished,
            steps=self.steps,
            ignored=self.ignored,
            pending_sends=len(self.router.sends),
            dispatched=self.dispatched,
            failures_delivered=self.failures_delivered,
            pending_deadlines=sum(len(t) for t in self.router.timers.values()),
            deadlines_fired=self.fired,
            parked=host.parked_total,
            fault=stats.fault if host.fault is not None else _text(self.fault()),
            halted_instances=len(self.halted),
        )


_MIN_COMPACT = 1024  # heap entries before the first compaction


def _text(fault: ProjectorFaulted | None) -> str | None:
    return None if fault is None else str(fault)


def _ignore(outcome: Any) -> None:
    """The outcome of a best-effort write at close (a lost ack only means a re-send)."""


class ProcessManagers:
    """Every process manager of one engine, and the one task that fires deadlines."""

    def __init__(
        self,
        kinds: Sequence[Any],
        *,
        log: EventLog,
        writer: Writer,
        aggregates: Aggregates,
        aggregate_kinds: Iterable[AggregateType],
        registry: EventRegistry,
        broadcast: Broadcast,
        clock: Clock,
        read_limiter: anyio.CapacityLimiter | None,
    ) -> None:
        self.log = log
        self.writer = writer
        self.aggregates = aggregates
        self.registry = registry
        self.broadcast = broadcast
        self.clock = clock
        self.read_limiter = read_limiter
        registry.register(ProcessStep)
        registry.register(ProcessAcks)
        self._kinds: dict[str, AggregateType] = {}
        self._names: dict[AggregateType, str] = {}
        self._commands: dict[AggregateType, dict[str, type]] = {}
        for kind in aggregate_kinds:
            name = getattr(kind, "aggregate_name", None) or kind_name(kind)
            self._kinds[name] = kind
            self._names[kind] = name
            self._commands[kind] = {c.__name__: c for c in kind.command_handlers}
        self.hosts = [ProcessManagerHost(kind, self) for kind in kinds]
        if len({h.name for h in self.hosts}) != len(self.hosts):
            raise DefinitionError("two process managers share a name")
        # (when to fire, seq, host, instance stream, key, due): ``when`` is ``due`` unless
        # the firing was put off (its process manager was halted).
        self._deadlines: list[tuple[float, int, ProcessManagerHost, str, str, float]] = []
        self._seq = itertools.count()
        # A deadline replaced or cancelled leaves its entry in the heap until it comes up
        # (then ignored): compacted when the heap outgrows twice what it held after the
        # last compaction, so it stays proportional to the deadlines set, not the re-arms.
        self._compact_at = _MIN_COMPACT
        self._armed = anyio.Event()
        self._sleep: anyio.CancelScope | None = None
        self._sleeping_until = float("inf")
        self._scope: anyio.CancelScope | None = None
        # Set on a log several engines write (``_process_leader.py``): called when a step
        # finds its instance moved by another engine, instead of halting.
        self.on_conflict: Callable[[], None] | None = None

    def aggregate(self, cls: object) -> AggregateType:
        """The hosted aggregate class ``cls``.

        Raises:
            InvalidArgument: it is not hosted by this engine.
        """
        with contextlib.suppress(TypeError):  # unhashable: not an aggregate either
            if cls in self._names:
                return cls
        raise InvalidArgument(f"{describe(cls)} is not an aggregate this engine hosts")

    def aggregate_name(self, kind: AggregateType) -> str:
        """``kind``'s name in the log."""
        return self._names[kind]

    def aggregate_named(self, name: str) -> AggregateType:
        """The hosted aggregate stored under ``name``.

        Raises:
            InvalidArgument: none is (the engine was opened without it).
        """
        kind = self._kinds.get(name)
        if kind is None:
            raise InvalidArgument(f"no hosted aggregate is named {name!r}")
        return kind

    def decode_command(self, kind: AggregateType, name: str, data: bytes) -> Any:
        """A stored outbox command, decoded as ``kind``'s command type ``name``.

        Raises:
            InvalidArgument: ``kind`` has no such command, or the bytes do not decode.
        """
        cls = self._commands[kind].get(name)
        if cls is None:
            raise InvalidArgument(f"{describe(kind)} has no command named {name!r}")
        try:
            return msgspec.msgpack.decode(data, type=cls)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            raise InvalidArgument(f"a stored {name} no longer decodes: {e}") from e

    def host_of(self, kind: object) -> ProjectorHost | None:
        """The router of process manager class ``kind``, if hosted."""
        for host in self.hosts:
            if host.kind is kind:
                return host.host
        return None

    # -- deadlines -------------------------------------------------------------------------

    def arm(
        self,
        host: ProcessManagerHost,
        stream_id: str,
        key: str,
        due: float,
        when: float | None = None,
    ) -> None:
        """Add a deadline to the heap (to fire at ``when``, by default ``due``); wake the
        sleeper if it is now the earliest."""
        when = due if when is None else when
        heapq.heappush(self._deadlines, (when, next(self._seq), host, stream_id, key, due))
        if len(self._deadlines) > self._compact_at:
            self._compact()
        self._armed.set()
        if when < self._sleeping_until and self._sleep is not None:
            self._sleep.cancel()

    def _compact(self) -> None:
        """Drop the heap entries of deadlines the routers no longer hold (replaced,
        cancelled, fired, finished) and duplicates, in place (the deadline task holds the
        list). Amortized O(1) a push: it runs after the heap has doubled."""
        kept: dict[tuple[int, str, str, float], tuple[Any, ...]] = {}
        for entry in self._deadlines:
            _, _, host, stream_id, key, due = entry
            if host.router.timers.get(stream_id, {}).get(key) != due:
                continue  # no longer set: firing it would be ignored anyway
            ident = (id(host), stream_id, key, due)
            if ident not in kept or entry < kept[ident]:
                kept[ident] = entry  # the earliest of duplicates (a put-off one is later)
        self._deadlines[:] = kept.values()
        heapq.heapify(self._deadlines)
        self._compact_at = max(_MIN_COMPACT, 2 * len(self._deadlines))

    async def _run_deadlines(self) -> None:
        """One task for every deadline: sleep until the earliest, fire what is due."""
        deadlines = self._deadlines
        while True:
            if not deadlines:
                self._armed = anyio.Event()
                await self._armed.wait()
                continue
            due = deadlines[0][0]
            if due > self.clock.now():
                with anyio.CancelScope() as scope:
                    self._sleep, self._sleeping_until = scope, due
                    await self.clock.sleep_until(due)
                self._sleep, self._sleeping_until = None, float("inf")
                continue
            _, _, host, stream_id, key, due = heapq.heappop(deadlines)
            host.fire(stream_id, key, due)
            await anyio.lowlevel.checkpoint()

    # -- the tasks -------------------------------------------------------------------------

    async def run(self, head: int) -> None:
        """Run every router, dispatcher and the deadline task until :meth:`stop`."""
        async with anyio.create_task_group() as tg:
            self._scope = tg.cancel_scope
            for host in self.hosts:
                tg.start_soon(host.host.run)
            for host in self.hosts:
                while True:
                    try:
                        await host.host.wait_position(head)
                        break
                    except EngineError:  # halted on the way: wait for its resume
                        await anyio.sleep(RETRY_SECONDS)
            limiter = anyio.Semaphore(DISPATCH_CONCURRENCY)
            for host in self.hosts:
                host.start_dispatch()
                tg.start_soon(host.run_dispatch, limiter)
                tg.start_soon(host.run_acks)
            tg.start_soon(self._run_deadlines)

    def stop(self) -> None:
        """Stop dispatching and firing (the engine is closing); queue the last acks and
        the routers' caches into the writer's last commit."""
        if self._scope is not None:
            self._scope.cancel()
        for host in self.hosts:
            # Best effort, and never raising: the engine's shutdown must go on (a lost ack
            # is a re-send answered by the log, a lost save a longer replay).
            try:
                host.flush_acks()
                host.host.queue_save()
            except Exception:  # XX: not reported anywhere yet
                continue

    def end_term(self) -> None:
        """This engine no longer runs them (its lease lost, or its term restarted): queue the
        last acks, and stop waking the routers. The routers' caches are not saved: the
        next term (here or elsewhere) starts from the log, which holds every durable step."""
        for host in self.hosts:
            with contextlib.suppress(EngineError):  # a lost ack is only a re-send
                host.flush_acks()
            self.broadcast.unsubscribe(host.host)

    def settled(self) -> bool:
        """True when every process manager is settled (see ``Engine.wait_settled``).

        Raises:
            ProjectorFaulted: one is halted (it would never settle).
        """
        for host in self.hosts:
            if host.host.fault is not None:
                raise host.host.fault_error()
            fault = host.fault()
            if fault is not None:
                raise fault
        return all(host.settled() for host in self.hosts)

    def statistics(self) -> tuple[ProcessManagerStatistics, ...]:
        """Each process manager's counters."""
        return tuple(host.statistics() for host in self.hosts)

    def parked(self, kind: object) -> list[Parked] | None:
        """The parked messages of process manager class ``kind`` (None: not hosted)."""
        host = self.host_of(kind)
        return None if host is None else list(host.parked)
