"""Command ids: what a log records so a retried command is answered, not run again.

An append that carries a ``command_id`` has it recorded, with the append's result, in the
transaction that writes its events: there is no moment at which the events exist and the
id does not, or the reverse. A later append with the same id on the same stream writes
nothing and fails with :class:`~engine._errors.DuplicateCommand`, which carries the
original result; the engine answers a retried ``send`` from it (usually before deciding
anything: see ``Engine.send``).

Retention is log-wide, oldest first: an id is kept for ``max_age`` seconds, and at most
``max_ids`` ids are kept in all. Log-wide rather than per stream because the number of
streams has no bound, so a per-stream count bounds nothing on disk; and an oldest-first
order over the whole log is one ordered index, where a per-stream count would need a
counter per stream and a second ordered index, written by every command. Pruning happens
in the write transactions that record new ids (a bounded number of deletions each), so a
log that stops receiving ids stops changing.
"""

from __future__ import annotations

import math
from typing import Final

import msgspec

from ._errors import DefinitionError, describe

__all__ = [
    "DEFAULT_COMMAND_ID_MAX_AGE",
    "DEFAULT_MAX_COMMAND_IDS",
    "CommandIdRetention",
    "Ident",
    "retention",
]

DEFAULT_MAX_COMMAND_IDS: Final = 250_000
"""How many command ids a log keeps, all streams together: ~100 bytes each on disk plus
the id itself, ~100 bytes each in memory (the LMDB log's index): ~25 + 25 MB at the bound,
a day of 3 commands a second, or 40 minutes of 100."""

DEFAULT_COMMAND_ID_MAX_AGE: Final = 24 * 3600.0
"""How long a command id is kept, in seconds: a day. Retries come within seconds or
minutes (HTTP clients, queue redeliveries; NATS keeps message ids 2 minutes by default,
SQS FIFO 5); a day also covers a process manager restarted after a night."""


class CommandIdRetention(msgspec.Struct, frozen=True):
    """How long a log keeps command ids: the newest ``max_ids`` ids younger than
    ``max_age`` seconds are always kept; an id older than ``max_age`` is never answered.

    A retry whose first attempt's id is no longer kept is decided again, like a new
    command. Dropping is batched, so a log may hold a few ids past ``max_ids`` for a while
    (the LMDB log up to a 64th more, plus one group commit's) and still answer them:
    never fewer than the bound, never older than ``max_age``.

    Raises:
        DefinitionError: ``max_ids`` is not an int >= 1, or ``max_age`` not a number > 0
            (``math.inf`` for no age bound).
    """

    max_ids: int = DEFAULT_MAX_COMMAND_IDS
    max_age: float = DEFAULT_COMMAND_ID_MAX_AGE

    def __post_init__(self) -> None:
        if type(self.max_ids) is not int or self.max_ids < 1:
            raise DefinitionError(f"max_ids must be an int >= 1, not {describe(self.max_ids)}")
        age = self.max_age
        if type(age) not in (int, float) or math.isnan(age) or age <= 0:
            raise DefinitionError(f"max_age must be a number > 0, not {describe(age)}")


def retention(given: object) -> CommandIdRetention:
    """A log's ``command_ids=`` argument, checked: the default for None.

    Raises:
        DefinitionError: it is not a :class:`CommandIdRetention`.
    """
    if given is None:
        return CommandIdRetention()
    if type(given) is not CommandIdRetention:
        raise DefinitionError(
            f"command_ids must be a CommandIdRetention, not {type(given).__name__}"
        )
    return given


Ident = tuple[str, str]
"""A kept command id: (stream id, command id)."""
