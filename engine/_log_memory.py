"""An in-memory event log: a verified fake of the LMDB backend for fast tests.

It passes the same contract suite (``actorlog.storage.check_event_log``). ``max_events``
simulates a full disk: a group that would pass it fails whole with ``StorageFull``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence

from ._command_ids import CommandIdRetention, retention
from ._errors import DuplicateCommand, StorageError, StorageFull
from ._log import (
    AppendOutcome,
    check_command_id,
    check_expected_version,
    check_name,
    check_stream_id,
    expected_ok,
    stored_events,
)
from ._records import Append, AppendResult, ProjectorCache, Snapshot, StoredEvent

__all__ = ["MemoryEventLog"]


class MemoryEventLog:
    """An :class:`~engine._log.EventLog` held in memory; nothing survives ``close``.

    Args:
        max_events: the most events it will hold; ``None`` for no limit.
        command_ids: how long command ids are kept, as in the LMDB log.
    """

    def __init__(
        self, *, max_events: int | None = None, command_ids: CommandIdRetention | None = None
    ) -> None:
        self._retention = retention(command_ids)
        # (stream id, command id) -> result, oldest first: the LMDB log's two tables in one.
        self._commands: OrderedDict[tuple[str, str], AppendResult] = OrderedDict()
        self._events: list[StoredEvent] = []
        self._streams: dict[str, list[int]] = {}  # stream id -> positions, by version
        self._snapshots: dict[str, Snapshot] = {}
        self._caches: dict[str, ProjectorCache] = {}
        self._closed = False
        self.max_events = max_events

    @property
    def sync(self) -> bool:
        """Always False: memory survives nothing."""
        return False

    @property
    def blocking_reads(self) -> bool:
        """False: a read is a few dict and list lookups; the engine reads it inline."""
        return False

    def append_batch(
        self,
        appends: Sequence[Append],
        *,
        snapshots: Sequence[tuple[str, Snapshot]] = (),
        projector_caches: Sequence[tuple[str, ProjectorCache]] = (),
    ) -> tuple[list[AppendOutcome], list[StoredEvent]]:
        """Commit a group atomically; see :class:`~engine._log.EventLog`."""
        self._check_open()
        # Validate everything first: a group that raises must leave nothing behind.
        snapshots = [(check_stream_id(s), snapshot) for s, snapshot in snapshots]
        caches = [(check_name(name), cache) for name, cache in projector_caches]
        outcomes: list[AppendOutcome] = []
        stored: list[StoredEvent] = []
        new_positions: dict[str, list[int]] = {}
        recorded: dict[tuple[str, str], AppendResult] = {}
        position = len(self._events)
        timestamp = time.time()
        for append in appends:
            stream_id = check_stream_id(append.stream_id)
            check_expected_version(append.expected_version)
            pending = new_positions.get(stream_id)
            version = len(self._streams.get(stream_id, ())) + (len(pending) if pending else 0)
            cid = append.command_id
            if cid is not None:
                key = (stream_id, check_command_id(cid))
                original = recorded.get(key) or self._kept(key, timestamp)
                if original is not None:
                    outcomes.append(DuplicateCommand(cid, original))
                    continue
            error = expected_ok(append, version)
            if error is not None:
                outcomes.append(error)
                continue
            first_version, first_position = version + 1, position + 1
            stored.extend(stored_events(append, stream_id, position, version, timestamp))
            position += len(append.events)
            version += len(append.events)
            new_positions.setdefault(stream_id, []).extend(range(first_position, position + 1))
            result = AppendResult(
                stream_id, first_version, version, first_position, position, timestamp
            )
            if cid is not None:
                recorded[(stream_id, cid)] = result
            outcomes.append(result)
        if self.max_events is not None and position > self.max_events:
            full = StorageFull(f"the memory log is capped at {self.max_events} events")
            return [full for _ in appends], []
        # All checks passed: apply the whole group at once, like a committed transaction.
        self._events.extend(stored)
        for stream_id, positions in new_positions.items():
            self._streams.setdefault(stream_id, []).extend(positions)
        self._snapshots.update(snapshots)
        self._caches.update(caches)
        for key, result in recorded.items():
            # At the end, whatever it held before (an expired id sent again is the newest).
            self._commands.pop(key, None)
            self._commands[key] = result
        while len(self._commands) > self._retention.max_ids:
            self._commands.popitem(last=False)
        return outcomes, stored

    def _kept(self, key: tuple[str, str], now: float) -> AppendResult | None:
        """The result recorded under ``key`` if retention still keeps it."""
        result = self._commands.get(key)
        if result is None or now - result.timestamp >= self._retention.max_age:
            return None
        return result

    def find_command(self, stream_id: str, command_id: str) -> AppendResult | None:
        """The result of the append that recorded ``command_id`` on ``stream_id``, while
        the log keeps it."""
        if type(stream_id) is not str or type(command_id) is not str:
            check_stream_id(stream_id)  # InvalidArgument, as the protocol says
            check_command_id(command_id)
        self._check_open()
        return self._kept((stream_id, command_id), time.time())

    def read_stream(
        self, stream_id: str, from_version: int = 1, limit: int | None = None
    ) -> list[StoredEvent]:
        """Events of one stream with version >= ``from_version``, in version order."""
        self._check_open()
        positions = self._streams.get(check_stream_id(stream_id), [])
        start = max(from_version, 1) - 1
        end = len(positions) if limit is None else min(len(positions), start + max(limit, 0))
        return [self._events[p - 1] for p in positions[start:end]]

    def read_all(self, from_position: int = 1, limit: int = 1024) -> list[StoredEvent]:
        """Up to ``limit`` events with position >= ``from_position``, in log order."""
        self._check_open()
        start = max(from_position, 1) - 1
        return self._events[start : start + max(limit, 0)]

    def head_position(self) -> int:
        """The position of the last committed event; 0 for an empty log."""
        self._check_open()
        return len(self._events)

    def stream_version(self, stream_id: str) -> int:
        """The version of the stream's last event; 0 if it does not exist."""
        self._check_open()
        return len(self._streams.get(check_stream_id(stream_id), ()))

    def load_snapshot(self, stream_id: str) -> Snapshot | None:
        """The stream's last saved snapshot, if any."""
        self._check_open()
        return self._snapshots.get(check_stream_id(stream_id))

    def load_projector_cache(self, name: str) -> ProjectorCache | None:
        """The named projector's last saved cache, if any."""
        self._check_open()
        return self._caches.get(check_name(name))

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("the memory log is closed")

    def close(self) -> None:
        """Mark the log closed. Idempotent."""
        self._closed = True
