"""The PostgreSQL event log: the same contract as LMDB's, on a database server (psycopg 3).

Tables, in one schema of their own (``actorlog`` by default), every envelope field a column
so SQL users can read the log as it is::

    events       position bigint PK, stream_id, version (UNIQUE (stream_id, version)), type,
                 timestamp float8 (commit time, epoch seconds: a float so it reads back
                 bit for bit), correlation_id, causation_id, payload bytea (one msgpack
                 value), aggregate, command_id, principal, headers jsonb ([[name, value]])
    command_ids  (stream_id, command_id) PK, seq bigint UNIQUE (recording order, no gaps),
                 recorded_at float8 (indexed), the append's result (versions, positions)
    snapshots    stream_id PK, record bytea (a msgpack Snapshot)
    projector_caches  name PK, record bytea (a msgpack ProjectorCache)
    meta         key PK, value: ``format`` -> ``FORMAT``

Order. A group commit is one transaction, and before it reads anything it takes
``LOCK TABLE events IN EXCLUSIVE MODE`` (what ``eventsourcing``'s PostgreSQL recorder does
per insert; here once per group, so the price is paid once for ~60 commands). EXCLUSIVE
blocks every other writer of ``events`` and no reader. Under the lock, each statement of the
transaction (READ COMMITTED: a snapshot per statement) sees every group committed before,
so the head position and the stream versions it reads are the latest, and the positions it
assigns (head + 1, ...) are taken by no one else. A lock is released only once its
transaction is visible, so the commit order of groups is their position order: a reader
that has read position ``p`` never later finds a smaller position committed (the skipped
event of a sequence-numbered log, where numbers are taken at insert and committed in
another order). Positions are not a SEQUENCE for that reason (a sequence also leaves gaps
on rollback). The primary key and ``UNIQUE (stream_id, version)`` would refuse a second
writer that ignored the lock, never let it interleave.

Round trips. A group that needs no decision (every append expects an exact version, the
appends of a stream follow one another, no command id is recorded already; what W1's
commands and most commands are) and holds at most 64 KiB of payload (64 MiB as JSON) is
one message and one round trip (``_commit_guarded``): the lock and one prepared INSERT
(with its command ids' recording, then their pruning), sent with the simple query
protocol, which runs them as one transaction. Its rows arrive as one JSON document (one
string escaped once), their payloads as one bytea, and the server numbers the positions
from the head itself. If another process moved a stream of the group (the stream is not
at the version the group assumes for it), that stream's appends are not written and the
answer says where it is: they are judged there (and fail, as the exact way fails them).
The rest is written in the same message by the statement a log uses after it found a
stream moved (``actorlog_guarded_streams``), or else not at all and sent again by stream
(``actorlog_guarded``: all or nothing, cheaper for the server where nothing moves). A
command id recorded already (a retry, perhaps) writes nothing and sends the group the
exact way. The exact way is two round trips: (1) BEGIN, the lock, the versions of the
group's streams with the head (one statement), the group's command ids that are kept,
pipelined (psycopg's pipeline mode) and read back together; (2) the events as one
``INSERT ... SELECT FROM unnest(arrays)``, the command ids likewise, their bounded
pruning, the snapshots and caches, on a shared log the NOTIFY that wakes the other
processes' followers, and COMMIT, pipelined.
Deciding in Python between the two keeps the rules (expected versions, duplicates, empty
appends) in one language with the other backends: the one-message INSERT only checks
that nothing moved, it decides nothing. Why not always the exact way: a group commit's
price is CPU, the client's and the server's, paid once a group however small; the
pipelined statements cost ~1.1 ms of it a group here, the one message ~0.35 ms
(docs/design.md, "One round trip a group").

Errors. A failure of the server or the connection fails the whole group with a
``StorageError`` (the psycopg error is ``__cause__``; the transaction rolled back, nothing
of it remains) and the next call reconnects. If the connection is lost while COMMIT is in
flight, the outcome is unknown to us: the group is reported failed, though it may have
committed (nothing acknowledged is ever lost; a retry with the same command id is answered
from the log). An append that PostgreSQL cannot store (a NUL character in any str: its
``text`` type cannot hold one) fails alone with ``EncodeError``.

Durability: ``sync=True`` (default) commits with ``synchronous_commit`` as the server has it
(on by default: WAL flushed before COMMIT returns); ``sync=False`` sets it ``off`` for this
log's connection: a server crash may lose the last commits, never tear one.

Why one module over 400 lines: the table layout, the lock and the two round trips are one
decision, and the writer and readers are checked against it side by side.
"""

from __future__ import annotations

import operator
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeAlias, TypeVar

import msgspec

try:
    import psycopg
    from psycopg import sql
    from psycopg.rows import tuple_row
except ImportError:  # the optional extra (actorlog[postgres]) is not installed
    psycopg = None  # type: ignore[assignment]

from ._command_ids import CommandIdRetention, retention
from ._errors import (
    ConcurrencyError,
    DefinitionError,
    DuplicateCommand,
    EncodeError,
    InvalidArgument,
    StorageError,
    StorageLocked,
)
from ._log import (
    AppendOutcome,
    ReadBatch,
    check_command_id,
    check_expected_version,
    check_name,
    check_stream_id,
    expected_ok,
    stored_events,
)
from ._pg_follow import HeadChannel, channel_name
from ._pg_lease import PgLease
from ._records import ANY, Append, AppendResult, ProjectorCache, Snapshot, StoredEvent

__all__ = ["FORMAT", "PostgresEventLog"]

FORMAT: Final = "actorlog-pg-1"
"""The table layout this module reads and writes (``meta.format``); bump it when it changes.
A schema holding another layout is refused at open, never misread."""

MIN_SERVER_VERSION: Final = 150000
"""PostgreSQL 15 (``server_version_num``): the oldest server the suite runs against."""

WRITER_LOCK_WAIT: Final = 2.0
"""Seconds an append waits for the schema's writer lock before ``StorageLocked``: the lock
of a writer just killed is released when the server notices its connection gone."""

_PRUNE_MOST: Final = 4096
"""The most command ids one group deletes per bound (age, count), as in the LMDB log: a
backlog is worked off over a few groups instead of one long transaction."""

_ONE_MESSAGE_MOST_BYTES: Final = 2**16
"""The most payload bytes a group sends as one message (``_commit_guarded``); a bigger
group goes the exact way. The message carries the payloads as one bytea literal, hex
(each event's row says where its payload is in it), at ~25 ns of CPU a payload byte more
than the exact way's binary arrays (client and server: the hex, the quoting, the server's
lexing and decoding), against ~1.2-1.7 ms of CPU a group saved: 4 appends of 8 KiB cost
0.5x the exact way's CPU, 16 of 4 KiB 0.7x, 64 of 1 KiB 1.0x, 4 of 32 KiB 1.6x, 64 of 4
KiB 1.5x; W1's 64 of ~20 bytes 0.4-0.55x. (With the payloads hex inside the JSON rows, the
first version, the extra was ~60 ns a byte.) Far below PostgreSQL's 1 GB message limit,
which a group of ~512 MiB of payload, twice that as hex, broke as one message (review6)
while the exact way committed it."""

_ONE_MESSAGE_MOST_TEXT: Final = 2**26
"""The most bytes of the JSON document of a group's rows sent as one message; a bigger
group goes the exact way. Each event's row repeats its append's metadata, and the JSON
escapes it (a control character takes six bytes, seven inside the headers' own JSON;
quoting doubles the backslashes again): one append of 16,000 events with the most
metadata the writer admits made a document over PostgreSQL's 1 GB, which the exact way
sends in ~0.4 GB."""

