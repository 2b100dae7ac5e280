"""The parent's side of the node processes (``node.py``): start them, ask them things,
kill them."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from typing import Any

from benchmarks._child import Child


class NodeProcess(Child):
    """A node process driven over its stdin/stdout, one JSON line a message: ``ask`` sends a
    request and returns its answer; ``start_load``/``stop_load`` run a load whose
    acknowledgements collect in ``acks``; ``kill`` is SIGKILL."""

    def __init__(self, module: str, *argv: str) -> None:
        super().__init__(module, *argv)
        self.acks: list[Any] = []  # from ``load``
        self._loader: threading.Thread | None = None
        self._closed = False
        self.stopped = -1

    def answer(self) -> dict[str, Any]:
        """The next answer (of the oldest request not answered yet)."""
        return self.hear()

    def request(self, op: str, **args: Any) -> None:
        """Send one request without waiting for its answer (``answer`` reads it)."""
        self.tell({"op": op, **args})

    def ask(self, op: str, **args: Any) -> dict[str, Any]:
        """Send one request; its answer."""
        self.request(op, **args)
        return self.answer()

    def _ack(self, ack: list[Any]) -> Any:
        """What ``acks`` keeps of one acknowledgement the load reports."""
        return tuple(ack)

    def start_load(self, streams: Any, concurrency: int) -> None:
        """Start a load on ``streams`` (the node says what it sends); acknowledgements
        collect in ``acks``."""
        self.request("load", streams=streams, concurrency=concurrency)

        def collect() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                message = json.loads(line)
                if "ack" not in message:
                    self.stopped = message["stopped"]
                    return
                self.acks.append(self._ack(message["ack"]))

        self._loader = threading.Thread(target=collect, daemon=True)
        self._loader.start()

    def stop_load(self) -> int:
        """End the load; how many commands it says were acknowledged (all of ``acks``)."""
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


class Node(NodeProcess):
    """One ``node.py`` process (bumps of counters; see there)."""

    def __init__(
        self, kind: str, where: str, schema: str, role: str, backend: str = "trio"
    ) -> None:
        super().__init__("tests.nodes.node", kind, where, schema, role, backend)
        self.role = role
        self.ready = self.answer()["ready"]

    def __str__(self) -> str:
        return f"node {self.role}"
