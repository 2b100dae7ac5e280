"""One-shot replies: the cheapest way to hand one value to one waiting task.

The command path is dominated by task wake-ups, so a reply is the bare primitive of the
running event loop: on trio the waiting task itself is parked and rescheduled with the
value (no Event, no channel); on asyncio it is a Future. Anything else falls back to an
``anyio.Event``. :func:`reply_factory` picks one per engine when it opens.

A reply is set at most once, from the event loop's thread, and awaited by at most one task.
If that task is cancelled the value is dropped (the command may still have committed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

import anyio
import sniffio

__all__ = ["Reply", "reply_factory"]


class Reply(Protocol):
    """A one-shot slot: ``set_result``/``set_error`` once, ``wait`` once."""

    def set_result(self, value: Any) -> bool:
        """Complete with a value; False if already completed or the waiter gave up."""

    def set_error(self, error: BaseException) -> bool:
        """Complete with an error to raise in the waiter; False as for set_result."""

    async def wait(self) -> Any:
        """Wait for completion and return the value (or raise the error).

        If cancelled, the completion is discarded.
        """


def reply_factory() -> Callable[[], Reply]:
    """The Reply class for the running event loop (trio, asyncio, or anyio's fallback)."""
    library = sniffio.current_async_library()
    if library == "trio":
        return _TrioReply
    if library == "asyncio":
        return _AsyncioReply
    return _AnyioReply  # pragma: no cover - no third backend exists today


class _TrioReply:
    __slots__ = ("_done", "_outcome", "_task")

    def __init__(self) -> None:
        self._done = False
        self._outcome: Any = None
        self._task: Any = None

    def set_result(self, value: Any) -> bool:
        return self._complete(_outcome.Value(value))

    def set_error(self, error: BaseException) -> bool:
        return self._complete(_outcome.Error(error))

    def _complete(self, result: Any) -> bool:
        if self._done:
            return False
        self._done = True
        self._outcome = result
        task, self._task = self._task, None
        if task is not None:
            _trio.lowlevel.reschedule(task, result)
        return True

    async def wait(self) -> Any:
        if self._outcome is not None:
            return self._outcome.unwrap()
        self._task = _trio.lowlevel.current_task()

        def abort(_: Any) -> Any:
            # Cancelled while parked: forget the task so a late completion is dropped.
            self._task = None
            self._done = True
            return _trio.lowlevel.Abort.SUCCEEDED

        return await _trio.lowlevel.wait_task_rescheduled(abort)


class _AsyncioReply:
    __slots__ = ("_future",)

    def __init__(self) -> None:
        self._future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def set_result(self, value: Any) -> bool:
        if self._future.done():
            return False
        self._future.set_result(value)
        return True

    def set_error(self, error: BaseException) -> bool:
        if self._future.done():
            return False
        self._future.set_exception(error)
        return True

    async def wait(self) -> Any:
        return await self._future


class _AnyioReply:  # pragma: no cover - only for a backend anyio may add later
    __slots__ = ("_error", "_event", "_value")

    def __init__(self) -> None:
        self._event = anyio.Event()
        self._value: Any = None
        self._error: BaseException | None = None

    def set_result(self, value: Any) -> bool:
        if self._event.is_set():
            return False
        self._value = value
        self._event.set()
        return True

    def set_error(self, error: BaseException) -> bool:
        if self._event.is_set():
            return False
        self._error = error
        self._event.set()
        return True

    async def wait(self) -> Any:
        await self._event.wait()
        if self._error is not None:
            raise self._error
        return self._value


try:  # trio is a dependency, but keep asyncio-only hosts importable if it is absent
    import outcome as _outcome
    import trio as _trio
except ImportError:  # pragma: no cover
    pass
