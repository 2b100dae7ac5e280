"""The event-log protocol every storage backend meets, and the checks they share.

A backend is synchronous: the writer calls it inline (see ``_writer.py`` for why), and
readers call it between awaits, never holding a transaction across one. Only ``bytes`` and
decoded records leave a backend's transactions.

Contract (``engine.testing.check_event_log`` runs it against any backend):

- ``append_batch`` commits every append of the group in ONE transaction; each append is all
  or nothing; an expected-version mismatch fails that append only (``ConcurrencyError``).
- positions and versions are consecutive from 1; global order is commit order; no gaps.
- a storage failure fails the whole group with a ``StorageError`` and writes nothing;
  an invalid stream id or checkpoint name raises ``DefinitionError`` and writes nothing.
- an empty append (no events) only checks the expected version.
- reads after ``close`` raise ``StorageError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ._errors import ConcurrencyError, DefinitionError, EngineError
from ._records import ANY, Append, AppendResult, Snapshot, StoredEvent

__all__ = ["AppendOutcome", "EventLog", "check_name", "check_stream_id", "expected_ok"]

AppendOutcome = AppendResult | EngineError
"""What each append comes to, in order: its result, or the error that failed it alone.

``append_batch`` reports ``ConcurrencyError`` or ``StorageError``; the writer may also
report ``EngineClosed`` (closed before the append was written)."""

MAX_STREAM_ID_BYTES = 400  # LMDB keys are at most 511 bytes; the index adds 9.


class EventLog(Protocol):
    """The storage backend protocol: an append-only log of events with a stream index."""

    @property
    def sync(self) -> bool:
        """True if a committed group is durable against an OS crash when commit returns."""
        ...

    def append_batch(
        self,
        appends: Sequence[Append],
        *,
        snapshots: Sequence[tuple[str, Snapshot]] = (),
        checkpoints: Sequence[tuple[str, int]] = (),
        projections: Sequence[tuple[str, Snapshot]] = (),
    ) -> tuple[list[AppendOutcome], list[StoredEvent]]:
        """Commit a group of appends (plus snapshot, checkpoint and projection writes) in
        one transaction.

        Returns each append's outcome, in order, and the stored events in log order. Durable
        on return if ``sync``; with ``sync=False`` it survives a process crash, not an OS one.
        """
        ...

    def read_stream(
        self, stream_id: str, from_version: int = 1, limit: int | None = None
    ) -> list[StoredEvent]:
        """Events of one stream with version >= ``from_version``, in version order.

        At most ``limit`` of them if given (``0`` gives none).
        """
        ...

    def read_all(self, from_position: int = 1, limit: int = 1024) -> list[StoredEvent]:
        """Up to ``limit`` events with position >= ``from_position``, in log order.

        Fewer than ``limit`` means the head was reached; read on from the last position + 1.
        """
        ...

    def head_position(self) -> int:
        """The position of the last committed event; 0 for an empty log."""
        ...

    def stream_version(self, stream_id: str) -> int:
        """The version of the stream's last event; 0 if the stream does not exist."""
        ...

    def load_snapshot(self, stream_id: str) -> Snapshot | None:
        """The stream's last saved snapshot, if any."""
        ...

    def load_checkpoint(self, name: str) -> int:
        """A named checkpoint (e.g. a projector's position); 0 if never saved."""
        ...

    def load_projection(self, name: str) -> Snapshot | None:
        """A projector's last saved state (``version`` is the log position it includes)."""
        ...

    def close(self) -> None:
        """Release the storage. Idempotent. Later calls raise ``StorageError``."""
        ...


def check_stream_id(stream_id: object) -> str:
    """Validate a stream id: a non-empty str without NUL, at most 400 UTF-8 bytes."""
    if not isinstance(stream_id, str) or not stream_id:
        raise DefinitionError(f"stream id must be a non-empty str, not {stream_id!r}")
    # A str encodes to at most 4 bytes a character: short ids skip the encode.
    if "\x00" in stream_id or (
        len(stream_id) > MAX_STREAM_ID_BYTES // 4 and len(stream_id.encode()) > MAX_STREAM_ID_BYTES
    ):
        raise DefinitionError(
            f"stream id must not contain NUL or exceed {MAX_STREAM_ID_BYTES} bytes"
        )
    return stream_id


def check_name(name: object) -> str:
    """Validate a checkpoint name: a non-empty str of at most 400 UTF-8 bytes."""
    if not isinstance(name, str) or not name or len(name.encode()) > MAX_STREAM_ID_BYTES:
        raise DefinitionError(
            f"a checkpoint name must be a non-empty str of at most {MAX_STREAM_ID_BYTES} "
            f"bytes, not {name!r}"
        )
    return name


def expected_ok(append: Append, actual: int) -> ConcurrencyError | None:
    """The error if ``append``'s expected version does not admit ``actual``, else None."""
    expected = append.expected_version
    if expected in (ANY, actual):
        return None
    return ConcurrencyError(append.stream_id, expected, actual)
