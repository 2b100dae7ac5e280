"""What a command carries besides itself: ids, the principal, headers; checked at the call.

Everything here is written into every event the command appends, so everything is checked
before the command is decided (a value that could not be read back must never be
acknowledged). The usual command carries none of it and pays one ``is None`` test a field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import msgspec

from ._errors import InvalidArgument, describe
from ._log import (
    Headers,
    check_command_id,
    check_headers,
    check_metadata,
)
from ._reply import must_propagate

__all__ = ["CommandMeta", "command_meta"]


class CommandMeta(msgspec.Struct, frozen=True, gc=False):
    """A command's checked metadata, as its append will store it (a Struct: built in C,
    ~1,300 instructions cheaper than a class with ``__init__``, once per command)."""

    correlation_id: str | None
    causation_id: str | None
    command_id: str | None
    principal: str | None
    headers: Headers | None


RecordPrincipal = Callable[[Any], "str | None"]

_NOT_RECORDABLE: Final = (
    "a principal that is not a str is recorded only through "
    "Engine.open(record_principal=...), which says what to store for it"
)


def command_meta(
    correlation_id: object,
    causation_id: object,
    command_id: object,
    principal: object,
    headers: object,
    record_principal: RecordPrincipal | None,
) -> CommandMeta | None:
    """Check what ``send`` was given; None when it was given nothing.

    The principal is recorded as it is if it is a str, else as ``record_principal`` makes
    it (a str or None); a principal that is neither is refused, never recorded as
    something the host did not choose.

    Raises:
        InvalidArgument: a value is malformed (see ``Engine.send``).
    """
    if (
        command_id is None
        and principal is None
        and correlation_id is None
        and causation_id is None
        and headers is None
    ):
        return None
    recorded: object = principal
    if principal is not None and type(principal) is not str:
        if record_principal is None:
            if not isinstance(principal, str):
                raise InvalidArgument(f"{_NOT_RECORDABLE}; got {describe(principal)}")
        else:
            try:
                recorded = record_principal(principal)
            except BaseException as e:
                if must_propagate(e):  # cancellation, Ctrl-C, sys.exit()
                    raise
                raise InvalidArgument(
                    f"record_principal raised for {describe(principal)}: {e!r}"
                ) from e
    # The slow path: ``Engine.send`` builds the usual metadata (an id, a principal's name)
    # inline, so these checks run for the rest only.
    return CommandMeta(
        check_metadata(correlation_id, "correlation_id"),
        check_metadata(causation_id, "causation_id"),
        None if command_id is None else check_command_id(command_id),
        check_metadata(recorded, "the recorded principal"),
        check_headers(headers),
    )
