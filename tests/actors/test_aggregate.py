"""Defining aggregates: dispatch by annotation, checks at class creation, snapshot state."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, cast

import msgspec
import pytest

from actorlog import (
    Aggregate,
    DecodeError,
    DefinitionError,
    HandlerError,
    applies,
    handles,
)
from benchmarks.bank import (
    Account,
    AccountOpened,
    Deposit,
    Deposited,
    OpenAccount,
    SnapshottingAccount,
    Withdraw,
    Withdrawn,
)


class Ping(msgspec.Struct, frozen=True):
    n: int


class Pong(msgspec.Struct, frozen=True):
    n: int


class Pang(msgspec.Struct, frozen=True):
    n: int


def test_handlers_and_appliers_are_found_by_annotation() -> None:
    assert set(Account.command_handlers) == {OpenAccount, Deposit, Withdraw}
    assert set(Account.event_appliers) == {AccountOpened, Deposited, Withdrawn}
    assert Account.emitted_types == frozenset({AccountOpened, Deposited, Withdrawn})
    assert Account.command_handlers[Deposit] is Account.deposit
    assert Account.event_appliers[Withdrawn] is Account.withdrawn


def test_decorated_methods_stay_plain_methods() -> None:
    account = Account()
    assert account.deposit(Deposit(2)) == [Deposited(2)]
    account.deposited(Deposited(2))
    assert account.balance == 2


def test_class_defined_in_a_function_resolves_local_types() -> None:
    class Local(msgspec.Struct, frozen=True):
        n: int

    class LocalDone(msgspec.Struct, frozen=True):
        n: int

    class Inner(Aggregate):
        @handles
        def local(self, c: Local) -> list[LocalDone]:
            return [LocalDone(c.n)]

        @applies
        def done(self, e: LocalDone) -> None:
            pass

    assert set(Inner.command_handlers) == {Local}
    assert set(Inner.event_appliers) == {LocalDone}
    assert Inner.emitted_types == frozenset({LocalDone})


def test_class_defined_in_a_nested_function_resolves_outer_local_types() -> None:
    class Outer(msgspec.Struct, frozen=True):
        pass

    def define() -> type[Aggregate]:
        class Nested(Aggregate):
            @handles
            def outer(self, c: Outer) -> None:
                return None

        return Nested

    assert set(define().command_handlers) == {Outer}


def test_annotations_without_future_import_are_resolved() -> None:
    # This module uses `from __future__ import annotations`; compile one that does not.
    source = (
        "class Eager(Aggregate):\n"
        "    @handles\n"
        "    def ping(self, c: Ping) -> list[Pong]:\n"
        "        return [Pong(c.n)]\n"
        "    @applies\n"
        "    def pong(self, e: Pong) -> None:\n"
        "        pass\n"
    )
    namespace: dict[str, Any] = {
        "Aggregate": Aggregate,
        "handles": handles,
        "applies": applies,
        "Ping": Ping,
        "Pong": Pong,
    }
    exec(compile(source, "<eager>", "exec", dont_inherit=True), namespace)
    assert set(namespace["Eager"].command_handlers) == {Ping}
    assert set(namespace["Eager"].event_appliers) == {Pong}


@pytest.mark.parametrize(
    "annotation",
    [
        "None",
        "Pong",
        "list[Pong]",
        "Sequence[Pong | Pang]",
        "tuple[Pong, ...]",
        "list[Pong] | None",
    ],
)
def test_return_annotation_forms_declare_emitted_types(annotation: str) -> None:
    namespace: dict[str, Any] = {
        "Aggregate": Aggregate,
        "handles": handles,
        "applies": applies,
        "Ping": Ping,
        "Pong": Pong,
        "Pang": Pang,
        "Sequence": Sequence,
    }
    source = (
        "class Forms(Aggregate):\n"
        "    @handles\n"
        f"    def ping(self, c: Ping) -> {annotation}:\n"
        "        return None\n"
        "    @applies\n"
        "    def pong(self, e: Pong) -> None:\n"
        "        pass\n"
        "    @applies\n"
        "    def pang(self, e: Pang) -> None:\n"
        "        pass\n"
    )
    exec(compile(source, "<forms>", "exec", dont_inherit=True), namespace)
    expected: set[type] = {Pong, Pang} if "Pang" in annotation else {Pong}
    if annotation == "None":
        expected = set()
    assert namespace["Forms"].emitted_types == frozenset(expected)


def test_two_handlers_for_one_command_type_fail_at_class_creation() -> None:
    with pytest.raises(DefinitionError, match=r"two handlers for Ping .*second is ping_again"):

        class Twice(Aggregate):
            @handles
            def ping(self, c: Ping) -> None:
                return None

            @handles
            def ping_again(self, c: Ping) -> None:
                return None


def test_two_appliers_for_one_event_type_fail_at_class_creation() -> None:
    with pytest.raises(DefinitionError, match="two appliers for Pong"):

        class Twice(Aggregate):
            @applies
            def pong(self, e: Pong) -> None:
                pass

            @applies
            def pong_again(self, e: Pong) -> None:
                pass


def test_handler_emitting_an_event_without_applier_fails_at_class_creation() -> None:
    with pytest.raises(DefinitionError, match="emits Pang, Pong but has no @applies"):

        class Forgetful(Aggregate):
            @handles
            def ping(self, c: Ping) -> list[Pong | Pang]:
                return []


def test_applier_inherited_from_a_base_counts() -> None:
    class Base(Aggregate):
        @applies
        def pong(self, e: Pong) -> None:
            pass

    class Child(Base):
        @handles
        def ping(self, c: Ping) -> list[Pong]:
            return [Pong(c.n)]

    assert Child.emitted_types == frozenset({Pong})
    assert set(Base.command_handlers) == set()  # the base is not changed by the child


def test_subclass_may_override_a_handler_of_its_base() -> None:
    class Base(Aggregate):
        @handles
        def ping(self, c: Ping) -> None:
            return None

    class Child(Base):
        @handles
        def ping_differently(self, c: Ping) -> None:
            return None

    assert Child.command_handlers[Ping] is Child.ping_differently
    assert Base.command_handlers[Ping] is Base.ping


def test_unannotated_message_parameter_fails_at_class_creation() -> None:
    with pytest.raises(DefinitionError, match="annotate 'c' with the message type"):

        class Bare(Aggregate):
            @handles
            def ping(self, c) -> None:  # type: ignore[no-untyped-def]
                return None


def test_missing_message_parameter_fails_at_class_creation() -> None:
    with pytest.raises(DefinitionError, match="needs a parameter annotated"):

        class NoParam(Aggregate):
            @applies
            def pong(self) -> None:
                pass


def test_missing_return_annotation_fails_at_class_creation() -> None:
    with pytest.raises(DefinitionError, match="annotate the return type"):

        class NoReturn(Aggregate):
            @handles
            def ping(self, c: Ping):  # type: ignore[no-untyped-def]
                return None


def test_message_type_that_is_not_a_struct_fails_at_class_creation() -> None:
    with pytest.raises(DefinitionError, match=r"is not a msgspec\.Struct type"):

        class Untyped(Aggregate):
            @handles
            def ping(self, c: int) -> None:
                return None


def test_return_annotation_that_is_not_an_event_fails_at_class_creation() -> None:
    with pytest.raises(DefinitionError, match="in the return annotation is not an event"):

        class Numbers(Aggregate):
            @handles
            def ping(self, c: Ping) -> list[int]:
                return []


def test_unresolvable_annotation_fails_at_class_creation() -> None:
    with pytest.raises(DefinitionError, match="cannot resolve its annotations"):

        class Typo(Aggregate):
            @handles
            def ping(self, c: Pnig) -> None:  # type: ignore[name-defined]  # noqa: F821
                return None


def test_non_frozen_event_fails_at_class_creation() -> None:
    class Loose(msgspec.Struct):
        n: int

    with pytest.raises(DefinitionError, match="event type Loose must be frozen"):

        class Sloppy(Aggregate):
            @handles
            def ping(self, c: Ping) -> list[Loose]:
                return [Loose(c.n)]

            @applies
            def loose(self, e: Loose) -> None:
                pass


# -- snapshots ---------------------------------------------------------------------------


@pytest.mark.parametrize("every", [0, -1, 1.5, "3", True])
def test_invalid_snapshot_every_fails_at_class_creation(every: object) -> None:
    with pytest.raises(DefinitionError, match="snapshot_every must be None or an int >= 1"):
        type("Bad", (Account,), {"snapshot_every": every})


@pytest.mark.parametrize("every", [None, 1, 1000])
def test_valid_snapshot_every_is_accepted(every: int | None) -> None:
    good = cast(type[Account], type("Good", (Account,), {"snapshot_every": every}))
    assert good.snapshot_every == every


def test_snapshot_format_must_be_an_int() -> None:
    with pytest.raises(DefinitionError, match="snapshot_format must be a 64-bit int"):
        type("Bad", (Account,), {"snapshot_format": "2"})


def test_snapshots_without_annotated_state_fail_at_class_creation() -> None:
    with pytest.raises(DefinitionError, match="annotates no state attributes"):

        class Stateless(Aggregate):
            snapshot_every = 10

            def __init__(self) -> None:
                self.count = 0


def test_snapshots_with_own_encoding_need_no_annotations() -> None:
    class Custom(Aggregate):
        snapshot_every = 10

        def __init__(self) -> None:
            self.count = 0

        def snapshot_state(self) -> bytes:
            return str(self.count).encode()

        @classmethod
        def from_snapshot(cls, data: bytes) -> Custom:
            self = cls()
            self.count = int(data)
            return self

    custom = Custom()
    custom.count = 7
    assert Custom.from_snapshot(custom.snapshot_state()).count == 7


def test_snapshot_state_round_trips_the_annotated_attributes() -> None:
    account = SnapshottingAccount()
    account.opened_(AccountOpened("ann"))
    account.deposited(Deposited(40))
    account.withdrawn(Withdrawn(8))
    restored = SnapshottingAccount.from_snapshot(account.snapshot_state())
    assert type(restored) is SnapshottingAccount
    assert (restored.opened, restored.balance) == (True, 32)


def test_snapshot_state_covers_containers_but_not_private_or_class_attributes() -> None:
    class Ledger(Aggregate):
        snapshot_every = 5
        limit: ClassVar[int] = 10
        entries: list[int]
        owners: dict[str, int]
        _cache: int

        def __init__(self) -> None:
            self.entries = []
            self.owners = {}
            self._cache = 0

    ledger = Ledger()
    ledger.entries.extend([3, 1, 2])
    ledger.owners["ann"] = 1
    ledger._cache = 99
    restored = Ledger.from_snapshot(ledger.snapshot_state())
    assert restored.entries == [3, 1, 2]
    assert restored.owners == {"ann": 1}
    assert restored._cache == 0  # private attributes are rebuilt, not saved
    assert msgspec.msgpack.decode(ledger.snapshot_state()) == {
        "entries": [3, 1, 2],
        "owners": {"ann": 1},
    }


def test_snapshot_of_a_class_without_state_annotations_raises_handler_error() -> None:
    class Plain(Aggregate):
        def __init__(self) -> None:
            self.count = 0

    with pytest.raises(HandlerError, match="no annotated attributes"):
        Plain().snapshot_state()
    with pytest.raises(HandlerError, match="no annotated attributes"):
        Plain.from_snapshot(b"\x80")


def test_snapshot_of_a_different_shape_does_not_decode() -> None:
    class V1(Aggregate):
        balance: int

        def __init__(self) -> None:
            self.balance = 3

    class V2(Aggregate):
        balance: str

        def __init__(self) -> None:
            self.balance = ""

    with pytest.raises(DecodeError):
        V2.from_snapshot(V1().snapshot_state())


def test_snapshot_state_refuses_unannotated_public_attributes() -> None:
    class Counter(Aggregate):
        snapshot_every = 2
        total: int

        def __init__(self) -> None:
            self.total = 0
            self.count = 0  # not annotated: a snapshot would lose it

    with pytest.raises(HandlerError, match="count"):
        Counter().snapshot_state()
