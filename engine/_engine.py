"""The :class:`Engine` façade: wires log, writer, aggregates and projectors; the async API.

Over 400 lines because every public call checks its own arguments here, at the front door,
before anything is decided (``_check_options``, ``call_query``): the checks stay beside the
calls they guard.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager
from typing import Any, Literal, TypeVar

import anyio
import msgspec

from ._aggregates import Aggregates, AggregatesStatistics, AggregateType, Pending
from ._codec import DEFAULT_MAX_COMMAND_BYTES, EventRegistry, decode_command
from ._errors import (
    DefinitionError,
    EngineClosed,
    HandlerError,
    InvalidArgument,
    UnknownQuery,
    describe,
)
from ._log import EventLog, check_label, check_metadata, check_stream_id
from ._log_lmdb import DEFAULT_MAP_SIZE, DEFAULT_MAX_MAP_SIZE, LmdbEventLog
from ._log_memory import MemoryEventLog
from ._projections import (
    WINDOW_BYTES,
    Broadcast,
    Parked,
    ProjectionHost,
    ProjectorStatistics,
    ProjectorType,
    WindowStatistics,
    detach,
)
from ._records import Committed
from ._writer import Writer, WriterStatistics

__all__ = ["Engine", "EngineStatistics", "call_query"]

T = TypeVar("T")


class EngineStatistics(msgspec.Struct, frozen=True):
    """Everything the engine counts: the writer, the aggregate actors, each projector."""

    writer: WriterStatistics
    aggregates: AggregatesStatistics
    projectors: tuple[ProjectorStatistics, ...]
    head: int
    window: WindowStatistics
    """What the projectors' window of recent events holds (events, bytes)."""


async def _shielded(run: Callable[[], Awaitable[None]]) -> None:
    """Run ``run`` immune to outside cancellation; it must stop by other means."""
    with anyio.CancelScope(shield=True):
        await run()


