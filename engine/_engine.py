"""The :class:`Engine` façade: wires log, writer, aggregates and projectors; the async API.

Over 400 lines because every public call checks its own arguments here, at the front door,
before anything is decided (``_check_options``, ``call_query``): the checks stay beside the
calls they guard.
"""

from __future__ import annotations

import functools
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
from types import MappingProxyType
from typing import Any, Literal, TypeVar

import anyio
import msgspec

from ._aggregates import Aggregates, AggregatesStatistics, AggregateType, Pending
from ._codec import DEFAULT_MAX_COMMAND_BYTES, EventRegistry, decode_command
from ._command_ids import CommandIdRetention
from ._errors import (
    DefinitionError,
    EngineClosed,
    HandlerError,
    InvalidArgument,
    Overloaded,
    ProjectorFaulted,
    QueryTimeout,
    StorageLocked,
    UnknownCommand,
    UnknownPosition,
    UnknownQuery,
    describe,
)
from ._follow import Follower, FollowerStatistics, follows_others
from ._log import (
    MAX_METADATA_BYTES,
    EventLog,
    check_label,
    check_stream_id,
    read_limiter,
    reads_block,
)
from ._log_lmdb import DEFAULT_MAP_SIZE, DEFAULT_MAX_MAP_SIZE, LmdbEventLog
from ._log_view import LogView
from ._metadata import CommandMeta, RecordPrincipal, command_meta
from ._policy import Policy, allow_query, allow_send, check_policy, send_refused
from ._process_leader import LeasedProcessManagers, lease_name
from ._process_managers import ProcessManagers
from ._process_steps import ProcessManagerStatistics, check_process_managers
from ._projectors import (
    WINDOW_BYTES,
    Broadcast,
    Parked,
    ProjectorHost,
    ProjectorStatistics,
    ProjectorType,
    WindowStatistics,
    detach,
)
from ._records import Committed
from ._reply import must_propagate
from ._telemetry import Telemetry, check_telemetry
from ._timers import Clock, SystemClock
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
    process_managers: tuple[ProcessManagerStatistics, ...] = ()
    """Each hosted process manager's counters."""
    follower: FollowerStatistics | None = None
    """On a log other processes append to (``others_append``): what its follower saw."""


async def _shielded(run: Callable[[], Awaitable[None]]) -> None:
    """Run ``run`` immune to outside cancellation; it must stop by other means."""
    with anyio.CancelScope(shield=True):
        await run()


class _LmdbOption:
    """The default of an LMDB-only option of :meth:`Engine.open`, told apart from the same
    value passed explicitly (which, with ``log=``, would be silently ignored)."""

    def __init__(self, value: object) -> None:
        self.value = value

    def __repr__(self) -> str:  # what the signature shows in help()
        return repr(self.value)


# Typed Any so that the signature keeps its real types (sync: bool, not bool | _LmdbOption).
_SYNC: Any = _LmdbOption(True)
_MAP_SIZE: Any = _LmdbOption(DEFAULT_MAP_SIZE)
_COMMAND_IDS: Any = _LmdbOption(None)
_MAX_MAP_SIZE: Any = _LmdbOption(DEFAULT_MAX_MAP_SIZE)

