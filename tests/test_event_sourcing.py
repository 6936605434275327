"""Event-sourced agents: append with optimistic sequence numbers, snapshots, replay,
audit trail and time travel."""

from __future__ import annotations

import asyncio
import itertools

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kerna import (
    ActivationFailed,
    Agent,
    Kernel,
    Message,
    RegistrationError,
    UnknownAgent,
    handler,
)
from kerna.state import (
    Delete,
    EventLog,
    EventRecord,
    EventSourcing,
    Layout,
    StateBackend,
    connect,
)

from .faulty import FaultyBackend

pytestmark = pytest.mark.anyio
_names = itertools.count()


class Balance(msgspec.Struct, frozen=True):
    amount: int = 0
    ops: int = 0


class Deposited(Message, tag="acct.deposited"):
    amount: int


class Withdrawn(Message, tag="acct.withdrawn"):
    amount: int


class Deposit(Message):
    amount: int


class Withdraw(Message):
    amount: int


class Get(Message):
    pass


class Account(Agent, state=Balance, event_sourced=True, snapshot_every=5):
    @staticmethod
    def apply(state: Balance, event: Deposited | Withdrawn) -> Balance:
        if isinstance(event, Deposited):
            return Balance(state.amount + event.amount, state.ops + 1)
        return Balance(state.amount - event.amount, state.ops + 1)

    @handler
    async def deposit(self, msg: Deposit) -> int:
        await self.emit(Deposited(amount=msg.amount))
        return int(self.state.amount)

    @handler
    async def withdraw(self, msg: Withdraw) -> int:
        if msg.amount > self.state.amount:
            raise ValueError("insufficient funds")
        await self.emit(Withdrawn(amount=msg.amount))
        return int(self.state.amount)

    @handler
    async def get(self, msg: Get) -> Balance:
        return self.state  # type: ignore[no-any-return]


def sourcing() -> EventSourcing[Balance]:
    return EventSourcing(Balance, Account.apply, snapshot_every=5)


def url() -> str:
    return f"memory://es-{next(_names)}"


async def test_emit_folds_events_and_survives_restart() -> None:
    u = url()
    async with Kernel(state=u) as kernel:
        kernel.register(Account)
        ref = kernel.ref(Account, "a1")
        for amount in (10, 20, 30):
            await ref.ask(Deposit(amount=amount))
        assert await ref.ask(Withdraw(amount=15)) == 45
    async with Kernel(state=u) as kernel:
        kernel.register(Account)
        assert await kernel.ref(Account, "a1").ask(Get()) == Balance(45, 4)


async def test_snapshots_bound_replay_and_equal_full_replay() -> None:
    u = url()
    layout = Layout()
    async with Kernel(state=u) as kernel:
        kernel.register(Account)
        ref = kernel.ref(Account, "a")
        for i in range(12):
            await ref.ask(Deposit(amount=i))
        backend = kernel.state_backend
        spec = sourcing()
        snapshot = await backend.get(layout.state("Account", "a"))
        assert snapshot is not None  # written at seq 5, then at seq 10
        assert spec.decode_snapshot(snapshot.value, "Account/a") == (
            Balance(sum(range(10)), 10),
            10,
        )
        log = EventLog(backend, spec, "Account", "a")
        full = await log.state_at()
        assert full == (Balance(sum(range(12)), 12), 12)
        assert await log.load() == full
        # load() starts at the snapshot's seq: with the events it covers gone, loading
        # (and so activating) still gives the whole state; only a full replay lacks them
        covered = [Delete(layout.log("Account", "a", seq)) for seq in range(1, 11)]
        assert (await backend.txn([], covered)).succeeded
        assert await log.state_at() == (Balance(10 + 11, 2), 12)
        assert await log.load() == full
        await asyncio.wait_for(ref.deactivate(), 5)
        assert await ref.ask(Get()) == full[0]


async def test_audit_trail_lists_events_with_ids_and_time_travel() -> None:
    async with Kernel(state=url()) as kernel:
        kernel.register(Account)
        ref = kernel.ref(Account, "a")
        await ref.ask(Deposit(amount=100))
        await ref.ask(Withdraw(amount=30))
        await ref.ask(Deposit(amount=5))
        log = EventLog(kernel.state_backend, sourcing(), "Account", "a")
        records = [r async for r in log.events()]
        assert [r.seq for r in records] == [1, 2, 3]
        assert records[1].event == Withdrawn(amount=30)
        assert all(r.correlation_id > 0 and r.causation_id > 0 for r in records)
        assert records[0].correlation_id != records[1].correlation_id  # separate asks
        assert records[0].time <= records[2].time
        assert await log.state_at(1) == (Balance(100, 1), 1)
        assert await log.state_at(2) == (Balance(70, 2), 2)
        assert [r.seq async for r in log.events(after=1, upto=2)] == [2]


