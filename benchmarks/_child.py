"""A benchmark's worker process, driven over its stdin and stdout, one JSON line a message
(the multi-process benchmarks: ``nodes``, ``transfer_nodes``; the node processes of
``tests/nodes``): ``Child`` is the parent's end, ``say`` and ``heard`` the child's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio.to_thread

__all__ = ["Child", "heard", "say"]

ROOT = Path(__file__).resolve().parent.parent


class Child:
    """``python -m <argv...>`` in the repository's root, its pipes in text mode."""

    def __init__(self, *argv: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )

    def tell(self, message: dict[str, Any]) -> None:
        """Send one message."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()

    def hear(self) -> dict[str, Any]:
        """The next message it sent (``RuntimeError`` if it exited instead)."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"a child exited ({self.proc.wait()})")
        message: dict[str, Any] = json.loads(line)
        return message


def say(message: dict[str, Any]) -> None:
    """In the child: send the parent one message."""
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def heard() -> dict[str, Any] | None:
    """In the child: the parent's next message, or None once its stdin is closed."""
    line = await anyio.to_thread.run_sync(sys.stdin.readline)
    if not line:
        return None
    message: dict[str, Any] = json.loads(line)
    return message
