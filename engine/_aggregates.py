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
On a log others append to the reload is usually a catch-up (issue 15, session 7): a
decision made with nothing in flight starts from the durable state, so its ``before``
copy (below) is kept; when ``restore`` can put it back exactly, only the events after it
are read and applied (``_catch_up_from``; the same ``replay`` as a full load). Otherwise
(a list in the state, say) the snapshot and every event after it are read, as always.

The actor itself (its counters and the queues of senders waiting on its mailbox) is
``_actor.Actor``; which actors stay in memory is ``_passivation.LiveActors``; the decide
step the turn runs is ``_decide.decide``, shared with the test kit.

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

Wake-ups per command: one (the caller, when its commit lands), plus the writer's one per
batch; two more only for a sender that had to wait for room.

Why one module over 450 lines: the hot path, its slow paths (waiting for room, for a live
slot, for in-flight commands before a rejection is final) and the completion callback all
move the same actor counters, and their invariants are only checkable side by side; the
actor, passivation and the decide step already live in their own modules. On a log others
append to (issue 15) the same counters carry the retries too: ``send``'s (``_again``,
``_confirm``) and ``send_nowait``'s in engine tasks (``_Redeciding``).
"""

from __future__ import annotations

import copy
import math
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Container, Sequence
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import msgspec
from anyio.abc import TaskGroup

from ._actor import (
    Actor,
    Pending,
    Waiters,
    load_state,
    replay,
    stream_reader,
)
from ._codec import EventRegistry, snapshot_bytes
from ._decide import AggregateType, decide, kind_name, restore
from ._errors import (
    ConcurrencyError,
    DefinitionError,
    DuplicateCommand,
    EngineClosed,
    EngineError,
    Overloaded,
    Rejected,
    StorageError,
    UnknownCommand,
)
from ._follow import follows_others
from ._log import AppendOutcome, EventLog, check_stream_id, reads_block
from ._metadata import CommandMeta
from ._passivation import AtCapacity, LiveActors
from ._records import Append, AppendResult, Committed, Snapshot, StoredEvent
from ._reply import Reply, must_propagate, reply_factory
from ._writer import Writer, completing

__all__ = [
    "CATCH_UP_INLINE",
    "CONFLICT_RETRIES",
    "AggregateType",
    "Aggregates",
    "AggregatesStatistics",
    "Pending",
]

CONFLICT_RETRIES = 8
"""On a log others append to: how many times a command found decided on a stale aggregate
is decided again (reloaded first) before ``send`` raises ``ConcurrencyError``."""

CATCH_UP_INLINE = 64
"""On a log whose reads block: the most events a stale aggregate's catch-up reads inline,
on the event loop (a conflict leaves it a few behind); the rest is read in a worker
thread, so a long way behind never blocks the loop for long."""

FOLLOWER_WAIT = 0.02
"""On a log others append to: the longest a stale aggregate's catch-up waits for the
follower's next read to bring the events it misses (``Aggregates._await_follower``),
and how recently the follower must have brought others' events for it to wait at all
(it reads every few milliseconds while others keep committing); then it reads them."""


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
    retries: int = 0
    """Commands decided again because their aggregate was stale (a log others append to:
    an append that conflicted, or a rejection decided before another process's events)."""
    refreshed: int = 0
    """Events other processes committed that were applied to a cached aggregate as the
    follower read them (a log others append to), saving a conflict and a reload."""
    redeciding: int = 0
    """``send_nowait`` commands whose outcome an engine task is settling right now (a log
    others append to: decided again after a conflict, or a rejection being confirmed)."""
    caught_up: int = 0
    """Of ``reloads``, those that read only the events after a state known to be durable
    (the cached state when only other processes moved the stream; else the state its
    last decision with nothing in flight started from, put back exactly), instead of the
    snapshot and every event after it: the usual recovery from a conflict on a log others
    append to, for an aggregate whose state holds only immutable values."""
    caught_up_unread: int = 0
    """Of ``caught_up``, those that read nothing: the events were the ones the follower had
    read while the aggregate could not apply them (an append of it in flight)."""
    caught_up_waits: int = 0
    """Of ``caught_up``, those that waited for the follower's next read to bring the events
    they missed (it was reading others' events as they came), instead of reading them."""
    caught_up_wait_misses: int = 0
    """Of ``caught_up_waits``, those the follower did not bring the events for in time
    (``FOLLOWER_WAIT``): they read them after all."""


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
        read_limiter: anyio.CapacityLimiter | None = None,
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
        self._find_command = log.find_command
        # See EventLog.command_hashes: None means every id is asked of the log.
        self._command_hashes: Container[int] | None = getattr(log, "command_hashes", None)
        self._writer = writer
        self._registry = registry
        self._encode = registry.encode_read_back  # bound once, not per command
        self._mailbox_size = mailbox_size
        self._slots = LiveActors(max_live)
        # The slots' own containers, read on the command path without the extra lookup.
        self._live = self._slots.live
        self._capacity = self._slots.waiting  # senders waiting for a live-actor slot
        self._new_reply = reply_factory()
        # A log whose reads block (a database server) is loaded in worker threads, at most
        # ``read_limiter``'s at once; ``_loading`` holds the activations under way.
        self._blocking = reads_block(log)
        self._limiter = read_limiter
        if self._blocking and read_limiter is None:
            self._limiter = anyio.CapacityLimiter(1)
        self._loading: dict[str, _Loading] = {}
        # Command ids ``send_checked`` looked up in a worker thread and did not find: the
        # actor and its ``completed`` count when the lookup began (see ``_find_checked``).
        self._checked: dict[tuple[str, str], tuple[Actor, int]] = {}
        if self._blocking:
            self._find_command = self._find_checked
        self._closed = False
        self._reloads = 0
        self._caught_up = 0
        self._caught_up_unread = 0
        self._snapshot_failures = 0
        # Others append to the log (issue 15): conflicts are retried, rejections confirmed.
        self._shared = follows_others(log)
        self._retries = 0
        self._refreshed = 0  # actors brought up to date by apply_foreign
        # When the follower last brought others' events, and the event a catch-up waiting
        # for its next read waits on (``_await_follower``).
        self._foreign_at = -math.inf
        self._foreign_read: anyio.Event | None = None
        # Actors whose catch-up waits for the follower; send_nowait (which cannot wait)
        # takes one over, catching it up inline as it always has, and removes it here.
        self._awaiting: set[Actor] = set()
        self._follower_waits = 0
        self._follower_misses = 0
        # send_nowait's outcomes settled in the engine's tasks (a log others append to).
        self._task_group: TaskGroup | None = None
        self._redeciding = 0
        self._max_redeciding = max_live * mailbox_size
        self._readers: dict[AggregateType, tuple[Callable[[str, Any], Any], Any]] = {}

    # -- the command path ------------------------------------------------------------------

    async def send(
        self,
        kind: AggregateType,
        stream_id: str,
        command: Any,
        meta: CommandMeta | None,
        attempt: int = 0,
    ) -> Committed:
        """Run ``command`` on the actor, waiting for mailbox room; see ``Engine.send``.

        ``attempt``: how many times it was decided before, on a stale aggregate (a log
        others append to; see ``_again``)."""
        # The usual command, inline: a hosted kind, a known command type, a live actor of
        # that kind (two method calls fewer a command: ~1,400 of W1's ~88,000 instructions,
        # callgrind). Anything else takes ``_handler`` and ``_actor``, which raise the
        # typed errors, in the same order (closed, not hosted, no handler).
        handler = None
        if not self._closed:
            try:
                if kind in self._kinds:
                    handler = kind.command_handlers.get(type(command))
            except TypeError:  # unhashable: not a hosted class; _handler says so
                pass
        if handler is None:
            handler = self._handler(kind, command)
        actor = self._live.get(stream_id)
        if actor is not None and actor.kind is kind:
            self._live.move_to_end(stream_id)
            actor.touched = True
        else:
            try:
                actor = self._actor(kind, stream_id)
            except AtCapacity:
                actor = await self._wait_for_capacity(kind, stream_id)
            except _NotLive:  # the log's reads block: load it in a worker thread
                actor = await self._activate_async(kind, stream_id)
        try:
            # Actor.full(), inlined: the hot path's one test.
            if actor.stale or actor.room or actor.inflight + actor.handed >= self._mailbox_size:
                reply = await self._wait_and_decide(actor, handler, command, meta)
            else:  # the hot path: no wait before deciding
                try:
                    reply = self._decide(actor, handler, command, meta)
                except BaseException:
                    if self._capacity and not actor.busy():
                        # Refused on an idle actor (perhaps activated just for this): a
                        # sender waiting for a live slot may evict it.
                        self._slots.pass_on()
                    raise
        except Rejected as rejection:
            # The actor it was decided on: the slow path may have re-activated the stream
            # (and _decide raised synchronously, so it is the live one now).
            actor = self._live.get(stream_id, actor)
            if self._shared:
                # Submitted now, before anything else runs: see _probe.
                return await self._confirm(
                    kind, stream_id, command, meta, attempt, self._probe(actor), rejection
                )
            if not actor.inflight:
                raise
            # Rejected on state that is not all durable yet: if what is in flight fails,
            # the rejection was decided on state that never existed. Wait for it to land.
            # (A failure count, not ``stale``: another sender may have reloaded already.)
            failures = actor.failures
            await actor.settle(self._new_reply())
            if actor.failures == failures:
                raise rejection from None
            return await self.send(kind, stream_id, command, meta, attempt)
        try:
            result: Committed = await reply.wait()
        except ConcurrencyError as conflict:
            # Only another writer of the log moves a stream under a live actor (or a failed
            # append before this one, which reloads it too): decide again on a shared log.
            if not self._shared:
                raise
            return await self._again(kind, stream_id, command, meta, attempt, conflict)
        return result

    # -- a log others append to (issue 15) -------------------------------------------------

    def apply_foreign(self, events: Sequence[StoredEvent]) -> int:
        """Bring cached actors up to date with events the follower read (committed by other
        processes; this process's own events among them are skipped by their version).

        An idle actor (nothing in flight, not stale, not reloading) whose next version is
        the event's applies it, as a reload would, without the reload's read: under random
        routing this turns most would-be conflicts into nothing. Any other actor the event
        moves past is marked stale (reloaded before its next decision). An event that does
        not decode or apply marks it stale too (the reload then reports it properly).
        Synchronous: it runs between two awaits of the follower, atomically on the loop.
        Returns how many of ``events`` moved a cached actor (applied, marked stale, or
        kept for the catch-up of one with appends in flight, ``_keep_seen``): what
        following the log saves, which the follower weighs against its reads.
        """
        live = self._live
        readers = self._readers
        moved = 0
        for stored in events:
            actor = live.get(stored.stream_id)
            if actor is None:
                continue
            if stored.version <= actor.version:
                if actor.inflight or actor.stale:
                    # At a version this actor's appends in flight count on (they will
                    # fail), or one a stale actor will need: its catch-up may use it.
                    _keep_seen(actor, stored)
                    moved += 1  # it moved a cached aggregate: following paid for it
                continue
            moved += 1
            if (
                stored.version != actor.version + 1
                or actor.inflight
                or actor.stale
                or actor.reloading
            ):
                actor.stale = True
                _keep_seen(actor, stored)
                continue
            reader = readers.get(actor.kind)
            if reader is None:
                reader = readers[actor.kind] = stream_reader(self._registry, actor.kind)
            decode, appliers = reader
            try:
                appliers[type(event := decode(stored.type, stored.payload))](actor.state, event)
            except BaseException as e:
                if must_propagate(e):
                    raise
                actor.stale = True
                actor.tainted = True  # the applier may have left half its work
                continue
            actor.version = stored.version
            self._refreshed += 1
        self._foreign_at = anyio.current_time()
        self._wake_awaiting()  # catch-ups waiting for this read look again
        return moved

    def _wake_awaiting(self) -> None:
        """Have every catch-up waiting for the follower look again."""
        if self._foreign_read is not None:
            self._foreign_read.set()
            self._foreign_read = None

    @property
    def retried(self) -> int:
        """Commands decided again so far because they were decided on a stale aggregate
        (a log others append to): what following the log would have saved."""
        return self._retries

    def _probe(self, actor: Actor) -> Reply:
        """Submit the check that makes a rejection decided on ``actor`` final on a log
        others append to: an append with no events expecting the version it was decided
        on, which the writer's next group commit judges with the log's own rule
        (``expected_ok``), in its place among the actor's appends. Its reply completes with
        the (empty) result, or the ``ConcurrencyError`` saying the rejection was decided on
        a stale aggregate.

        Must be called synchronously after the decision, before anything else runs: the
        actor's appends still in flight are then ahead of it in the same batch (the group
        commit is synchronous on the loop), so one that failed fails the probe too
        (``after_failed``), even where other processes' events filled the version it
        expects. It rides in a group commit that happens anyway: no read of its own, no
        worker thread (a read per rejection in a thread cost half a single process's
        throughput on W1: see docs/design.md).

        Raises:
            EngineClosed: the writer is closing.
        """
        probe = self._new_reply()
        self._writer.submit(
            Append(actor.stream_id, actor.version, ()), completing(probe), (), checked=True
        )
        return probe

    async def _confirm(
        self,
        kind: AggregateType,
        stream_id: str,
        command: Any,
        meta: CommandMeta | None,
        attempt: int,
        probe: Reply,
        rejection: Rejected,
    ) -> Committed:
        """A rejection on a log others append to is final only if it was decided on the
        stream's durable version: wait for its ``probe`` (``_probe``); if that conflicts,
        another process appended first, so reload the aggregate and decide again
        (``_again``)."""
        try:
            await probe.wait()
        except (ConcurrencyError, StorageError) as failed:
            # A conflict: another process appended first. A StorageError: the group that
            # carried the probe failed (its connection was lost, say: a write is never
            # retried), so what the actor had in flight may or may not have committed
            # and the rejection is not confirmed either way. Both: reload, decide again
            # (its own probe rides in the next group, on a reopened connection; a server
            # still down fails the reload with StorageError).
            actor = self._live.get(stream_id)
            if actor is not None and actor.kind is kind:
                actor.stale = True  # reloaded before its next decision
                actor.conflicted(failed)
            return await self._again(kind, stream_id, command, meta, attempt, failed)
        raise rejection

    async def _again(
        self,
        kind: AggregateType,
        stream_id: str,
        command: Any,
        meta: CommandMeta | None,
        attempt: int,
        error: ConcurrencyError | StorageError,
    ) -> Committed:
        """Decide ``command`` again on the reloaded aggregate (it is stale: another process
        appended to its stream), at most ``CONFLICT_RETRIES`` times, after a short random
        pause from the second retry on (contending processes then spread out instead of
        colliding again); past that, ``error``. Nothing of a failed decision was written."""
        if attempt >= CONFLICT_RETRIES:
            raise error
        self._retries += 1
        if attempt:
            await anyio.sleep(random.random() * min(0.001 * 2**attempt, 0.05))
        return await self.send(kind, stream_id, command, meta, attempt + 1)

    async def send_checked(
        self, kind: AggregateType, stream_id: str, command: Any, meta: CommandMeta, command_id: str
    ) -> Committed:
        """``send`` of a command carrying a ``command_id``, on a log whose reads block: the
        log is asked for the id in a worker thread first (the loop serves other commands
        and queries meanwhile), then the command is sent as usual.

        The answer is used by ``_decide`` (through ``_find_checked``) only if nothing of
        the stream completed since the lookup began: a command of this id that was in
        flight then is followed as ever (``actor.commands``), one that completed before is
        in the log, and one that completed meanwhile makes the answer stale: ``_decide``
        then asks the log again, inline (rare: it takes a retry racing its first attempt).
        """
        self._handler(kind, command)  # closed, not hosted, no handler: before any read
        try:
            actor = self._actor(kind, stream_id)
        except AtCapacity:
            actor = await self._wait_for_capacity(kind, stream_id)
        except _NotLive:
            actor = await self._activate_async(kind, stream_id)
        if command_id in actor.commands:  # in flight: send follows it
            return await self.send(kind, stream_id, command, meta)
        key = (stream_id, command_id)
        completed = actor.completed
        try:
            found = await anyio.to_thread.run_sync(
                self._log.find_command, stream_id, command_id, limiter=self._limiter
            )
        except BaseException:
            # The read failed (StorageError) or we were cancelled: nothing was decided, and
            # the actor (activated just for this, perhaps) may go to a sender waiting for
            # a live slot.
            if self._capacity and not actor.busy():
                self._slots.pass_on()
            raise
        if found is not None:  # a retry: answered from the log, nothing decided
            if self._capacity and not actor.busy():
                self._slots.pass_on()
            return _committed(found)
        self._checked[key] = (actor, completed)
        try:
            return await self.send(kind, stream_id, command, meta)
        finally:
            self._checked.pop(key, None)

    def _find_checked(self, stream_id: str, command_id: str) -> AppendResult | None:
        """``find_command`` for ``_decide`` on a log whose reads block: None without a read
        if ``send_checked`` just found the id absent and no append of the stream completed
        since; else the log's answer, inline (``send_nowait``, or a stale lookup)."""
        checked = self._checked.pop((stream_id, command_id), None)
        if checked is not None:
            actor, completed = checked
            if self._live.get(stream_id) is actor and actor.completed == completed:
                return None
        return self._log.find_command(stream_id, command_id)

    def send_nowait(
        self,
        kind: AggregateType,
        stream_id: str,
        command: Any,
        meta: CommandMeta | None,
    ) -> Pending:
        """Put ``command`` in the mailbox now or raise ``Overloaded``; see ``Engine``."""
        handler = self._handler(kind, command)
        try:
            actor = self._actor(kind, stream_id)
        except _NotLive:
            # send_nowait cannot wait for a worker thread: it loads inline, as it always
            # has (blocking the loop for the read), unless a send is loading the stream.
            if stream_id in self._loading:
                raise Overloaded(
                    f"{kind_name(kind)} {stream_id!r} is being activated; send waits for it"
                ) from None
            actor = self._activate(kind, stream_id)
        if actor.stale and not actor.inflight and not actor.reloading:
            self._reload(actor)  # inline even on a blocking log: send_nowait cannot wait
        elif actor.stale and actor in self._awaiting:  # the usual command: not stale
            # Its catch-up waits for the follower (nothing in flight): take it over, inline
            # (its sender finds it done; reloading stays set until it has left the wait).
            self._awaiting.discard(actor)
            self._wake_awaiting()
            self._reload(actor)
        if actor.full():
            raise Overloaded(
                f"the mailbox of {kind_name(kind)} {stream_id!r} is full "
                f"({self._mailbox_size} commands in flight or being decided again, or "
                "senders waiting for room)"
            )
        if self._shared:
            return self._send_nowait_shared(actor, handler, command, meta)
        return Pending(self._decide(actor, handler, command, meta))

    # -- send_nowait on a log others append to (issue 15) ----------------------------------
    #
    # send_nowait decides at once on the cached aggregate, which may be stale: another
    # process may have appended since (the follower has not applied it yet). Its outcome
    # is then settled the way send settles it, but in a task of the engine's task group,
    # so that it happens whether or not anyone awaits the Pending:
    #
    #   send_nowait ─▶ decide ─▶ writer ─▶ done(outcome) ─▶ _Redeciding
    #                    │                                    │ Committed, or any error
    #                    │                                    │ but a conflict ─▶ Pending
    #                    │                                    ▼ ConcurrencyError
    #                    │ Rejected               task: _again (reload, decide again, up
    #                    ▼                        to CONFLICT_RETRIES times) ─▶ Pending
    #             _probe (a check in the next group commit), then task: _confirm
    #             (decide again if it conflicts, else the rejection) ─▶ Pending
    #
    # Bounded: each such command holds a mailbox slot of its actor for send_nowait
    # (``Actor.retrying``: full() counts it) and keeps the actor live (busy), so at most
    # max_live_aggregates x mailbox_size of them run at once. Only followers of an
    # in-flight command id take no slot; past that bound their conflict is final.

    def use_task_group(self, task_group: TaskGroup) -> None:
        """Run the tasks that settle ``send_nowait``'s outcomes on a log others append to
        in ``task_group`` (the engine's, open for as long as the engine is)."""
        self._task_group = task_group

    def _send_nowait_shared(
        self,
        actor: Actor,
        handler: Callable[[Any, Any], Any],
        command: Any,
        meta: CommandMeta | None,
    ) -> Pending:
        """``send_nowait`` on a log others append to: the Pending answers the outcome
        settled as ``send`` settles it (see the picture above); a rejection is not raised
        here, since it may have been decided on a stale aggregate."""
        if self._redeciding >= self._max_redeciding:
            raise Overloaded(
                f"{self._redeciding} commands are being decided again "
                "(max_live_aggregates x mailbox_size); retry later, or use send"
            )
        final = self._new_reply()
        into = _Redeciding(self, actor, command, meta, final)
        try:
            self._decide(actor, handler, command, meta, into)
        except Rejected as rejection:
            # Decided on what this process has cached: final only if that was the durable
            # version. Its check is submitted now, before anything else runs (_probe).
            self._redecide(
                actor,
                final,
                self._confirm,
                actor.kind,
                actor.stream_id,
                command,
                meta,
                0,
                self._probe(actor),
                rejection,
            )
        return Pending(final)

    def _redecide(
        self,
        actor: Actor,
        final: Reply,
        settle: Callable[..., Awaitable[Committed]],
        *args: Any,
    ) -> None:
        """Start ``settle(*args)`` in the engine's task group; its outcome completes
        ``final`` (the Pending's reply). Counted against the bound until it ends."""
        # Engine.open hands its task group over before it yields the engine.
        assert self._task_group is not None
        actor.retrying += 1
        self._redeciding += 1
        self._task_group.start_soon(self._settled, actor, final, settle, *args)

    async def _settled(
        self,
        actor: Actor,
        final: Reply,
        settle: Callable[..., Awaitable[Committed]],
        *args: Any,
    ) -> None:
        """The task of ``_redecide``: complete ``final`` with what ``settle`` ends with.

        Shielded from cancellation: a cancelled task could not tell whether the command it
        decided again committed (asyncio can cancel a task whose reply just arrived), and
        the Pending would then lie. It ends by itself once the engine closes: a decision
        still to be made raises ``EngineClosed``, one made is committed (or failed) by the
        writer before it stops, and every wait in between is released by the close.
        """
        try:
            with anyio.CancelScope(shield=True):
                result = await settle(*args)
        except Exception as error:  # Rejected, ConcurrencyError, EngineClosed, ...
            final.set_error(error)
        except BaseException:  # KeyboardInterrupt, SystemExit: the process's business
            final.set_error(EngineClosed("the engine stopped before this command was settled"))
            raise
        else:
            final.set_result(result)
        finally:
            actor.retrying -= 1
            self._redeciding -= 1
            if self._capacity and not actor.busy():
                self._slots.pass_on()  # idle now: a sender waiting for a live slot may use it

    async def _wait_for_capacity(self, kind: AggregateType, stream_id: str) -> Actor:
        """Wait until an actor goes idle (so it can be passivated), then activate ours.

        A wake-up is a free slot handed to one waiter: one that leaves without taking it
        (cancelled after the wake-up, or its stream refused to load) hands it on.
        """
        while True:
            await self._slots.wait(self._new_reply())
            if self._closed:
                raise EngineClosed("the engine closed before this command ran")
            if stream_id in self._live:
                # Another woken sender activated our stream: the slot freed for us is
                # someone else's to take.
                self._slots.pass_on()
            try:
                return self._actor(kind, stream_id)
            except AtCapacity:
                continue
            except _NotLive:
                break  # the log's reads block: load it, with the slot handed to us
            except BaseException:
                self._slots.pass_on()
                raise
        return await self._activate_async(kind, stream_id, handed=True)

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
        actor: Actor,
        handler: Callable[[Any, Any], Any],
        command: Any,
        meta: CommandMeta | None,
    ) -> Reply:
        """The slow path of ``send``: wait until the actor is usable and has room, decide."""
        kind, stream_id = actor.kind, actor.stream_id
        try:
            while True:
                if self._closed:
                    raise EngineClosed("the engine closed before this command ran")
                if actor.stale:
                    if actor.inflight or actor.reloading:
                        await actor.park(actor.drained, self._new_reply())
                        # Drained actors have no waiters left: it may have been passivated.
                        try:
                            actor = self._actor(kind, stream_id)
                        except AtCapacity:
                            actor = await self._wait_for_capacity(kind, stream_id)
                        except _NotLive:
                            actor = await self._activate_async(kind, stream_id)
                        continue
                    if self._blocking:
                        await self._reload_async(actor)
                        continue  # the engine may have closed meanwhile: check again
                    self._reload(actor)
                if actor.room or actor.inflight + actor.handed >= self._mailbox_size:
                    await actor.park(actor.room, self._new_reply())
                    actor.handed -= 1  # the slot handed to this sender is its own now
                    if actor.stale or self._closed:
                        continue  # not usable after all; the loop passes the slot on
                return self._decide(actor, handler, command, meta)
        except BaseException:
            # Leaving without a slot (Rejected, HandlerError, cancelled, closed): a slot
            # this sender was handed, or one that freed meanwhile, goes to the next waiter;
            # and if that leaves the actor idle, a sender waiting for a live slot may use it.
            actor.hand_out()
            if not actor.busy():
                self._slots.pass_on()
            raise

    def _decide(
        self,
        actor: Actor,
        handler: Callable[[Any, Any], Any],
        command: Any,
        meta: CommandMeta | None,
        into: Reply | None = None,
    ) -> Reply:
        """The actor's turn: decide, evolve, submit. Synchronous, so nothing interleaves.

        ``into``: what to complete with the outcome (default: a new reply); ``send_nowait``
        passes a ``_Redeciding`` on a log others append to."""
        command_id = None if meta is None else meta.command_id
        if command_id is not None:
            # A retry is answered from its first attempt, never decided again: the first
            # attempt's own outcome while it is in flight, else the log's record of it.
            if command_id in actor.commands:  # in flight: this send follows it
                reply = self._new_reply() if into is None else into
                followers = actor.commands[command_id]
                if followers is None:
                    actor.commands[command_id] = [reply]
                else:
                    followers.append(reply)
                return reply
            hashes = self._command_hashes
            # A hash the log does not hold is certainly never recorded (the usual case):
            # no call then (~1,000 instructions a command).
            if hashes is None or hash((actor.stream_id, command_id)) in hashes:
                found = self._find_command(actor.stream_id, command_id)
                if found is not None:
                    reply = self._new_reply() if into is None else into
                    reply.set_result(_committed(found))
                    return reply
        kind = actor.kind
        state = actor.state
        # The attributes as the handler finds them, to undo whatever it (or an applier)
        # changes before raising: see _undo. One copy of a small dict per command.
        try:
            before: dict[str, Any] | None = state.__dict__.copy()
        except AttributeError:  # no __dict__ (slots only): a failure reloads it instead
            before = None
        try:
            _, encoded, events = decide(kind, state, handler, command, self._encode)
        except BaseException:
            # Rejected included: handlers should decide without touching the state, but
            # nothing enforces it, and a change left behind would outlive the refusal.
            self._undo(actor, before)
            raise
        expected = actor.version
        count = len(encoded)
        reply = self._new_reply() if into is None else into
        stream_id = actor.stream_id

        def done(outcome: AppendOutcome) -> None:
            # The actor's bookkeeping inline (a call per command costs more than these
            # lines); its methods run only when someone waits. It reads the stream id from
            # the actor: one closure cell fewer to make per command.
            actor.inflight -= 1
            actor.completed += 1
            if actor.settled:
                actor.wake_settled()
            if isinstance(outcome, EngineError):
                actor.stale = True
                actor.failures += 1
                actor.tainted = True  # holds a decision that failed: see _catch_up_from
                actor.conflicted(outcome)
                if isinstance(outcome, DuplicateCommand):
                    # Recorded by another writer of the log since the check in _decide:
                    # the first attempt's result is the answer, and this decision is void.
                    reply.set_result(_committed(outcome.result))
                else:
                    reply.set_error(outcome)
            else:
                reply.set_result(
                    Committed(
                        actor.stream_id,
                        outcome.last_version,
                        outcome.last_position if count else 0,
                        count,
                    )
                )
            if command_id is not None:
                # Concurrent sends of this id share its outcome: one append, one answer.
                for follower in actor.commands.pop(command_id, None) or ():
                    _share(follower, outcome, actor.stream_id, count)
            if actor.room:
                actor.hand_out()
            if not actor.inflight:
                if actor.drained:
                    actor.wake_drained()
                if actor.kind.snapshot_every is not None:  # a call only when it may be due
                    self._maybe_snapshot(actor)
                if self._capacity:
                    # A sender is waiting for an actor to go idle: this one just did.
                    self._slots.pass_on()

        # ``events`` are the events as read back from their payloads (what replay gives),
        # never the handler's objects.
        if kind not in self._immutable_kinds:
            # A mutable part (a list field, say) must not reach live projectors by
            # reference (the aggregate holds it): they decode those events themselves.
            shareable = self._registry.shareable
            events = [event if shareable(type(event)) else None for event in events]
        owner = None if expected else self._owner_names[kind]  # on the stream's first append
        try:
            self._writer.submit(
                Append(stream_id, expected, tuple(encoded), None, None, owner)
                if meta is None
                else Append(
                    stream_id,
                    expected,
                    tuple(encoded),
                    meta.correlation_id,
                    meta.causation_id,
                    owner,
                    command_id,
                    meta.principal,
                    meta.headers,
                ),
                done,
                events,
                checked=True,  # stream id at activation, metadata at send, name at open
            )
        except BaseException:
            self._undo(actor, before)  # evolved by events that will never be written
            raise
        if self._shared and not actor.inflight:
            # Decided with nothing in flight: ``before`` is the durable state at
            # ``expected``, what a conflict puts back and catches up (_catch_up_from).
            actor.base_state, actor.base_version = before, expected
        actor.version = expected + count
        actor.inflight += 1
        if command_id is not None:
            actor.commands[command_id] = None  # later sends of this id will follow it
        return reply

    def _undo(self, actor: Actor, before: dict[str, Any] | None) -> None:
        """Put the state back exactly as the handler found it, or mark the actor stale.

        ``before`` is restored when that is exact (``_decide.restore``). Any other state is marked
        stale: reloaded from its snapshot and the log (once nothing of it is in flight)
        before its next command, and never snapshotted meanwhile. Either way the next
        decision sees exactly what replaying the log would give.
        """
        if not restore(actor.state, actor.kind, before):
            actor.stale = True
            actor.tainted = True  # changed in place: see _catch_up_from

    # -- activation, reload, passivation --------------------------------------------------

    def _actor(self, kind: AggregateType, stream_id: str) -> Actor:
        actor = self._live.get(stream_id)
        if actor is None:
            if self._blocking:
                raise _NotLive  # the caller awaits _activate_async instead
            return self._activate(kind, stream_id)
        if actor.kind is not kind:
            raise DefinitionError(
                f"stream {stream_id!r} is a live {kind_name(actor.kind)}, not a {kind_name(kind)}; "
                "stream ids are shared by all aggregate types"
            )
        self._live.move_to_end(stream_id)
        actor.touched = True
        return actor

    def _activate(self, kind: AggregateType, stream_id: str) -> Actor:
        """Load snapshot + tail from the log (synchronously) and make the actor live."""
        check_stream_id(stream_id)
        self._slots.make_room()
        try:
            loaded = self._load(kind, stream_id)
        except BaseException:
            self._slots.pass_on()  # the eviction above may have freed a slot
            raise
        actor = Actor(kind, stream_id, *loaded, self._mailbox_size)
        self._slots.add(actor)
        return actor

    async def _activate_async(
        self, kind: AggregateType, stream_id: str, *, handed: bool = False
    ) -> Actor:
        """The stream's actor, for a log whose reads block: loaded in a worker thread while
        the event loop serves everything else.

        One load per stream: senders that arrive while it loads wait for it (``_Loading``)
        and then use the live actor, or raise the load's error (a copy), as its sender does.
        ``handed``: the caller was woken with a live slot (``_wait_for_capacity``); it is
        passed on if this sender does not use it for a load.
        """
        try:
            while True:
                if self._closed:
                    raise EngineClosed("the engine closed before this command ran")
                loading = self._loading.get(stream_id)
                if stream_id in self._live or loading is not None:
                    if handed:  # the slot is someone else's to take
                        handed = False
                        self._slots.pass_on()
                    if loading is None:
                        return self._actor(kind, stream_id)
                    await loading.join(self._new_reply())
                    error = loading.error
                    if isinstance(error, EngineError) and loading.kind is kind:
                        shared = copy.copy(error)  # its own copy: tracebacks must not pile up
                        shared.__cause__ = error.__cause__
                        raise shared
                    continue  # live now; or its loader was cancelled: this one loads it
                check_stream_id(stream_id)
                try:
                    self._slots.make_room()
                except AtCapacity:
                    handed = False  # the slot was not free after all (as in the sync path)
                    await self._slots.wait(self._new_reply())
                    handed = True
                    continue
                handed = False
                actor = await self._load_async(kind, stream_id)
                break
        except BaseException:
            if handed:
                self._slots.pass_on()
            raise
        # Cancelled while the load ran (it finished: see _load_async): leave before
        # deciding, as a sender cancelled while waiting for room does. The actor stays live.
        try:
            await anyio.lowlevel.checkpoint_if_cancelled()
        except BaseException:
            if self._capacity and not actor.busy():
                self._slots.pass_on()
            raise
        return actor

    async def _load_async(self, kind: AggregateType, stream_id: str) -> Actor:
        """Load the stream in a worker thread, its live slot reserved (``make_room`` made
        room for it), and make the actor live.

        The read is not abandoned when the sender is cancelled (``anyio.to_thread``'s
        default): a thread left running would be a task without an owner, and the log may
        be closed under it. So cancellation waits for the read (one round trip or stream
        read) and the actor goes live anyway; a cancellation before the thread starts (the
        limiter) loads nothing. On any failure the reserved slot is passed on and the
        senders waiting for this load are woken.
        """
        loading = self._loading[stream_id] = _Loading(kind)
        slots = self._slots
        slots.loading += 1
        try:
            loaded = await anyio.to_thread.run_sync(
                self._load, kind, stream_id, limiter=self._limiter
            )
        except BaseException as error:
            slots.loading -= 1
            del self._loading[stream_id]
            loading.finish(error)
            slots.pass_on()  # the reserved slot is free again
            if self._closed and isinstance(error, EngineError):
                # The engine closed (and then the log) while this read ran: the command
                # was not run because of the close, whatever the read made of it.
                raise EngineClosed("the engine closed before this command ran") from error
            raise
        slots.loading -= 1
        del self._loading[stream_id]
        if self._closed:
            loading.finish(None)
            raise EngineClosed("the engine closed before this command ran")
        actor = Actor(kind, stream_id, *loaded, self._mailbox_size)
        slots.add(actor)
        loading.finish(None)
        return actor

    def _load(self, kind: AggregateType, stream_id: str) -> tuple[Any, int, int]:
        """Rebuild the state: (state, version, version of the snapshot it started from)."""
        return load_state(self._log, self._registry, kind, self._owner_names[kind], stream_id)

    def _catch_up_from(self, actor: Actor) -> int | None:
        """For a stale actor with nothing in flight: the version its state is now known
        durable at, to read the log after; None if it must be rebuilt from its snapshot
        and every event after it (``_load``).

        Known durable: the state as it is, if it is not ``tainted`` (the actor was marked
        stale only because others appended: every append of it since the load committed,
        and nothing changed it that was not undone exactly); else the state recorded at
        ``base_version`` (``_decide`` keeps, on a log others append to, the copy it made
        when it decided with nothing in flight, so every append before it had committed)
        if ``restore`` can put it back exactly: every value immutable all the way down.
        Either way, what remains to apply is what was committed after it: usually a few
        events, where a full reload reads the whole stream.
        """
        base, actor.base_state = actor.base_state, None  # put back below, or of no more use
        if not actor.tainted:
            return actor.version
        if base is not None and restore(actor.state, actor.kind, base):
            actor.version = actor.base_version
            actor.tainted = False  # the durable state at base_version now
            return actor.version
        return None

    def _caught_up_with(self, actor: Actor, events: Sequence[StoredEvent]) -> None:
        """Apply ``events`` (read after ``_catch_up_from``'s version) to the actor, with
        the rule every rebuild uses (``replay``); a raise leaves it for a full reload."""
        try:
            actor.version = replay(
                events,
                self._registry,
                actor.kind,
                self._owner_names[actor.kind],
                actor.stream_id,
                actor.state,
                actor.version,
            )
        except BaseException:
            actor.tainted = True  # part of the events may be applied
            raise

    def _kept_since(self, actor: Actor, start: int) -> list[StoredEvent] | None:
        """``_seen_since``, counted in ``caught_up_unread`` when it spares the read."""
        events = _seen_since(actor, start)
        if events is not None:
            self._caught_up_unread += 1
        return events

    def _reloaded(self, actor: Actor) -> None:
        """The stale actor's state is the log's again."""
        actor.stale = actor.tainted = False
        actor.seen, actor.conflicted_at = None, 0
        actor.hand_out()  # slots given back while it was stale

    def _reload(self, actor: Actor) -> None:
        """Bring a stale actor's state (nothing in flight) up to the log: caught up from a
        state known durable (``_catch_up_from``), else rebuilt."""
        self._reloads += 1
        start = self._catch_up_from(actor)
        if start is None:
            state, version, snapshot_version = self._load(actor.kind, actor.stream_id)
            actor.state, actor.version = state, version
            actor.snapshot_version = snapshot_version
        else:
            self._caught_up += 1
            events = self._kept_since(actor, start)
            if events is None:
                events = self._log.read_stream(actor.stream_id, start + 1)
            self._caught_up_with(actor, events)
        self._reloaded(actor)

    async def _reload_async(self, actor: Actor) -> None:
        """``_reload`` for a log whose reads block.

        A catch-up (``_catch_up_from``) applies the events the follower kept for the
        actor if they reach the conflict's version; if they do not yet, and the follower
        is reading others' events as they come, it waits for its next read
        (``_await_follower``) rather than read them itself. Else it reads up to
        ``CATCH_UP_INLINE`` events inline, on the loop: one round trip, as the follower's
        reads and the writer's commits already take, where a worker thread's hand-offs
        cost a conflict more than the read (measured: docs/design.md, issue 15 session
        7). An actor further behind, and a full rebuild, are read in a worker thread,
        senders arriving meanwhile waiting in ``drained`` (``reloading`` keeps anyone
        else from reloading or deciding, and the actor from being passivated). Cancelled,
        it waits for the read, keeps the reloaded state, and then raises (cancelled while
        waiting for the follower, it leaves the actor stale, its kept events with it)."""
        self._reloads += 1
        start = self._catch_up_from(actor)
        if start is not None:
            self._caught_up += 1
            if self._follower_brings(actor, start):
                if not await self._await_follower(actor, start):
                    # send_nowait caught it up meanwhile, and counted that catch-up.
                    self._reloads -= 1
                    self._caught_up -= 1
                    return  # the sender checks again
                if actor.closed:
                    return  # the engine closed meanwhile: the sender checks again
            seen = self._kept_since(actor, start)
            if seen is not None:  # the follower read them: no read here
                self._caught_up_with(actor, seen)
                self._reloaded(actor)
                await anyio.lowlevel.checkpoint_if_cancelled()
                return
            events = self._log.read_stream(actor.stream_id, start + 1, CATCH_UP_INLINE)
            self._caught_up_with(actor, events)
            if len(events) < CATCH_UP_INLINE:
                self._reloaded(actor)
                await anyio.lowlevel.checkpoint_if_cancelled()
                return
            start = actor.version  # a long way behind: the rest in a worker thread
        actor.reloading = True
        try:
            if start is None:
                state, version, snapshot_version = await anyio.to_thread.run_sync(
                    self._load, actor.kind, actor.stream_id, limiter=self._limiter
                )
            else:
                events = await anyio.to_thread.run_sync(
                    self._log.read_stream, actor.stream_id, start + 1, limiter=self._limiter
                )
        finally:
            actor.reloading = False
            if actor.drained:
                actor.wake_drained()  # they check again: reloaded, or reload it themselves
        if not actor.closed:
            if start is None:
                actor.state, actor.version = state, version
                actor.snapshot_version = snapshot_version
            else:
                self._caught_up_with(actor, events)
            self._reloaded(actor)
        await anyio.lowlevel.checkpoint_if_cancelled()

    def _follower_brings(self, actor: Actor, start: int) -> bool:
        """Whether the events a catch-up from ``start`` misses are on their way: the
        follower brought others' events within ``FOLLOWER_WAIT`` (it reads every few
        milliseconds while they keep committing), the conflict found the stream beyond
        ``start``, and what it kept so far follows ``start`` without a gap (or nothing),
        short of the conflict's version."""
        target = actor.conflicted_at
        if target <= start or anyio.current_time() - self._foreign_at > FOLLOWER_WAIT:
            return False
        seen = actor.seen
        return _seen_may_reach(actor, start) and (seen is None or seen[-1].version < target)

    async def _await_follower(self, actor: Actor, start: int) -> bool:
        """Wait, at most ``FOLLOWER_WAIT``, until the events the follower keeps for
        ``actor`` reach its conflict's version from ``start`` (its next read brings every
        event committed since its last: a conflict's events are committed), so that the
        catch-up reads nothing. Senders arriving meanwhile wait in ``drained``;
        ``send_nowait`` takes it over (``_awaiting``): then False, the actor caught up."""
        self._follower_waits += 1
        actor.reloading = True
        awaiting = self._awaiting
        awaiting.add(actor)
        try:
            with anyio.move_on_after(FOLLOWER_WAIT):
                while actor in awaiting and not (actor.closed or _seen_reaches(actor, start)):
                    if not _seen_may_reach(actor, start):
                        break  # kept from past start + 1, or full: no read brings them
                    if self._foreign_read is None:
                        self._foreign_read = anyio.Event()
                    await self._foreign_read.wait()
        finally:
            mine = actor in awaiting
            awaiting.discard(actor)
            actor.reloading = False
            if actor.drained:
                actor.wake_drained()  # they check again once this catch-up is done
        if mine and not _seen_reaches(actor, start):
            self._follower_misses += 1
        return mine

    def _maybe_snapshot(self, actor: Actor) -> None:
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

    def sweep_idle(self) -> int:
        """Passivate actors not used since the previous sweep; returns how many."""
        return self._slots.sweep_idle()

    async def run_idle_sweeper(self, idle_timeout: float) -> None:
        """Passivate actors idle for between ``idle_timeout`` and twice that, forever."""
        await self._slots.run_idle_sweeper(idle_timeout)

    def close(self) -> None:
        """Refuse new commands and fail every sender still waiting for room."""
        self._closed = True
        self._slots.close(lambda: EngineClosed("the engine closed before this command ran"))
        self._wake_awaiting()  # catch-ups waiting for the follower: closed actors
        for loading in self._loading.values():
            loading.finish(None)  # its waiters find the engine closed; the load ends alone

    def is_live(self, stream_id: str) -> bool:
        """True if the stream's actor is in memory (a test and statistics aid)."""
        return stream_id in self._live

    def statistics(self) -> AggregatesStatistics:
        """Counters of the live actors."""
        actors = self._live.values()
        return AggregatesStatistics(
            live=len(self._live),
            peak_live=self._slots.peak,
            activations=self._slots.activations,
            passivations=self._slots.passivations,
            reloads=self._reloads,
            caught_up=self._caught_up,
            caught_up_unread=self._caught_up_unread,
            caught_up_waits=self._follower_waits,
            caught_up_wait_misses=self._follower_misses,
            in_flight=sum(a.inflight for a in actors),
            waiting=sum(len(a.room) + len(a.drained) for a in actors)
            + len(self._capacity)
            + sum(len(loading.waiters) for loading in self._loading.values()),
            snapshot_failures=self._snapshot_failures,
            retries=self._retries,
            refreshed=self._refreshed,
            redeciding=self._redeciding,
        )


