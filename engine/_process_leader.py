"""Process managers on a log several engines write: one engine runs them at a time, the
one holding their lease, a term at a time.

    every engine with process managers, in its task group:
      loop: try the lease (a worker thread) ── no ──▶ sleep LEASE_INTERVAL, try again
                                            └─ yes ─▶ a term: a fresh ProcessManagers,
                                                      run exactly as at a single engine's
                                                      open (routers from their saved
                                                      position to the head, then dispatch
                                                      and deadlines), until:
        - the lease is lost (checked every LEASE_INTERVAL: the session no longer answers):
          the term's tasks are cancelled, its memory dropped; compete again;
        - a step finds its instance moved by another engine (ConcurrencyError: a leader
          that lost its lease and does not know yet): the term restarts from the log;
        - the engine closes: the term stops as a single engine's process managers do
          (last acks and caches ride the last commit).

Why a fresh ``ProcessManagers`` each term rather than a reset one: a step or a dispatch of
the old term may still complete after the term ended (the writer holds it), and its
callback then updates the old term's objects, never the new term's counts or instances.

The lease is an efficiency: nothing double is done because of it. Two engines that both
run a process manager (the old leader until its next check; or a test that forces it)
cannot double an effect: a step appends with the instance's version expected (one of two
racing steps fails, and its engine restarts its term), an instance reloaded from its stream
skips what it reacted to, ignores a deadline it no longer has and a refusal it was told
already, and a dispatched command carries an id derived from its step, which the log
answers with the first result (``docs/design.md``, the last section).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol

import anyio
import anyio.to_thread
import msgspec

from ._errors import StorageError
from ._fold import Parked
from ._process_managers import ProcessManagers
from ._process_steps import ProcessManagerStatistics
from ._projectors import ProjectorHost

__all__ = ["LEASE_INTERVAL", "Lease", "LeasedProcessManagers", "lease_name"]

LEASE_INTERVAL: Final = 0.5
"""Seconds between two tries of a lease by an engine that does not hold it, and between two
checks by the one that does: a failover takes at most about this long once the server has
released the lock (plus the new leader's catch-up). (Here, not beside the PostgreSQL lease:
an engine on LMDB imports this module, and never psycopg.)"""


class Lease(Protocol):
    """What a log that several engines write offers to choose one of them (``open_lease``
    on the log; ``PgLease``). Blocking calls, for a worker thread."""

    def try_acquire(self) -> bool: ...
    def holds(self) -> bool: ...
    def release(self) -> None: ...
    def close(self) -> None: ...


def lease_name(kinds: Sequence[Any]) -> str:
    """The lease of a set of process managers: engines hosting the same ones share it."""
    return "process managers " + ",".join(sorted(kind.name for kind in kinds))


class LeasedProcessManagers:
    """The process managers of one engine on a log several engines write (see the module
    doc): the same calls as :class:`ProcessManagers`, answered by the current term.

    Args:
        make: builds the process managers for a term (each call a fresh set).
        lease: this engine's side of their lease (closed when :meth:`run` ends).
    """

    def __init__(self, make: Callable[[], ProcessManagers], lease: Lease) -> None:
        self._make = make
        self._lease = lease
        # Built once at open, and dropped: what is wrong with them (a DefinitionError)
        # is said at open, not when this engine first leads.
        probe = make()
        self._names = [host.name for host in probe.hosts]
        probe.end_term()
        self._hub: ProcessManagers | None = None  # the current term's, while leading
        self._term: anyio.CancelScope | None = None
        # Holds the lease (between two terms too: a term restarted after a conflict).
        self._leading = False
        self._stopping = False
        self._limiter = anyio.CapacityLimiter(1)  # the lease's thread (not the readers')
        self.terms = 0

    @property
    def leading(self) -> bool:
        """True while this engine holds the lease (and runs the process managers)."""
        return self._leading

    async def run(self, head: int) -> None:
        """Compete for the lease, and run a term each time it is held, until cancelled
        (``head`` is unused: a term starts from the head as it is then). The lease is
        released when it returns."""
        del head
        try:
            while not self._stopping:
                # A term that ended on a conflict, not a loss, is followed by the next at
                # once if the lease still holds: checked first, since each term's watch
                # sleeps an interval before its first check, and a leader that lost the
                # lease and keeps conflicting must not put that check off forever.
                if self._leading:
                    self._leading = await self._holds()
                if self._leading or await self._acquire():
                    self._leading = True
                    await self._run_term()
                else:
                    await anyio.sleep(LEASE_INTERVAL)
            await anyio.sleep_forever()  # stopped: the engine cancels us when it is done
        finally:
            # A socket's close: quick, and the server releases the lock at once.
            self._lease.close()

    async def _holds(self) -> bool:
        return await anyio.to_thread.run_sync(self._lease.holds, limiter=self._limiter)

    async def _acquire(self) -> bool:
        try:
            return await anyio.to_thread.run_sync(self._lease.try_acquire, limiter=self._limiter)
        except StorageError:  # the server cannot be reached: try again later
            return False

    async def _run_term(self) -> None:
        """One term: fresh process managers, run until the lease is lost, a conflict, or
        the engine stops."""
        if self._stopping:  # the lease came back while the engine began to close
            return
        try:
            hub = self._make()  # reads the routers' saved caches and the head
        except StorageError:
            # The server went away after the lease was taken: try it all again later
            # (the lease first: it is likely lost with the server).
            self._leading = False
            await anyio.sleep(LEASE_INTERVAL)
            return
        self.terms += 1
        async with anyio.create_task_group() as tg:
            hub.on_conflict = tg.cancel_scope.cancel
            self._hub, self._term = hub, tg.cancel_scope
            try:
                tg.start_soon(self._watch, tg.cancel_scope)
                await hub.run(hub.broadcast.head)
            finally:
                self._hub = self._term = None
                if not self._stopping:
                    hub.end_term()

    async def _watch(self, term: anyio.CancelScope) -> None:
        """End the term once the lease no longer holds."""
        while True:
            await anyio.sleep(LEASE_INTERVAL)
            if not await self._holds():
                self._leading = False
                term.cancel()
                return

    def stop(self) -> None:
        """The engine is closing: stop the term as a single engine's process managers stop
        (their last acks and caches queued into the writer's last commit), start no other."""
        self._stopping = True
        hub, term = self._hub, self._term
        if hub is not None:
            hub.stop()
        if term is not None:
            term.cancel()

    def settled(self) -> bool:
        """True when this engine leads and its process managers are settled; False on an
        engine that does not lead (only the leader knows).

        Raises:
            ProjectorFaulted: one is halted.
        """
        hub = self._hub
        return hub is not None and hub.settled()

    def statistics(self) -> tuple[ProcessManagerStatistics, ...]:
        """Each process manager's counters (``state="standby"`` while another engine leads)."""
        hub = self._hub
        if hub is None:
            return tuple(_standby(name, self.terms, self._leading) for name in self._names)
        return tuple(
            msgspec.structs.replace(stats, leader=True, terms=self.terms)
            for stats in hub.statistics()
        )

    def host_of(self, kind: object) -> ProjectorHost | None:
        """The router of process manager class ``kind`` in the current term (None if not
        hosted, or if this engine does not lead)."""
        hub = self._hub
        return None if hub is None else hub.host_of(kind)

    def parked(self, kind: object) -> list[Parked] | None:
        """The parked messages of process manager class ``kind`` in the current term."""
        hub = self._hub
        return None if hub is None else hub.parked(kind)


def _standby(name: str, terms: int, leading: bool) -> ProcessManagerStatistics:
    """Between two terms: no term's counts to show (``catching_up`` if the lease is held:
    the next term is starting)."""
    return ProcessManagerStatistics(
        name=name,
        state="catching_up" if leading else "standby",
        checkpoint=0,
        lag=0,
        live_instances=0,
        started=0,
        finished=0,
        steps=0,
        ignored=0,
        pending_sends=0,
        dispatched=0,
        failures_delivered=0,
        pending_deadlines=0,
        deadlines_fired=0,
        parked=0,
        fault=None,
        leader=leading,
        terms=terms,
    )
