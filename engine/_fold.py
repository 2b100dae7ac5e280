"""The projector fold: apply a batch of events to a projector's cache, park or halt on a fault.

``ProjectorHost`` folds every batch it reads from the window or the log with :func:`fold`,
and ``actorlog.testing.given_events`` folds its scenario with it too: one implementation
of the rules, so the kit cannot drift from the engine.

Rules: events arrive consecutive, in log order; a type the projector has no applier for
is skipped without being decoded; an event that came with its object (read back from its
payload when it was appended: what decoding gives) is applied as that object, else decoded
from its payload. An applier (or decoding) that
raises halts the projector at that event, its cache holding everything before it, or,
with ``on_error = "park"``, the event is recorded as :class:`Parked` and skipped. That
holds for any exception, ``BaseException`` subclasses included; only cancellation,
``KeyboardInterrupt`` and ``SystemExit`` propagate (``_reply.must_propagate``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

import msgspec

from ._codec import EventRegistry
from ._errors import DefinitionError, ProjectorFaulted
from ._records import StoredEvent
from ._reply import must_propagate

__all__ = [
    "DEFAULT_MAX_PARKED",
    "MAX_PARKED_ERROR",
    "Appliers",
    "Parked",
    "appliers_by_name",
    "check_max_parked",
    "fault_for",
    "fold",
]

Appliers = dict[str, tuple[Callable[..., None], Callable[[Any], Any], bool]]
"""Event type name -> (applier, payload decoder): the types a projector handles."""


class Parked(msgspec.Struct, frozen=True):
    """An event a ``park`` projector could not apply and skipped."""

    position: int
    stream_id: str
    type: str
    error: str
    """The error's ``repr``, cut to ``MAX_PARKED_ERROR`` characters."""


DEFAULT_MAX_PARKED: Final = 1000
"""How many parked events a projector keeps by default (its ``max_parked``): the most
recent. Parking is for the odd bad event; a projector that parks every event must not grow
without bound (each kept entry is ~1.5 KB at most)."""

MAX_PARKED_ERROR: Final = 1024
"""Characters of an error's ``repr`` kept in a :class:`Parked` (a message may quote a
whole event)."""


def check_max_parked(owner: object, value: object) -> int:
    """Return ``value`` if it is an int >= 0, else raise ``DefinitionError``."""
    if type(value) is not int or value < 0:
        name = getattr(owner, "__qualname__", repr(owner))
        raise DefinitionError(f"{name}.max_parked must be an int >= 0, not {value!r}")
    return value


def _error_text(error: BaseException) -> str:
    text = repr(error)
    if len(text) > MAX_PARKED_ERROR:
        text = text[: MAX_PARKED_ERROR - 1] + "…"
    return text


_NOTHING_PARKED: Final[list[Parked]] = []
"""Returned (never changed) when a batch parked nothing: no list per batch."""


def fold(
    appliers: Appliers,
    instance: Any,
    events: list[StoredEvent],
    objects: list[Any] | None,
    on_error: str,
) -> tuple[int, int, list[Parked], tuple[StoredEvent, BaseException] | None]:
    """Fold ``events`` (consecutive, at least one) into ``instance``.

    ``objects`` holds, beside each event, the object its payload decodes to (read back
    when it was appended), or None where the payload must be decoded (all of them, if
    ``objects`` is None). Never the object it was encoded from: that may differ.

    Returns ``(applied, checkpoint, parked, failure)``: how many events reached an
    applier, the last position the cache now includes, the events parked (do not change
    the list), and for a halt the event it halted at and the error (else None).

    The rebuild hot path (``benchmarks/workloads.py`` engine_rebuild): one ``try`` around
    the whole loop (free in 3.11 until something raises), no per-event position check (a
    batch is consecutive), and the failing event found again from the loop variable.
    """
    get = appliers.get
    first = events[0].position
    parked = _NOTHING_PARKED
    total = 0
    skip = 0
    while True:
        skipped = 0
        stored = events[skip]
        rest = events[skip:] if skip else events
        try:
            if objects is None:
                # Every payload decoded (a log read: catch-up, rebuild): its own loop, with
                # no pairing and no per-event test for an object (~1% of a W4 rebuild). Both
                # loops count the events skipped (no applier: rare), not those applied.
                for stored in rest:
                    entry = get(stored.type)
                    if entry is None:
                        skipped += 1
                        continue
                    fn, decode, with_meta = entry
                    if with_meta:
                        fn(instance, decode(stored.payload), stored)
                    else:
                        fn(instance, decode(stored.payload))
                applied = len(rest) - skipped
            else:
                others = objects[skip:] if skip else objects
                for stored, event in zip(rest, others, strict=False):
                    entry = get(stored.type)
                    if entry is None:
                        skipped += 1
                        continue
                    fn, decode, with_meta = entry
                    if event is None:
                        event = decode(stored.payload)
                    if with_meta:
                        fn(instance, event, stored)
                    else:
                        fn(instance, event)
                applied = min(len(rest), len(others)) - skipped
        except BaseException as e:
            # A user's BaseException (not cancellation, Ctrl-C or sys.exit()) is an
            # applier failure like any other: it halts (or parks) this projector only.
            if must_propagate(e):
                raise
            # Applied in this pass: the events before the failed one (consecutive
            # positions), less those skipped. (An int += 1 an event allocated past 256.)
            applied = stored.position - rest[0].position - skipped
            total += applied
            if on_error != "park":
                # The cache holds everything before the failed event; resume retries it.
                return total, stored.position - 1, parked, (stored, e)
            if parked is _NOTHING_PARKED:
                parked = []
            parked.append(Parked(stored.position, stored.stream_id, stored.type, _error_text(e)))
            skip = stored.position - first + 1
            if skip < len(events):
                continue
            return total, stored.position, parked, None  # parked the last event
        return total + applied, events[-1].position, parked, None


def appliers_by_name(
    registry: EventRegistry, appliers: Mapping[type, Callable[..., None]]
) -> Appliers:
    """A projector's appliers by stored name: each type under every name it is read under
    (its current one with its own decoder; older versions and former names upcasting).
    ``ProjectorHost`` and ``actorlog.testing.given_events`` both build theirs here."""
    by_name: Appliers = {}
    for event_type, fn in appliers.items():
        # An applier that takes no metadata is called as it was written (see
        # ``actors._projector``), not through the adapter that drops the metadata.
        bare = getattr(fn, "applies_without_meta", None)
        for name, decode in registry.readers(event_type):
            by_name[name] = (fn, decode, True) if bare is None else (bare, decode, False)
    return by_name


def fault_for(name: str, position: int, event_type: str, error: BaseException) -> ProjectorFaulted:
    """The fault of projector ``name``, halted at ``position`` by ``error`` (its cause)."""
    fault = ProjectorFaulted(name, position, event_type, repr(error))
    fault.__cause__ = error
    return fault