class Engine:
    """An embedded CQRS engine. Open it with ``async with Engine.open(...) as engine``.

    Commands go to aggregate actors with :meth:`send`; their events are group-committed to
    the log; projectors fold them into read caches that :meth:`query` reads.
    """

    def __init__(
        self,
        *,
        log: EventLog,
        writer: Writer,
        aggregates: Aggregates,
        projections: Sequence[ProjectionHost],
        broadcast: Broadcast,
        registry: EventRegistry,
    ) -> None:
        # Use Engine.open: the engine only works inside the task group it creates.
        self._log = log
        self._writer = writer
        self._aggregates = aggregates
        self._projections = {host.kind: host for host in projections}
        # A query belongs to the projector whose class defines it; a hosted subclass that
        # merely inherits it must not answer for its parent.
        self._queries: dict[Callable[..., Any], ProjectionHost] = {}
        for host in projections:
            for fn in host.kind.query_functions:
                if vars(host.kind).get(getattr(fn, "__name__", "")) is fn:
                    self._queries[fn] = host
        for host in projections:
            for fn in host.kind.query_functions:
                self._queries.setdefault(fn, host)
        self._broadcast = broadcast
        self._registry = registry
        self._closed = False

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        path: str | os.PathLike[str] | None,
        *,
        aggregates: Iterable[AggregateType],
        projectors: Iterable[ProjectorType] = (),
        sync: bool = True,
        log: EventLog | None = None,
        mailbox_size: int = 64,
        max_live_aggregates: int = 100_000,
        idle_timeout: float | None = None,
        map_size: int = DEFAULT_MAP_SIZE,
        max_map_size: int = DEFAULT_MAX_MAP_SIZE,
        projector_window_bytes: int = WINDOW_BYTES,
    ) -> AsyncIterator[Engine]:
        """Open the log at ``path``, start the actors, and close it all on exit.

        Args:
            path: the LMDB directory; ``None`` with ``log=None`` uses an in-memory log.
            aggregates: the aggregate classes to host.
            projectors: the projector classes to host; each catches up from the log.
            sync: fsync each group commit (durable against OS crashes). ``sync=False``
                survives a process crash, not an OS crash.
            log: a ready backend to use instead of opening ``path`` (it is closed on exit).
            mailbox_size: commands per aggregate decided but not yet durable; beyond it
                ``send`` waits and ``send_nowait`` raises ``Overloaded``.
            max_live_aggregates: the most aggregates kept in memory (least recently used
                idle ones are passivated first).
            idle_timeout: passivate aggregates idle this many seconds, a finite number
                above 0 (None: never).
            map_size: initial LMDB map size in bytes (it grows by itself).
            max_map_size: the cap on map growth; beyond it commands fail with StorageFull.
                At least ``map_size``.
            projector_window_bytes: how many bytes of recently committed events are kept
                for live projectors (default 64 MiB; each event counts twice its payload
                plus a small overhead). Projectors that fall behind it read the log
                instead; with no projector hosted nothing is kept. 0 keeps nothing.

        Raises:
            DefinitionError: an option is out of range or of the wrong type (counts and
                sizes are ints, ``sync`` a bool: ``True``/``1`` confusions are refused), an
                aggregate or projector is not one, or has a name or snapshot format the log
                cannot store, or two projectors share a name. Nothing was opened.

        On exit the engine stops accepting commands, fails those still waiting for mailbox
        room with ``EngineClosed``, commits every command already decided, and closes the
        log. If the body is cancelled, the same happens.
        """
        aggregate_kinds, projector_kinds = _check_kinds(aggregates, projectors)
        _check_options(
            sync=sync,
            mailbox_size=mailbox_size,
            max_live_aggregates=max_live_aggregates,
            idle_timeout=idle_timeout,
            map_size=map_size,
            max_map_size=max_map_size,
            projector_window_bytes=projector_window_bytes,
        )
        if len({p.name for p in projector_kinds}) != len(projector_kinds):
            raise DefinitionError("two projectors share a name")
        if log is None:
            if path is None:
                log = MemoryEventLog()
            else:
                log = LmdbEventLog(path, sync=sync, map_size=map_size, max_map_size=max_map_size)
        try:
            registry = EventRegistry()
            broadcast = Broadcast(log.head_position(), window_bytes=projector_window_bytes)
            writer = Writer(log, on_commit=broadcast.publish)
            hosts = Aggregates(
                aggregate_kinds,
                log=log,
                writer=writer,
                registry=registry,
                mailbox_size=mailbox_size,
                max_live=max_live_aggregates,
            )
            projections = [
                ProjectionHost(
                    kind,
                    log=log,
                    broadcast=broadcast,
                    registry=registry,
                    save=writer.save_projection,
                )
                for kind in projector_kinds
            ]
            engine = cls(
                log=log,
                writer=writer,
                aggregates=hosts,
                projections=projections,
                broadcast=broadcast,
                registry=registry,
            )
            async with anyio.create_task_group() as tg:
                # Shielded: if the host cancels us, _shutdown (shielded too) still needs the
                # writer to commit what was decided; it stops through writer.close().
                tg.start_soon(_shielded, writer.run)
                for host in projections:
                    tg.start_soon(host.run)
                if idle_timeout is not None:
                    tg.start_soon(hosts.run_idle_sweeper, idle_timeout)
                try:
                    yield engine
                finally:
                    with anyio.CancelScope(shield=True):
                        await engine._shutdown()
                    tg.cancel_scope.cancel()
        finally:
            log.close()

    async def _shutdown(self) -> None:
        """Refuse new work, commit what was decided, then stop the writer."""
        self._closed = True
        self._aggregates.close()
        for host in self._projections.values():
            host.save_now()  # rides on the writer's last commit
        self._writer.close()
        await self._writer.wait_stopped()
        closed = EngineClosed("the engine closed")
        for host in self._projections.values():
            host.fail_waiters(closed)

    # -- commands --------------------------------------------------------------------------

    async def send(
        self,
        aggregate: AggregateType,
        stream_id: str,
        command: Any,
        *,
        correlation_id: str | None = None,
        causation_id: str | None = None,
    ) -> Committed:
        """Run ``command`` on aggregate ``stream_id``; return once its events are durable.

        Waits for room if the aggregate's mailbox is full, and for a live slot if
        ``max_live_aggregates`` aggregates are live and all busy (backpressure). If
        cancelled while waiting, nothing happened; if cancelled after the command entered
        the mailbox, it may still commit.

        A rejection is final: if it was decided while earlier commands of the aggregate
        were still being written, ``send`` first waits for them, and if one of them failed
        the command is decided again on the state reloaded from the log.

        ``stream_id`` is a non-empty str without NUL of at most 400 UTF-8 bytes;
        ``correlation_id`` and ``causation_id`` (stored on each event) are None or a str of
        at most 1024 UTF-8 bytes. A str subclass is stored as a plain str; a str with no
        UTF-8 form (a lone surrogate) is refused.

        Raises:
            UnknownCommand: the aggregate has no handler for this command type (nothing
                was queued).
            Rejected: the handler refused the command; nothing was appended.
            HandlerError: the handler or an applier raised; nothing was appended and the
                aggregate is reloaded from the log.
            EncodeError: an event the handler built cannot be stored and read back;
                nothing was appended and the aggregate is reloaded.
            InvalidArgument: ``stream_id``, ``correlation_id`` or ``causation_id`` is
                malformed (see below); the handler did not run, nothing was appended.
            DefinitionError: ``stream_id`` belongs to another aggregate type (stream ids
                are shared by all aggregate types).
            StorageError: the commit failed (``StorageFull`` past the map cap or with the
                disk full); nothing of it was written.
            ConcurrencyError: another writer changed the stream (should not happen).
            EngineClosed: the engine is closed or closed before the command ran.
        """
        # Checked before anything is decided: a bad id would be acknowledged and then make
        # the log unreadable, or fail the group commit of every command it rode with. The
        # usual call (plain str id, no metadata) pays three identity tests; the stream id's
        # content is checked when its aggregate is activated (a live one passed already).
        if type(stream_id) is not str:
            stream_id = check_stream_id(stream_id)
        if correlation_id is not None or causation_id is not None:
            correlation_id = check_metadata(correlation_id, "correlation_id")
            causation_id = check_metadata(causation_id, "causation_id")
        return await self._aggregates.send(
            aggregate, stream_id, command, correlation_id, causation_id
        )

    def send_nowait(
        self,
        aggregate: AggregateType,
        stream_id: str,
        command: Any,
        *,
        correlation_id: str | None = None,
        causation_id: str | None = None,
    ) -> Pending:
        """Put ``command`` in the mailbox now, never waiting for room.

        Returns a :class:`Pending`; ``await`` it for the :class:`Committed`. The handler
        has already run when this returns, so its errors are raised here.

        Raises:
            Overloaded: the mailbox is full; nothing was queued.
            (and the errors of :meth:`send`)
        """
        if type(stream_id) is not str:  # as in send
            stream_id = check_stream_id(stream_id)
        if correlation_id is not None or causation_id is not None:
            correlation_id = check_metadata(correlation_id, "correlation_id")
            causation_id = check_metadata(causation_id, "causation_id")
        return self._aggregates.send_nowait(
            aggregate, stream_id, command, correlation_id, causation_id
        )

    def decode_command(
        self,
        aggregate: AggregateType,
        data: bytes | str,
        *,
        format: Literal["json", "msgpack"] = "json",
        max_bytes: int = DEFAULT_MAX_COMMAND_BYTES,
    ) -> Any:
        """Decode and strictly validate an untrusted command for ``aggregate``.

        The input is an object tagged with the command's name:
        ``{"type": "Deposit", "amount": 5}``. Its size is checked before decoding.

        Raises:
            InvalidArgument: ``aggregate`` is not an aggregate type, or see below.
            PayloadTooLarge, UnknownEventType, DecodeError, InvalidArgument: see
                :func:`decode_command`.
        """
        handlers = getattr(aggregate, "command_handlers", None)
        if not isinstance(handlers, Mapping):
            raise InvalidArgument(f"{describe(aggregate)} is not an aggregate type")
        return decode_command(data, handlers.keys(), format=format, max_bytes=max_bytes)

    # -- queries ---------------------------------------------------------------------------

    async def query(
        self, query: Callable[..., T], /, *args: Any, after: int | None = None, **kwargs: Any
    ) -> T:
        """Call a projector query (``Balances.balance``) on the projector's cache.

        With ``after=position`` (typically ``Committed.position``) it first waits until the
        projector has applied that position, so a caller reads its own writes. The result
        cannot alias the cache: anything mutable is copied. Without ``after`` it does not
        wait at all. If cancelled while waiting, nothing happened.

        The query is answered by the hosted projector whose class defines it; an inherited
        one by the first hosted projector that has it. So a projector hosted beside its base
        class answers only the queries it defines itself: override the ones to be asked of it.

        A query is user code, like a handler: if it raises, or returns something that
        cannot be copied (a generator, a dict view), ``HandlerError`` is raised with the
        original exception as ``__cause__``; the projector carries on.

        Raises:
            UnknownQuery: ``query`` is not a query of a hosted projector.
            InvalidArgument: ``after`` is not None or an int >= 0 (bools are refused).
            HandlerError: the query raised, or its result cannot be copied.
            ProjectorFaulted: the projector halted (before reaching ``after``).
            EngineClosed: the engine closed while waiting.
        """
        try:
            host = self._queries.get(query)
        except TypeError:  # unhashable: certainly not a query
            host = None
        if host is None:
            raise UnknownQuery(
                f"{describe(getattr(query, '__qualname__', query))} is not a query here"
            )
        if after is not None and (type(after) is not int or after < 0):
            raise InvalidArgument(f"after must be None or an int >= 0, not {describe(after)}")
        if host.fault is not None:
            raise host.fault_error()  # a fresh error each time: tracebacks must not pile up
        if after is not None and host.checkpoint < after:
            if self._closed:
                raise EngineClosed("the engine is closed")
            await host.wait_position(after)
            if host.fault is not None:  # halted between releasing us and now
                raise host.fault_error()
        # call_query's two steps, inlined: forwarding *args and **kwargs through one more
        # call cost ~150 ns of a ~400 ns query (W5). Change both together.
        try:
            return detach(query(host.instance, *args, **kwargs))  # type: ignore[no-any-return]
        except Exception as e:
            raise _query_failed(query, e) from e

    async def wait_projected(self, position: int | None = None) -> None:
        """Wait until every projector has applied ``position`` (default: the current head).

        Raises ProjectorFaulted if one halts before that, InvalidArgument if ``position``
        is not None or an int >= 0. Cancelling the wait is safe.
        """
        if position is not None and (type(position) is not int or position < 0):
            raise InvalidArgument(f"position must be None or an int >= 0, not {describe(position)}")
        if self._closed:
            raise EngineClosed("the engine is closed")
        target = self._broadcast.head if position is None else position
        for host in self._projections.values():
            # If the engine closes meanwhile, each projector refuses the wait itself.
            await host.wait_position(target)

    def rebuild(self, projector: ProjectorType) -> None:
        """Drop ``projector``'s cache and rebuild it from position 0 in the background.

        Queries see the cache grow from empty; ``query(..., after=p)`` waits for ``p``.
        """
        self._projection(projector).rebuild()

    def resume(self, projector: ProjectorType) -> None:
        """Clear a halted projector's fault and retry the event it stopped at."""
        self._projection(projector).resume()

    def parked(self, projector: ProjectorType) -> list[Parked]:
        """The events a ``park`` projector skipped because its applier raised."""
        return list(self._projection(projector).parked)

    def _projection(self, projector: ProjectorType) -> ProjectionHost:
        try:
            return self._projections[projector]
        except (KeyError, TypeError):  # TypeError: unhashable, so not a projector either
            raise UnknownQuery(f"{describe(projector)} is not a hosted projector") from None

    # -- inspection ------------------------------------------------------------------------

    @property
    def log(self) -> EventLog:
        """The event log (for reads; only the engine's writer writes)."""
        return self._log

    def statistics(self) -> EngineStatistics:
        """Counters of the writer, the aggregate actors, and each projector."""
        return EngineStatistics(
            writer=self._writer.statistics(),
            aggregates=self._aggregates.statistics(),
            projectors=tuple(h.statistics() for h in self._projections.values()),
            head=self._broadcast.head,
            window=self._broadcast.statistics(),
        )

    def is_live(self, stream_id: str) -> bool:
        """True if the aggregate ``stream_id`` is in memory (not passivated).

        Raises:
            InvalidArgument: ``stream_id`` is not a valid stream id.
        """
        return self._aggregates.is_live(check_stream_id(stream_id))


