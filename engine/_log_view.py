"""The read-only view of an engine's event log (``engine.log``).

The engine's writer is the log's only writer, and the engine closes the log: a caller
holding the backend itself could append behind the writer's back (the log would then
refuse every later group as a foreign write) or close it under the running engine. So
``engine.log`` is this view, which offers reads and the map's size, nothing else. Growing
the map's cap is :meth:`Engine.set_max_map_size`.
"""

from __future__ import annotations

from pathlib import Path

from ._log import EventLog
from ._log_lmdb import LmdbEventLog
from ._records import ProjectorCache, Snapshot, StoredEvent

__all__ = ["LogView"]


class LogView:
    """Reads of an engine's event log: streams, the whole log in order, heads, snapshots.

    Every read is synchronous and short (one read transaction), and sees what is
    committed. After the engine closes, reads raise ``StorageError`` (the log is closed).
    For an LMDB log, :attr:`map_size` and :attr:`max_map_size` tell how close it is to
    ``StorageFull``; for other logs they are None.
    """

    __slots__ = ("_log",)

    def __init__(self, log: EventLog) -> None:
        self._log = log

    def __repr__(self) -> str:
        return f"<actorlog log view of {type(self._log).__name__}>"

    @property
    def sync(self) -> bool:
        """True if a committed group is durable against an OS crash when commit returns."""
        return self._log.sync

    @property
    def path(self) -> Path | None:
        """The LMDB log's directory; None for a log without one."""
        return self._log.path if isinstance(self._log, LmdbEventLog) else None

    @property
    def map_size(self) -> int | None:
        """The LMDB map's current size in bytes (it grows by itself, doubling, up to
        :attr:`max_map_size`); None for a log without a map.

        Raises:
            StorageError: the log is closed.
        """
        return self._log.map_size if isinstance(self._log, LmdbEventLog) else None

    @property
    def max_map_size(self) -> int | None:
        """The cap the LMDB map may grow to (past it, commands fail with ``StorageFull``;
        raise it with ``engine.set_max_map_size``); None for a log without a map."""
        return self._log.max_map_size if isinstance(self._log, LmdbEventLog) else None

    def read_stream(
        self, stream_id: str, from_version: int = 1, limit: int | None = None
    ) -> list[StoredEvent]:
        """Events of one stream with version >= ``from_version``, in version order (at most
        ``limit`` of them if given).

        Raises:
            InvalidArgument: ``stream_id`` is not a valid stream id.
            StorageError: the log is closed or cannot be read.
        """
        return self._log.read_stream(stream_id, from_version, limit)

    def read_all(self, from_position: int = 1, limit: int = 1024) -> list[StoredEvent]:
        """Up to ``limit`` events with position >= ``from_position``, in log order. Fewer
        than ``limit`` means the head was reached; read on from the last position + 1.

        Raises:
            StorageError: the log is closed or cannot be read.
        """
        return self._log.read_all(from_position, limit)

    def head_position(self) -> int:
        """The position of the last committed event; 0 for an empty log."""
        return self._log.head_position()

    def stream_version(self, stream_id: str) -> int:
        """The version of the stream's last event; 0 if the stream does not exist.

        Raises:
            InvalidArgument: ``stream_id`` is not a valid stream id.
        """
        return self._log.stream_version(stream_id)

    def load_snapshot(self, stream_id: str) -> Snapshot | None:
        """The stream's last saved aggregate snapshot, if any.

        Raises:
            InvalidArgument: ``stream_id`` is not a valid stream id.
        """
        return self._log.load_snapshot(stream_id)

    def load_projector_cache(self, name: str) -> ProjectorCache | None:
        """The named projector's last saved cache, if any (with the log position it
        includes)."""
        return self._log.load_projector_cache(name)