_T = TypeVar("_T")
_MAX_BIGINT: Final = 2**63 - 1

_encode = msgspec.msgpack.Encoder().encode
_snapshot_decoder: Final = msgspec.msgpack.Decoder(Snapshot)
_cache_decoder: Final = msgspec.msgpack.Decoder(ProjectorCache)
_headers_encode = msgspec.json.Encoder().encode
_headers_decode = msgspec.json.Decoder(tuple[tuple[str, str], ...]).decode
# Walks one msgpack value without building it and refuses trailing bytes: a payload that is
# not exactly one value would be stored and never read back as an event.
_one_value: Final = msgspec.msgpack.Decoder(msgspec.Raw).decode
_UNSTORABLE: Final = (TypeError, ValueError, msgspec.DecodeError)

_PAYLOAD: Final = operator.attrgetter("payload")
_BY_STREAM_AFTER_A_MOVE: Final = 16
"""After a group sent as one message found a stream moved by another process, the next
this many are sent the way that writes the streams that did not move anyway
(``actorlog_guarded_streams``): under random routing most groups hold a stale stream (2 in
3 of W1's, 2 processes), and the all-or-nothing way would send them twice. Elsewhere the
all-or-nothing way, which costs the server ~35 us a group less (measured)."""


class _GuardStream(msgspec.Struct):
    """A stream of a group sent in one message, and the version the group assumes."""

    s: str
    v: int


class _GuardedRow(msgspec.Struct, omit_defaults=True):
    """An event of a group sent in one message (``_commit_guarded``), as a JSON object:
    one str for the group, escaped once, instead of an array literal a column."""

    s: str
    v: int
    t: str
    po: int  # where its payload starts in the group's payloads (one bytea, no hex in JSON)
    pl: int  # and its length
    co: str | None = None
    ca: str | None = None
    a: str | None = None
    ci: str | None = None
    pr: str | None = None
    hd: str | None = None


class _GuardedId(msgspec.Struct):
    """A command id a group sent in one message records: its append's versions, and its
    positions as offsets from the head (the server knows the head)."""

    s: str
    c: str
    fv: int
    lv: int
    fo: int
    lo: int


_json_encode = msgspec.json.Encoder().encode
_EVENT_COLUMNS: Final = (
    "position, stream_id, version, type, timestamp, correlation_id, causation_id, payload, "
    "aggregate, command_id, principal, headers::text"
)

_SCHEMA: Final = """
CREATE TABLE {s}.events (
    position bigint PRIMARY KEY,
    stream_id text NOT NULL,
    version bigint NOT NULL,
    type text NOT NULL,
    timestamp double precision NOT NULL,
    correlation_id text,
    causation_id text,
    payload bytea NOT NULL,
    aggregate text,
    command_id text,
    principal text,
    headers jsonb,
    UNIQUE (stream_id, version)
);
CREATE TABLE {s}.command_ids (
    stream_id text NOT NULL,
    command_id text NOT NULL,
    seq bigint NOT NULL UNIQUE,
    recorded_at double precision NOT NULL,
    first_version bigint NOT NULL,
    last_version bigint NOT NULL,
    first_position bigint NOT NULL,
    last_position bigint NOT NULL,
    PRIMARY KEY (stream_id, command_id)
);
CREATE INDEX ON {s}.command_ids (recorded_at);
CREATE TABLE {s}.snapshots (stream_id text PRIMARY KEY, record bytea NOT NULL);
CREATE TABLE {s}.projector_caches (name text PRIMARY KEY, record bytea NOT NULL);
"""


