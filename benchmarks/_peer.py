"""The peer: the Python ``eventsourcing`` library (9.5.x) on its SQLite or PostgreSQL persistence.

The benchmarks quote the engine next to a mature, idiomatic event-sourcing library running the
same bank workload, so a reader can place our numbers. The peer runs on the library's defaults
except for the settings below, and nothing is tuned in our favour:

- ``PERSISTENCE_MODULE=eventsourcing.sqlite`` with ``SQLITE_DBNAME`` a file: the library
  switches the database to WAL journal mode and leaves ``synchronous`` at SQLite's default,
  FULL (2), which fsyncs the WAL on every commit, so a saved event survives power loss. Every
  ``save`` is its own transaction: the library has no group commit, so W1 pays one fsync per
  accepted command. The mode actually in force is read back and returned with W1's figures.
- ``AGGREGATE_CACHE_MAXSIZE`` holds every account, with the library's default fast-forward
  (each ``get`` from the cache still asks SQLite for newer events, under a per-aggregate lock)
  and deepcopy-on-get. ``run_peer_w1(..., fastforward=False)`` measures the cache without
  that query: the library then puts each aggregate back in the cache after its save. That is
  sound here only because this process is the sole writer and the cache holds every account
  (an evicted and reloaded account could overwrite a newer cached copy, and every later save
  of that account would then clash and retry forever).
- Concurrent writers to one account are resolved the library's way: ``save`` raises
  ``IntegrityError`` on a version clash and the command is retried from a fresh ``get``.

On PostgreSQL (a :class:`PostgresStore` in place of the SQLite path; the harness and
``benchmarks.postgres`` use the server they are given, a fresh schema per run):

- ``PERSISTENCE_MODULE=eventsourcing.postgres``, ``synchronous_commit`` as the server has it
  (on by default: the WAL is flushed at each COMMIT; read back and returned with W1's
  figures). Every ``save`` is one transaction that takes ``LOCK TABLE ... IN EXCLUSIVE
  MODE`` on the events table (the library's way of keeping notification ids in commit
  order), so W1 pays one lock and one WAL flush per accepted command.
- ``POSTGRES_ENABLE_DB_FUNCTIONS`` stays off: its insert function skips that table lock, so
  notification ids could commit out of order (a reader following them would skip events):
  faster, not safe. ``POSTGRES_POOL_SIZE`` is the number of client threads, so no thread
  waits for a connection (5, the default, and 64 measured within noise of each other on
  W1 here: 709 and 554-817 commands/s; every save queues for the table lock anyway).
- The aggregate cache and fast-forward settings are as on SQLite.

It does not import the engine: it must measure the library, not us.
"""

from __future__ import annotations

import os
import random
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import IntegrityError
from eventsourcing.system import NotificationLogReader

__all__ = ["PostgresStore", "run_peer_w1", "run_peer_w3", "run_peer_w4"]

_SEED = 20240601  # the same seed and recipe as benchmarks/_floor.py
# Rows per notification-log query in W4 (run_peer_w4 at 200k events, a busy 2-vCPU box): 10,
# the library's default, was ~1.5x slower than 1,000; 1,000 and 5,000 were within noise.
_SECTION_SIZE = 1_000
# Events per transaction while writing the W4 log (setup, not timed). On PostgreSQL 5,000:
# a save of 50,000 (one pipelined executemany) now and then never finished here (the
# client blocked in the pipeline's sync, the server waiting for the client).
_SETUP_BATCH = 50_000
_SETUP_BATCH_POSTGRES = 5_000


class Rejected(Exception):
    """A bank rule refused the command; nothing was saved."""


class Account(Aggregate):
    """A bank account: opened once, then deposits and withdrawals that keep balance >= 0."""

    @staticmethod
    def create_id(name: str) -> UUID:
        """Derive the id from the name, so a second open of one name clashes on save."""
        return uuid5(NAMESPACE_URL, f"/accounts/{name}")

    @event("Opened")
    def __init__(self, name: str) -> None:
        self.name = name
        self.balance = 0

    def deposit(self, amount: int) -> None:
        """Add ``amount``; raises Rejected unless it is positive."""
        if amount <= 0:
            raise Rejected("amount must be positive")
        self._deposited(amount)

    def withdraw(self, amount: int) -> None:
        """Take ``amount``; raises Rejected if it is not positive or exceeds the balance."""
        if amount <= 0 or amount > self.balance:
            raise Rejected("insufficient funds")
        self._withdrawn(amount)

    # Declared rather than named in @event("..."), so W4 (and a type checker) can refer to them.
    class Deposited(Aggregate.Event):
        """Money went into the account."""

        amount: int

    class Withdrawn(Aggregate.Event):
        """Money left the account."""

        amount: int

    # The rules live in the public methods above and the decorated methods only mutate: the
    # decorator records an event every time the method runs, so a check inside it would be
    # replayed on load instead of guarding the command.
    @event(Deposited)
    def _deposited(self, amount: int) -> None:
        self.balance += amount

    @event(Withdrawn)
    def _withdrawn(self, amount: int) -> None:
        self.balance -= amount


