"""The bank's HTTP API (FastAPI): commands in, balances out, every engine error a status.

::

    POST /accounts/{id}/commands   {"type": "Deposit", "amount": 500}
         Authorization: Bearer <token>      -> the principal the policy judges (401/403)
         Idempotency-Key: <uuid>            -> the command id: a retry is answered, not rerun
      <- 200 {"account": id, "version": 3, "position": 17}     once durable
    GET  /accounts/{id}?after=17            -> waits until the view holds position 17
      <- 200 {"account": id, "balance": 500}

One process owns an LMDB directory (a second one gets ``StorageLocked``): run one worker
(``uvicorn --workers 1``), or give each worker a directory of its own.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse

from actorlog import (
    ConcurrencyError,
    DecodeError,
    Engine,
    EngineClosed,
    EngineError,
    HandlerError,
    InvalidArgument,
    Overloaded,
    PayloadTooLarge,
    ProjectorFaulted,
    QueryTimeout,
    Rejected,
    StorageFull,
    Unauthorized,
    UnknownCommand,
    UnknownEventType,
    UpcastError,
)

from .bank import DEMO_TOKENS, Account, Balances, BankPolicy

OpenEngine = Callable[[], contextlib.AbstractAsyncContextManager[Engine]]

# Each engine error, and the status it answers with. Starlette picks the handler of the
# nearest class in the error's MRO, so UpcastError (a DecodeError about a STORED event, the
# server's fault) is told apart from DecodeError (the request's).
STATUS: dict[type[EngineError], int] = {
    Unauthorized: 403,
    InvalidArgument: 422,  # UnknownPosition too: an ``after`` no acknowledgement gave
    DecodeError: 422,
    UnknownEventType: 422,
    UnknownCommand: 422,
    PayloadTooLarge: 413,
    Rejected: 409,  # a domain rule said no (InsufficientFunds, InvalidAmount)
    ConcurrencyError: 409,
    Overloaded: 503,  # the account's mailbox is full: shed load, the client retries
    QueryTimeout: 503,
    ProjectorFaulted: 503,
    EngineClosed: 503,  # shutting down
    StorageFull: 507,
    HandlerError: 500,
    UpcastError: 500,
    EngineError: 500,
}
RETRY_AFTER = {Overloaded, QueryTimeout, ProjectorFaulted, EngineClosed}


def open_lmdb_engine(path: str, *, mailbox_size: int = 64) -> OpenEngine:
    """The engine this app runs by default: the bank on the LMDB log in ``path``."""

    def open_engine() -> contextlib.AbstractAsyncContextManager[Engine]:
        return Engine.open(
            path,
            aggregates=[Account],
            projectors=[Balances],
            authorize=BankPolicy(),
            mailbox_size=mailbox_size,
        )

    return open_engine


def create_app(open_engine: OpenEngine) -> FastAPI:
    """The API; the engine is entered in the app's lifespan and closed when it ends (every
    command already decided is committed first)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_engine() as engine:
            app.state.engine = engine
            yield

    app = FastAPI(title="actorlog bank", lifespan=lifespan)
    for error in STATUS:
        app.add_exception_handler(error, _engine_error)
    app.add_exception_handler(_Unauthenticated, _unauthenticated)

    @app.post("/accounts/{account}/commands")
    async def command(
        account: str,
        request: Request,
        principal: Annotated[str, Depends(authenticate)],
        idempotency_key: Annotated[str | None, Header()] = None,
    ) -> dict[str, Any]:
        engine: Engine = request.app.state.engine
        # Untrusted input: size-checked, strictly decoded, unknown fields and types refused
        # (DecodeError and friends -> 422 with the reason).
        decoded = engine.decode_command(Account, await request.body())
        # send_nowait, not send: a full mailbox is answered at once with 503 + Retry-After
        # (load is shed at the door) instead of queueing requests without bound.
        pending = engine.send_nowait(
            Account, account, decoded, command_id=idempotency_key, principal=principal
        )
        committed = await pending  # durable when this returns
        return {"account": account, "version": committed.version, "position": committed.position}

    @app.get("/accounts/{account}")
    async def balance(
        account: str,
        request: Request,
        principal: Annotated[str, Depends(authenticate)],
        after: Annotated[int | None, Query(ge=0)] = None,
    ) -> dict[str, Any]:
        engine: Engine = request.app.state.engine
        # Read your writes: ``after`` is the position a command's response gave; the query
        # waits (at most 2 s, then 503) until the view has applied it.
        cents = await engine.query(
            Balances.balance, account, after=after, timeout=2, principal=principal
        )
        return {"account": account, "balance": cents}

    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        engine: Engine = request.app.state.engine
        stats = engine.statistics()
        return {"head": stats.head, "live_aggregates": stats.aggregates.live}

    return app


async def authenticate(authorization: Annotated[str | None, Header()] = None) -> str:
    """The principal of the request's bearer token; 401 without one we know."""
    scheme, _, token = (authorization or "").partition(" ")
    principal = DEMO_TOKENS.get(token) if scheme.lower() == "bearer" else None
    if principal is None:
        raise _Unauthenticated()
    return principal


class _Unauthenticated(Exception):
    """No bearer token, or one we do not know (401, unlike the policy's 403)."""


async def _engine_error(request: Request, error: Exception) -> JSONResponse:
    status = next(STATUS[kind] for kind in type(error).__mro__ if kind in STATUS)
    headers = {"Retry-After": "1"} if any(isinstance(error, k) for k in RETRY_AFTER) else None
    return JSONResponse(
        {"error": type(error).__name__, "detail": str(error)}, status_code=status, headers=headers
    )


async def _unauthenticated(request: Request, error: Exception) -> JSONResponse:
    return JSONResponse(
        {"error": "Unauthenticated", "detail": "a known bearer token is required"},
        status_code=401,
        headers={"WWW-Authenticate": "Bearer"},
    )


def default_app() -> FastAPI:
    """The app on the directory in ``$BANK_DATA`` (``uvicorn --factory``)."""
    return create_app(open_lmdb_engine(os.environ.get("BANK_DATA", "bank-data")))
