"""Fencing across kernels, on every backend: an activation whose claim was taken over
cannot write, even when its successor has activated but not written yet (so only the
fence, not the revision or sequence compare, stands between them).

The old activation is caught mid-handler: kernel ``a`` is handling a message when its
lease lapses (revoked here, as a pause or a partition would let it expire), kernel
``b`` activates the agent with a read, and then ``a``'s handler goes on to write.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import ClassVar

import msgspec
import pytest

from kerna import ActivationFailed, Agent, Kernel, Message, RemoteError, handler
from kerna.state import EventLog, EventSourcing, Layout, StateBackend

pytestmark = pytest.mark.anyio
_prefixes = itertools.count()


class Count(msgspec.Struct, frozen=True):
    n: int = 0


class Inc(Message):
    hold: bool = False  # wait in the handler, before writing, until the test releases it


class Read(Message):
    pass


class Added(Message, tag="fencing.added"):
    by: int


class Gate:
    """Holds a handler between reading its state and writing."""

    entered: ClassVar[asyncio.Event]
    release: ClassVar[asyncio.Event]

    @staticmethod
    async def pass_through(msg: Inc) -> None:
        if msg.hold:
            Gate.entered.set()
            async with asyncio.timeout(10):
                await Gate.release.wait()


class Counter(Agent, state=Count):
    @handler
    async def inc(self, msg: Inc) -> int:
        await Gate.pass_through(msg)
        await self.save(Count(n=self.state.n + 1))
        return int(self.state.n)

    @handler
    async def read(self, msg: Read) -> int:
        return int(self.state.n)


class Ledger(Agent, state=Count, event_sourced=True):
    @staticmethod
    def apply(state: Count, event: Added) -> Count:
        return Count(n=state.n + event.by)

    @handler
    async def inc(self, msg: Inc) -> int:
        await Gate.pass_through(msg)
        await self.emit(Added(by=1))
        return int(self.state.n)

    @handler
    async def read(self, msg: Read) -> int:
        return int(self.state.n)


@pytest.fixture(autouse=True)
def _gate() -> None:
    Gate.entered = asyncio.Event()
    Gate.release = asyncio.Event()


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own (the session's etcd server is shared)."""
    return f"fence{next(_prefixes)}-{id(object())}/"


async def _take_over_mid_handler(
    a: Kernel, b: Kernel, backend: StateBackend, agent: type[Agent]
) -> RemoteError:
    """``a`` writes once, then is held mid-handler while ``b`` takes the agent over
    (activating it with a read, not writing); then ``a``'s handler writes. Returns the
    error ``a``'s asker got."""
    a.register(agent)
    b.register(agent)
    assert await a.ref(agent, "k").ask(Inc(), timeout=5) == 1
    stale = asyncio.ensure_future(a.ref(agent, "k").ask(Inc(hold=True), timeout=10))
    async with asyncio.timeout(5):
        await Gate.entered.wait()
    await backend.lease_revoke(a._store().lease)  # a's lease lapses: its claim is gone  # noqa: SLF001 - the test revokes the kernel lease
    assert await b.ref(agent, "k").ask(Read(), timeout=5) == 1  # b activated, wrote nothing
    Gate.release.set()
    with pytest.raises(RemoteError) as info:
        await asyncio.wait_for(stale, 10)
    return info.value


async def _assert_the_stale_activation_is_gone(
    a: Kernel, backend: StateBackend, layout: Layout, agent: type[Agent], claim: object
) -> None:
    """``a`` no longer serves the agent (its next message finds it owned by ``b``), and
    ``b``'s claim survived the fenced activation's deactivation."""
    with pytest.raises(ActivationFailed) as info:
        await a.ref(agent, "k").ask(Read(), timeout=5)
    assert info.value.type_name == "kerna.OwnedElsewhere"
    assert await backend.get(layout.claim(agent.__name__, "k")) == claim


async def test_a_stale_save_is_fenced_before_the_successor_writes(
    backend: StateBackend, prefix: str
) -> None:
    layout = Layout(prefix)
    async with (
        Kernel(state=backend, state_prefix=prefix, lease_ttl=30, max_restarts=0) as a,
        Kernel(state=backend, state_prefix=prefix) as b,
    ):
        error = await _take_over_mid_handler(a, b, backend, Counter)
        assert error.type_name == "kerna.Fenced", error
        stored = await backend.get(layout.state("Counter", "k"))
        assert stored is not None
        assert msgspec.msgpack.decode(stored.value, type=Count) == Count(n=1)
        claim = await backend.get(layout.claim("Counter", "k"))
        assert claim is not None
        await _assert_the_stale_activation_is_gone(a, backend, layout, Counter, claim)
        assert await b.ref(Counter, "k").ask(Inc(), timeout=5) == 2  # no Conflict: a wrote nothing


async def test_a_stale_emit_is_fenced_before_the_successor_appends(
    backend: StateBackend, prefix: str
) -> None:
    layout = Layout(prefix)
    async with (
        Kernel(state=backend, state_prefix=prefix, lease_ttl=30, max_restarts=0) as a,
        Kernel(state=backend, state_prefix=prefix) as b,
    ):
        error = await _take_over_mid_handler(a, b, backend, Ledger)
        assert error.type_name == "kerna.Fenced", error
        log = EventLog(backend, EventSourcing(Count, Ledger.apply), "Ledger", "k", layout=layout)
        assert [(r.seq, r.event) async for r in log.events()] == [(1, Added(by=1))]
        claim = await backend.get(layout.claim("Ledger", "k"))
        assert claim is not None
        await _assert_the_stale_activation_is_gone(a, backend, layout, Ledger, claim)
        assert await b.ref(Ledger, "k").ask(Inc(), timeout=5) == 2  # seq 2 was still free
