"""A lease among the engines of one PostgreSQL log: a session advisory lock, held on a
connection of its own for as long as its holder leads.

    engine A: try_acquire() ── pg_try_advisory_lock(k1, k2) ── true ──▶ leads
              holds() every LEASE_INTERVAL ── SELECT 1 ── answered ──▶ still leads
    engine B: try_acquire() every LEASE_INTERVAL ── false ──▶ stands by
    A killed (or its lease connection dropped): the server ends A's session and releases
    the lock ──▶ B's next try_acquire() gets it.

The lock is a *session* lock: the server holds it for exactly as long as the session
lives, and releases it when the session ends, however it ends (a close, kill -9 of the
process: the kernel closes its socket; ``pg_terminate_backend``). So "the connection
answers" is "the lease is held", and a leader checks that every ``LEASE_INTERVAL``. The key
is the two-int4 form ``(hashtext('actorlog lease ' || schema), hashtext(name))``: a
different key space from the one-bigint locks of the log itself (its writer lock, its
first-open lock), so the two can never collide. Two names that hash alike only share one
lease (one of them waits): never unsafe.

A lease is an efficiency, not the safety: two engines may both believe they lead for a
moment (the old leader learns of its loss only at its next check), and what they do must
then be safe anyway (for process managers it is: ``docs/design.md``).

Every method blocks for a round trip (or a connect): for a worker thread.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Final

from ._errors import StorageError

try:
    import psycopg
    from psycopg.conninfo import make_conninfo
except ImportError:  # pragma: no cover - the log itself refuses to open then
    psycopg = None  # type: ignore[assignment]

__all__ = ["PgLease", "lease_key"]

# Keepalives on the lease's connection, so that a leader cut off from the server (no FIN:
# a network partition) learns of it in seconds rather than the OS's two hours. The server
# side (releasing the lock of a client that vanished that way) is the server's
# ``tcp_keepalives_*`` / ``client_connection_check_interval`` settings.
_KEEPALIVES: Final = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 1,
    "keepalives_count": 3,
    "tcp_user_timeout": 5000,
}


def lease_key(schema: str, name: str) -> tuple[str, str]:
    """The two strings hashed into the lock's key: the log's schema, and what is leased."""
    return (f"actorlog lease {schema}", name)


class PgLease:
    """One engine's side of the lease ``name`` on the log in ``schema``.

    Args:
        dsn: the log's connection string.
        schema: the log's schema (part of the key).
        name: what is leased (part of the key).
        connect_timeout: seconds to wait for the server at each (re)connect.
    """

    def __init__(self, dsn: str, schema: str, name: str, *, connect_timeout: int) -> None:
        self._dsn = dsn
        self._key = lease_key(schema, name)
        self._timeout = connect_timeout
        self._conn: psycopg.Connection[Any] | None = None
        self._held = False
        self._closed = False
        self._lock = threading.Lock()  # one call at a time (the engine's limiter aside)

    def try_acquire(self) -> bool:
        """True if this engine holds the lease now (it got it, or held it already); False
        if another does. Never waits for the lock. Blocking (a round trip; a connect first
        if the last one was lost).

        Raises:
            StorageError: the server cannot be reached (or the lease is closed).
        """
        with self._lock:
            if self._closed:
                raise StorageError("the lease is closed")
            conn = self._conn
            try:
                if conn is None or conn.closed:
                    self._held = False
                    # UTF-8 as the log's connections (review 7): the key's strs are
                    # Unicode; another client encoding raised UnicodeEncodeError here.
                    conninfo = make_conninfo(
                        self._dsn,
                        application_name="actorlog lease",
                        client_encoding="UTF8",
                        **_KEEPALIVES,
                    )
                    conn = self._conn = psycopg.connect(
                        conninfo, autocommit=True, connect_timeout=self._timeout
                    )
                if self._held:
                    conn.execute("SELECT 1")
                    return True
                row = conn.execute(
                    "SELECT pg_try_advisory_lock(hashtext(%s), hashtext(%s))", self._key
                ).fetchone()
            except psycopg.Error as e:
                self._drop()
                raise StorageError(f"the lease's connection failed: {e}") from e
            self._held = bool(row and row[0])
            return self._held

    def holds(self) -> bool:
        """True if this engine still holds the lease: its session answers (the server holds
        a session lock until the session ends). False if it never had it, or lost it (the
        connection is then closed: the next ``try_acquire`` connects anew). Blocking."""
        with self._lock:
            conn = self._conn
            if conn is None or conn.closed or not self._held:
                return False
            try:
                conn.execute("SELECT 1")
            except psycopg.Error:
                self._drop()
                return False
            return True

    def release(self) -> None:
        """Give the lease up: another engine can take it as soon as this returns. The next
        ``try_acquire`` connects again. Idempotent."""
        with self._lock:
            self._unlock()
            self._drop()

    def close(self) -> None:
        """Release the lease for good. Idempotent."""
        with self._lock:
            self._closed = True
            self._unlock()
            self._drop()

    def _unlock(self) -> None:
        """Unlock before closing: a closed session's locks are released only once its
        server process has exited, a moment after the close returns, and a successor
        trying meanwhile would be refused. Best effort: a session that cannot answer
        releases its locks when it ends anyway."""
        conn = self._conn
        if conn is None or conn.closed or not self._held:
            return
        # On failure: closed next, and the server releases the lock with the session.
        with contextlib.suppress(psycopg.Error):
            conn.execute("SELECT pg_advisory_unlock(hashtext(%s), hashtext(%s))", self._key)

    def _drop(self) -> None:
        conn, self._conn, self._held = self._conn, None, False
        if conn is not None:
            conn.close()