class Bank(Application[UUID]):
    """The bank application: one method per command, each a get-decide-save."""

    # Lets NotificationLogReader ask for _SECTION_SIZE rows at a time (the default is 10).
    log_section_size = _SECTION_SIZE

    def open_account(self, name: str) -> UUID:
        """Open and durably save an account; raises Rejected if ``name`` is already open."""
        account = Account(name)
        try:
            self.save(account)
        except IntegrityError:
            raise Rejected(f"account {name!r} is already open") from None
        return account.id

    def deposit(self, account_id: UUID, amount: int) -> int:
        """Deposit and durably save; return how many version clashes were retried."""
        return self._command(account_id, Account.deposit, amount)

    def withdraw(self, account_id: UUID, amount: int) -> int:
        """Withdraw and durably save; raises Rejected, else return the clashes retried."""
        return self._command(account_id, Account.withdraw, amount)

    def balance(self, account_id: UUID) -> int:
        """Return the account's balance as last saved."""
        account: Account = self.repository.get(account_id)
        return account.balance

    def _command(
        self, account_id: UUID, decide: Callable[[Account, int], None], amount: int
    ) -> int:
        """Get, decide and save, retrying on a version clash with another thread."""
        clashes = 0
        while True:
            account: Account = self.repository.get(account_id)
            decide(account, amount)
            try:
                self.save(account)
            except IntegrityError:
                clashes += 1
                continue
            return clashes


def bank_workload(accounts: int, commands: int, *, seed: int = _SEED) -> list[tuple[int, str, int]]:
    """Return ``commands`` (account index, "deposit" | "withdraw", amount) triples, seeded.

    The same draws in the same order as ``benchmarks/_floor.py``'s workload.
    """
    rng = random.Random(seed)
    workload: list[tuple[int, str, int]] = []
    for _ in range(commands):
        account = rng.randrange(accounts)
        amount = rng.randint(1, 100)
        workload.append((account, "deposit" if rng.random() < 0.5 else "withdraw", amount))
    return workload


class PostgresStore:
    """Where the peer keeps its log on PostgreSQL: a libpq URL and a schema of its own.

    The schema must not exist yet (the peer creates it; ``drop`` removes it afterwards)."""

    def __init__(self, dsn: str, schema: str) -> None:
        from psycopg.conninfo import conninfo_to_dict

        self.dsn = dsn
        self.schema = schema
        self._info = conninfo_to_dict(dsn)

    def env(self) -> dict[str, str]:
        """The library's settings for this server and schema."""
        info = self._info
        env = {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": str(info.get("dbname") or info.get("user") or "postgres"),
            "POSTGRES_HOST": str(info.get("host") or "localhost"),
            "POSTGRES_PORT": str(info.get("port") or "5432"),
            "POSTGRES_USER": str(info.get("user") or "postgres"),
            "POSTGRES_PASSWORD": str(info.get("password") or ""),
            "POSTGRES_SCHEMA": self.schema,
        }
        return env

    def create(self) -> None:
        """Create the (new) schema; the library creates its tables in it."""
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{self.schema}"')

    def drop(self) -> None:
        """Drop the schema and everything the peer wrote in it."""
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')


Store = str | PostgresStore
"""A new SQLite file's path, or a :class:`PostgresStore`."""


def _open_bank(store: Store, *, cache: int, fastforward: bool = True, pool: int = 5) -> Bank:
    """Return a Bank on ``store``, its aggregate cache holding ``cache`` items (and, on
    PostgreSQL, a pool of ``pool`` connections)."""
    if isinstance(store, PostgresStore):
        env = store.env()
        env["POSTGRES_POOL_SIZE"] = str(pool)
    else:
        env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": store}
    env["AGGREGATE_CACHE_MAXSIZE"] = str(cache)
    env["AGGREGATE_CACHE_FASTFORWARD"] = "y" if fastforward else "n"
    return Bank(env=env)


