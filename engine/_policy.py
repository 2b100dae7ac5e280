"""Authorization: one policy, asked before any command is decided and any query is read.

Fail closed: only a policy that returns exactly ``True`` allows; ``False``, ``None``, any
other value or an exception refuses with :class:`Unauthorized` (the exception as
``__cause__``). The policy is synchronous: it runs on the command path for every command,
where an ``await`` that suspends costs a task switch (a wake-up) per command. Entitlements
that live elsewhere (a database, an identity provider) belong in the principal the host
builds once per request, or in a cache the policy reads.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from ._errors import DefinitionError, Unauthorized, describe
from ._reply import must_propagate

__all__ = ["Policy", "allow_query", "allow_send", "check_policy", "send_refused"]


class Policy:
    """Who may send which command and ask which query. Subclass it and override both.

    Pass an instance as ``Engine.open(..., authorize=policy)``; the engine then calls
    :meth:`may_send` for every ``send``/``send_nowait`` and :meth:`may_query` for every
    ``query``, with the ``principal=`` the caller passed (None if none). Both refuse by
    default, so a method left out refuses everything it would be asked.
    """

    def may_send(self, principal: Any, aggregate: Any, stream_id: str, command: Any) -> bool:
        """True to let ``principal`` send ``command`` to aggregate ``stream_id``."""
        return False

    def may_query(
        self,
        principal: Any,
        query: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
    ) -> bool:
        """True to let ``principal`` ask ``query(*args, **kwargs)``."""
        return False


def check_policy(policy: object) -> Policy | None:
    """The policy ``Engine.open`` was given, checked: None, or an object whose
    ``may_send`` and ``may_query`` are synchronous callables.

    Raises:
        DefinitionError: anything else (an ``async def`` method included).
    """
    if policy is None:
        return None
    for name in ("may_send", "may_query"):
        method = getattr(policy, name, None)
        if not callable(method):
            raise DefinitionError(
                f"authorize= needs a Policy (with may_send and may_query), not {describe(policy)}"
            )
        if inspect.iscoroutinefunction(method):
            raise DefinitionError(
                f"{type(policy).__name__}.{name} is async; a policy is synchronous "
                "(it runs on every command: see actorlog.Policy)"
            )
    return policy  # type: ignore[return-value]


def allow_send(
    policy: Policy, principal: Any, aggregate: Any, stream_id: str, command: Any
) -> None:
    """Raise :class:`Unauthorized` unless ``policy`` allows this command.

    ``Engine.send`` inlines these lines (a call less per command); change both together.
    """
    try:
        allowed = policy.may_send(principal, aggregate, stream_id, command)
    except BaseException as e:
        if must_propagate(e):
            raise
        raise send_refused(principal, stream_id, command, e) from e
    if allowed is not True:
        raise send_refused(principal, stream_id, command)


def send_refused(
    principal: Any, stream_id: str, command: Any, error: BaseException | None = None
) -> Unauthorized:
    """The error for a command the policy refused, or raised on (``error``)."""
    if error is not None:
        return Unauthorized(
            f"the policy raised for {type(command).__name__} on {stream_id!r}: {error!r}"
        )
    return Unauthorized(
        f"{describe(principal)} may not send {type(command).__name__} to {stream_id!r}"
    )


def allow_query(
    policy: Policy,
    principal: Any,
    query: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
) -> None:
    """Raise :class:`Unauthorized` unless ``policy`` allows this query."""
    name = getattr(query, "__qualname__", describe(query))
    try:
        allowed = policy.may_query(principal, query, args, kwargs)
    except BaseException as e:
        if must_propagate(e):
            raise
        raise Unauthorized(f"the policy raised for query {name}: {e!r}") from e
    if allowed is not True:
        raise Unauthorized(f"{describe(principal)} may not ask {name}")