class _Redeciding:
    """The reply ``_decide`` completes for a ``send_nowait`` command on a log others append
    to: a conflict (the command was decided on a stale aggregate) starts a task that
    decides it again (``Aggregates._again``); every other outcome goes to ``final``, the
    reply its ``Pending`` waits on. Completed once, on the event loop's thread, as any
    reply (by the writer's ``done``, or ``_share`` for a follower of its command id)."""

    __slots__ = ("_actor", "_aggregates", "_command", "_done", "_final", "_meta")

    def __init__(
        self,
        aggregates: Aggregates,
        actor: Actor,
        command: Any,
        meta: CommandMeta | None,
        final: Reply,
    ) -> None:
        self._aggregates = aggregates
        self._actor = actor
        self._command = command
        self._meta = meta
        self._final = final
        self._done = False

    def set_result(self, value: Any) -> bool:
        if self._done:
            return False
        self._done = True
        return self._final.set_result(value)

    def set_error(self, error: BaseException) -> bool:
        if self._done:
            return False
        self._done = True
        hosts, actor = self._aggregates, self._actor
        if not isinstance(error, ConcurrencyError):
            return self._final.set_error(error)
        if hosts._closed:
            # Not committed, and no longer decided again: as send, once the engine closed.
            closed = EngineClosed("the engine closed before this command was decided again")
            closed.__cause__ = error
            return self._final.set_error(closed)
        if hosts._redeciding >= hosts._max_redeciding:
            # Only followers of an in-flight command id take no slot: at the bound, the
            # conflict is their answer (nothing of it was appended; retry).
            return self._final.set_error(error)
        hosts._redecide(
            actor,
            self._final,
            hosts._again,
            actor.kind,
            actor.stream_id,
            self._command,
            self._meta,
            0,
            error,
        )
        return True

    async def wait(self) -> Any:
        return await self._final.wait()