def _require_new(store: Store) -> None:
    if isinstance(store, PostgresStore):
        store.create()  # refuses an existing schema
    elif os.path.exists(store) and os.path.getsize(store):
        raise ValueError(f"{store!r} already exists; the peer needs a new database file")


def _system(store: Store) -> str:
    return "eventsourcing-postgres" if isinstance(store, PostgresStore) else "eventsourcing-sqlite"


def _events_logged(app: Bank, store: Store) -> int:
    """How many events the log holds. On SQLite the last notification id; on PostgreSQL a
    count, since a save that clashed took ids from the BIGSERIAL and rolled back (gaps)."""
    if not isinstance(store, PostgresStore):
        return int(app.recorder.max_notification_id() or 0)
    import psycopg
    from psycopg import sql

    table = app.recorder.events_table_name  # type: ignore[attr-defined]
    query = sql.SQL("SELECT count(*) FROM {}.{}").format(
        sql.Identifier(store.schema), sql.Identifier(table)
    )
    with psycopg.connect(store.dsn) as conn:
        row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0


def _modes(app: Bank, store: Store) -> dict[str, Any]:
    """Read back the durability settings in force on the app's connections."""
    datastore = app.factory.datastore  # type: ignore[attr-defined]
    with datastore.transaction(commit=False) as cursor:
        if isinstance(store, PostgresStore):
            cursor.execute("SHOW synchronous_commit")
            row = cursor.fetchone()
            return {"synchronous_commit": row["synchronous_commit"]}
        cursor.execute("PRAGMA journal_mode")
        journal_mode = cursor.fetchone()[0]
        cursor.execute("PRAGMA synchronous")
        synchronous = cursor.fetchone()[0]
    return {"journal_mode": journal_mode, "synchronous": synchronous}


def run_peer_w1(
    store: Store, *, accounts: int, commands: int, clients: int, fastforward: bool = True
) -> dict[str, Any]:
    """Run the bank write workload (W1) on the peer; return its figures.

    Opens ``accounts`` accounts (timed separately as ``open_seconds``), then ``clients``
    threads issue ``commands`` seeded random deposits and withdrawals, each waiting for its
    save before the next. Every accepted command is durable when its call returns. ``store``
    is a new SQLite file or PostgreSQL schema. Afterwards the log and every balance are
    checked against what the clients were told, which is how the thread-safety of this
    setup is verified, not assumed.
    ``fastforward=False`` skips the per-``get`` query for newer events (see the module notes).
    """
    _require_new(store)
    workload = bank_workload(accounts, commands)
    app = _open_bank(store, cache=accounts, fastforward=fastforward, pool=clients)
    try:
        started = time.perf_counter()
        ids = [app.open_account(f"a-{i}") for i in range(accounts)]
        open_seconds = time.perf_counter() - started
        try:
            app.open_account("a-0")
        except Rejected:
            pass
        else:
            raise RuntimeError("a second open was accepted")

        def client(share: Sequence[tuple[int, str, int]]) -> tuple[int, int, list[int]]:
            rejected = clashes = 0
            net = [0] * accounts  # what this client was told it moved, per account
            for account, kind, amount in share:
                try:
                    if kind == "deposit":
                        clashes += app.deposit(ids[account], amount)
                        net[account] += amount
                    else:
                        clashes += app.withdraw(ids[account], amount)
                        net[account] -= amount
                except Rejected:
                    rejected += 1
            return rejected, clashes, net

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=clients) as pool:
            futures = [pool.submit(client, workload[i::clients]) for i in range(clients)]
            results = [future.result() for future in futures]
        seconds = time.perf_counter() - started

        rejected = sum(r[0] for r in results)
        clashes = sum(r[1] for r in results)
        expected = [sum(r[2][i] for r in results) for i in range(accounts)]
        logged = _events_logged(app, store)
        if logged != accounts + commands - rejected:
            raise RuntimeError(
                f"log holds {logged} events, expected {accounts + commands - rejected}"
            )
        fresh = _open_bank(store, cache=accounts)  # balances from the log, not the cache
        try:
            if [fresh.balance(ids[i]) for i in range(accounts)] != expected:
                raise RuntimeError("balances in the log differ from what clients were told")
        finally:
            fresh.close()
        modes = _modes(app, store)
    finally:
        app.close()
    accepted = commands - rejected
    return {
        "workload": "w1",
        "system": _system(store),
        "sync": True,
        "accounts": accounts,
        "clients": clients,
        "commands": commands,
        "rejected": rejected,
        "seconds": seconds,
        "per_second": commands / seconds,
        # One transaction (one WAL flush) per accepted command: no group commit.
        "batches": accepted,
        "mean_batch": 1.0,
        "retried_clashes": clashes,
        "open_seconds": open_seconds,
        **modes,
        "fastforward": fastforward,
        "note": f"{clients} thread(s) sharing one Application; version clashes retried",
    }


