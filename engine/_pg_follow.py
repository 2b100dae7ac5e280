"""Following a PostgreSQL log that other processes write: LISTEN/NOTIFY as a hint, a
bounded poll as the fallback.

    engine A ── group commit: ... NOTIFY channel; COMMIT (once a group that wrote events)
    engine B's follower thread:  wait_for_head(known, timeout)
        LISTEN (once, on its own connection) ──▶ head? ──▶ > known: return it
                                              └─▶ wait for the socket (another process's
                                                  notification; this one's own are read
                                                  and dropped, by its writer connection's
                                                  backend pid), at most ``POLL`` s ──▶ ...

The NOTIFY is sent by the log inside the group's transaction (``PostgresEventLog._commit``),
so it is delivered exactly when the events become visible and costs no round trip of its
own (see that module and ``docs/design.md`` for the lock it takes). A notification says
only "the head moved"; the head is always read from the table, so a lost, late or
duplicated notification costs latency (up to ``POLL``), never an event.

The listening connection is used by the follower's thread only, opened on first use and
reopened after a failure; a failure is a ``StorageError`` (the follower retries after a
pause).
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
    """The LISTEN end of one log's channel (see the module doc).

    Args:
        connect: opens a new autocommit connection to the log's database
            (``StorageError`` if it cannot).
        schema: the log's schema (names the channel).
        head_query: the statement that reads the log's head position.
        own_pid: the backend pid of this process's writer connection, the sender of its
            own commits' notifications (0 before its first commit).
    """

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection[Any]],
        schema: str,
        head_query: bytes | sql.SQL | sql.Composed,
        own_pid: Callable[[], int],
    ) -> None:
        self._connect = connect
        self._channel = channel_name(schema)
        self._head_query = head_query
        self._own_pid = own_pid
        self._listener: psycopg.Connection[Any] | None = None
        self._listen_lock = threading.Lock()
        self._noticed = False
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
        pass, or ``deadline`` (False). This process's own notifications (its writer
        connection's backend) are read and dropped here, without a query: each would
        otherwise cost a read of the log that can only find what this engine already
        knows."""
        pgconn = conn.pgconn
        end = min(deadline, time.monotonic() + POLL)
        while (wait := end - time.monotonic()) > 0:
            ready, _, _ = select.select([conn.fileno()], [], [], wait)
            if not ready:
                return False
            pgconn.consume_input()
            foreign = False
            own = self._own_pid()
            while (notice := pgconn.notifies()) is not None:
                foreign = foreign or notice.be_pid != own
            if foreign:
                return True
        return False

    def drain_notices(self) -> None:
        """Read and drop whatever notifications the listening connection has received,
        without waiting (libpq's socket never blocks a read) and without opening it. For a
        follower that reads the log on its own schedule while others keep committing (and
        so does not wait for notifications): unread, they would fill the socket's buffers
        until the server's backend blocks writing to it and holds back the server's
        notification queue, which every NOTIFY of every process shares (review 10). Skips
        a turn if the connection is busy in another thread."""
        if not self._listen_lock.acquire(blocking=False):
            return
        try:
            conn = self._listener
            if conn is None or conn.closed:
                return
            pgconn = conn.pgconn
            pgconn.consume_input()
            while pgconn.notifies() is not None:
                pass
        except (psycopg.Error, OSError):  # the next wait reopens it, or says why not
            self._drop_listener()
        finally:
            self._listen_lock.release()

    def stop_listening(self) -> None:
        """Close the listening connection; the next wait opens a new one (and LISTENs
        again). For a follower that stops reading for a while."""
        with self._listen_lock:
            self._drop_listener()

    def close(self) -> None:
        """Close the listening connection. Idempotent."""
        self._closed = True
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
        if notice.pid != self._own_pid():  # not this process's own commit
            self._noticed = True

    def _head(self, conn: psycopg.Connection[Any]) -> int:
        row = conn.execute(self._head_query).fetchone()
        return int(row[0]) if row else 0

    def _drop_listener(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
