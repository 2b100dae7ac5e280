"""``python -m examples.trio_bank --data DIR [--port N]``: the bank API on hypercorn + trio.

Here the program owns the engine, not the web app: ``main`` opens it, and the ASGI app
(the FastAPI one of ``examples.fastapi_bank``, which runs on trio as it is, through anyio)
borrows it for as long as the server runs. That is the shape for a trio program that runs
other tasks beside its web server (a consumer, a scheduler) on the same engine. SIGTERM or
Ctrl-C stops the server; leaving ``Engine.open`` then commits every decided command.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
from collections.abc import AsyncIterator
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from actorlog import Engine

from ..fastapi_bank.app import create_app, open_lmdb_engine


async def serve_bank(data: str, host: str, port: int, mailbox_size: int) -> None:
    """Open the engine, serve the API until SIGTERM/SIGINT, then close the engine."""
    async with open_lmdb_engine(data, mailbox_size=mailbox_size)() as engine:

        @contextlib.asynccontextmanager
        async def borrowed() -> AsyncIterator[Engine]:
            yield engine  # the app's lifespan uses it; main closes it

        config = Config()
        config.bind = [f"{host}:{port}"]
        config.accesslog = None
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signal, stop)
            # hypercorn's own type for an ASGI app is stricter than FastAPI's signature.
            app: Any = create_app(borrowed)
            await serve(app, config, shutdown_trigger=stop.wait)
            nursery.cancel_scope.cancel()


async def _stop_on_signal(stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            stop.set()
            return


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.trio_bank")
    parser.add_argument("--data", default="bank-data", help="the LMDB log directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--mailbox-size", type=int, default=64, help="commands per account")
    args = parser.parse_args()
    trio.run(serve_bank, args.data, args.host, args.port, args.mailbox_size)


if __name__ == "__main__":
    main()
