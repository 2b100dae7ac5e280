"""Opening a log for the CLI, and what it shows of an event.

A LOG argument is an LMDB directory or a ``postgresql://`` URL (``--schema`` picks the
schema). LMDB is opened **read-only** (``LmdbEventLog(readonly=True)``): no lock of the
writer's is taken, so every reading command is safe on a live log. PostgreSQL readers
take no lock either (a group commit's table lock blocks writers only). Only ``import``
opens a log to write it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec

from ..engine import StorageError
from ..engine._log import EventLog
from ..engine._log_lmdb import FORMAT as LMDB_FORMAT
from ..engine._log_lmdb import LmdbEventLog
from ..engine._records import StoredEvent

__all__ = [
    "cache_names",
    "event_document",
    "is_postgres",
    "layout",
    "open_log",
    "payload_value",
    "storage_facts",
]


def is_postgres(target: str) -> bool:
    """Whether a LOG argument names a PostgreSQL server rather than a directory."""
    return target.startswith(("postgresql://", "postgres://"))


def open_log(target: str, *, schema: str, write: bool = False) -> EventLog:
    """Open the log a LOG argument names: read-only unless ``write`` (``import``).

    Raises:
        StorageError: there is no log there (read-only), or it cannot be opened.
    """
    if is_postgres(target):
        from ..engine._log_postgres import PostgresEventLog

        if not write:
            _check_postgres_log(target, schema)  # opening would create an empty one
        return PostgresEventLog(target, schema=schema)
    if not write:
        path = Path(target)
        if not path.is_dir():
            raise StorageError(f"{target} is not a log directory")
        return LmdbEventLog(path, readonly=True)
    return LmdbEventLog(target)


def _check_postgres_log(target: str, schema: str) -> None:
    """Refuse a schema that holds no log, without creating one (a reader writes nothing).

    Raises:
        StorageError: the server cannot be reached, or the schema holds no actorlog log.
    """
    import psycopg

    try:
        with psycopg.connect(target, connect_timeout=10) as conn:
            row = conn.execute("SELECT to_regclass(%s)", (f'"{schema}".meta',)).fetchone()
    except psycopg.Error as e:
        raise StorageError(f"cannot read the PostgreSQL log: {e}") from e
    if row is None or row[0] is None:
        raise StorageError(f"schema {schema!r} holds no actorlog log")


def layout(log: EventLog) -> str:
    """The log's on-disk layout version (the one this actorlog reads: it opened it)."""
    if isinstance(log, LmdbEventLog):
        return LMDB_FORMAT.decode()
    from ..engine._log_postgres import FORMAT

    return str(FORMAT)


def storage_facts(log: EventLog) -> dict[str, Any]:
    """Size and map use (LMDB), or the schema (PostgreSQL)."""
    if isinstance(log, LmdbEventLog):
        size = os.stat(log.path / "data.mdb").st_size
        return {
            "backend": "lmdb",
            "path": str(log.path),
            "data_bytes": size,
            "map_size": log.map_size,
            "max_map_size": log.max_map_size,
            "map_used": round(size / log.map_size, 4),
        }
    return {"backend": "postgresql", "schema": getattr(log, "schema", None)}


def cache_names(log: EventLog) -> list[str] | None:
    """The names of the projector caches saved in the log, or None if it cannot list them.

    XX: the log protocol has ``load_projector_cache(name)`` but no listing; LMDB's table is
    read through the log's own read transaction until a public call exists.
    """
    names = getattr(log, "projector_cache_names", None)
    if names is not None:
        return sorted(names())
    if isinstance(log, LmdbEventLog):
        with log._reading() as txn:
            return sorted(key.decode() for key, _ in txn.cursor(db=log._projections))
    return None


_decode = msgspec.msgpack.Decoder().decode


def payload_value(event: StoredEvent) -> Any:
    """The event's payload as plain data (a dict, or a list for an array-like Struct)."""
    return _decode(event.payload)


def split_type(stored: str) -> tuple[str, int]:
    """An event's stored type name and version (``Deposited@2`` is version 2)."""
    name, at, version = stored.rpartition("@")
    if at and version.isdigit():
        return name, int(version)
    return stored, 1


def event_document(event: StoredEvent, *, decode: bool = True) -> dict[str, Any]:
    """An event as the CLI shows it: envelope, metadata and (decoded) payload."""
    name, version = split_type(event.type)
    document: dict[str, Any] = {
        "position": event.position,
        "stream_id": event.stream_id,
        "version": event.version,
        "type": name,
        "type_version": version,
        "timestamp": event.timestamp,
    }
    for field in ("correlation_id", "causation_id", "command_id", "principal", "aggregate"):
        value = getattr(event, field)
        if value is not None:
            document[field] = value
    if event.headers is not None:
        document["headers"] = [list(pair) for pair in event.headers]
    if decode:
        try:
            document["data"] = payload_value(event)
        except msgspec.DecodeError as e:
            document["data_error"] = str(e)
    return document