class PostgresEventLog:
    """An :class:`~actorlog.storage.EventLog` in a PostgreSQL (15+) database.

    The tables are created in ``schema`` on first open. Several logs (processes) may open
    the same schema: group commits are serialized by a table lock, so positions stay
    gap-free and in commit order whoever writes (see the module doc). Calls block the
    calling thread for a round trip or two (~0.1-1 ms on a local server).

    Args:
        dsn: a libpq connection string or URL (``postgresql://user@host:5432/db``).
        schema: the schema holding the log's tables (created if missing): 1 to 63 bytes, no
            NUL and no ``%``.
        sync: commit with the server's ``synchronous_commit`` (durable when ``append_batch``
            returns); ``False`` sets it ``off`` for this log: a server crash may lose the
            last commits, never part of one.
        command_ids: how long command ids are kept, as in the LMDB log.
        connect_timeout: seconds to wait for the server at each (re)connect.
        shared: other processes may append to this schema, or this is a reader node:
            an engine on it follows their commits, decides again a command decided on a
            stale aggregate, and confirms a rejection against the stream's durable
            version (a check in its next group commit). Give ``True`` to every engine
            of a schema that several processes open. ``False`` (the default) promises
            that this log's engine is the schema's only writer and saves that work (a
            follower thread, a NOTIFY a group), and
            is kept: the first append takes the schema's writer lock, exclusive, so a
            second writer, shared or not, gets ``StorageLocked`` (shared logs share it).

    Raises:
        DefinitionError: an argument of the wrong type or range.
        StorageError: the server is unreachable, refuses the credentials, is older than
            PostgreSQL 15, the database's encoding is neither UTF8 nor SQL_ASCII, or the
            schema holds another layout (the psycopg error, if any, is ``__cause__``).
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "actorlog",
        sync: bool = True,
        command_ids: CommandIdRetention | None = None,
        connect_timeout: float = 10.0,
        shared: bool = False,
    ) -> None:
        if psycopg is None:
            raise DefinitionError(
                "PostgresEventLog needs psycopg 3: pip install 'actorlog[postgres]'"
            )
        if type(dsn) is not str:
            raise DefinitionError(f"dsn must be a str, not {type(dsn).__name__}")
        if type(schema) is not str or not 0 < len(schema.encode()) <= 63 or "\x00" in schema:
            raise DefinitionError(f"schema must be a name of 1 to 63 bytes, not {schema!r}")
        if "%" in schema:
            # psycopg reads a % of a statement that has parameters as a placeholder, and
            # the schema's name is in every statement: refused here, not failed at open.
            raise DefinitionError(f"schema must not hold '%', not {schema!r}")
        if type(sync) is not bool:
            raise DefinitionError(f"sync must be a bool, not {type(sync).__name__}")
        if type(shared) is not bool:
            raise DefinitionError(f"shared must be a bool, not {type(shared).__name__}")
        self._shared = shared
        command_ids = retention(command_ids)
        if type(connect_timeout) not in (int, float) or not connect_timeout > 0:
            raise DefinitionError(f"connect_timeout must be a number > 0, not {connect_timeout!r}")
        self._dsn = dsn
        self._schema = schema
        self._sync = sync
        self._retention = command_ids
        self._timeout = max(1, round(connect_timeout))
        self._closed = False
        self._q = _Statements(schema, shared)
        # The writer's connection and the readers': a read never waits behind a group
        # commit's round trips, nor runs inside its transaction. Each is used by one
        # thread at a time (its lock).
        self._writer = _Connection(self._connect)
        self._reader = _Connection(self._connect)
        self._channel: HeadChannel | None = None  # opened by the first follower
        # On the writer connection that holds the schema's writer lock (see _lock_writer),
        # the cursor that sends a group as one message (_commit_guarded: client-side
        # binding, the simple query protocol); and that connection's backend pid: the
        # notifications of this log's own commits.
        self._guarded: psycopg.ClientCursor[Any] | None = None
        self._writer_pid = 0
        # The groups sent as one message since one found a stream moved by another
        # process (_commit_guarded): see _BY_STREAM_AFTER_A_MOVE.
        self._quiet_groups = _BY_STREAM_AFTER_A_MOVE
        self._channel_lock = threading.Lock()
        try:
            self._writer.run(self._initialize)
        except BaseException:
            self._writer.close()
            raise

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            # UTF-8 whatever the DSN or PGCLIENTENCODING asks: the log's strs are Unicode,
            # and psycopg encodes them (the one message's whole JSON document, bound client
            # side; the exact way's text parameters) in the client encoding; another one
            # raised UnicodeEncodeError out of append_batch and the reads (review 7).
            conn = psycopg.connect(
                self._dsn, autocommit=True, connect_timeout=self._timeout, client_encoding="UTF8"
            )
        except psycopg.Error as e:
            raise StorageError(f"cannot connect to the PostgreSQL log: {e}") from e
        except (TypeError, ValueError) as e:  # a malformed connection string
            raise StorageError(f"cannot connect to the PostgreSQL log: {e}") from e
        try:
            if conn.info.server_version < MIN_SERVER_VERSION:
                raise StorageError(
                    f"the PostgreSQL log needs PostgreSQL 15 or later; the server is "
                    f"{conn.info.server_version}"
                )
            if not self._sync:
                conn.execute("SET synchronous_commit = off")
        except BaseException:
            conn.close()
            raise
        return conn

    def _initialize(self, conn: psycopg.Connection[Any]) -> None:
        """Create the tables in a new schema, or check the layout of an existing one, in
        one transaction (serialized with any other first open by an advisory lock)."""
        s = sql.Identifier(self._schema)
        # A database that cannot hold every Unicode character (LATIN1, ...) fails a group
        # whose append has one it lacks in the server, every append of the group with it,
        # where the log's contract fails that append alone (review 7). SQL_ASCII stores
        # the UTF-8 bytes as they are.
        encoding = conn.info.parameter_status("server_encoding")
        if encoding not in ("UTF8", "SQL_ASCII"):
            raise StorageError(
                f"the PostgreSQL log needs a database in UTF8; this one is in {encoding}"
            )
        with conn.transaction():
            conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext('actorlog schema ' || %s))",
                (self._schema,),
            )
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(s))
            conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {}.meta (key text PRIMARY KEY, value text NOT NULL)"
                ).format(s)
            )
            row = conn.execute(
                sql.SQL("SELECT value FROM {}.meta WHERE key = 'format'").format(s)
            ).fetchone()
            if row is None:
                taken = conn.execute(
                    # quote_ident: a schema name may hold a double quote.
                    "SELECT to_regclass(quote_ident(%s) || '.events') IS NOT NULL",
                    (self._schema,),
                ).fetchone()
                if taken is not None and taken[0]:
                    raise StorageError(
                        f"schema {self._schema!r} has an events table but no actorlog layout"
                    )
                conn.execute(sql.SQL(_SCHEMA).format(s=s))
                conn.execute(
                    sql.SQL("INSERT INTO {}.meta VALUES ('format', %s)").format(s), (FORMAT,)
                )
            elif row[0] != FORMAT:
                raise StorageError(
                    f"the log in schema {self._schema!r} has layout {row[0]!r}; this version "
                    f"of actorlog reads {FORMAT!r}"
                )
        self._q.render(conn)

    # -- properties -----------------------------------------------------------------------

    @property
    def sync(self) -> bool:
        """True if a committed group is durable (the WAL flushed) when commit returns."""
        return self._sync

    @property
    def blocking_reads(self) -> bool:
        """True: every read is a round trip to the server, so the engine runs activation
        loads and projector catch-up reads in worker threads (the readers' connection is
        used by one thread at a time, behind its lock)."""
        return True

    @property
    def schema(self) -> str:
        """The schema holding the log's tables."""
        return self._schema

    # -- writes ---------------------------------------------------------------------------

    def append_batch(
        self,
        appends: Sequence[Append],
        *,
        snapshots: Sequence[tuple[str, Snapshot]] = (),
        projector_caches: Sequence[tuple[str, ProjectorCache]] = (),
    ) -> tuple[list[AppendOutcome], list[StoredEvent]]:
        """Commit a group in one transaction; see :class:`~actorlog.storage.EventLog`.

        Durable when it returns if ``sync``. A failure of the server or the connection
        fails every append of the group with the same ``StorageError`` and writes nothing
        (if the connection died during COMMIT the group may have committed: see the module
        doc). An append PostgreSQL cannot store (a NUL in one of its strs, a payload that
        is not one msgpack value) fails alone with ``EncodeError``.

        Raises:
            InvalidArgument: a stream id or projector name is invalid; nothing is written.
            StorageError: the log is closed.
        """
        self._check_open()
        # Refused before anything is sent: a group that raises leaves nothing behind.
        for append in appends:
            check_stream_id(append.stream_id)
            check_expected_version(append.expected_version)
        snaps = {check_stream_id(stream_id): s for stream_id, s in snapshots}
        caches = {_check_name(name): cache for name, cache in projector_caches}

        def commit(conn: psycopg.Connection[Any]) -> tuple[list[AppendOutcome], list[StoredEvent]]:
            guarded = self._guarded
            if guarded is None or guarded.connection is not conn:
                # A new connection: take the lock on it first.
                self._lock_writer(conn)
                try:
                    conn.execute(self._q.prepare_guarded)
                    conn.execute(self._q.prepare_guarded_streams)
                except psycopg.Error as e:
                    # Not on this connection again: it could hold the first one already.
                    # (Said here: closed, it would read as a lost connection.)
                    conn.close()
                    raise StorageError(f"the PostgreSQL log failed: {e}") from e
                guarded = self._guarded = psycopg.ClientCursor(conn)
                self._writer_pid = conn.info.backend_pid
            if not (snaps or caches):
                done = self._commit_guarded(guarded, appends)
                if done is not None:
                    return done
            return self._commit(conn, appends, snaps, caches)

        try:
            return self._writer.run(commit)
        except StorageError as e:
            return [e for _ in appends], []

    def _lock_writer(self, conn: psycopg.Connection[Any]) -> None:
        """Take the schema's writer lock on ``conn``, a session advisory lock held while the
        connection lives: exclusive for an unshared log (its engine is the only writer),
        shared for a shared one, so an unshared writer and any other writer refuse each
        other, as LMDB's lock does. Taken at the first append, not at open: a log that only
        reads (a reader node, the ``actorlog`` command) never takes it.

        Raises:
            StorageLocked: another process writes the schema against this log's promise.
        """
        query = self._q.lock_shared if self._shared else self._q.lock_alone
        deadline = time.monotonic() + WRITER_LOCK_WAIT
        while True:
            row = conn.execute(query, (self._schema,)).fetchone()
            if row is not None and row[0]:
                return
            if time.monotonic() >= deadline:
                raise StorageLocked(
                    f"schema {self._schema!r} is written by another process"
                    + (
                        " that opened it unshared (shared=False)"
                        if self._shared
                        else "; every engine of a schema that several processes write "
                        "needs shared=True"
                    )
                )
            time.sleep(0.05)

    def _commit_guarded(
        self, cursor: psycopg.ClientCursor[Any], appends: Sequence[Append]
    ) -> tuple[list[AppendOutcome], list[StoredEvent]] | None:
        """Commit a group that needs no decision in one round trip, or None (nothing
        written): the group's outcome if every append passes is known before anything is
        read, so the group is sent as one message (the lock and one guarded INSERT: the
        simple query protocol runs the two as one transaction) whose INSERT writes the
        appends of every stream that is at the version the group's first append to it
        expects. The answer names the streams that moved, and where to: their appends are
        judged there by the log's rule (``_judged``, as ``_commit`` judges) and fail, as
        ``_commit`` would fail them. The rest is committed, numbered from the head in the
        group's order as ``_commit`` numbers them: in the same message if sent by stream
        (for ``_BY_STREAM_AFTER_A_MOVE`` groups after one that found a move), else by a
        second message, by stream (all or nothing wrote nothing).

        A group with anything else to decide (an append with ``ANY``, one that cannot be
        stored, a stream whose appends do not follow one another, a command id twice), one
        over ``_ONE_MESSAGE_MOST_BYTES`` of payload or ``_ONE_MESSAGE_MOST_TEXT`` of rows,
        or one with a command id already recorded (a retry, perhaps: only ``_commit``
        answers it; nothing is written then) is committed by ``_commit``, which decides it
        while holding the lock. Command ids are recorded and pruned in the same message.

        Why: a group commit's fixed cost is its CPU, paid by every group however small
        (the groups of N processes are N times smaller): see the module doc.
        """
        ids: set[tuple[str, str]] = set()
        for append in appends:
            if type(append.stream_id) is not str:
                return None  # (a str subclass: msgspec encodes exact strs)
            if append.command_id is not None:
                key = (append.stream_id, append.command_id)
                if key in ids:
                    return None  # a duplicate within the group
                ids.add(key)
            if not -_MAX_BIGINT <= append.expected_version <= _MAX_BIGINT - len(append.events):
                # A version bigint cannot hold (the writer admits up to 2**64 - 1; below,
                # any int): sent, it fails the whole group in the server; no stream is
                # there, so _commit fails it alone with a conflict.
                return None
            try:
                _check_storable(append)
            except _UNSTORABLE:
                return None  # _commit fails it alone with the reason
        timestamp = time.time()
        assumed = _assumed(appends)
        if assumed is None:
            return None
        outcomes: list[AppendOutcome | None] = [None] * len(appends)
        # What is sent: the whole group (not copied), then what passes of it.
        group: Sequence[Append] = appends
        passing: Sequence[int] = range(len(appends))
        by_stream = self._quiet_groups < _BY_STREAM_AFTER_A_MOVE
        self._quiet_groups += 1
        while True:
            answer = self._send_guarded(cursor, group, assumed, timestamp, by_stream)
            if answer is None:
                return None  # too big for one message, or a command id is recorded
            head, moved = answer
            if not moved:
                break
            self._quiet_groups = 0  # the next groups go by stream
            # Their appends are judged at the versions answered, by the log's rule, in
            # their places: all of them fail (the first expects the version the stream
            # left; each next one a version decided on a failed one, or that same
            # version), as _commit would fail them.
            versions = dict(moved)
            chained: dict[str, set[int]] = {}
            for i, append in zip(passing, group, strict=True):
                stream_id = append.stream_id
                if stream_id in moved:
                    outcomes[i] = _judged(append, versions, chained) or ConcurrencyError(
                        # Unreachable by the rule above; but it was not written, whatever
                        # the rule says, and an answer must never claim it was.
                        stream_id,
                        append.expected_version,
                        moved[stream_id],
                    )
            if by_stream:
                break  # the rest is written
            # Nothing was written: the rest goes again, written by stream this time (a
            # stream that moved meanwhile fails there; no third message).
            passing = [i for i in passing if outcomes[i] is None]
            if not passing:
                break
            group = [appends[i] for i in passing]
            assumed = {s: v for s, v in assumed.items() if s not in moved}
            by_stream = True
        results: list[AppendOutcome] = []
        stored: list[StoredEvent] = []
        position = head
        for append, failed in zip(appends, outcomes, strict=True):
            if failed is not None:
                results.append(failed)
                continue
            stream_id, version = append.stream_id, append.expected_version
            first_version, first_position = version + 1, position + 1
            stored.extend(stored_events(append, stream_id, position, version, timestamp))
            position += len(append.events)
            version += len(append.events)
            results.append(
                AppendResult(stream_id, first_version, version, first_position, position, timestamp)
            )
        return results, stored

    def _send_guarded(
        self,
        cursor: psycopg.ClientCursor[Any],
        group: Sequence[Append],
        assumed: dict[str, int],
        timestamp: float,
        by_stream: bool,
    ) -> tuple[int, dict[str, int]] | None:
        """Send ``group`` as one message on ``cursor`` (the writer connection's): the head it
        was written after, and the streams that are not at the version ``assumed`` for them
        (their versions). If some are, nothing of them was written, and the rest was only
        ``by_stream`` (``actorlog_guarded_streams``), else nothing was. None if a command
        id of the group is recorded (nothing written at all), or, sending nothing, if its
        payloads are over ``_ONE_MESSAGE_MOST_BYTES`` or its rows over
        ``_ONE_MESSAGE_MOST_TEXT``."""
        rows: list[_GuardedRow] = []
        recorded: list[_GuardedId] = []
        size = 0
        offset = 0  # the group's events so far: positions are the head plus these
        payloads: list[bytes] = []
        for append in group:
            headers = append.headers
            headers_json = None if headers is None else _headers_encode(headers).decode()
            version = append.expected_version
            first = offset + 1
            for name, payload in append.events:
                payloads.append(payload)
                size += len(payload)
                if size > _ONE_MESSAGE_MOST_BYTES:
                    return None  # counted before hexing: the payload may be huge
                version += 1
                offset += 1
                rows.append(
                    _GuardedRow(
                        append.stream_id,
                        version,
                        name,
                        size - len(payload),
                        len(payload),
                        append.correlation_id,
                        append.causation_id,
                        append.aggregate_name,
                        append.command_id,
                        append.principal,
                        headers_json,
                    )
                )
            if append.command_id is not None:
                recorded.append(
                    _GuardedId(
                        append.stream_id,
                        append.command_id,
                        append.expected_version + 1,
                        version,
                        first,
                        offset,
                    )
                )
        document = _json_encode(rows)
        if len(document) > _ONE_MESSAGE_MOST_TEXT:
            return None
        params = (
            _json_encode([_GuardStream(s, v) for s, v in assumed.items()]).decode(),
            document.decode(),
            timestamp,
            _json_encode(recorded).decode(),
            b"".join(payloads),
        )
        q = self._q
        if recorded:
            retention = self._retention
            cursor.execute(
                q.guarded_streams_ids if by_stream else q.guarded_ids,
                (*params, retention.max_ids, timestamp - retention.max_age),
            )
            cursor.nextset()
        elif rows:
            cursor.execute(q.guarded_streams if by_stream else q.guarded, params)
            cursor.nextset()  # past the LOCK's answer, to the guarded INSERT's rows
        else:
            cursor.execute(self._q.guarded_check, params[:1])
        head, moved = 0, {}
        for stream_id, version in cursor.fetchall():
            if stream_id is None:
                head = version
            elif version is None:
                return None
            else:
                moved[stream_id] = version
        return head, moved

    def _commit(
        self,
        conn: psycopg.Connection[Any],
        appends: Sequence[Append],
        snapshots: dict[str, Snapshot],
        caches: dict[str, ProjectorCache],
    ) -> tuple[list[AppendOutcome], list[StoredEvent]]:
        q = self._q
        unstorable: dict[int, EncodeError] = {}
        for i, append in enumerate(appends):
            try:
                _check_storable(append)
            except _UNSTORABLE as e:
                error = EncodeError(
                    f"cannot store the append to stream {append.stream_id!r}: {e}; nothing "
                    "of it was written"
                )
                error.__cause__ = e
                unstorable[i] = error
        valid = [a for i, a in enumerate(appends) if i not in unstorable]
        streams = list({a.stream_id: None for a in valid})
        keys = list({(a.stream_id, a.command_id): None for a in valid if a.command_id})
        timestamp = time.time()
        outcomes: list[AppendOutcome] = []
        stored: list[StoredEvent] = []
        position, seq = 0, 0
        versions: dict[str, int] = {}
        kept: dict[tuple[str, str], AppendResult] = {}
        with conn.pipeline(), conn.transaction():
            # Round trip 1: the lock, then what the group's decisions depend on.
            if valid:
                conn.execute(q.lock)
                versions_cur = conn.execute(q.versions, (streams,))
                ids_cur = seq_cur = None
                if keys:
                    ids_cur = conn.execute(
                        q.find_many,
                        (
                            [k[0] for k in keys],
                            [k[1] for k in keys],
                            timestamp - self._retention.max_age,
                            self._retention.max_ids,
                        ),
                    )
                    seq_cur = conn.execute(q.last_seq)
                # Sends the pipeline, waits for it all; the head is the row with no id.
                versions = dict(versions_cur.fetchall())
                position = versions.pop(None)  # type: ignore[call-overload]
                if ids_cur is not None and seq_cur is not None:
                    for sid, cid, fv, lv, fp, lp, at in ids_cur.fetchall():
                        kept[(sid, cid)] = AppendResult(sid, fv, lv, fp, lp, at)
                    seq_row = seq_cur.fetchone()
                    seq = seq_row[0] if seq_row else 0
            # Decide, as the other backends do.
            rows: list[list[Any]] = [[] for _ in range(12)]
            recorded: dict[tuple[str, str], AppendResult] = {}
            # For a stream with an append that carried events and failed in this batch:
            # the versions a decision made on top of it expects (``expected_ok``).
            chained: dict[str, set[int]] = {}
            for i, append in enumerate(appends):
                stream_id, cid = append.stream_id, append.command_id
                outcome: AppendOutcome | None = unstorable.get(i)
                if outcome is None and cid is not None:
                    ident = (stream_id, cid)
                    original = recorded.get(ident) or kept.get(ident)
                    if original is not None:
                        outcome = DuplicateCommand(cid, original)
                version = versions.get(stream_id, 0)
                outcome = _judged(append, versions, chained, outcome)
                if outcome is not None:
                    outcomes.append(outcome)
                    continue
                first_version, first_position = version + 1, position + 1
                stored.extend(stored_events(append, stream_id, position, version, timestamp))
                corr, caus, kind = append.correlation_id, append.causation_id, append.aggregate_name
                who, headers = append.principal, append.headers
                headers_json = None if headers is None else _headers_encode(headers).decode()
                for name, payload in append.events:
                    position += 1
                    version += 1
                    for column, value in zip(
                        rows,
                        (
                            position,
                            stream_id,
                            version,
                            name,
                            timestamp,
                            corr,
                            caus,
                            payload,
                            kind,
                            cid,
                            who,
                            headers_json,
                        ),
                        strict=True,
                    ):
                        column.append(value)
                result = AppendResult(
                    stream_id, first_version, version, first_position, position, timestamp
                )
                if cid is not None:
                    recorded[(stream_id, cid)] = result
                outcomes.append(result)
            # Round trip 2: the writes and COMMIT, pipelined.
            if stored:
                conn.execute(q.insert_events, rows)
            if recorded:
                results = list(recorded.values())
                conn.execute(
                    q.record_ids,
                    (
                        list(range(seq + 1, seq + 1 + len(results))),
                        [r.stream_id for r in results],
                        [cid for _, cid in recorded],
                        [r.timestamp for r in results],
                        [r.first_version for r in results],
                        [r.last_version for r in results],
                        [r.first_position for r in results],
                        [r.last_position for r in results],
                    ),
                )
                conn.execute(q.prune_by_count, (seq + len(results) - self._retention.max_ids,))
                conn.execute(q.prune_by_age, (timestamp - self._retention.max_age,))
            if stored and self._shared:
                # Tell the other processes' followers, once a group, inside the commit:
                # no round trip, connection, thread or WAL flush of its own. NOTIFY takes
                # a cluster-wide lock at commit; our writers are serialized by the table
                # lock anyway, so it only orders other notifying transactions of the
                # cluster behind this commit (docs/design.md).
                conn.execute(q.notify)
            if snapshots:
                conn.execute(
                    q.save_snapshots,
                    (list(snapshots), [_encode(s) for s in snapshots.values()]),
                )
            if caches:
                conn.execute(q.save_caches, (list(caches), [_encode(c) for c in caches.values()]))
        return outcomes, stored

    # -- reads ----------------------------------------------------------------------------

    def find_command(self, stream_id: str, command_id: str) -> AppendResult | None:
        """The result of the append that recorded ``command_id`` on ``stream_id``, while
        the log keeps it (its retention)."""
        self._check_open()
        key = (check_stream_id(stream_id), check_command_id(command_id))
        if "\x00" in key[1]:
            return None  # never stored: PostgreSQL text holds no NUL
        now = time.time()
        row = self._read(
            self._q.find_one,
            (key[0], key[1], now - self._retention.max_age, self._retention.max_ids),
        )
        if not row:
            return None
        sid, _, fv, lv, fp, lp, at = row[0]
        return AppendResult(sid, fv, lv, fp, lp, at)

    def read_stream(
        self, stream_id: str, from_version: int = 1, limit: int | None = None
    ) -> list[StoredEvent]:
        """Events of one stream with version >= ``from_version``, in version order."""
        self._check_open()
        stream_id = check_stream_id(stream_id)
        if limit is not None and limit <= 0:
            return []
        start = min(max(from_version, 1), _MAX_BIGINT)
        limit = None if limit is None else min(limit, _MAX_BIGINT)
        events: list[StoredEvent] = self._read(
            self._q.read_stream, (stream_id, start, limit), _event_rows
        )
        return events

    def read_all(self, from_position: int = 1, limit: int = 1024) -> list[StoredEvent]:
        """Up to ``limit`` events with position >= ``from_position``, in log order, as a
        :class:`~engine._log.ReadBatch` (``nbytes``: the payloads' bytes)."""
        self._check_open()
        if limit <= 0:
            return []
        start = min(max(from_position, 1), _MAX_BIGINT)
        last = min(start + limit - 1, _MAX_BIGINT)  # ``limit`` positions: they have no gaps
        events: list[StoredEvent] = self._read(self._q.read_all, (start, last), _event_rows)
        return ReadBatch(events, sum(map(len, map(_PAYLOAD, events))))

    def head_position(self) -> int:
        """The position of the last committed event; 0 for an empty log."""
        self._check_open()
        row = self._read(self._q.head)
        return int(row[0][0]) if row else 0

    def stream_version(self, stream_id: str) -> int:
        """The version of the stream's last event; 0 if it does not exist."""
        self._check_open()
        row = self._read(self._q.stream_version, (check_stream_id(stream_id),))
        return int(row[0][0]) if row else 0

    def load_snapshot(self, stream_id: str) -> Snapshot | None:
        """The stream's last saved snapshot, if any (one that does not decode counts as
        none: a snapshot is only a shortcut)."""
        self._check_open()
        row = self._read(self._q.load_snapshot, (check_stream_id(stream_id),))
        return _decoded(_snapshot_decoder, row[0][0]) if row else None

    def load_projector_cache(self, name: str) -> ProjectorCache | None:
        """The named projector's last saved cache, if any (one that does not decode counts
        as none)."""
        self._check_open()
        row = self._read(self._q.load_cache, (_check_name(name),))
        return _decoded(_cache_decoder, row[0][0]) if row else None

    def _read(
        self,
        query: Statement,
        params: Sequence[Any] = (),
        rows: Callable[[Any], Callable[[Sequence[Any]], Any]] | None = None,
    ) -> list[Any]:
        """Run one query on the readers' connection (autocommit: its own snapshot); each
        row made by the ``rows`` row factory (psycopg's), else a tuple."""

        def run(conn: psycopg.Connection[Any]) -> list[Any]:
            with conn.cursor(binary=True, row_factory=rows or tuple_row) as cur:
                return cur.execute(query, params).fetchall()

        return self._reader.run(run, retry=True)

    # -- following other writers (issue 15; the channel is engine/_pg_follow.py) -----------

    @property
    def others_append(self) -> bool:
        """True if opened with ``shared=True``: other processes may append to this log
        (each its own engine); the engine follows the head (``wait_for_head``) to feed its
        projectors and retries commands decided on a stale aggregate. Each group commit
        that writes events NOTIFYs the followers."""
        return self._shared

    def wait_for_head(self, known: int, timeout: float) -> int:
        """The head position once it is past ``known``, or after ``timeout`` seconds
        (LISTEN/NOTIFY, with a bounded poll). Blocking: for a worker thread."""
        return self._head_channel().wait_for_head(known, timeout)

    def wait_for_notice(self, timeout: float) -> bool:
        """Wait at most ``timeout`` seconds for another process's NOTIFY that the head
        moved; True if one came. Blocking: for a worker thread."""
        return self._head_channel().wait_for_notice(timeout)

    def drain_notices(self) -> None:
        """Drop the notifications the LISTEN connection received, without waiting (for a
        follower reading on its own schedule; see ``HeadChannel.drain_notices``). Never
        blocks: for the event loop."""
        channel = self._channel
        if channel is not None:
            channel.drain_notices()

    def stop_listening(self) -> None:
        """Close the LISTEN connection until the next wait reopens it: a follower that
        rests (nothing of this process needs others' events for a while) must not leave
        the server queueing notifications for a session that reads none (a listener that
        never reads holds back the server's notification queue, which every NOTIFY of
        every process shares). Blocking: for a worker thread."""
        channel = self._channel
        if channel is not None:
            channel.stop_listening()

    def _head_channel(self) -> HeadChannel:
        self._check_open()
        channel = self._channel
        if channel is None:
            with self._channel_lock:
                channel = self._channel
                if channel is None:
                    channel = self._channel = HeadChannel(
                        self._connect, self._schema, self._q.head, lambda: self._writer_pid
                    )
        return channel

    def open_lease(self, name: str) -> PgLease:
        """A lease named ``name`` among every engine of this schema, on a connection of its
        own, opened on first use (``engine/_pg_lease.py``); the caller closes it."""
        self._check_open()
        return PgLease(self._dsn, self._schema, name, connect_timeout=self._timeout)

    # -- lifecycle ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("the PostgreSQL log is closed")

    def close(self) -> None:
        """Close every connection. Idempotent."""
        self._closed = True
        self._writer.close()
        self._reader.close()
        if self._channel is not None:
            self._channel.close()


