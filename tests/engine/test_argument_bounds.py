"""Arguments that would silently do the wrong thing are refused: an empty path (it would
open a log in the current directory) and positions past 64 bits (a wait for one would
never end; one within 64 bits but beyond the head is ``UnknownPosition``)."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest

from actorlog import (
    DefinitionError,
    Engine,
    InvalidArgument,
    Projector,
    Recorded,
    UnknownPosition,
    applies,
)
from actorlog.storage import LmdbEventLog, MemoryEventLog


class E(msgspec.Struct, frozen=True):
    pass


class V(Projector):
    def __init__(self) -> None:
        self.n = 0

    @applies
    def e(self, e: E, m: Recorded) -> None:
        pass

    def count(self) -> int:
        return self.n


class _Empty(os.PathLike[str]):
    def __fspath__(self) -> str:
        return ""


@pytest.mark.parametrize("path", ["", _Empty()], ids=["str", "pathlike"])
async def test_an_empty_path_is_refused(
    path: str | os.PathLike[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DefinitionError, match="empty path"):
        async with Engine.open(path, aggregates=[]):
            pass
    with pytest.raises(DefinitionError, match="empty path"):
        LmdbEventLog(path)
    assert os.listdir(tmp_path) == []  # nothing was created in the current directory


async def test_positions_past_64_bits_are_refused() -> None:
    async with Engine.open(log=MemoryEventLog(), aggregates=[], projectors=[V]) as engine:
        for after in (2**64, 2**70):
            with pytest.raises(InvalidArgument, match="2\\*\\*64"):
                await engine.query(V.count, after=after)
            with pytest.raises(InvalidArgument, match="2\\*\\*64"):
                await engine.wait_projected(after)
        with pytest.raises(InvalidArgument):
            await engine.query(V.count, after=-1)
        # The largest position is a valid argument: refused only as beyond this log's head
        # (nothing ever wrote it), at once, whatever the timeout.
        with pytest.raises(UnknownPosition, match="beyond the log's head"):
            await engine.query(V.count, after=2**64 - 1, timeout=None)
        with pytest.raises(UnknownPosition, match="beyond the log's head"):
            await engine.wait_projected(2**64 - 1)
