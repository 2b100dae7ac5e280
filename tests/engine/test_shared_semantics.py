"""The engine and the given/when/then kits run one implementation of the decide step and of
the projector fold (engine/_decide.py, engine/_fold.py), so the kits cannot drift."""

from __future__ import annotations

import msgspec
import pytest

from actorlog import Aggregate, HandlerError, Rejected, applies, handles
from actorlog.engine import _decide, _fold
from actorlog.engine._records import StoredEvent
from actorlog.lowlevel import EventRegistry
from actorlog.testing import given


class Add(msgspec.Struct, frozen=True):
    n: int


class Added(msgspec.Struct, frozen=True):
    n: int


class Meddler(Aggregate):
    """Changes its state, then refuses: the change must not survive the refusal."""

    def __init__(self) -> None:
        self.total = 0

    @handles
    def add(self, c: Add) -> list[Added]:
        self.total += 1000
        if c.n < 0:
            raise Rejected("negative")
        self.total -= 1000
        return [Added(c.n)]

    @applies
    def added(self, e: Added) -> None:
        self.total += e.n


def test_the_kit_decides_with_the_engine_s_decide(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []
    real = _decide.decide

    def spy(*args: object) -> object:
        calls.append(args[3])
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(_decide, "decide", spy)
    monkeypatch.setattr("actorlog.actors.testing.decide", spy)
    given(Meddler).when(Add(2)).then([Added(2)])
    assert calls == [Add(2)]


def test_after_a_rejection_the_kit_s_state_is_the_state_before_the_command() -> None:
    given(Meddler, [Added(5)]).when(Add(-1)).then_rejected(match="negative").then_state(
        lambda m: m.total == 5
    )


def test_decide_wraps_a_handler_failure_and_restore_undoes_it() -> None:
    state = Meddler()
    before = dict(state.__dict__)
    encode = EventRegistry([Added]).encode_read_back
    with pytest.raises(Rejected):
        _decide.decide(Meddler, state, Meddler.command_handlers[Add], Add(-1), encode)
    assert state.total == 1000  # decide leaves the undo to its caller
    assert _decide.restore(state, Meddler, before) and state.total == 0

    def broken(state: object, command: object) -> list[object]:
        raise ValueError("boom")

    with pytest.raises(HandlerError, match="ValueError: boom"):
        _decide.decide(Meddler, state, broken, Add(1), encode)


def _events(*amounts: int) -> list[StoredEvent]:
    return [
        StoredEvent(i, "s", i, "Added", 0.0, payload=msgspec.Raw(msgspec.msgpack.encode(Added(n))))
        for i, n in enumerate(amounts, 1)
    ]


def _appliers(seen: list[int]) -> _fold.Appliers:
    def apply(instance: object, event: Added, meta: object) -> None:
        if event.n < 0:
            raise ValueError(event.n)
        seen.append(event.n)

    return {"Added": (apply, msgspec.msgpack.Decoder(Added).decode, True)}


def test_fold_halts_at_the_failing_event_with_the_cache_before_it() -> None:
    seen: list[int] = []
    applied, checkpoint, parked, failure = _fold.fold(
        _appliers(seen), None, _events(1, -2, 3), None, "halt"
    )
    assert (applied, checkpoint, parked, seen) == (1, 1, [], [1])
    assert failure is not None and failure[0].position == 2


def test_fold_parks_and_goes_on() -> None:
    seen: list[int] = []
    applied, checkpoint, parked, failure = _fold.fold(
        _appliers(seen), None, _events(1, -2, 3, -4), None, "park"
    )
    assert (applied, checkpoint, seen, failure) == (2, 4, [1, 3], None)
    assert [(p.position, p.type) for p in parked] == [(2, "Added"), (4, "Added")]