class _Connection:
    """One psycopg connection, used by one thread at a time, (re)opened on demand: a call
    after the connection broke opens a new one (a failure there is a ``StorageError``)."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]]) -> None:
        self._connect = connect
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()

    def run(self, work: Callable[[psycopg.Connection[Any]], _T], *, retry: bool = False) -> _T:
        """``work(connection)``; a psycopg error becomes a ``StorageError`` (its cause).

        With ``retry`` (reads: idempotent), a connection found broken is reopened and
        ``work`` run once more; a write is never retried, since its COMMIT may have
        reached the server.
        """
        with self._lock:
            while True:
                conn = self._conn
                if conn is None or conn.closed:
                    conn = self._conn = self._connect()
                try:
                    return work(conn)
                except psycopg.Error as e:
                    if not (conn.closed or conn.broken):
                        raise StorageError(f"the PostgreSQL log failed: {e}") from e
                    self._conn = None
                    conn.close()
                    if not retry:
                        raise StorageError(f"the PostgreSQL log lost its connection: {e}") from e
                    retry = False

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


if TYPE_CHECKING:
    # A statement of the log: composed for its schema, then bytes once connected.
    Statement: TypeAlias = bytes | sql.SQL | sql.Composed


class _Statements:
    """The log's SQL, composed once for its schema, and made bytes once connected
    (``render``): psycopg turns a composed statement into bytes at every execute (with the
    head read by the versions query, 0.92x the client CPU of a 16-append group commit
    here), and caches its conversion of bytes."""

    def __init__(self, schema: str, shared: bool) -> None:
        s = sql.Identifier(schema)

        def q(text: str) -> Statement:
            return sql.SQL(text).format(s=s)

        self.lock = q("LOCK TABLE {s}.events IN EXCLUSIVE MODE")
        # The schema's writer lock (PostgresEventLog._lock_writer), keyed by its name.
        self.lock_alone: Statement = sql.SQL(
            "SELECT pg_try_advisory_lock(hashtext('actorlog writer ' || %s))"
        )
        self.lock_shared: Statement = sql.SQL(
            "SELECT pg_try_advisory_lock_shared(hashtext('actorlog writer ' || %s))"
        )
        self.head = q("SELECT coalesce(max(position), 0) FROM {s}.events")
        self.notify: Statement = sql.SQL("NOTIFY {}").format(sql.Identifier(channel_name(schema)))
        self.last_seq = q("SELECT coalesce(max(seq), 0) FROM {s}.command_ids")

        # A group in one message (PostgresEventLog._commit_guarded), two ways. Both answer
        # the head before the group, the streams that moved from the version assumed for
        # them (and their versions: their appends fail), and the streams of command ids
        # recorded before (and NULL: then nothing is written; the exact path decides).
        # ``actorlog_guarded`` writes all or nothing: only if nothing moved, each row at
        # the head plus its ordinal. ``actorlog_guarded_streams`` writes the rows of every
        # stream that did not move, numbered in the group's order (``m``: the kept rows
        # so far), as _commit numbers what passes; an id's positions are its append's,
        # counted back from the kept rows up to its append's last row. It costs the
        # server ~35 us a group more (a sort, more plan nodes; ~10% of a small group's
        # server CPU, measured), so it is used only where streams move (_commit_guarded).
        # On a shared log the head row calls pg_notify, once, only when the group wrote: a
        # LEFT JOIN, so the head row stays when it does not (a cross join dropped it: a
        # group of checks answered head 0, its empty results positions 1/0).
        def notify(wrote: str) -> sql.Composable:
            if not shared:
                return sql.SQL("")
            return sql.SQL(
                " LEFT JOIN LATERAL (SELECT pg_notify({}, '') WHERE " + wrote + ") n ON true"
            ).format(sql.Literal(channel_name(schema)))

        # The head and the streams that moved: what the guarded INSERT reads first.
        guard = (
            " WITH head AS (SELECT coalesce(max(position), 0) AS h FROM {s}.events),"
            " stale AS (SELECT k.s AS id, c.v FROM json_to_recordset({streams})"
            " AS k(s text, v bigint), LATERAL (SELECT coalesce(max(version), 0) AS v"
            " FROM {s}.events WHERE stream_id = k.s) c WHERE c.v <> k.v)"
        )
        # A command id recorded before, kept or not: the exact path decides. (A lateral
        # lookup with LIMIT: a join let the generic plan hash the whole table.)
        taken = (
            " taken AS (SELECT k.s FROM json_to_recordset($4) AS k(s text, c text),"
            " LATERAL (SELECT FROM {s}.command_ids AS c WHERE c.stream_id = k.s"
            " AND c.command_id = k.c LIMIT 1) AS hit),"
        )
        rows = (
            " ROWS FROM (json_to_recordset($2) AS (s text, v bigint, t text, po integer,"
            " pl integer, co text, ca text, a text, ci text, pr text, hd text))"
            " WITH ORDINALITY AS u(s, v, t, po, pl, co, ca, a, ci, pr, hd, n)"
        )
        ids = (
            " ROWS FROM (json_to_recordset($4) AS (s text, c text, fv bigint, lv bigint,"
            " fo bigint, lo bigint)) WITH ORDINALITY AS i(s, c, fv, lv, fo, lo, n)"
        )
        insert_events = (
            " INSERT INTO {s}.events (position, stream_id, version, type, timestamp,"
            " correlation_id, causation_id, payload, aggregate, command_id, principal,"
            " headers) SELECT head.h + u.{m}, u.s, u.v, u.t, $3, u.co, u.ca,"
            " substring($5 FROM u.po + 1 FOR u.pl), u.a, u.ci, u.pr, u.hd::jsonb FROM head,"
        )
        insert_ids = (
            " INSERT INTO {s}.command_ids (seq, stream_id, command_id, recorded_at,"
            " first_version, last_version, first_position, last_position)"
        )
        last_seq = " (SELECT coalesce(max(seq), 0) AS q FROM {s}.command_ids) AS q,"
        result = (
            " SELECT NULL, h FROM head{n} UNION ALL SELECT id, v FROM stale"
            " UNION ALL SELECT s, NULL FROM taken"
        )
        whole = "NOT EXISTS (SELECT FROM stale) AND NOT EXISTS (SELECT FROM taken)"
        self.prepare_guarded: Statement = sql.SQL(
            "PREPARE actorlog_guarded(json, json, float8, json, bytea) AS"
            + guard
            + ","
            + taken
            + " written AS ("
            + insert_events.replace("{m}", "n")
            + rows
            + " WHERE "
            + whole
            + "),"
            " recorded AS ("
            + insert_ids
            + " SELECT q.q + i.n, i.s, i.c, $3, i.fv, i.lv, head.h + i.fo, head.h + i.lo"
            " FROM head," + last_seq + ids + " WHERE " + whole + ")" + result
        ).format(s=s, n=notify("json_array_length($2) > 0 AND " + whole), streams=sql.SQL("$1"))
        self.prepare_guarded_streams: Statement = sql.SQL(
            "PREPARE actorlog_guarded_streams(json, json, float8, json, bytea) AS"
            + guard
            + ","
            + taken
            + " numbered AS (SELECT x.*, count(*) FILTER (WHERE x.keep) OVER (ORDER BY x.n)"
            " AS m FROM (SELECT u.*, u.s NOT IN (SELECT id FROM stale) AS keep FROM"
            + rows
            + " WHERE NOT EXISTS (SELECT FROM taken)) AS x),"
            " written AS (" + insert_events.replace("{m}", "m") + " numbered AS u WHERE u.keep),"
            " recorded AS ("
            + insert_ids
            + " SELECT q.q + row_number() OVER (ORDER BY i.n), i.s, i.c, $3, i.fv, i.lv,"
            " head.h + coalesce(r.m, 0) - (i.lo - i.fo), head.h + coalesce(r.m, 0)"
            " FROM head,"
            + last_seq
            + ids
            + " LEFT JOIN numbered AS r ON r.n = i.lo WHERE NOT EXISTS (SELECT FROM taken)"
            " AND i.s NOT IN (SELECT id FROM stale))" + result
        ).format(
            s=s,
            n=notify("EXISTS (SELECT FROM numbered WHERE numbered.keep)"),
            streams=sql.SQL("$1"),
        )

        def message(name: str, recording: bool) -> Statement:
            """The one message: the lock, then the statement; with command ids, their
            pruning by count (the max_ids newest kept: the bound from the newest seq, the
            group's included) and by age, as _commit prunes (statements of their own:
            they see the recording)."""
            text = f"LOCK TABLE {{s}}.events IN EXCLUSIVE MODE; EXECUTE {name}(%s, %s, %s, %s, %s)"
            if recording:
                text += (
                    "; DELETE FROM {s}.command_ids WHERE seq IN (SELECT seq FROM"
                    " {s}.command_ids WHERE seq <= (SELECT max(seq) FROM {s}.command_ids) - %s"
                    f" ORDER BY seq LIMIT {_PRUNE_MOST});"
                    " DELETE FROM {s}.command_ids WHERE seq IN (SELECT seq FROM {s}.command_ids"
                    f" WHERE recorded_at <= %s ORDER BY recorded_at LIMIT {_PRUNE_MOST})"
                )
            return q(text)

        self.guarded = message("actorlog_guarded", False)
        self.guarded_ids = message("actorlog_guarded", True)
        self.guarded_streams = message("actorlog_guarded_streams", False)
        self.guarded_streams_ids = message("actorlog_guarded_streams", True)
        # A group of checks only (rejections' probes) writes nothing: it reads the
        # versions without the lock, and waits for no other process's group. A plain
        # SELECT of its own: the guarded statement's INSERT, even writing nothing, takes
        # ROW EXCLUSIVE on the table, which waits for every other process's group commit
        # (EXCLUSIVE) and holds the next one back while it runs. Not prepared: rare, and
        # every statement prepared is one more a new connection prepares first.
        self.guarded_check: Statement = sql.SQL(
            guard + " SELECT NULL, h FROM head UNION ALL SELECT id, v FROM stale"
        ).format(s=s, streams=sql.SQL("%s::json"))
        # The versions of the group's streams, and the head as the row whose id is NULL
        # (no stream's): one statement of the group commit instead of two.
        self.versions = q(
            "SELECT id, coalesce((SELECT max(version) FROM {s}.events WHERE stream_id = id), 0)"
            " FROM unnest(%b::text[]) AS k(id)"
            " UNION ALL SELECT NULL, coalesce(max(position), 0) FROM {s}.events"
        )
        self.stream_version = q(
            "SELECT coalesce(max(version), 0) FROM {s}.events WHERE stream_id = %s"
        )
        # Kept ids: younger than max_age, and among the max_ids last recorded.
        kept = " AND c.recorded_at > %s AND c.seq > (SELECT max(seq) FROM {s}.command_ids) - %s"
        columns = (
            "SELECT c.stream_id, c.command_id, c.first_version, c.last_version,"
            " c.first_position, c.last_position, c.recorded_at"
        )
        self.find_many = q(
            columns + " FROM {s}.command_ids c JOIN unnest(%b::text[], %b::text[]) AS k(s, i)"
            " ON c.stream_id = k.s AND c.command_id = k.i WHERE true" + kept
        )
        self.find_one = q(
            columns + " FROM {s}.command_ids c WHERE c.stream_id = %s AND c.command_id = %s" + kept
        )
        self.insert_events = q(
            "INSERT INTO {s}.events (position, stream_id, version, type, timestamp,"
            " correlation_id, causation_id, payload, aggregate, command_id, principal,"
            " headers) SELECT p, s, v, t, ts, co, ca, pl, a, ci, pr, h::jsonb FROM unnest("
            "%b::bigint[], %b::text[], %b::bigint[], %b::text[], %b::float8[], %b::text[],"
            " %b::text[], %b::bytea[], %b::text[], %b::text[], %b::text[], %b::text[])"
            " AS u(p, s, v, t, ts, co, ca, pl, a, ci, pr, h)"
        )
        # An id that aged out but is not pruned yet is replaced by its new recording.
        self.record_ids = q(
            "INSERT INTO {s}.command_ids (seq, stream_id, command_id, recorded_at,"
            " first_version, last_version, first_position, last_position)"
            " SELECT * FROM unnest(%b::bigint[], %b::text[], %b::text[], %b::float8[],"
            " %b::bigint[], %b::bigint[], %b::bigint[], %b::bigint[])"
            " ON CONFLICT (stream_id, command_id) DO UPDATE SET seq = excluded.seq,"
            " recorded_at = excluded.recorded_at, first_version = excluded.first_version,"
            " last_version = excluded.last_version, first_position = excluded.first_position,"
            " last_position = excluded.last_position"
        )
        self.prune_by_count = q(
            "DELETE FROM {s}.command_ids WHERE seq IN (SELECT seq FROM {s}.command_ids"
            f" WHERE seq <= %s ORDER BY seq LIMIT {_PRUNE_MOST})"
        )
        self.prune_by_age = q(
            "DELETE FROM {s}.command_ids WHERE seq IN (SELECT seq FROM {s}.command_ids"
            f" WHERE recorded_at <= %s ORDER BY recorded_at LIMIT {_PRUNE_MOST})"
        )
        self.save_snapshots = q(
            "INSERT INTO {s}.snapshots SELECT * FROM unnest(%b::text[], %b::bytea[])"
            " ON CONFLICT (stream_id) DO UPDATE SET record = excluded.record"
        )
        self.save_caches = q(
            "INSERT INTO {s}.projector_caches SELECT * FROM unnest(%b::text[], %b::bytea[])"
            " ON CONFLICT (name) DO UPDATE SET record = excluded.record"
        )
        # A range, not ``position >= start ... LIMIT n``: positions have no gaps, so the
        # range holds exactly the page, and the planner estimates it as a small range
        # whether or not the table has statistics yet. With only ``>=`` it estimated a
        # fresh table's page 1 as all rows and chose a full scan and a sort for every page
        # (37 ms instead of 1 ms a page of 4,096 on a 50k-event log written just before).
        self.read_all = q(
            f"SELECT {_EVENT_COLUMNS} FROM {{s}}.events WHERE position >= %s"
            " AND position <= %s ORDER BY position"
        )
        self.read_stream = q(
            f"SELECT {_EVENT_COLUMNS} FROM {{s}}.events WHERE stream_id = %s AND version >= %s"
            " ORDER BY version LIMIT %s"
        )
        self.load_snapshot = q("SELECT record FROM {s}.snapshots WHERE stream_id = %s")
        self.load_cache = q("SELECT record FROM {s}.projector_caches WHERE name = %s")

    def render(self, conn: psycopg.Connection[Any]) -> None:
        """Make every statement bytes (quoting the schema as ``conn`` does)."""
        for name, statement in vars(self).items():
            if isinstance(statement, sql.Composable):
                setattr(self, name, statement.as_bytes(conn))


def _assumed(group: Sequence[Append]) -> dict[str, int] | None:
    """The version of each stream a group decided on, if it needs no decision: each
    stream's first expected version; None if an append expects ``ANY`` or does not expect
    what the stream's previous append in the group leaves."""
    assumed: dict[str, int] = {}
    after: dict[str, int] = {}
    for append in group:
        stream_id, expected = append.stream_id, append.expected_version
        if expected == ANY:
            return None
        if stream_id in after:
            if after[stream_id] != expected:
                return None
        else:
            assumed[stream_id] = expected
        after[stream_id] = expected + len(append.events)
    return assumed


