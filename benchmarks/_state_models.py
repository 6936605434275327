"""State types, messages and agents shared by the state benchmarks (kerna and floors)."""

from __future__ import annotations

import time
from typing import ClassVar

import msgspec

from kerna import Agent, Message, handler

__all__ = [
    "PAD",
    "Balance",
    "Deposited",
    "Doc",
    "GetBalance",
    "Ledger",
    "LedgerNoSnapshots",
    "ReadBench",
    "ReadTimes",
    "Reader",
    "Record",
    "Write",
    "Writer",
]

PAD = "x" * 80
"""Payload of every written state: ``Doc(n, PAD)`` encodes to about 90 bytes."""


class Doc(msgspec.Struct, frozen=True):
    """The state every write benchmark writes (kerna and floors alike)."""

    n: int = 0
    text: str = ""


class Write(Message):
    """Ask a ``Writer`` to save ``Doc(state.n + 1, PAD)``."""


class Writer(Agent, state=Doc):
    """Saves one new state per message, timing the ``save`` call itself.

    ``save_times`` collects the seconds each ``await self.save`` took; ``issued`` maps
    the written ``n`` to the clock just before the save was issued (propagation).
    """

    save_times: ClassVar[list[float]] = []
    issued: ClassVar[dict[int, float]] = {}

    @handler
    async def write(self, msg: Write) -> int:
        new = Doc(self.state.n + 1, PAD)
        t0 = time.perf_counter()
        await self.save(new)
        t1 = time.perf_counter()
        Writer.save_times.append(t1 - t0)
        Writer.issued[new.n] = t0
        return new.n


class ReadBench(Message):
    """Time ``n`` reads of ``self.state`` and of ``d[k]``, best of ``rounds``."""

    n: int
    rounds: int


class ReadTimes(Message):
    """Best seconds per loop of ``n`` reads: baseline (a local variable), ``self.state``
    and ``d[k]``."""

    baseline: float
    state: float
    dict: float


UNROLL = 10


class Reader(Agent, state=Doc):
    """Times reads inside one handler: 10 reads per loop iteration on every side, so the
    loop's own cost is the same on each side and a tenth per read; the baseline (10
    reads of a local variable) is subtracted to leave the read alone."""

    @handler
    async def read(self, msg: ReadBench) -> ReadTimes:
        s = self
        d = {"key": s.state}
        k = "key"
        v = d
        r = range(msg.n // UNROLL)
        clock = time.perf_counter
        best = [float("inf")] * 3
        for _ in range(msg.rounds):
            t0 = clock()
            for _ in r:
                x = v
                x = v
                x = v
                x = v
                x = v
                x = v
                x = v
                x = v
                x = v
                x = v
            t1 = clock()
            for _ in r:
                x = s.state
                x = s.state
                x = s.state
                x = s.state
                x = s.state
                x = s.state
                x = s.state
                x = s.state
                x = s.state
                x = s.state
            t2 = clock()
            for _ in r:
                x = d[k]
                x = d[k]
                x = d[k]
                x = d[k]
                x = d[k]
                x = d[k]
                x = d[k]
                x = d[k]
                x = d[k]
                x = d[k]
            t3 = clock()
            del x
            times = (t1 - t0, t2 - t1, t3 - t2)
            best = [min(b, t) for b, t in zip(best, times, strict=True)]
        return ReadTimes(*best)


# -- event sourcing ------------------------------------------------------------------------


class Balance(msgspec.Struct, frozen=True):
    """The folded state of a ``Ledger``."""

    amount: int = 0
    ops: int = 0


class Deposited(Message, tag="bench.deposited"):
    """The one event type of a ``Ledger``."""

    amount: int


class GetBalance(Message):
    """Ask a ledger for its state (the first one activates it: claim, snapshot, replay)."""


class Ledger(Agent, state=Balance, event_sourced=True, snapshot_every=1000):
    """Event-sourced, a snapshot every 1,000 events."""

    @staticmethod
    def apply(state: Balance, event: Deposited) -> Balance:
        return Balance(state.amount + event.amount, state.ops + 1)

    @handler
    async def get(self, msg: GetBalance) -> Balance:
        return self.state  # type: ignore[no-any-return]


class LedgerNoSnapshots(Agent, state=Balance, event_sourced=True, snapshot_every=10**12):
    """The same, never snapshotted: activation replays the whole log."""

    @staticmethod
    def apply(state: Balance, event: Deposited) -> Balance:
        return Balance(state.amount + event.amount, state.ops + 1)

    @handler
    async def get(self, msg: GetBalance) -> Balance:
        return self.state  # type: ignore[no-any-return]


class Record(msgspec.Struct, frozen=True):
    """The floor's record struct: the fields kerna stores, with the event typed (what
    ``EventSourcing`` decodes a record into)."""

    seq: int
    time: float
    correlation_id: int
    causation_id: int
    event: Deposited