def call_query(query: Callable[..., T], cache: Any, /, *args: Any, **kwargs: Any) -> T:
    """Answer ``query`` on a projector's ``cache`` exactly as :meth:`Engine.query` does
    (it inlines these steps): the result copied if it could alias the cache, a failure
    reported as a :class:`HandlerError` (the original is ``__cause__``). For testing kits.

    Raises:
        HandlerError: the query raised, or its result cannot be copied (a generator, a dict
            view): user code failed, like a handler. ``BaseException`` passes through.
    """
    try:
        return detach(query(cache, *args, **kwargs))  # type: ignore[no-any-return]
    except Exception as e:
        raise _query_failed(query, e) from e


def _query_failed(query: Callable[..., Any], error: Exception) -> HandlerError:
    """The error for a query that raised or returned what cannot be copied: wrapped like a
    handler's, so the caller learns that user code failed, not what our copying or the
    query's internals happen to raise."""
    name = getattr(query, "__qualname__", query)
    return HandlerError(f"query {name} failed: {type(error).__name__}: {error}")


def _check_kinds(
    aggregates: Iterable[AggregateType], projectors: Iterable[ProjectorType]
) -> tuple[list[AggregateType], list[ProjectorType]]:
    """The hosted classes as lists, each checked for what reaches the log: its name (in
    keys and envelopes) and snapshot format (in every snapshot). One the log cannot store
    would fail mid-flight, in a group commit, instead of here.

    Raises:
        DefinitionError: which class, and why.
    """
    try:
        aggregate_kinds, projector_kinds = list(aggregates), list(projectors)
    except TypeError as e:
        raise DefinitionError("aggregates and projectors must be iterables of classes") from e
    for aggregate in aggregate_kinds:
        _check_kind(aggregate, ("command_handlers", "event_appliers"), "aggregate_name")
    for projector in projector_kinds:
        _check_kind(projector, ("event_appliers", "query_functions"), "name")
    return aggregate_kinds, projector_kinds