def run_peer_w3(store: Store, *, events: int, repeats: int = 5) -> dict[str, Any]:
    """Time a cold load (W3) of one account holding ``events`` events; return its figures.

    The stream is written in one save (not timed; on PostgreSQL in saves of
    ``_SETUP_BATCH_POSTGRES``). Each repeat opens a new Application, so its aggregate cache
    is empty, warms only the database connection, then times one
    ``repository.get``: the select, the decoding and the replay of every event. ``seconds`` is
    the median over ``repeats``. ``store`` is a new SQLite file or PostgreSQL schema.
    """
    _require_new(store)
    app = _open_bank(store, cache=1)
    try:
        account = Account("w3")
        batch = _SETUP_BATCH_POSTGRES if isinstance(store, PostgresStore) else events
        for done in range(1, events):
            account.deposit(1)
            if done % batch == 0:
                app.save(account)
        app.save(account)
    finally:
        app.close()

    timings: list[float] = []
    for _ in range(repeats):
        cold = _open_bank(store, cache=1)
        try:
            cold.recorder.max_notification_id()  # open the connection outside the timing
            started = time.perf_counter()
            loaded: Account = cold.repository.get(account.id)
            timings.append(time.perf_counter() - started)
            if loaded.version != events or loaded.balance != events - 1:
                raise RuntimeError(f"loaded version {loaded.version}, expected {events}")
        finally:
            cold.close()
    return {
        "workload": "w3",
        "system": _system(store),
        "events": events,
        "seconds": statistics.median(timings),
        "min_seconds": min(timings),
        "repeats": repeats,
    }


def run_peer_w4(store: Store, *, events: int, accounts: int = 1_000) -> dict[str, Any]:
    """Time rebuilding a balances view (W4) from a log of ``events`` events; return figures.

    The log (``accounts`` opens, then deposits round-robin) is written in saves of
    ``_SETUP_BATCH`` events (not timed). The rebuild is the library's public catch-up path,
    the one its process applications use: ``NotificationLogReader.select`` over the
    notification log in sections of ``_SECTION_SIZE``, each notification decoded by the
    application's mapper into a domain event, then applied to a dict. SQLite cannot push
    notifications (its recorder has no ``subscribe``), so the ``projection`` module's
    runners, which need a subscription, are not an option here (on PostgreSQL the same
    reader is used, so both peers rebuild the same way). ``store`` is a new SQLite file or
    PostgreSQL schema.
    """
    _require_new(store)
    app = _open_bank(store, cache=1)
    try:
        aggregates = [Account(f"w4-{i}") for i in range(accounts)]
        pending = accounts
        batch = _SETUP_BATCH_POSTGRES if isinstance(store, PostgresStore) else _SETUP_BATCH
        for i in range(events - accounts):
            aggregates[i % accounts].deposit(1)
            pending += 1
            if pending >= batch:
                app.save(*aggregates)
                pending = 0
        app.save(*aggregates)
    finally:
        app.close()

    app = _open_bank(store, cache=1)
    try:
        app.recorder.max_notification_id()  # open the connection outside the timing
        started = time.perf_counter()
        balances: dict[UUID, int] = {}
        to_domain_event = app.mapper.to_domain_event
        reader = NotificationLogReader(app.notification_log, section_size=_SECTION_SIZE)
        read = 0
        for notifications in reader.select(start=1):
            for notification in notifications:
                domain_event = to_domain_event(notification)
                if isinstance(domain_event, Account.Deposited):
                    balances[domain_event.originator_id] += domain_event.amount
                elif isinstance(domain_event, Account.Withdrawn):
                    balances[domain_event.originator_id] -= domain_event.amount
                else:
                    balances[domain_event.originator_id] = 0
            read += len(notifications)
        seconds = time.perf_counter() - started
    finally:
        app.close()
    if read != events or sum(balances.values()) != events - accounts:
        raise RuntimeError(f"rebuilt {read} events into {sum(balances.values())}, wrong")
    return {
        "workload": "w4",
        "system": _system(store),
        "events": read,
        "seconds": seconds,
        "per_second": read / seconds,
        "section_size": _SECTION_SIZE,
    }
