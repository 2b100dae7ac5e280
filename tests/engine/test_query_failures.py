"""A query is user code like a handler: whatever it raises, a user's ``BaseException``
subclass included (or raised by copying its result), is a ``HandlerError``; only what
``must_propagate`` names passes through. ``Engine.query`` and ``call_query`` agree."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from actorlog import Engine, HandlerError, Projector, Recorded, applies
from actorlog.engine.testing import call_query
from actorlog.storage import MemoryEventLog


class Boom(BaseException):
    pass


class E(msgspec.Struct, frozen=True):
    pass


class Odd:
    def __deepcopy__(self, memo: Any) -> Any:
        raise Boom("copy")


class V(Projector):
    def __init__(self) -> None:
        self.n = 0

    @applies
    def e(self, e: E, m: Recorded) -> None:
        pass

    def count(self) -> int:
        return self.n

    def raises(self) -> int:
        raise Boom("query")

    def uncopyable(self) -> Odd:
        return Odd()

    def stops(self) -> int:
        raise StopIteration

    def exits(self) -> int:
        raise SystemExit(3)

    def interrupted(self) -> int:
        raise KeyboardInterrupt


QUERIES = [V.raises, V.uncopyable, V.stops]


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: q.__name__)
async def test_a_failing_query_is_a_handler_error(query: Any) -> None:
    async with Engine.open(log=MemoryEventLog(), aggregates=[], projectors=[V]) as engine:
        with pytest.raises(HandlerError, match=query.__name__) as caught:
            await engine.query(query)
        assert caught.value.__cause__ is not None
        assert await engine.query(V.count) == 0  # the projector carries on


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: q.__name__)
def test_call_query_answers_as_the_engine_does(query: Any) -> None:
    with pytest.raises(HandlerError, match=query.__name__):
        call_query(query, V())


@pytest.mark.parametrize(
    ("query", "kind"), [(V.exits, SystemExit), (V.interrupted, KeyboardInterrupt)]
)
def test_exit_and_interrupt_pass_through(query: Any, kind: type[BaseException]) -> None:
    with pytest.raises(kind):
        call_query(query, V())
