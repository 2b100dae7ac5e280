"""Following a PostgreSQL log that other processes write: LISTEN/NOTIFY as a hint, a
bounded poll as the fallback.

    engine A ── group commit ──▶ (the writer publishes) ──▶ announce(): NOTIFY, at most one
                                                             in flight, coalesced
    engine B's follower thread:  wait_for_head(known, timeout)
        LISTEN (once, on its own connection) ──▶ head? ──▶ > known: return it
                                              └─▶ wait for the socket (another process's
                                                  notification; this one's own are read
                                                  and dropped, by the announcer's backend
                                                  pid), at most ``POLL`` s ──▶ head? ──▶ ...

Why the NOTIFY is not in the commit's transaction: a NOTIFY takes a global lock at
commit (the notification queue's), and the group commit already holds the events' table
lock; sent after the commit from a connection of its own, it serializes nothing of the
write path and costs one small round trip a group at most (fewer when groups commit
faster than a round trip: the engine coalesces them). A notification says only "the head
moved"; the head is always read from the table, so a lost, late or duplicated
notification costs latency (up to ``POLL``), never an event.

Connections: one for listening (used by the follower's thread only) and one for
announcing, each opened on first use and reopened after a failure; a failure is a
``StorageError`` (the follower retries after a pause).
"""

from __future__ import annotations

import hashlib
import select
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from ._errors import StorageError

try:
    import psycopg
    from psycopg import sql
except ImportError:  # pragma: no cover - the log itself refuses to open then
    psycopg = None  # type: ignore[assignment]

__all__ = ["POLL", "HeadChannel", "channel_name"]

POLL: Final = 0.1
"""The longest a follower waits for a notification before it reads the head anyway (the
fallback if notifications are lost, or a writer does not send them)."""


def channel_name(schema: str) -> str:
    """The NOTIFY channel of the log in ``schema``: a short, fixed-size identifier (a
    channel is an identifier, at most 63 bytes, and a schema name may be that long)."""
    return "actorlog_" + hashlib.sha256(schema.encode()).hexdigest()[:24]


class HeadChannel:
    """The LISTEN and NOTIFY ends of one log's channel (see the module doc).

    Args:
        connect: opens a new autocommit connection to the log's database
            (``StorageError`` if it cannot).
        schema: the log's schema (names the channel).
        head_query: the statement that reads the log's head position.
    """

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection[Any]],
        schema: str,
        head_query: sql.Composed,
    ) -> None:
        self._connect = connect
        self._channel = channel_name(schema)
        self._head_query = head_query
        self._listener: psycopg.Connection[Any] | None = None
        self._announcer: psycopg.Connection[Any] | None = None
        self._listen_lock = threading.Lock()
        self._announce_lock = threading.Lock()
        self._noticed = False
        self._announcer_pid = 0  # its backend's pid: the notifications to ignore
        self._closed = False

    def wait_for_head(self, known: int, timeout: float) -> int:
        """The log's head position, once it is past ``known`` or after ``timeout`` seconds
        (at most ``POLL`` between two reads of it). Blocking: run it in a worker thread.

        Raises:
            StorageError: the server cannot be reached, or the channel is closed.
        """
        with self._listen_lock:
            try:
                conn = self._listening()
                deadline = time.monotonic() + timeout
                while True:
                    self._noticed = False
                    head = self._head(conn)
                    if head > known or time.monotonic() >= deadline:
                        return head
                    if self._noticed:
                        continue  # another process's notification came with the reply
                    self._wait_for_notice(conn, deadline)
            except (psycopg.Error, OSError) as e:  # OSError: the socket went away
                self._drop_listener()
                raise StorageError(f"following the PostgreSQL log failed: {e}") from e

    def wait_for_notice(self, timeout: float) -> bool:
        """Wait for another process's notification, at most ``timeout`` seconds (no read
        of the head: for a follower that reads the log next in any case). True if one
        came. Blocking: run it in a worker thread.

        Raises:
            StorageError: the server cannot be reached, or the channel is closed.
        """
        with self._listen_lock:
            try:
                conn = self._listening()
                if self._noticed:  # one came with an earlier reply
                    self._noticed = False
                    return True
                return self._wait_for_notice(conn, time.monotonic() + timeout)
            except (psycopg.Error, OSError) as e:  # OSError: the socket went away
                self._drop_listener()
                raise StorageError(f"following the PostgreSQL log failed: {e}") from e

    def _wait_for_notice(self, conn: psycopg.Connection[Any], deadline: float) -> bool:
        """Wait until another process's notification arrives (True), or ``POLL`` seconds
        pass, or ``deadline`` (False). This process's own notifications (its announcer's
        backend) are read and dropped here, without a query: each would otherwise cost a
        read of the log that can only find what this engine already knows."""
        pgconn = conn.pgconn
        end = min(deadline, time.monotonic() + POLL)
        while (wait := end - time.monotonic()) > 0:
            ready, _, _ = select.select([conn.fileno()], [], [], wait)
            if not ready:
                return False
            pgconn.consume_input()
            foreign = False
            while (notice := pgconn.notifies()) is not None:
                foreign = foreign or notice.be_pid != self._announcer_pid
            if foreign:
                return True
        return False

    def announce(self) -> None:
        """Tell the log's followers that its head moved (one NOTIFY). Blocking.

        Raises:
            StorageError: the server cannot be reached (the announcement is lost: the
                followers' poll finds the head anyway).
        """
        with self._announce_lock:
            self._check_open()
            conn = self._announcer
            try:
                if conn is None or conn.closed:
                    conn = self._announcer = self._connect()
                    self._announcer_pid = conn.info.backend_pid
                conn.execute("SELECT pg_notify(%s, '')", (self._channel,))
            except psycopg.Error as e:
                self._announcer = None
                if conn is not None:
                    conn.close()
                raise StorageError(f"announcing to the PostgreSQL log failed: {e}") from e

    def close(self) -> None:
        """Close both connections. Idempotent."""
        self._closed = True
        with self._announce_lock:
            if self._announcer is not None:
                self._announcer.close()
                self._announcer = None
        with self._listen_lock:
            self._drop_listener()

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("the PostgreSQL log is closed")

    def _listening(self) -> psycopg.Connection[Any]:
        self._check_open()
        conn = self._listener
        if conn is None or conn.closed:
            conn = self._connect()
            try:
                # A handler keeps psycopg from queueing every notification it reads (its
                # backlog is unbounded); all we need is "one came".
                conn.add_notify_handler(self._notified)
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
            except BaseException:
                conn.close()
                raise
            self._listener = conn
        return conn

    def _notified(self, notice: psycopg.Notify) -> None:
        if notice.pid != self._announcer_pid:  # not this process's own announcement
            self._noticed = True

    def _head(self, conn: psycopg.Connection[Any]) -> int:
        row = conn.execute(self._head_query).fetchone()
        return int(row[0]) if row else 0

    def _drop_listener(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
