"""``python -m examples.fastapi_bank --data DIR [--port N]``: the bank API on uvicorn.

One worker: the process owns the LMDB directory (a second process would get
``StorageLocked``)."""

from __future__ import annotations

import argparse

import uvicorn

from .app import create_app, open_lmdb_engine


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.fastapi_bank")
    parser.add_argument("--data", default="bank-data", help="the LMDB log directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--mailbox-size", type=int, default=64, help="commands per account")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args()
    app = create_app(open_lmdb_engine(args.data, mailbox_size=args.mailbox_size))
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, workers=1)


if __name__ == "__main__":
    main()