def _judged(
    append: Append,
    versions: dict[str, int],
    chained: dict[str, set[int]],
    failed: AppendOutcome | None = None,
) -> AppendOutcome | None:
    """``append``'s outcome if it fails, judged in its place in a group: ``failed``
    (found before: it cannot be stored, a duplicate) or the log's rule at the stream's
    version (``expected_ok``). A failed append that carried events chains the versions
    decided on it (``chained``); one that passes moves its stream's version in
    ``versions``."""
    stream_id = append.stream_id
    version = versions.get(stream_id, 0)
    outcome = failed if failed is not None else expected_ok(append, version, chained)
    if outcome is None:
        versions[stream_id] = version + len(append.events)
    elif append.events:
        base = version if append.expected_version == ANY else append.expected_version
        chained.setdefault(stream_id, set()).add(base + len(append.events))
    return outcome


def _event_rows(cursor: Any) -> Callable[[Sequence[Any]], StoredEvent]:
    """A psycopg row factory: each ``events`` row (the ``_EVENT_COLUMNS``, binary format)
    made into its StoredEvent as it is parsed.

    Not a pass over ``fetchall()``'s tuples afterwards: those 4,096 tuples alive at once
    are objects the cyclic garbage collector tracks and counts, and collecting them cost
    ~25% of ``read_all`` (reads with the collector off measured 1.3x); made row by row,
    each tuple is freed at once, and StoredEvents are not tracked (``gc=False``). Made row
    by row: 1.1x the pass over the tuples (median of 6 alternating runs, 1M events)."""
    return _event