class _NotLive(Exception):
    """Raised by ``_actor`` on a log whose reads block, for a stream that is not live: the
    caller activates it with ``await _activate_async`` instead of inline."""


class _Loading:
    """An activation loading in a worker thread, and the senders waiting for it."""

    __slots__ = ("error", "kind", "waiters")

    def __init__(self, kind: AggregateType) -> None:
        self.kind = kind
        self.waiters: Waiters = OrderedDict()
        self.error: BaseException | None = None  # what the load raised, once it ended

    async def join(self, reply: Reply) -> None:
        """Wait (with ``reply``) until the load ends. Cancelling it leaves nothing behind."""
        self.waiters[reply] = None
        try:
            await reply.wait()
        except BaseException:
            self.waiters.pop(reply, None)
            raise

    def finish(self, error: BaseException | None) -> None:
        """The load ended (``error``: how it failed); wake every sender waiting for it."""
        self.error = error
        waiting, self.waiters = self.waiters, OrderedDict()
        for reply in waiting:
            reply.set_result(None)


def _committed(result: AppendResult) -> Committed:
    """What ``send`` answers for a committed append."""
    count = result.last_version - result.first_version + 1
    return Committed(
        result.stream_id, result.last_version, result.last_position if count else 0, count
    )


def _share(reply: Reply, outcome: AppendOutcome, stream_id: str, count: int) -> None:
    """Complete a later send of a command id with its first attempt's outcome."""
    if isinstance(outcome, DuplicateCommand):
        reply.set_result(_committed(outcome.result))
    elif isinstance(outcome, EngineError):
        reply.set_error(copy.copy(outcome))  # its own copy: tracebacks must not pile up
    else:
        last = outcome.last_position if count else 0
        reply.set_result(Committed(stream_id, outcome.last_version, last, count))