# The LMDB directories that engines of this process hold open (resolved paths): a second
# Engine.open on one is refused by the log's lock either way; this tells it apart from
# another process holding it, so the message says which.
_open_here: set[str] = set()


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
        projectors: Sequence[ProjectorHost],
        broadcast: Broadcast,
        registry: EventRegistry,
        policy: Policy | None = None,
        record_principal: RecordPrincipal | None = None,
        processes: ProcessManagers | LeasedProcessManagers | None = None,
        follower: Follower | None = None,
    ) -> None:
        # Use Engine.open: the engine only works inside the task group it creates.
        self._processes = processes
        self._follower = follower
        self._policy = policy
        self._record_principal = record_principal
        self._log = log
        # Command ids are looked up in a worker thread (``send_checked``) on such a log.
        self._checks_off_loop = reads_block(log)
        self._view = LogView(log)
        self._writer = writer
        self._aggregates = aggregates
        self._projectors = {host.kind: host for host in projectors}
        # A query belongs to the projector whose class defines it; a hosted subclass that
        # merely inherits it must not answer for its parent.
        self._queries: dict[Callable[..., Any], ProjectorHost] = {}
        for host in projectors:
            for fn in host.kind.query_functions:
                if vars(host.kind).get(getattr(fn, "__name__", "")) is fn:
                    self._queries[fn] = host
        for host in projectors:
            for fn in host.kind.query_functions:
                self._queries.setdefault(fn, host)
        self._broadcast = broadcast
        self._registry = registry
        self._closed = False

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        log: EventLog | None = None,
        aggregates: Iterable[AggregateType],
        projectors: Iterable[ProjectorType] = (),
        sync: bool = _SYNC,
        mailbox_size: int = 64,
        max_live_aggregates: int = 100_000,
        idle_timeout: float | None = None,
        map_size: int = _MAP_SIZE,
        max_map_size: int = _MAX_MAP_SIZE,
        projector_window_bytes: int = WINDOW_BYTES,
        wait_for_projectors: bool = True,
        authorize: Policy | None = None,
        record_principal: Callable[[Any], str | None] | None = None,
        command_ids: CommandIdRetention = _COMMAND_IDS,
        process_managers: Iterable[Any] = (),
        clock: Clock | None = None,
        telemetry: Telemetry | None = None,
    ) -> AsyncIterator[Engine]:
        """Open the log, start the actors, and close it all on exit.

        ``Engine.open(path, ...)`` opens (or creates) the LMDB log in directory ``path``;
        ``Engine.open(log=MemoryEventLog(), ...)`` runs on a ready backend instead (an
        in-memory log is not durable). Exactly one of the two.

        It returns once every projector has applied the log as it was at open, so a query
        right after it never sees an empty or stale view (a projector that halts meanwhile
        is not waited for: its queries raise ``ProjectorFaulted``). With
        ``wait_for_projectors=False`` it returns at once, and a projector still reading the
        log shows as ``state="catching_up"`` in ``engine.statistics().projectors``; a query
        with ``after=`` still waits for what it needs.

        Args:
            path: the LMDB directory (created if missing; not empty: ``"."`` for the
                current directory), or a PostgreSQL URL (``"postgresql://..."``: a
                ``PostgresEventLog`` in its default schema; ``sync`` and ``command_ids``
                apply, the map sizes do not).
            log: a ready backend to use instead of ``path`` (closed on exit).
            aggregates: the aggregate classes to host.
            projectors: the projector classes to host; each catches up from the log.
            sync: LMDB only: fsync each group commit (durable against OS crashes, the
                default). ``sync=False`` survives a process crash, not an OS crash.
            mailbox_size: commands per aggregate decided but not yet durable; beyond it
                ``send`` waits and ``send_nowait`` raises ``Overloaded``.
            max_live_aggregates: the most aggregates kept in memory (least recently used
                idle ones are passivated first).
            idle_timeout: passivate aggregates idle this many seconds, a finite number
                above 0 (None: never).
            map_size: LMDB only: the initial map size in bytes (it grows by itself).
            max_map_size: LMDB only: the cap on map growth; beyond it commands fail with
                ``StorageFull`` (raise it later with :meth:`set_max_map_size`). At least
                ``map_size``.
            projector_window_bytes: how many bytes of recently committed events are kept
                for live projectors (default 64 MiB; each event counts twice its payload
                plus a small overhead). Projectors that fall behind it read the log
                instead; with no projector hosted nothing is kept. 0 keeps nothing.
            wait_for_projectors: wait at open until the projectors have caught up (the
                default); False for a log too long to wait for.
            authorize: a :class:`Policy` asked before every command and query (fail
                closed: anything but True refuses with ``Unauthorized``). None: no checks,
                and no cost.
            record_principal: what to store in each event for a ``send(principal=)`` that
                is not a str (a str, or None to store nothing); without it such a
                principal is refused.
            command_ids: with a path or URL: how long command ids are kept for
                idempotent retries (default: the newest 250,000 younger than a day).
            process_managers: the :class:`ProcessManager` classes to host; each reads
                the log from where it left off, and sends what it decided but had not
                sent (see ``docs/design.md``, "Process managers"). On a log several engines
                write (``PostgresEventLog(shared=True)``) one engine at a time runs them,
                the holder of their lease; the others stand by and take over within about
                half a second of its loss (``statistics().process_managers``: ``leader``).
                Refused (``DefinitionError``) on another log that others write: it offers
                no lease.
            clock: what process managers' deadlines read the time from and sleep with
                (default: the system's wall clock; tests pass a
                ``actorlog.testing.FakeClock``).
            telemetry: an instrumentation to attach, e.g. ``actorlog.otel.OpenTelemetry()``
                (spans and metrics; ``pip install 'actorlog[otel]'``). None: nothing is
                observed, and nothing is paid.

        Raises:
            DefinitionError: neither or both of ``path`` and ``log`` were given, ``path``
                is empty (``""``), or ``log``
                with an LMDB-only option (``sync``, ``map_size``, ``max_map_size``), which
                it would ignore; an option is out of range or of the wrong type (counts and
                sizes are ints, ``sync`` a bool: ``True``/``1`` confusions are refused), an
                aggregate or projector is not one, or has a name or snapshot format the log
                cannot store, or two projectors share a name. Nothing was opened.
            StorageLocked: the directory is open in another process, or by another engine
                in this one (one engine per log directory).
            StorageError: the directory or its log cannot be used.

        An exception raised in the ``async with`` block comes out as itself, never wrapped
        in an ``ExceptionGroup`` (the engine's own tasks run in a task group: if one of
        them fails, its error comes out as a group, with the block's, if any). On exit the
        engine stops accepting commands, fails those still waiting for mailbox room with
        ``EngineClosed``, commits every command already decided, and closes the log. If
        the body (or the wait for the projectors) is cancelled, the same happens.
        """
        lmdb_options = {
            "sync": sync,
            "map_size": map_size,
            "max_map_size": max_map_size,
            "command_ids": command_ids,
        }
        given = [name for name, value in lmdb_options.items() if not _defaulted(value)]
        if (path is None) == (log is None):
            raise DefinitionError(
                "Engine.open needs exactly one of path (an LMDB directory) or "
                "log= (a ready backend, e.g. log=MemoryEventLog() for an in-memory log)"
            )
        if path is not None and _empty_path(path):
            raise DefinitionError(
                "Engine.open got an empty path, which would open a log in the current "
                "directory; pass '.' to mean that"
            )
        if log is not None and given:
            raise DefinitionError(
                f"{', '.join(given)}: LMDB option(s) of Engine.open(path); with log= the "
                "backend is configured where it is made, and they would be ignored"
            )
        sync, map_size, max_map_size = (_value(sync), _value(map_size), _value(max_map_size))
        policy = check_policy(authorize)
        telemetry = check_telemetry(telemetry)
        if record_principal is not None and not callable(record_principal):
            raise DefinitionError(
                f"record_principal must be a callable, not {describe(record_principal)}"
            )
        aggregate_kinds, projector_kinds = _check_kinds(aggregates, projectors)
        process_kinds = check_process_managers(process_managers)
        if clock is not None and not isinstance(clock, Clock):
            raise DefinitionError(f"clock must have now() and sleep_until(), not {describe(clock)}")
        _check_options(
            sync=sync,
            mailbox_size=mailbox_size,
            max_live_aggregates=max_live_aggregates,
            idle_timeout=idle_timeout,
            map_size=map_size,
            max_map_size=max_map_size,
            projector_window_bytes=projector_window_bytes,
        )
        if type(wait_for_projectors) is not bool:
            raise DefinitionError(
                f"wait_for_projectors must be True or False, not {describe(wait_for_projectors)}"
            )
        if len({p.name for p in projector_kinds}) != len(projector_kinds):
            raise DefinitionError("two projectors share a name")
        held: str | None = None
        if log is None and _postgres_url(path):
            if {"map_size", "max_map_size"} & set(given):
                raise DefinitionError("map_size and max_map_size are LMDB's; a URL was given")
            # Connecting and creating the tables take round trips (and, for a server that
            # does not answer, up to the connect timeout): in a worker thread, not on the
            # host's event loop.
            # Loaded here, on first use: a host on LMDB never imports psycopg (~70 ms).
            from ._log_postgres import PostgresEventLog

            log = await anyio.to_thread.run_sync(
                functools.partial(
                    PostgresEventLog, str(path), sync=sync, command_ids=_value(command_ids)
                )
            )
        if log is None:
            assert path is not None
            log, held = _open_lmdb(
                path,
                sync=sync,
                map_size=map_size,
                max_map_size=max_map_size,
                command_ids=_value(command_ids),
            )
        body_error: BaseException | None = None
        projector_hosts: list[ProjectorHost] = []
        attached: Telemetry | None = None  # detached on the way out, whatever happens
        try:
            if (aggregate_kinds or process_kinds) and getattr(log, "readonly", False):
                raise DefinitionError(
                    "a log opened read-only serves queries only: open the engine with "
                    "aggregates=[] and no process managers (its writer is another process)"
                )
            if process_kinds and follows_others(log) and not hasattr(log, "open_lease"):
                # Other engines write it: one of them at a time runs the process managers,
                # chosen by a lease the log must offer (_process_leader.py).
                raise DefinitionError(
                    f"process managers on a log other processes write run on one engine at "
                    f"a time, chosen by a lease, and a {type(log).__name__} offers none "
                    "(PostgresEventLog(shared=True) does): host them where one engine writes"
                )
            registry = EventRegistry()
            head = (
                await anyio.to_thread.run_sync(log.head_position)
                if reads_block(log)
                else log.head_position()
            )
            broadcast = Broadcast(head, window_bytes=projector_window_bytes)
            # Others append to the log (issue 15): follow its head.
            follower = Follower(log, broadcast) if follows_others(log) else None
            writer = Writer(
                log, on_commit=broadcast.publish if follower is None else follower.on_commit
            )
            limiter = read_limiter(log)  # None: the log's reads run inline
            hosts = Aggregates(
                aggregate_kinds,
                log=log,
                writer=writer,
                registry=registry,
                mailbox_size=mailbox_size,
                max_live=max_live_aggregates,
                read_limiter=limiter,
            )
            # A log opened read-only cannot keep a projector's cache.
            save_cache = None if getattr(log, "readonly", False) else writer.save_projector_cache
            for kind in projector_kinds:
                projector_hosts.append(
                    ProjectorHost(
                        kind,
                        log=log,
                        broadcast=broadcast,
                        registry=registry,
                        save=save_cache,
                        read_limiter=limiter,
                    )
                )
            processes: ProcessManagers | LeasedProcessManagers | None = None
            if process_kinds:
                make_processes = functools.partial(
                    ProcessManagers,
                    process_kinds,
                    log=log,
                    writer=writer,
                    aggregates=hosts,
                    aggregate_kinds=aggregate_kinds,
                    registry=registry,
                    broadcast=broadcast,
                    clock=SystemClock() if clock is None else clock,
                    read_limiter=limiter,
                )
                if follows_others(log):
                    # One engine of the log at a time runs them: the lease's holder.
                    lease = log.open_lease(lease_name(process_kinds))  # type: ignore[attr-defined]
                    processes = LeasedProcessManagers(make_processes, lease)
                else:
                    processes = make_processes()
            engine = cls(
                log=log,
                writer=writer,
                aggregates=hosts,
                projectors=projector_hosts,
                broadcast=broadcast,
                registry=registry,
                policy=policy,
                record_principal=record_principal,
                processes=processes,
                follower=follower,
            )
            if telemetry is not None:
                telemetry.attach(engine)
                attached = telemetry
            async with anyio.create_task_group() as tg:
                hosts.use_task_group(tg)  # send_nowait's retries on a shared log run here
                # Shielded: if the host cancels us, _shutdown (shielded too) still needs the
                # writer to commit what was decided; it stops through writer.close().
                tg.start_soon(_shielded, writer.run)
                for host in projector_hosts:
                    tg.start_soon(host.run)
                if idle_timeout is not None:
                    tg.start_soon(hosts.run_idle_sweeper, idle_timeout)
                if processes is not None:
                    tg.start_soon(processes.run, broadcast.head)
                if follower is not None and (
                    projector_kinds or aggregate_kinds or processes is not None
                ):
                    follower.feed(
                        hosts.apply_foreign if aggregate_kinds else None,
                        # Only cached aggregates read others' events here: following may
                        # rest while it saves them less than it costs.
                        conflicts=(lambda: (hosts.retried, writer.appended))
                        if aggregate_kinds and not projector_kinds and processes is None
                        else None,
                    )
                    tg.start_soon(follower.run)
                try:
                    if wait_for_projectors:
                        await engine._wait_caught_up(broadcast.head)
                    try:
                        yield engine
                    except BaseException as e:
                        body_error = e
                        raise
                finally:
                    with anyio.CancelScope(shield=True):
                        await engine._shutdown()
                    tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # The task group wraps whatever crosses it. The host's own exception, alone,
            # comes out as itself (trio's advice for a library's internal nursery): the
            # host wrote `except KeyError`, not `except* KeyError`. A group that holds
            # anything else (an engine task's failure) is left as it is.
            if body_error is None or not _sole_error(group, body_error):
                raise
        finally:
            for host in projector_hosts:  # their tasks have ended: nothing uses them now
                host.close()
            log.close()
            if held is not None:
                _open_here.discard(held)
            if attached is not None:
                attached.detach(engine)
        if body_error is not None:
            # Raised outside the except block, so that it is not chained to the group that
            # carried it; its own traceback and context are untouched.
            try:
                raise body_error
            finally:
                body_error = None

    async def _wait_caught_up(self, position: int) -> None:
        """Wait until every projector has applied ``position``; one that halts on the way
        is not waited for (its queries say ``ProjectorFaulted``)."""
        for host in self._projectors.values():
            try:
                await host.wait_position(position)
            except ProjectorFaulted:
                continue

    async def _shutdown(self) -> None:
        """Refuse new work, commit what was decided, then stop the writer."""
        self._closed = True
        if self._processes is not None:
            self._processes.stop()  # before the last commit, which carries its acks
        self._aggregates.close()
        for host in self._projectors.values():
            host.queue_save()  # rides on the writer's last commit
        self._writer.close()
        await self._writer.wait_stopped()
        closed = EngineClosed("the engine closed")
        for host in self._projectors.values():
            host.fail_waiters(closed)

    # -- commands --------------------------------------------------------------------------

    async def send(
        self,
        aggregate: AggregateType,
        stream_id: str,
        command: Any,
        *,
        command_id: str | None = None,
        principal: Any = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    ) -> Committed:
        """Run ``command`` on aggregate ``stream_id``; return once its events are durable.

        Waits for room if the aggregate's mailbox is full, and for a live slot if
        ``max_live_aggregates`` aggregates are live and all busy (backpressure). If
        cancelled while waiting, nothing happened; if cancelled after the command entered
        the mailbox, it may still commit.

        A rejection is final: if it was decided while earlier commands of the aggregate
        were still being written, ``send`` first waits for them, and if one of them failed
        the command is decided again on the state reloaded from the log.

        Idempotent with ``command_id`` (a non-empty str of at most 1024 UTF-8 bytes, e.g.
        a UUID the client made once per intended command): if the stream already
        committed a command with that id, ``send`` returns that command's ``Committed``
        (same version, same position) without running the handler, across passivation,
        snapshots and restarts, for as long as the log keeps the id (the newest 250,000
        ids younger than a day by default: ``CommandIdRetention``). The id is recorded
        in the group commit that writes the command's events, so a command with no event
        records it too.
        Concurrent sends of one id append once and all get its outcome. A rejected or
        failed command records nothing: a retry decides again.

        With ``Engine.open(authorize=policy)``, ``policy.may_send(principal, aggregate,
        stream_id, command)`` must return True first, else ``Unauthorized``.

        Stored on each event (``Recorded``): ``command_id``; ``principal``, if a str (or
        what ``Engine.open(record_principal=)`` makes of it; any other principal is
        refused without one); ``correlation_id`` and ``causation_id`` (None or a str of at
        most 1024 UTF-8 bytes); ``headers``, a mapping or ``(name, value)`` pairs of strs
        (at most 4096 UTF-8 bytes in all, e.g. a W3C ``traceparent``), kept in order. The
        commit's wall-clock time is the events' ``timestamp``. ``stream_id`` is a
        non-empty str without NUL of at most 400 UTF-8 bytes. A str subclass is stored as
        a plain str; a str with no UTF-8 form (a lone surrogate) is refused.

        Raises:
            UnknownCommand: the aggregate is not hosted, or has no handler for this
                command type (nothing was queued); for a dict, bytes or str the message
                points to :meth:`decode_command`.
            Rejected: the handler refused the command; nothing was appended.
            HandlerError: the handler or an applier raised; nothing was appended and the
                aggregate is reloaded from the log.
            EncodeError: an event the handler built cannot be stored and read back;
                nothing was appended and the aggregate is reloaded.
            Unauthorized: the engine's policy refused (or raised); nothing was decided.
            InvalidArgument: ``stream_id`` or a metadata argument is malformed (see
                above); the handler did not run, nothing was appended.
            DefinitionError: ``stream_id`` belongs to another aggregate type (stream ids
                are shared by all aggregate types).
            StorageError: the commit failed (``StorageFull`` past the map cap or with the
                disk full); nothing of it was written.
            ConcurrencyError: on a log other processes append to (PostgreSQL), the
                stream kept changing under the command: it was decided again on the
                reloaded aggregate ``CONFLICT_RETRIES`` times and still found it stale
                (nothing of it was appended; retry). On a log only this engine writes it
                does not happen.
            EngineClosed: the engine is closed or closed before the command ran.
        """
        # Checked before anything is decided: a bad id would be acknowledged and then make
        # the log unreadable, or fail the group commit of every command it rode with. The
        # usual call (plain str id, no metadata) pays three identity tests; the stream id's
        # content is checked when its aggregate is activated (a live one passed already).
        if type(stream_id) is not str:
            stream_id = check_stream_id(stream_id)
        meta = None
        if (
            command_id is not None
            or principal is not None
            or correlation_id is not None
            or causation_id is not None
            or headers is not None
        ):
            if (
                correlation_id is None
                and causation_id is None
                and headers is None
                and (
                    command_id is None
                    or (
                        type(command_id) is str
                        and command_id.isascii()
                        and 0 < len(command_id) <= MAX_METADATA_BYTES
                        and "\x00" not in command_id
                    )
                )
                and (
                    principal is None
                    or (
                        type(principal) is str
                        and principal.isascii()
                        and len(principal) <= MAX_METADATA_BYTES
                        and "\x00" not in principal
                    )
                )
            ):
                # The usual service command (an idempotency key, a principal's name, or
                # both) checked inline: command_meta's call is ~2% of W1 (callgrind).
                meta = CommandMeta(None, None, command_id, principal, None)
            else:
                meta = command_meta(
                    correlation_id,
                    causation_id,
                    command_id,
                    principal,
                    headers,
                    self._record_principal,
                )
        policy = self._policy
        if policy is not None:
            # allow_send, inlined (a call less per command): change both together.
            try:
                allowed = policy.may_send(principal, aggregate, stream_id, command)
            except BaseException as e:
                if must_propagate(e):
                    raise
                raise send_refused(principal, stream_id, command, e) from e
            if allowed is not True:
                raise send_refused(principal, stream_id, command)
        try:  # free when nothing is raised (zero-cost try since Python 3.11)
            if meta is not None and meta.command_id is not None and self._checks_off_loop:
                # A log whose reads block is asked for the id in a worker thread.
                return await self._aggregates.send_checked(
                    aggregate, stream_id, command, meta, meta.command_id
                )
            return await self._aggregates.send(aggregate, stream_id, command, meta)
        except UnknownCommand as e:
            raise _with_decode_hint(e, command) from None

    def send_nowait(
        self,
        aggregate: AggregateType,
        stream_id: str,
        command: Any,
        *,
        command_id: str | None = None,
        principal: Any = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    ) -> Pending:
        """Put ``command`` in the mailbox now, never waiting for room.

        Returns a :class:`Pending`; ``await`` it for the :class:`Committed`. The handler
        has already run when this returns, so its errors are raised here. Cancelling the
        ``await`` of the :class:`Pending` does not withdraw the command: it may commit.

        On a log other processes append to (``PostgresEventLog(shared=True)``) the
        command is decided on this process's cached aggregate, which may be stale, and
        its outcome is settled as :meth:`send` settles it, by the engine, whether or not
        the :class:`Pending` is awaited: a command whose append conflicts is reloaded and
        decided again (up to ``CONFLICT_RETRIES`` times, then ``ConcurrencyError``), and a
        ``Rejected`` is not raised here but checked against the stream's durable version
        first: awaiting the :class:`Pending` then raises it if it stands, or returns the
        :class:`Committed` of the command decided again. Until settled, such a command
        holds a slot of the mailbox for ``send_nowait``. If the engine closes first, a
        command not yet decided again fails with ``EngineClosed``; one decided again is
        committed. On a log only this engine writes none of this happens.

        Raises:
            Overloaded: the mailbox is full, or ``max_live_aggregates`` aggregates are live
                and all busy; nothing was queued. Always exactly ``Overloaded``.
            (and the errors of :meth:`send`; on a log other processes append to, not
            ``Rejected``: see above)
        """
        if type(stream_id) is not str:  # as in send
            stream_id = check_stream_id(stream_id)
        meta = command_meta(
            correlation_id, causation_id, command_id, principal, headers, self._record_principal
        )
        if self._policy is not None:
            allow_send(self._policy, principal, aggregate, stream_id, command)
        try:
            return self._aggregates.send_nowait(aggregate, stream_id, command, meta)
        except Overloaded as e:
            # The aggregates tell "no live slot" apart with a private subclass (send waits
            # on it); callers get the public type, which they can catch and name.
            if type(e) is Overloaded:
                raise
            raise Overloaded(str(e)) from None
        except UnknownCommand as e:
            raise _with_decode_hint(e, command) from None

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
        self,
        query: Callable[..., T],
        /,
        *args: Any,
        after: int | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (it bounds only the wait for after)
        principal: Any = None,
        **kwargs: Any,
    ) -> T:
        """Call a projector query (``Balances.balance``) on the projector's cache.

        With ``after=position`` (typically ``Committed.position``) it first waits until the
        projector has applied that position, so a caller reads its own writes; with
        ``timeout=seconds`` too, it waits at most that long (then ``QueryTimeout``). The result
        cannot alias the cache: anything mutable is copied. Without ``after`` it does not
        wait at all (and ``timeout`` does nothing). If cancelled while waiting, nothing
        happened.

        With ``Engine.open(authorize=policy)``, ``policy.may_query(principal, query, args,
        kwargs)`` must return True first, else ``Unauthorized`` (nothing is read or waited
        for). ``after``, ``timeout`` and ``principal`` are the engine's; every other keyword
        goes to the query.

        The query is answered by the hosted projector whose class defines it; an inherited
        one by the first hosted projector that has it. So a projector hosted beside its base
        class answers only the queries it defines itself: override the ones to be asked of it.

        A query is user code, like a handler: if it raises (a user's ``BaseException``
        subclass included), or returns something that cannot be copied (a generator, a
        dict view), ``HandlerError`` is raised with the original exception as
        ``__cause__``; the projector carries on. Only cancellation, ``KeyboardInterrupt``
        and ``SystemExit`` pass through.

        Raises:
            UnknownQuery: ``query`` is not a query of a hosted projector.
            Unauthorized: the engine's policy refused (or raised).
            InvalidArgument: ``after`` is not None or an int from 0 to 2**64 - 1 (bools
                are refused), or ``timeout`` is not None or a finite number >= 0.
            UnknownPosition: ``after`` is beyond the log's head (an ``InvalidArgument``):
                no acknowledgement gave it, so it is refused at once instead of waited for.
            QueryTimeout: ``timeout`` seconds passed before the projector reached ``after``.
            HandlerError: the query raised, or its result cannot be copied.
            ProjectorFaulted: the projector halted (before reaching ``after``).
            EngineClosed: ``after`` was given and the engine is closing or closed (waits
                are refused then, as by :meth:`wait_projected`), or it closed while waiting.
        """
        try:
            host = self._queries.get(query)
        except TypeError:  # unhashable: certainly not a query
            host = None
        if host is None:
            raise UnknownQuery(
                f"{describe(getattr(query, '__qualname__', query))} is not a query here"
            )
        if after is not None and (type(after) is not int or not 0 <= after < 2**64):
            _check_position("after", after)
        if timeout is not None:
            _check_timeout(timeout)
        if self._policy is not None:
            allow_query(self._policy, principal, query, args, MappingProxyType(kwargs))
        if host.fault is not None:
            raise host.fault_error()  # a fresh error each time: tracebacks must not pile up
        if after is not None and (host.checkpoint < after or self._closed):
            await self._wait_position(host, after, timeout)
            if host.fault is not None:  # halted between releasing us and now
                raise host.fault_error()
        # call_query's two steps, inlined: forwarding *args and **kwargs through one more
        # call cost ~150 ns of a ~400 ns query (W5). Change both together.
        try:
            return detach(query(host.instance, *args, **kwargs))  # type: ignore[no-any-return]
        except BaseException as e:
            if must_propagate(e):  # cancellation, Ctrl-C, sys.exit(): not the query's failure
                raise
            raise _query_failed(query, e) from e

    async def wait_projected(
        self,
        position: int | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (query's twin; a scope works too)
    ) -> None:
        """Wait until every projector has applied ``position`` (default: the current head),
        for at most ``timeout`` seconds if given. Cancelling the wait is safe.

        Raises:
            InvalidArgument: ``position`` is not None or an int from 0 to 2**64 - 1, or
                ``timeout`` is not None or a finite number >= 0.
            UnknownPosition: ``position`` is beyond the log's head (an
                ``InvalidArgument``), refused at once.
            QueryTimeout: ``timeout`` seconds passed first.
            ProjectorFaulted: a projector halted before ``position``.
            EngineClosed: the engine is closing or closed, or closed while waiting.
        """
        if position is not None:
            _check_position("position", position)
        if timeout is not None:
            _check_timeout(timeout)
        if self._closed:
            raise EngineClosed("the engine is closed")
        if position is None:
            # Its own acknowledged commits count, held back by the follower or not: a
            # caller that sent a command and waits for "the head" means to read it.
            target = self._written()
        else:
            await self._check_written(position, "position")
            target = position
        # One deadline for them all, not one per projector.
        with anyio.move_on_after(math.inf if timeout is None else timeout) as scope:
            for host in self._projectors.values():
                # If the engine closes meanwhile, each projector refuses the wait itself.
                await host.wait_position(target)
        if scope.cancelled_caught:
            raise QueryTimeout(f"the projectors did not reach position {target} within {timeout} s")

    async def _wait_position(
        self,
        host: ProjectorHost,
        after: int,
        timeout: float | None,  # noqa: ASYNC109 (query's, passed on)
    ) -> None:
        """The slow path of :meth:`query`: the wait for ``after``, checked and bounded."""
        if self._closed:
            raise EngineClosed("the engine is closed")
        await self._check_written(after, "after")
        if timeout is None:
            await host.wait_position(after)
            return
        with anyio.move_on_after(timeout) as scope:
            await host.wait_position(after)
        if scope.cancelled_caught:
            raise QueryTimeout(
                f"projector {host.kind.name} did not reach position {after} within {timeout} s "
                f"(it is at {host.checkpoint})"
            )

    async def _check_written(self, position: int, name: str) -> None:
        """Refuse a position this engine's log has not written: no acknowledgement gave it,
        and since this engine is the log's only writer, waiting for it could last forever
        (and would hold a host's shutdown, as it did under uvicorn). On a log others
        append to, the log's own head is read first: another process may have written it
        (its acknowledgement), and the follower not seen it yet."""
        head = self._written()
        if position > head and self._follower is not None:
            head = await self._follower.refresh()
        if position > head:
            raise UnknownPosition(
                f"{name}={position} is beyond the log's head ({head}): no command has "
                "been acknowledged at that position; pass a Committed.position"
            )

    def _written(self) -> int:
        """The last position this engine knows committed, its own commits the follower
        holds back included (``Follower.written``)."""
        follower = self._follower
        return self._broadcast.head if follower is None else follower.written()

    def rebuild(self, projector: ProjectorType) -> None:
        """Drop ``projector``'s cache and rebuild it from position 0 in the background.

        Queries see the cache grow from empty; ``query(..., after=p)`` waits for ``p``. A
        view kept in a store (``SqliteView``) is emptied in the same transaction as its
        first rebuilt batch: until that commits, its queries read the old view.
        """
        self._projector(projector).rebuild()

    def resume(self, projector: ProjectorType | type) -> None:
        """Clear a halted projector's (or process manager's) fault and retry the event it
        stopped at."""
        self._projector(projector).resume()

    def parked(self, projector: ProjectorType | type) -> list[Parked]:
        """The most recent events (its ``max_parked``, 1,000 by default) a ``park``
        projector (or process manager) skipped because its applier (or reaction) raised,
        oldest first; statistics count them all."""
        return list(self._projector(projector).parked)

    def _projector(self, projector: ProjectorType | type) -> ProjectorHost:
        try:
            return self._projectors[projector]  # type: ignore[index]
        except (KeyError, TypeError):  # TypeError: unhashable, so not a projector either
            if self._processes is not None:  # a process manager's router resumes alike
                router = self._processes.host_of(projector)
                if router is not None:
                    return router
            raise UnknownQuery(f"{describe(projector)} is not a hosted projector") from None

    async def wait_settled(
        self,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (wait_projected's twin)
    ) -> None:
        """Wait until every process manager has settled: it has read the log to its
        head, its steps are durable, and every command it decided was sent and answered
        (deadlines still to come do not count). Cancelling the wait is safe. On a log
        several engines write, only the engine that leads them can tell: elsewhere it waits
        until this engine leads and has settled (``QueryTimeout`` if it does not).

        Raises:
            ProjectorFaulted: a process manager is halted (its fault names the event).
            InvalidArgument: ``timeout`` is not None or a finite number >= 0.
            QueryTimeout: ``timeout`` seconds passed first.
            EngineClosed: the engine is closing or closed.
            StorageError: on a log others write, its head could not be read.
        """
        if timeout is not None:
            _check_timeout(timeout)
        processes = self._processes
        if processes is None:
            return
        with anyio.move_on_after(math.inf if timeout is None else timeout) as scope:
            if self._follower is not None and isinstance(processes, LeasedProcessManagers):
                # Others write the log: what they acknowledged before this call (a debit a
                # client sent to another engine) must be read before settling counts.
                await self._follower.refresh()
            # Polled: settling depends on the writer, the routers and every dispatch; a
            # few milliseconds late is fine for what waits on it (tests, benchmarks).
            while not processes.settled():
                if self._closed:
                    raise EngineClosed("the engine is closed")
                await anyio.sleep(0.002)
        if scope.cancelled_caught:
            raise QueryTimeout(f"the process managers did not settle within {timeout} s")

    # -- inspection ------------------------------------------------------------------------

    @property
    def log(self) -> LogView:
        """A read-only view of the event log: read a stream or the whole log, its head, a
        snapshot, and for LMDB the map's size and cap (only the engine's writer writes,
        and the engine closes the log)."""
        return self._view

    def set_max_map_size(self, max_map_size: int) -> None:
        """Raise (or lower) the cap the LMDB map may grow to; the cure for ``StorageFull``.

        Takes effect at once: the next group commit that needs room grows the map up to
        the new cap, and aggregates whose commands failed are reloaded from the log first.
        It lasts until the engine closes (pass ``max_map_size=`` to :meth:`open` next time).

        Raises:
            InvalidArgument: ``max_map_size`` is not an int, or is below the map's current
                size (the map never shrinks).
            DefinitionError: the engine's log has no map (it is not an LMDB log).
            EngineClosed: the engine is closing or closed.
        """
        log = self._log
        if not isinstance(log, LmdbEventLog):
            raise DefinitionError(f"a {type(log).__name__} has no map size to set")
        if self._closed:
            raise EngineClosed("the engine is closed")
        current = log.map_size
        if type(max_map_size) is not int or not current <= max_map_size <= sys.maxsize:
            raise InvalidArgument(
                f"max_map_size must be an int of at least the map's current size "
                f"({current} bytes), not {describe(max_map_size)}"
            )
        log.max_map_size = max_map_size

    def statistics(self) -> EngineStatistics:
        """Counters of the writer, the aggregate actors, and each projector."""
        return EngineStatistics(
            writer=self._writer.statistics(),
            aggregates=self._aggregates.statistics(),
            projectors=tuple(h.statistics() for h in self._projectors.values()),
            head=self._broadcast.head,
            window=self._broadcast.statistics(),
            process_managers=() if self._processes is None else self._processes.statistics(),
            follower=None if self._follower is None else self._follower.statistics(),
        )

    def is_live(self, stream_id: str) -> bool:
        """True if the aggregate ``stream_id`` is in memory (not passivated).

        Raises:
            InvalidArgument: ``stream_id`` is not a valid stream id.
        """
        return self._aggregates.is_live(check_stream_id(stream_id))


def _defaulted(value: object) -> bool:
    return type(value) is _LmdbOption


def _value(option: Any) -> Any:
    """An LMDB option's value, whether passed or defaulted."""
    return option.value if type(option) is _LmdbOption else option


def _sole_error(group: BaseExceptionGroup[BaseException], error: BaseException) -> bool:
    """True if ``group`` (nested groups included) holds ``error`` and nothing else."""
    while len(group.exceptions) == 1:
        (inner,) = group.exceptions
        if inner is error:
            return True
        if not isinstance(inner, BaseExceptionGroup):
            return False
        group = inner
    return False


def _with_decode_hint(error: UnknownCommand, command: object) -> UnknownCommand:
    """``error``, with a pointer to ``decode_command`` if ``command`` is raw input (a dict
    parsed from JSON, the bytes or text of a request body) rather than a command object."""
    if not isinstance(command, dict | bytes | bytearray | memoryview | str):
        return error
    return UnknownCommand(
        f"{error}: commands are msgspec Structs; decode untrusted input with "
        "engine.decode_command(Aggregate, data) first"
    )


def _open_lmdb(
    path: str | os.PathLike[str],
    *,
    sync: bool,
    map_size: int,
    max_map_size: int,
    command_ids: CommandIdRetention | None,
) -> tuple[LmdbEventLog, str | None]:
    """The LMDB log at ``path``, and the key under which this process now holds it.

    Raises:
        StorageLocked: saying truly whether this process or another one holds it.
    """
    try:
        key: str | None = os.path.realpath(path)
    except (TypeError, ValueError):  # not a path: the log says so, typed
        key = None
    try:
        log = LmdbEventLog(
            path,
            sync=sync,
            map_size=map_size,
            max_map_size=max_map_size,
            command_ids=command_ids,
        )
    except StorageLocked:
        if key in _open_here:
            raise StorageLocked(
                f"{path} is already open in this process (an Engine.open on it has not "
                "exited); one engine per log directory"
            ) from None
        raise
    if key is not None:
        _open_here.add(key)
    return log, key


def _postgres_url(path: object) -> bool:
    """True for a PostgreSQL URL given where a path goes (libpq's two schemes)."""
    return isinstance(path, str) and path.startswith(("postgresql://", "postgres://"))


def _empty_path(path: object) -> bool:
    """True for ``""`` (or ``b""``, or a PathLike of it): ``Path("")`` is the current
    directory, never what a caller passing an empty setting meant."""
    try:
        return os.fspath(path) in ("", b"")  # type: ignore[call-overload]
    except TypeError:
        return False  # not a path at all: the log says so, typed


def _check_position(name: str, value: object) -> None:
    """Refuse a position that is not an int in 0..2**64-1 (positions are 64-bit: a wait
    for one beyond would never end)."""
    if type(value) is not int or not 0 <= value < 2**64:
        raise InvalidArgument(
            f"{name} must be None or an int from 0 to 2**64 - 1, not {describe(value)}"
        )


def _check_timeout(timeout: object) -> None:
    # A bool is not a number of seconds; inf and nan are refused (None means "no limit").
    if type(timeout) not in (int, float) or not (
        math.isfinite(timeout) and timeout >= 0  # type: ignore[arg-type, operator]
    ):
        raise InvalidArgument(
            f"timeout must be None or a finite number of seconds >= 0, not {describe(timeout)}"
        )


def call_query(query: Callable[..., T], cache: Any, /, *args: Any, **kwargs: Any) -> T:
    """Answer ``query`` on a projector's ``cache`` exactly as :meth:`Engine.query` does
    (it inlines these steps): the result copied if it could alias the cache, a failure
    reported as a :class:`HandlerError` (the original is ``__cause__``). For testing kits.

    Raises:
        HandlerError: the query raised, or its result cannot be copied (a generator, a dict
            view): user code failed, like a handler. That includes a user's
            ``BaseException`` subclass; only what ``_reply.must_propagate`` names
            (cancellation, ``KeyboardInterrupt``, ``SystemExit``) passes through.
    """
    try:
        return detach(query(cache, *args, **kwargs))  # type: ignore[no-any-return]
    except BaseException as e:
        if must_propagate(e):
            raise
        raise _query_failed(query, e) from e


def _query_failed(query: Callable[..., Any], error: BaseException) -> HandlerError:
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