def _event(row: Sequence[Any]) -> StoredEvent:
    pos, sid, ver, typ, ts, corr, caus, payload, kind, cid, who, headers = row
    if cid is None and who is None and headers is None:
        return StoredEvent(pos, sid, ver, typ, ts, corr, caus, msgspec.Raw(payload), kind)
    return StoredEvent(
        pos,
        sid,
        ver,
        typ,
        ts,
        corr,
        caus,
        msgspec.Raw(payload),
        kind,
        command_id=cid,
        principal=who,
        headers=None if headers is None else _headers_decode(headers),
    )


def _decoded(decoder: msgspec.msgpack.Decoder[_T], data: bytes) -> _T | None:
    try:
        return decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def _check_name(name: object) -> str:
    """A projector name the tables can hold: :func:`check_name`, and no NUL."""
    checked = check_name(name)
    if "\x00" in checked:
        raise InvalidArgument(f"a projector name must not contain NUL, not {checked!r}")
    return checked


def _check_str(value: object) -> None:
    """Raise unless ``value`` is None or an exact str PostgreSQL ``text`` can hold."""
    if value is not None:
        if type(value) is not str:
            raise TypeError(f"expected a str, not {type(value).__name__}")
        if "\x00" in value:
            raise ValueError(f"PostgreSQL text cannot hold a NUL character: {value[:40]!r}")
        if not value.isascii():
            value.encode()  # a lone surrogate: UnicodeEncodeError (a ValueError)


def _check_storable(append: Append) -> None:
    """Raise unless every str of ``append`` fits PostgreSQL ``text`` and every payload is
    one msgpack value in bytes: such an append would fail its whole group in the server."""
    for value in (
        append.correlation_id,
        append.causation_id,
        append.aggregate_name,
        append.command_id,
        append.principal,
    ):
        _check_str(value)
    if append.headers is not None:
        if type(append.headers) is not tuple:
            raise TypeError("headers must be a tuple of (name, value) pairs")
        for pair in append.headers:
            if type(pair) is not tuple or len(pair) != 2:
                raise TypeError(f"a header must be a (name, value) tuple, not {pair!r}")
            _check_str(pair[0])
            _check_str(pair[1])
    for name, payload in append.events:
        _check_str(name)
        if type(payload) is not bytes:
            raise TypeError(f"a payload must be bytes, not {type(payload).__name__}")
        _one_value(payload)
