"""One-shot replies: the cheapest way to hand one value to one waiting task.

The command path is dominated by task wake-ups, so a reply is the bare primitive of the
running event loop: on trio the waiting task itself is parked and rescheduled (no Event,
no channel); on asyncio it waits on a Future created only if it has to wait (anyio runs on nothing
else). :func:`reply_factory` picks one per engine when it opens.

A reply is completed at most once, from the event loop's thread; the first completion
wins. It keeps its value: a waiter that is cancelled only stops waiting, and a later
``wait`` (by the same or another task, one at a time) still gets the value. Code that
hands out turns through replies (the mailbox's room queue) must therefore pass a turn on
itself when a waiter leaves without using it; see ``Aggregates._park``.

:func:`must_propagate` tells the hosts which ``BaseException`` raised inside user code
(a handler, an applier) is the event loop's or the process's business rather than the user
code's failure.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, Protocol

import anyio
import sniffio

__all__ = ["Reply", "must_propagate", "reply_factory"]


class Reply(Protocol):
    """A one-shot slot: ``set_result``/``set_error`` once, ``wait`` for it."""

    def set_result(self, value: Any) -> bool:
        """Complete with a value; False (and no effect) if already completed."""

    def set_error(self, error: BaseException) -> bool:
        """Complete with an error to raise in the waiter; False as for set_result."""

    async def wait(self) -> Any:
        """Wait for completion and return the value (or raise the error).

        If cancelled, nothing is lost: the completion is kept for a later ``wait``.
        One task at a time may wait; a second concurrent waiter is a RuntimeError.
        """


def reply_factory() -> Callable[[], Reply]:
    """The Reply class for the running event loop: trio or asyncio (anyio's only backends).

    Raises:
        RuntimeError: another async library is running.
    """
    library = sniffio.current_async_library()
    if library == "trio":
        return _TrioReply
    if library == "asyncio":
        return _AsyncioReply
    raise RuntimeError(f"actorlog runs on trio or asyncio, not {library}")  # pragma: no cover


def must_propagate(error: BaseException) -> bool:
    """True if ``error``, raised inside user code, must reach the host unchanged.

    Those are the running backend's cancellation (anyio's cancelled class: a handler that
    awaited nothing cannot raise it legitimately, but swallowing it would break the cancel
    scope that sent it), ``KeyboardInterrupt`` (Ctrl-C lands wherever the loop happens to
    be) and ``SystemExit`` (user code asked to end the process, e.g. ``sys.exit()``).
    Every other exception, ``BaseException`` subclasses included (a user's ``class
    Boom(BaseException)``, a stray ``GeneratorExit``), is a failure of that user code: the
    hosts turn it into a typed error (``HandlerError``) or a projector fault.
    """
    if isinstance(error, Exception):
        return False
    if isinstance(error, KeyboardInterrupt | SystemExit):
        return True
    try:
        sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return False  # no event loop (the test kits run synchronously): nothing to cancel
    return isinstance(error, anyio.get_cancelled_exc_class())


def _second_waiter() -> RuntimeError:
    return RuntimeError("another task is already waiting for this reply")


class _Slot:
    """What every reply shares: completed once, with a value or an error.

    Subclasses set all fields in their own ``__init__`` (no ``super()`` call): a reply is
    made per command, and the extra calls cost ~4% of W1 sync=False (A/B, same session).
    """

    __slots__ = ("_done", "_error", "_value")

    _done: bool
    _value: Any
    _error: BaseException | None

    def set_result(self, value: Any) -> bool:
        if self._done:
            return False
        self._done = True
        self._value = value
        self._wake()
        return True

    def set_error(self, error: BaseException) -> bool:
        if self._done:
            return False
        self._done = True
        self._error = error
        self._wake()
        return True

    def _wake(self) -> None:
        raise NotImplementedError

    def _outcome(self) -> Any:
        if self._error is not None:
            raise self._error
        return self._value


class _TrioReply(_Slot):
    __slots__ = ("_task",)

    def __init__(self) -> None:
        self._done = False
        self._value = None
        self._error = None
        self._task: Any = None

    def set_result(self, value: Any) -> bool:
        # _Slot.set_result with _wake inline: one reply completes per command, and the
        # call was ~600 of W1's instructions a command (callgrind).
        if self._done:
            return False
        self._done = True
        self._value = value
        task = self._task
        if task is not None:
            self._task = None
            _trio.lowlevel.reschedule(task, _WOKEN)
        return True

    def _wake(self) -> None:
        task = self._task
        if task is not None:
            self._task = None
            _trio.lowlevel.reschedule(task, _WOKEN)

    def _abort(self, _: Any) -> Any:
        # Cancelled while parked: forget the task; a late completion is kept, not sent.
        self._task = None
        return _trio.lowlevel.Abort.SUCCEEDED

    async def wait(self) -> Any:
        if not self._done:
            if self._task is not None:
                raise _second_waiter()
            self._task = _trio.lowlevel.current_task()
            await _trio.lowlevel.wait_task_rescheduled(self._abort)
        if self._error is not None:
            raise self._error
        return self._value


class _AsyncioReply(_Slot):
    __slots__ = ("_future",)

    def __init__(self) -> None:
        self._done = False
        self._value = None
        self._error = None
        # Created only by a waiter, and never given the error: so a reply nobody waits
        # for ends silently (no "Future exception was never retrieved").
        self._future: asyncio.Future[None] | None = None

    def _wake(self) -> None:
        future = self._future
        if future is not None:
            self._future = None
            if not future.done():  # done means cancelled: the waiter has left
                future.set_result(None)

    async def wait(self) -> Any:
        if not self._done:
            if self._future is not None:
                raise _second_waiter()
            future = self._future = asyncio.get_running_loop().create_future()
            try:
                await future
            finally:
                if self._future is future:
                    self._future = None
        return self._outcome()


with contextlib.suppress(ImportError):  # keep asyncio-only hosts importable without trio
    import outcome as _outcome
    import trio as _trio

    class _Woken(_outcome.Outcome[None]):
        """What a parked reply's task is woken with: always ``None``, reusable.

        ``reschedule(task)`` would build a fresh ``outcome.Value(None)`` per wake-up, whose
        attrs ``__init__`` and use-once bookkeeping cost ~4% of W1 sync=False; a
        reply's value travels in the reply itself, so the wake-up carries nothing.
        """

        __slots__ = ()

        def unwrap(self) -> None:
            return None

        def send(self, gen: Any) -> Any:
            return gen.send(None)

        async def asend(self, agen: Any) -> Any:
            return await agen.asend(None)

    _WOKEN = _Woken()