async def test_two_writers_cannot_take_one_sequence_number() -> None:
    backend = await connect("memory://")
    log = EventLog(backend, sourcing(), "Account", "x")
    assert await log.append([Deposited(amount=1)], expected_seq=0, state_after=Balance(1, 1)) == 1
    from kerna import Conflict

    with pytest.raises(Conflict, match="sequence 1 is already taken"):
        await log.append([Deposited(amount=2)], expected_seq=0, state_after=Balance(2, 1))
    assert await log.state_at() == (Balance(1, 1), 1)
    await backend.aclose()


class DepositedV2(Message, tag="acct.deposited"):
    amount: int
    memo: str = ""  # added later, with a default: old events still decode


class AccountV2(Agent, state=Balance, event_sourced=True):
    @staticmethod
    def apply(state: Balance, event: DepositedV2 | Withdrawn) -> Balance:
        sign = 1 if isinstance(event, DepositedV2) else -1
        return Balance(state.amount + sign * event.amount, state.ops + 1)

    @handler
    async def get(self, msg: Get) -> Balance:
        return self.state  # type: ignore[no-any-return]


async def test_a_compatibly_evolved_event_type_still_replays() -> None:
    u = url()
    async with Kernel(state=u) as kernel:
        kernel.register(Account, name="Acct")
        await kernel.ref("Acct", "a").ask(Deposit(amount=7))
    async with Kernel(state=u) as kernel:
        kernel.register(AccountV2, name="Acct")
        assert await kernel.ref("Acct", "a").ask(Get()) == Balance(7, 1)


class Renamed(Message, tag="acct.renamed"):
    amount: int


class AccountV3(Agent, state=Balance, event_sourced=True):
    @staticmethod
    def apply(state: Balance, event: Renamed) -> Balance:
        return Balance(state.amount + event.amount, state.ops + 1)

    @handler
    async def get(self, msg: Get) -> Balance:
        return self.state  # type: ignore[no-any-return]


async def test_an_undecodable_event_stops_activation_naming_agent_seq_and_type() -> None:
    u = url()
    async with Kernel(state=u) as kernel:
        kernel.register(Account, name="Acct")
        await kernel.ref("Acct", "a").ask(Deposit(amount=7))
        await kernel.ref("Acct", "a").ask(Withdraw(amount=2))
    async with Kernel(state=u) as kernel:
        kernel.register(AccountV3, name="Acct")
        with pytest.raises(ActivationFailed) as info:
            await kernel.ref("Acct", "a").ask(Get())
        assert info.value.type_name == "kerna.DecodeError"
        assert "Acct/a seq 1" in info.value.message
        assert "'acct.deposited'" in info.value.message
        log = EventLog(kernel.state_backend, sourcing(), "Acct", "a")
        assert [r.seq async for r in log.events()] == [1, 2]  # nothing was lost


async def test_event_sourcing_definition_errors() -> None:
    class NoApply(Agent, state=Balance, event_sourced=True):
        pass

    class NotStatic(Agent, state=Balance, event_sourced=True):
        def apply(self, state: Balance, event: Deposited) -> Balance:
            return state

    class NoState(Agent, event_sourced=True):
        pass

    async with Kernel() as kernel:
        for cls, text in [
            (NoApply, "needs '@staticmethod def apply"),
            (NotStatic, "needs '@staticmethod def apply"),
            (NoState, "needs state="),
        ]:
            with pytest.raises(RegistrationError, match=text):
                kernel.register(cls)


@settings(max_examples=30, deadline=None)
@given(
    amounts=st.lists(st.integers(-50, 100), min_size=0, max_size=40),
    every=st.integers(1, 10),
)
def test_snapshot_plus_replay_equals_full_replay(amounts: list[int], every: int) -> None:
    async def run() -> None:
        backend = await connect("memory://")
        spec = EventSourcing(Balance, Account.apply, snapshot_every=every)
        log = EventLog(backend, spec, "Account", "p", page_size=7)
        state, seq = Balance(), 0
        for amount in amounts:
            event = Deposited(amount=amount) if amount >= 0 else Withdrawn(amount=-amount)
            state = Account.apply(state, event)
            seq = await log.append([event], expected_seq=seq, state_after=state)
        assert await log.load() == await log.state_at() == (state, seq)
        await backend.aclose()

    asyncio.run(run())


