"""Projectors whose view lives in a store of its own (a SQLite file), committed with its
checkpoint.

An in-memory projector's cache is lost with the process and rebuilt from the log. A view
kept in a store (``actorlog.SqliteView``) survives: the host folds each batch into the
store's pending writes and commits them **in one transaction with the batch's last
position** (the checkpoint). After any crash the store holds exactly the log up to its
checkpoint, so a restart resumes at ``checkpoint + 1``: every event applied exactly once.

    projector task (loop)              worker thread (one batch at a time)
    ─────────────────────              ────────────────────────────────────
    events = window or log read  ──▶   store.begin(reset)   # reset: a rebuild is due
                                       fold(appliers, store, events)   # pending writes
                                       on a failure: discard, re-fold the events before it
                                       store.commit(checkpoint, mark) # rows + checkpoint, atomic
    checkpoint = committed one   ◀──
    wake queries waiting for it

The fold and the commit run in a worker thread (``anyio.to_thread``, not abandoned when
cancelled, so a batch is never half done by us): a store's calls block, and this keeps
the event loop free for commands and queries on trio and asyncio alike. Queries read the
store's committed state on the loop (SQLite in WAL mode: a reader never waits for the
writer), and the host advances its checkpoint only once the commit is done, so
``query(..., after=p)`` sees every row up to ``p``.

An applier that raises may have left part of its work in the pending writes, so the batch
is discarded and the events before the failed one folded again (appliers are pure
functions of the events), and only those are committed: the stored view never holds part
of an event. With ``on_error = "park"`` the failed event's position is committed as done
(skipped), and the next batch starts after it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import msgspec

from ._fold import Appliers, Parked, _error_text, fold
from ._log import EventLog
from ._records import StoredEvent

__all__ = [
    "BatchOutcome",
    "ViewStore",
    "event_mark",
    "fold_and_commit",
    "is_view_store",
    "log_mark",
]


@runtime_checkable
class ViewStore(Protocol):
    """What the engine calls on a projector instance whose view lives in a store.

    The host calls ``open_view`` once (on the event loop, when the engine opens), then
    ``begin``/``discard``/``commit`` from one worker thread at a time (never two at
    once), and ``close_view`` when the engine closes. Appliers write into the batch the
    store has begun.
    """

    def open_view(self, head: int, mark_at: Callable[[int], str | None]) -> int:
        """Open the store and return the position its view holds (0: empty). A view
        beyond ``head``, of another format, or whose checkpoint's mark is not
        ``mark_at(checkpoint)`` (the log's event there, see :func:`event_mark`) is not
        this log's: it is reset to 0."""

    def begin(self, reset: bool) -> None:
        """Start a batch (``reset``: the batch also empties the view, for a rebuild)."""

    def discard(self) -> None:
        """Drop the batch's pending writes (the reset, if asked, stays pending)."""

    def commit(self, checkpoint: int, mark: str | None) -> None:
        """Write the batch and ``checkpoint`` in one transaction; durable as the store
        makes it (atomic in any case: after a crash the view holds all of it or none).
        ``mark`` is :func:`event_mark` of the event at ``checkpoint`` (None at 0), kept
        with it so that a later open can tell this log's view from another's."""

    def close_view(self) -> None:
        """Close the store (idempotent)."""


def event_mark(event: StoredEvent) -> str:
    """What tells the event at a checkpoint apart from another log's at that position:
    its stream, version and commit time (JSON text, for any store)."""
    return _mark_encoder.encode((event.stream_id, event.version, event.timestamp)).decode()


def log_mark(log: EventLog, position: int) -> str | None:
    """:func:`event_mark` of ``log``'s event at ``position``; None if it has none."""
    events = log.read_all(position, 1) if position > 0 else []
    return event_mark(events[0]) if events and events[0].position == position else None


_mark_encoder = msgspec.json.Encoder()


def is_view_store(kind: object) -> bool:
    """Whether projector class ``kind`` keeps its view in a store (``stores_view``)."""
    return getattr(kind, "stores_view", False) is True


class BatchOutcome:
    """What one committed batch did: events applied, the committed checkpoint, what was
    parked, and the halt (event, error) if an applier raised and the projector halts."""

    __slots__ = ("applied", "checkpoint", "failure", "parked")

    def __init__(
        self,
        applied: int,
        checkpoint: int,
        parked: list[Parked],
        failure: tuple[StoredEvent, BaseException] | None,
    ) -> None:
        self.applied = applied
        self.checkpoint = checkpoint
        self.parked = parked
        self.failure = failure


def fold_and_commit(
    appliers: Appliers,
    store: ViewStore,
    events: list[StoredEvent],
    objects: list[Any] | None,
    on_error: str,
    reset: bool,
) -> BatchOutcome:
    """Fold ``events`` (consecutive, at least one) into ``store`` and commit them with
    their checkpoint (run in a worker thread; see the module docstring).

    A failing applier cuts the batch at its event: the events before it are committed
    (with the failed one as skipped, for ``park``). Errors of the store itself
    (``StorageError``) propagate with nothing committed.
    """
    store.begin(reset)
    try:
        applied, checkpoint, _, failure = fold(appliers, store, events, objects, "halt")
        parked: list[Parked] = []
        if failure is not None:
            stored, error = failure
            store.discard()
            cut = stored.position - events[0].position
            applied, checkpoint = 0, events[0].position - 1
            again = None
            if cut:
                # Appliers are pure functions of the events: the same writes again, without
                # whatever the failed applier left half done.
                applied, checkpoint, _, again = fold(appliers, store, events[:cut], objects, "halt")
                if again is not None:  # not so pure after all: halt at that one instead
                    store.discard()
                    applied, checkpoint = 0, events[0].position - 1
                    stored, error = again
                    failure = again
            if on_error == "park" and failure is not again:
                parked = [
                    Parked(stored.position, stored.stream_id, stored.type, _error_text(error))
                ]
                checkpoint, failure = stored.position, None
        if checkpoint >= events[0].position or reset:
            # A commit without a reset always ends inside the batch; a reset's may sit
            # before it only at 0 (a rebuild starts from the first position).
            first = events[0].position
            at = events[checkpoint - first] if checkpoint >= first else None
            store.commit(checkpoint, None if at is None else event_mark(at))
        else:
            store.discard()
        return BatchOutcome(applied, checkpoint, parked, failure)
    except BaseException:
        store.discard()
        raise
