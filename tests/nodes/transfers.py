"""What a bank's transfers look like in the log when each took effect exactly once: the
check the process-manager node tests share (they read the log itself, not any node)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable

import msgspec

from actorlog.storage import EventLog
from benchmarks.bank import Deposited, TransferCredited, TransferDebited, TransferRefunded


def check_transfers(log: EventLog, opened_with: int, accounts: Iterable[str]) -> int:
    """Assert that every transfer debited in ``log`` was credited exactly once, by the
    transfer process's first step, in exactly two steps of its instance (started on the
    debit, finished on the credit), or, if its credit was refused, refunded exactly once,
    by the step that was told of the refusal, in exactly three steps (started, told,
    finished on the refund); and that money was conserved. Returns the number of
    transfers.

    Raises:
        AssertionError: with what was not so.
    """
    events = log.read_all(1, 10_000_000)
    debits: dict[str, int] = {}  # transfer id -> position
    credits: dict[str, list[tuple[int, str | None]]] = defaultdict(list)
    refunds: dict[str, list[tuple[int, str | None]]] = defaultdict(list)
    steps: dict[str, list[str | None]] = defaultdict(list)
    balances: Counter[str] = Counter()
    for event in events:
        if event.type == "TransferDebited":
            debit = msgspec.msgpack.decode(event.payload, type=TransferDebited)
            assert debit.transfer_id not in debits, f"{debit.transfer_id} debited twice"
            debits[debit.transfer_id] = event.position
            balances[event.stream_id] -= debit.amount
        elif event.type == "TransferCredited":
            credit = msgspec.msgpack.decode(event.payload, type=TransferCredited)
            credits[credit.transfer_id].append((event.position, event.command_id))
            balances[event.stream_id] += credit.amount
        elif event.type == "TransferRefunded":
            refund = msgspec.msgpack.decode(event.payload, type=TransferRefunded)
            refunds[refund.transfer_id].append((event.position, event.command_id))
            balances[event.stream_id] += refund.amount
        elif event.type == "Deposited":
            balances[event.stream_id] += msgspec.msgpack.decode(
                event.payload, type=Deposited
            ).amount
        elif event.stream_id.startswith("$pm:Transfer:"):
            steps[event.stream_id[len("$pm:Transfer:") :]].append(event.causation_id)
        else:
            assert event.type in ("AccountOpened", "$process-acks"), event.type
    assert set(credits) | set(refunds) == set(debits), "a credit or refund without a debit"
    for transfer_id, position in debits.items():
        stream = f"$pm:Transfer:{transfer_id}"
        if transfer_id in refunds:
            assert transfer_id not in credits, f"{transfer_id} credited and refunded"
            assert len(refunds[transfer_id]) == 1, f"{transfer_id} refunded twice"
            refunded_at, command_id = refunds[transfer_id][0]
            assert command_id == f"{stream}/2.0", (transfer_id, command_id)
            # Started, told of the refused credit (its command id the cause), finished.
            told = f"{stream}/1.0"
            assert steps[transfer_id] == [
                f"position:{position}",
                told,
                f"position:{refunded_at}",
            ], (transfer_id, steps[transfer_id])
            continue
        assert len(credits[transfer_id]) == 1, f"{transfer_id} credited {credits[transfer_id]}"
        credited_at, command_id = credits[transfer_id][0]
        assert command_id == f"{stream}/1.0", (transfer_id, command_id)
        # Started on the debit, finished on the credit: one step each, nothing repeated.
        assert steps[transfer_id] == [f"position:{position}", f"position:{credited_at}"], (
            transfer_id,
            steps[transfer_id],
        )
    names = list(accounts)
    assert set(balances) <= set(names)
    assert sum(balances[name] for name in names) == opened_with * len(names)
    assert all(balances[name] >= 0 for name in names)
    return len(debits)


def transfers_in_flight(log: EventLog) -> int:
    """How many transfers debited in ``log`` are not yet done: credited or refunded, and
    their instance's steps all written (two after a credit, three after a refund; more is
    done too, and for ``check_transfers`` to refuse)."""
    expected: dict[str, int] = {}  # transfer id -> steps it needs (0: not done yet)
    steps: Counter[str] = Counter()
    for event in log.read_all(1, 10_000_000):
        if event.type == "TransferDebited":
            expected.setdefault(_transfer_id(event.payload), 0)
        elif event.type == "TransferCredited":
            expected[msgspec.msgpack.decode(event.payload, type=TransferCredited).transfer_id] = 2
        elif event.type == "TransferRefunded":
            expected[msgspec.msgpack.decode(event.payload, type=TransferRefunded).transfer_id] = 3
        elif event.stream_id.startswith("$pm:Transfer:"):
            steps[event.stream_id[len("$pm:Transfer:") :]] += 1
    return sum(1 for tid, need in expected.items() if not need or steps[tid] < need)


def _transfer_id(payload: bytes) -> str:
    return msgspec.msgpack.decode(payload, type=TransferDebited).transfer_id