async def test_kernel_event_log_reads_the_audit_trail_under_the_kernels_prefix() -> None:
    async with Kernel(state_prefix="bank/") as kernel:
        kernel.register(Account)
        ref = kernel.ref(Account, "a")
        await ref.ask(Deposit(amount=5))
        await ref.ask(Deposit(amount=7))
        log = kernel.event_log(Account, "a")
        records = [r async for r in log.events()]
        assert [r.event for r in records] == [Deposited(amount=5), Deposited(amount=7)]
        assert [r.seq for r in records] == [1, 2]
        assert records[0].correlation_id != records[1].correlation_id  # two asks
        state, seq = await log.state_at(1)
        assert (state.amount, seq) == (5, 1)
        kernel.register(Counterless := type("Plain", (Agent,), {}))
        with pytest.raises(TypeError, match="not event-sourced"):
            kernel.event_log(Counterless, "a")
        with pytest.raises(UnknownAgent, match="'Nope'"):
            kernel.event_log("Nope", "a")


async def _long_log(
    backend: StateBackend, key: str, events: int
) -> tuple[EventLog[Balance], Balance]:
    log = EventLog(backend, sourcing(), "Account", key, page_size=10)
    state, seq = Balance(), 0
    while seq < events:
        batch = [Deposited(amount=seq + i) for i in range(min(7, events - seq))]
        for event in batch:
            state = Account.apply(state, event)
        seq = await log.append(batch, expected_seq=seq, state_after=state)
    return log, state


async def test_replay_bounds_its_pages_so_the_store_visits_each_event_about_once(
    faulty: FaultyBackend,
) -> None:
    """etcd 3.4 visits every key within a range's bounds whatever its limit (to count
    them), so a replay of open-ended pages costs n^2 / (2 x page size) key visits: each
    page of the replay must end where the sequence numbers it wants end."""
    events = 100
    log, state = await _long_log(faulty, "long", events)
    keys = [kv.key async for kv in faulty.inner.scan("")]

    def visited() -> int:
        return sum(
            1
            for prefix, start_after, end in faulty.ranges
            for k in keys
            if k.startswith(prefix)
            and (start_after is None or k > start_after)
            and (end is None or k < end)
        )

    faulty.ranges.clear()
    assert await log.state_at() == (state, events)
    assert visited() <= 2 * events, faulty.ranges
    faulty.ranges.clear()
    assert [r.seq async for r in log.events(after=15, upto=64)] == list(range(16, 65))
    assert visited() <= 2 * (64 - 15), faulty.ranges


async def test_replay_reads_past_gaps_in_the_sequence_numbers() -> None:
    """A log with a hole (a writer that appended after a sequence number it never
    saw) still replays every event it holds, however long the hole."""
    backend = await connect("memory://")
    try:
        log, _ = await _long_log(backend, "holes", 12)
        await log.append([Deposited(amount=1)], expected_seq=40, state_after=Balance())
        await log.append([Deposited(amount=1)], expected_seq=41, state_after=Balance())
        await log.append([Deposited(amount=1)], expected_seq=95, state_after=Balance())
        expected = [*range(1, 13), 41, 42, 96]
        assert [r.seq async for r in log.events()] == expected
        assert (await log.state_at())[1] == 96
        assert [r.seq async for r in log.events(after=5, upto=50)] == [*range(6, 13), 41, 42]
        assert [r.seq async for r in log.events(after=42)] == [96]
    finally:
        await backend.aclose()


async def test_every_window_of_the_log_lists_exactly_its_events() -> None:
    backend = await connect("memory://")
    try:
        log, _ = await _long_log(backend, "windows", 25)
        for after in range(27):
            for upto in range(after, 27):
                got = [r.seq async for r in log.events(after=after, upto=upto)]
                assert got == list(range(after + 1, min(upto, 25) + 1)), (after, upto)
            assert [r.seq async for r in log.events(after=after)] == list(range(after + 1, 26))
    finally:
        await backend.aclose()


def test_decoded_records_are_plain_event_records_that_compare_equal() -> None:
    first = EventSourcing(Balance, Account.apply)
    second = EventSourcing(Balance, Account.apply)
    record = EventRecord(1, 0.0, 7, 8, Deposited(amount=1))
    data = msgspec.msgpack.encode(record)
    decoded = first.decode_record(data, "Account/a")
    assert type(decoded) is EventRecord
    assert decoded == second.decode_record(data, "Account/a") == record
