"""The :class:`SqliteView` base class: a projector whose view is a SQLite file of JSON
documents, committed with its checkpoint (``engine/_view_store.py`` hosts it).

Layout (one file can hold many views, each under its projector ``name``)::

    actorlog_views(view PRIMARY KEY, position, format)      -- the checkpoint
    actorlog_documents(view, key, body)  PRIMARY KEY (view, key)  -- body: JSON text

SQLite runs in WAL mode with ``synchronous=NORMAL``: a crash of the process never loses a
committed transaction, and a power cut may lose the last few but never splits one, so the
view is always the log up to its checkpoint (the log replays what was lost). Appliers run
in a worker thread and write through the batch's pending documents; queries run on the
event loop and read committed rows through a read-only connection of their own (WAL: a
reader never waits for the writer).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from threading import get_ident
from typing import Any, ClassVar, Self

import msgspec

from ..engine import DefinitionError, EngineClosed, HandlerError, StorageError
from ._projector import Projector

__all__ = ["SqliteView"]

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS actorlog_views ("
    " view TEXT PRIMARY KEY, position INTEGER NOT NULL, format INTEGER NOT NULL, mark TEXT)",
    "CREATE TABLE IF NOT EXISTS actorlog_documents ("
    " view TEXT NOT NULL, key TEXT NOT NULL, body TEXT NOT NULL,"
    " PRIMARY KEY (view, key)) WITHOUT ROWID",
)
_UPSERT = (
    "INSERT INTO actorlog_documents (view, key, body) VALUES (?, ?, ?)"
    " ON CONFLICT (view, key) DO UPDATE SET body = excluded.body"
)
_DELETE = "DELETE FROM actorlog_documents WHERE view = ? AND key = ?"
_GET = "SELECT body FROM actorlog_documents WHERE view = ? AND key = ?"
_BUSY_MS = 10_000  # a second writer is refused by the checkpoint check, not by waiting
CACHED_DOCUMENTS = 65_536
"""Committed documents the writer side keeps in memory (as JSON text), so an applier's
``get`` of a hot key skips its SELECT; cleared when full. One engine writes a view, so
they cannot go stale. (``benchmarks.sqlite_view``: the SELECTs were ~20% of a rebuild.)"""

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


class SqliteView(Projector):
    """Base class of projectors whose view is a SQLite table of JSON documents, one per key,
    kept across restarts and committed with the view's checkpoint in the same transaction.

    Set ``database`` (a file path; its folder is created) on the class, or host
    ``MyView.at(path)``. Appliers (``@applies``, run in a worker thread one batch at a
    time) read and write documents with :meth:`get`, :meth:`put` and :meth:`delete`;
    queries (plain methods, run on the event loop through ``Engine.query``) read committed
    documents with :meth:`read`, :meth:`read_all` and :meth:`sql`. A document is anything
    ``msgspec.json`` encodes (dicts, lists, numbers, strings, structs); it reads back as
    plain JSON values.

    On start the view resumes from its stored checkpoint (nothing is replayed twice); a
    view whose ``snapshot_format`` differs from the class's (bump it when the appliers
    change), or whose checkpoint is beyond the log's head (another log's file), is emptied
    and rebuilt. ``Engine.rebuild`` empties it in the first batch it commits afterwards.
    One engine writes a view: a second is refused (``StorageError``) at its first commit.
    ``snapshot_every`` does not apply (the store is the saved view).
    """

    database: ClassVar[str | os.PathLike[str] | None] = None
    stores_view: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.snapshot_every is not None:
            raise DefinitionError(
                f"{cls.__qualname__}: a SqliteView is saved in its database; "
                "snapshot_every does not apply"
            )
        # The store's own methods are not queries (engine.query(View.commit) must not be).
        cls.query_functions = frozenset(cls.query_functions - _STORE_METHODS)

    @classmethod
    def at(cls, database: str | os.PathLike[str]) -> type[Self]:
        """This view class kept in ``database`` (same name, appliers and queries)."""
        bound: type[Self] = type(
            cls.__name__,
            (cls,),
            {
                "database": os.fspath(database),
                "name": cls.name,
                "__module__": cls.__module__,
                "__qualname__": cls.__qualname__,
            },
        )
        return bound

    # -- the engine's side (engine._view_store.ViewStore) ----------------------------------

    def open_view(self, head: int, mark_at: Callable[[int], str | None]) -> int:
        """Open the database (creating its tables) and return the view's checkpoint: 0,
        emptied, if the file holds a view of another log (see ``ViewStore.open_view``)."""
        if self.database is None:
            raise DefinitionError(f"{type(self).__qualname__}.database is not set")
        path = Path(self.database)
        self._name = self.name
        self._pending: dict[str, str | None] = {}
        self._committed: dict[str, str | None] = {}
        self._reset = False
        self._thread: int | None = None
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            writer = self._writer = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False
            )
            writer.execute(f"PRAGMA busy_timeout = {_BUSY_MS}")
            writer.execute("PRAGMA journal_mode = WAL")
            writer.execute("PRAGMA synchronous = NORMAL")
            for statement in _SCHEMA:
                writer.execute(statement)
            row = writer.execute(
                "SELECT position, format, mark FROM actorlog_views WHERE view = ?",
                (self._name,),
            ).fetchone()
            if row is None:
                writer.execute(
                    "INSERT INTO actorlog_views (view, position, format) VALUES (?, 0, ?)",
                    (self._name, self.snapshot_format),
                )
                self._position = 0
            elif (
                row[1] != self.snapshot_format
                or not 0 <= row[0] <= head
                or (row[0] > 0 and (row[2] is None or row[2] != mark_at(row[0])))
            ):
                # Another format, a view of more than this log holds, or of another log
                # (its checkpoint's event is not this log's there): start over.
                self._position = row[0]
                self.begin(True)
                self.commit(0)
                self._thread = None
            else:
                self._position = row[0]
            reader = self._reader = sqlite3.connect(
                path.resolve().as_uri() + "?mode=ro",
                uri=True,
                isolation_level=None,
                check_same_thread=False,
            )
            reader.execute(f"PRAGMA busy_timeout = {_BUSY_MS}")
        except sqlite3.Error as e:
            self.close_view()
            raise StorageError(f"cannot open the view {self._name} in {path}: {e}") from e
        except OSError as e:
            self.close_view()
            raise StorageError(f"cannot open the view {self._name} in {path}: {e}") from e
        return self._position

    def begin(self, reset: bool) -> None:
        """Start a batch in this thread (``reset``: it also empties the view)."""
        self._pending.clear()
        self._reset = reset
        self._thread = get_ident()

    def discard(self) -> None:
        """Drop the batch's pending writes."""
        self._pending.clear()

    def commit(self, checkpoint: int, mark: str | None = None) -> None:
        """Write the batch, ``checkpoint`` and its event's ``mark`` in one SQLite
        transaction.

        Raises:
            StorageError: SQLite failed (nothing of the batch is stored), or the stored
                checkpoint is not the one this view committed last (another engine
                writes this view).
        """
        writer = self._writer
        if writer is None:
            raise EngineClosed(f"the view {self._name} is closed")
        name = self._name
        upserts = [(name, k, v) for k, v in self._pending.items() if v is not None]
        deletes = [(name, k) for k, v in self._pending.items() if v is None]
        try:
            writer.execute("BEGIN IMMEDIATE")
            try:
                moved = writer.execute(
                    "UPDATE actorlog_views SET position = ?, format = ?, mark = ?"
                    " WHERE view = ? AND position = ?",
                    (checkpoint, self.snapshot_format, mark, name, self._position),
                ).rowcount
                if moved != 1:
                    raise StorageError(
                        f"the view {name} in {self.database} is not at position "
                        f"{self._position} any more: another engine writes it"
                    )
                if self._reset:
                    writer.execute("DELETE FROM actorlog_documents WHERE view = ?", (name,))
                if upserts:
                    writer.executemany(_UPSERT, upserts)
                if deletes:
                    writer.executemany(_DELETE, deletes)
                writer.execute("COMMIT")
            except BaseException:
                writer.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            raise StorageError(f"cannot commit the view {name}: {e}") from e
        self._position = checkpoint
        committed = self._committed
        if self._reset:
            committed.clear()
        if len(committed) + len(self._pending) > CACHED_DOCUMENTS:
            committed.clear()
        committed.update(self._pending)
        self._pending.clear()
        self._reset = False

    def close_view(self) -> None:
        """Close both connections (idempotent; the last commit is already durable)."""
        for attribute in ("_writer", "_reader"):
            connection = getattr(self, attribute, None)
            if connection is not None:
                setattr(self, attribute, None)
                connection.close()

    # -- appliers' side: the batch being folded (worker thread) ----------------------------

    def _misused(self) -> HandlerError:
        return HandlerError(
            f"{type(self).__qualname__}: get, put and delete are for appliers; "
            "queries read committed documents with read, read_all or sql"
        )

    def get(self, key: str) -> Any:
        """The document at ``key`` as this batch has left it (None: there is none)."""
        if self._thread != get_ident():  # inline: ~100 ns a call less than a method
            raise self._misused()
        pending = self._pending
        if key in pending:
            body = pending[key]
        elif self._reset:
            return None  # the view is being rebuilt: what is stored is gone
        elif key in self._committed:
            body = self._committed[key]
        else:
            assert self._writer is not None
            try:
                row = self._writer.execute(_GET, (self._name, key)).fetchone()
            except sqlite3.Error as e:
                raise StorageError(f"cannot read the view {self._name}: {e}") from e
            body = None if row is None else row[0]
        return None if body is None else _decode(body)

    def put(self, key: str, document: Any) -> None:
        """Set the document at ``key`` (stored when the batch commits)."""
        if self._thread != get_ident():
            raise self._misused()
        if type(key) is not str:
            raise TypeError(f"a document key is a str, not {type(key).__name__}")
        self._pending[key] = _encode(document).decode()

    def delete(self, key: str) -> None:
        """Remove the document at ``key`` (if any) when the batch commits."""
        if self._thread != get_ident():
            raise self._misused()
        self._pending[key] = None

    # -- queries' side: committed documents (event loop) -----------------------------------

    def _read_connection(self) -> sqlite3.Connection:
        reader: sqlite3.Connection | None = getattr(self, "_reader", None)
        if reader is None:
            raise EngineClosed(f"the view {self.name} is not open")
        return reader

    def read(self, key: str) -> Any:
        """The committed document at ``key`` (None: there is none)."""
        try:
            row = self._read_connection().execute(_GET, (self.name, key)).fetchone()
        except sqlite3.Error as e:
            raise StorageError(f"cannot read the view {self.name}: {e}") from e
        return None if row is None else _decode(row[0])

    def read_all(self) -> dict[str, Any]:
        """Every committed document, by key (one read: a consistent view)."""
        try:
            rows = (
                self._read_connection()
                .execute("SELECT key, body FROM actorlog_documents WHERE view = ?", (self.name,))
                .fetchall()
            )
        except sqlite3.Error as e:
            raise StorageError(f"cannot read the view {self.name}: {e}") from e
        return {key: _decode(body) for key, body in rows}

    def sql(self, query: str, *parameters: Any) -> list[tuple[Any, ...]]:
        """Rows of a read-only SQL ``query`` over the committed tables (the documents are
        ``actorlog_documents(view, key, body)``, ``body`` JSON text for ``json_extract``).

        Raises:
            StorageError: SQLite refused the query (a write among them: the connection is
                read-only).
        """
        try:
            return self._read_connection().execute(query, parameters).fetchall()
        except sqlite3.Error as e:
            raise StorageError(f"the query on the view {self.name} failed: {e}") from e


_STORE_METHODS = frozenset(
    fn for fn in vars(SqliteView).values() if callable(fn) and not isinstance(fn, type)
)
SqliteView.query_functions = frozenset()
