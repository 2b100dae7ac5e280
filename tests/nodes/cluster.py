"""The parent's side of the node processes (``node.py``): start them, ask them things,
kill them."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent


class Node:
    """One node process; ``ask`` sends a request and returns its answer."""

    def __init__(
        self, kind: str, where: str, schema: str, role: str, backend: str = "trio"
    ) -> None:
        self.role = role
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.nodes.node", kind, where, schema, role, backend],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self.ready = self.answer()["ready"]
        self.acks: list[tuple[str, int]] = []  # from ``load``
        self._loader: threading.Thread | None = None
        self._closed = False
        self.stopped = -1

    def answer(self) -> dict[str, Any]:
        """The next answer (of the oldest request not answered yet)."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"node {self.role} exited ({self.proc.wait()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def request(self, op: str, **args: Any) -> None:
        """Send one request without waiting for its answer (``answer`` reads it)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()

    def ask(self, op: str, **args: Any) -> dict[str, Any]:
        """Send one request; its answer."""
        self.request(op, **args)
        return self.answer()

    def start_load(self, streams: int, concurrency: int) -> None:
        """Start bumps to random streams; acknowledgements collect in ``acks``."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(
            json.dumps({"op": "load", "streams": streams, "concurrency": concurrency}) + "\n"
        )
        self.proc.stdin.flush()

        def collect() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                message = json.loads(line)
                if "ack" not in message:
                    self.stopped = message["stopped"]
                    return
                stream, position = message["ack"]
                self.acks.append((stream, position))

        self._loader = threading.Thread(target=collect, daemon=True)
        self._loader.start()

    def stop_load(self) -> int:
        """End the load; how many bumps it says were acknowledged (all of ``acks``)."""
        assert self.proc.stdin is not None and self._loader is not None
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()
        self._loader.join(timeout=30)
        assert not self._loader.is_alive()
        self._loader = None
        return self.stopped

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.close()

    def close(self) -> None:
        """Let it close its engine and exit (kill it if it will not). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._loader is not None:
            self.proc.kill()  # it loads forever
            self.proc.wait()
            self._loader.join(timeout=10)
            assert self.proc.stdin is not None and self.proc.stdout is not None
            self.proc.stdin.close()
            self.proc.stdout.close()
            return
        if self.proc.poll() is None:
            try:
                self.proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.communicate()
        else:
            self.proc.communicate()