def _check_kind(kind: object, members: tuple[str, ...], name_attribute: str) -> None:
    if not all(isinstance(getattr(kind, m, None), Mapping | frozenset) for m in members):
        raise DefinitionError(f"{describe(kind)} is not an actors.Aggregate or Projector class")
    name = getattr(kind, name_attribute, None)
    if name or name_attribute == "name":  # an aggregate without one is stored by class name
        try:
            check_label(name, name_attribute)
        except InvalidArgument as e:
            raise DefinitionError(f"{describe(kind)}: {e}") from None
    fmt = getattr(kind, "snapshot_format", 0)
    if type(fmt) is not int or not -(2**63) <= fmt < 2**64:  # msgpack's int range
        raise DefinitionError(f"{describe(kind)}: snapshot_format must be a 64-bit int")


def _check_options(
    *,
    sync: bool,
    mailbox_size: int,
    max_live_aggregates: int,
    idle_timeout: float | None,
    map_size: int,
    max_map_size: int,
    projector_window_bytes: int,
) -> None:
    """Refuse every out-of-range or mistyped option of :meth:`Engine.open` up front.

    Each would otherwise pass a ``<= 0`` test (``nan``), or be taken for another type
    (``sync=0``, ``mailbox_size=True``), and fail later, mid-flight: a ``nan`` idle timeout
    killed the engine at its first sweep.

    Raises:
        DefinitionError: which option, and why.
    """
    if type(sync) is not bool:
        raise DefinitionError(f"sync must be True or False, not {describe(sync)}")
    counts = {"mailbox_size": mailbox_size, "max_live_aggregates": max_live_aggregates}
    # Sizes go to LMDB as a C size_t; the cap is what this machine's Python can index.
    sizes = {"map_size": map_size, "max_map_size": max_map_size}
    for name, value in (counts | sizes).items():
        limit = sys.maxsize if name in sizes else math.inf
        if type(value) is not int or not 1 <= value <= limit:
            raise DefinitionError(f"{name} must be an int of at least 1, not {describe(value)}")
    if type(projector_window_bytes) is not int or projector_window_bytes < 0:
        raise DefinitionError(
            f"projector_window_bytes must be an int >= 0, not {describe(projector_window_bytes)}"
        )
    if max_map_size < map_size:
        raise DefinitionError(f"max_map_size ({max_map_size}) < map_size ({map_size})")
    # inf is refused, not read as "never": None says that, one meaning with one spelling.
    # A bool is not a number of seconds.
    if idle_timeout is not None and (
        type(idle_timeout) not in (int, float)
        or not (math.isfinite(idle_timeout) and idle_timeout > 0)
    ):
        raise DefinitionError(
            f"idle_timeout must be a finite number of seconds above 0, or None, "
            f"not {describe(idle_timeout)}"
        )