def _keep_seen(actor: Actor, stored: StoredEvent) -> None:
    """Keep ``stored`` (committed, of the actor's stream, read by the follower) for the
    actor's catch-up, if it follows the events kept so far without a gap; else start
    again from it. At most ``CATCH_UP_INLINE`` (what a catch-up reads inline)."""
    seen = actor.seen
    if seen is None or stored.version != seen[-1].version + 1:
        actor.seen = [stored]
    elif len(seen) < CATCH_UP_INLINE:
        seen.append(stored)


def _seen_reaches(actor: Actor, start: int) -> bool:
    """Whether the events kept for ``actor`` run without a gap from ``start + 1`` to its
    conflict's version (``_seen_since`` would apply them)."""
    seen = actor.seen
    return (
        seen is not None
        and seen[0].version <= start + 1 <= seen[-1].version
        and seen[-1].version >= actor.conflicted_at
    )


def _seen_may_reach(actor: Actor, start: int) -> bool:
    """Whether the follower's next reads may yet make the events kept for ``actor`` reach
    (``_seen_reaches``): nothing kept, or kept from ``start + 1`` or before and not full.
    Kept from past it (this engine's own events in between, never handed over), they
    only ever grow from there or start again later; full, they grow no more."""
    seen = actor.seen
    return seen is None or (seen[0].version <= start + 1 and len(seen) < CATCH_UP_INLINE)


def _seen_since(actor: Actor, start: int) -> list[StoredEvent] | None:
    """The events after version ``start`` a catch-up can apply without reading the log,
    or None (read it). A failed append or probe of the actor found the stream at
    ``conflicted_at``; the catch-up must reach at least that version: the events the
    follower kept (``_keep_seen``) if they run without a gap from ``start + 1`` to it,
    all of them (even when ``start``, a durable state, is past the conflict already: the
    follower does not hand them over again, so an aggregate caught up without them
    would be decided on as fresh and conflict again for nothing); else, if ``start``
    already reaches it, none (the follower applied what moved it while no append was in
    flight). Committed events from the durable state at ``start`` make the log's state
    at their last version, however many the log has beyond it (a later conflict catches
    those up, as any)."""
    target = actor.conflicted_at
    reaches = _seen_reaches(actor, start)
    seen, actor.seen = actor.seen, None
    if not target:
        return None  # no conflict says how far to go
    if reaches:
        # They follow ``start`` without a gap (review 11: even past the conflict).
        assert seen is not None
        return seen[start + 1 - seen[0].version :]
    # Kept events that follow ``start`` without a gap reach past it: none here.
    return [] if target <= start else None
