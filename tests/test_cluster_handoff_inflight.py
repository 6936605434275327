"""Per-sender order holds across a graceful hand-off for a message still in flight to
the old holder when it releases its claim (real etcd, tcp, a ``FaultProxy`` in front
of the leaving node): the sender's next message, which its watch routes straight to
the new home, does not overtake the one the old holder forwards there, whether the
sender is a third node or the new home itself; and if the old holder goes before what
was in flight passed, the held messages go on, counted and logged."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from kerna import (
    Agent,
    AgentId,
    AgentRef,
    Kernel,
    MailboxFull,
    Message,
    Rendezvous,
    _cluster_flush,
    _cluster_leave,
    handler,
)
from kerna.state import connect
from kerna.testing import EtcdMember, FaultProxy, free_ports

from .cluster import SECRET, TCP, cluster_name, hosting
from .faulty import FaultyBackend
from .numbered_tells import ARRIVED, SEEN, WAIT, Numbered, Recorder

pytestmark = pytest.mark.anyio

# Heartbeats that outlast the blackhole on a loaded machine: the held link is slow,
# not lost.
LINK = {"heartbeat": 1.0, "heartbeat_misses": 60}


class Block(Message):
    pass


class Busy(Agent):
    """Busy with ``Block`` until ``gate`` is set: its node's stop waits for it (the
    grace), so the leaving node is still up, forwarding, after it released the
    recorder's claim."""

    entered = asyncio.Event()
    gate = asyncio.Event()

    @handler
    async def block(self, msg: Block) -> None:
        Busy.entered.set()
        await Busy.gate.wait()


class _Log(logging.Handler):
    """The ``kerna.cluster`` records while it is installed; ``held`` is set when one
    says a sender's messages wait for what it sent through a leaving holder."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.held = asyncio.Event()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.messages.append(message)
        if "wait for what was sent through" in message:
            self.held.set()


async def _seen(*numbers: int) -> None:
    while not set(numbers) <= set(SEEN):
        ARRIVED.clear()
        await ARRIVED.wait()


def _leaving(node_id: str) -> object:
    return lambda members: any(m.id == node_id and m.leaving for m in members)


@dataclass
class _Stage:
    """The recorder on ``o`` (behind ``proxy``), ``n`` hosting it too, a sender node
    (``a``, or ``n`` itself) whose store shows when its watch saw the claim go."""

    o: Kernel
    n: Kernel
    sender: Kernel
    proxy: FaultProxy
    watcher: FaultyBackend
    log: _Log
    key: str


@contextlib.asynccontextmanager
async def _stage(etcd: EtcdMember, sender: str) -> AsyncIterator[_Stage]:
    SEEN.clear()
    Busy.entered, Busy.gate = asyncio.Event(), asyncio.Event()
    records = _Log()
    cluster_log = logging.getLogger("kerna.cluster")
    cluster_log.addHandler(records)
    level = cluster_log.level
    cluster_log.setLevel(logging.DEBUG)
    (port,) = free_ports(1)
    name = cluster_name()
    watcher = FaultyBackend(await connect(etcd.url))  # the sender's store
    try:
        async with FaultProxy(("127.0.0.1", port)) as proxy:
            common = {"cluster": name, "secret": SECRET, "lease_ttl": 2.0}
            o = Kernel(state=etcd.url, transport=f"tcp://127.0.0.1:{port}",
                       node_id="o", stop_grace=10.0,
                       transport_options={**LINK, "advertise": f"tcp://{proxy.endpoint}"},
                       **common)  # fmt: skip
            n = Kernel(state=watcher if sender == "n" else etcd.url, transport=TCP,
                       node_id="n", transport_options=LINK, **common)  # fmt: skip
            kernels = [o, n]
            if sender == "a":
                kernels.append(Kernel(state=watcher, transport=TCP, node_id="a",
                                      transport_options=LINK, **common))  # fmt: skip
            async with contextlib.AsyncExitStack() as stack:
                for k in kernels:
                    await stack.enter_async_context(k)
                o.register(Recorder)
                o.register(Busy)
                n.register(Recorder)
                for k in kernels:
                    await k.wait_members(hosting("Recorder", o, n), 5)
                key = next(
                    k
                    for k in (f"r{i}" for i in range(200))
                    if Rendezvous().choose(AgentId("Recorder", k), ["n", "o"]) == "o"
                )
                watcher.follow_delete = f"{o.state_prefix}{name}/act/Recorder/{key}"
                try:
                    yield _Stage(o, n, kernels[-1], proxy, watcher, records, key)
                finally:
                    Busy.gate.set()
                    await proxy.heal()
    finally:
        cluster_log.removeHandler(records)
        cluster_log.setLevel(level)
        await watcher.aclose()


async def _on_o_and_o_busy(stage: _Stage) -> AgentRef:
    """Tell 0 (activating the recorder on ``o``) and keep ``o``'s stop from ending (its
    ``Busy`` agent); the sender's ref to the recorder."""
    ref = stage.sender.ref("Recorder", stage.key)
    await ref.tell(Numbered(n=0))
    await _seen(0)
    assert await ref.locate() == "o"
    await stage.o.ref(Busy, "b").tell(Block())
    await Busy.entered.wait()
    return ref


async def _in_flight_at_the_release(stage: _Stage) -> asyncio.Future[None]:
    """``_on_o_and_o_busy``, tell 1 while the proxy holds the link to ``o``, stop
    ``o``, and return (the stop under way) once the sender's watch shows the claim
    released."""
    ref = await _on_o_and_o_busy(stage)
    await stage.proxy.blackhole()
    await ref.tell(Numbered(n=1))  # on the sender's link to o: held
    stopping = asyncio.ensure_future(stage.o.stop())
    await stage.sender.wait_members(_leaving("o"), WAIT)
    await stage.watcher.delete_seen.wait()  # the sender sees o's claim released
    return stopping


async def _heal_once_2_reached_n_or_is_held(stage: _Stage) -> None:
    """Once 2 reached ``n`` (the reorder) or the sender holds it back, the proxy lets
    through what it held (1, and the marker behind it)."""
    reached = asyncio.ensure_future(_seen(2))
    held = asyncio.ensure_future(stage.log.held.wait())
    await asyncio.wait({reached, held}, return_when="FIRST_COMPLETED")
    for task in (reached, held):
        task.cancel()
    await stage.proxy.heal()


@pytest.mark.parametrize("sender", ["a", "n"])
async def test_a_tell_in_flight_to_the_leaving_holder_is_not_overtaken_by_the_next_one(
    etcd_server: EtcdMember, sender: str
) -> None:
    """The sender (a third node ``a``, or the new home ``n``) tells 1 to the recorder
    on ``o`` while the proxy in front of ``o`` holds it; ``o`` leaves and releases the
    claim; the sender's watch shows the claim gone and it tells 2, which its placement
    sends to ``n``, then asks 3. Once 2 reached ``n`` (the reorder) or the sender holds
    it back, the proxy lets 1 through: ``o`` forwards it to ``n``. The recorder sees 0,
    1, 2, 3, and the ask is answered."""
    async with _stage(etcd_server, sender) as stage, asyncio.timeout(3 * WAIT):
        stopping = await _in_flight_at_the_release(stage)
        ref = stage.sender.ref("Recorder", stage.key)
        await ref.tell(Numbered(n=2))  # o is no home
        asking = asyncio.ensure_future(ref.ask(Numbered(n=3), timeout=WAIT))
        await _heal_once_2_reached_n_or_is_held(stage)  # 1 reaches o, forwarded to n
        await _seen(1, 2, 3)
        assert await asking is None
        Busy.gate.set()
        await stopping
        assert SEEN == [0, 1, 2, 3], f"{SEEN}: a newer message overtook one in flight"
        assert await stage.sender.ref("Recorder", stage.key).locate() == "n"
        assert stage.n.delivery_stats().out_of_order == 0
        assert not [m for m in stage.log.messages if "without waiting for those sent" in m]


async def test_held_tells_go_on_counted_when_the_old_holder_closes_before_the_marker_passed(
    etcd_server: EtcdMember, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, but ``o`` finishes its stop (its transport closes) while 1 and the
    marker behind it are still held by the proxy: once the link breaks, ``a`` sends 2
    and 3 on, logs them, and counts them as sent without the order guarantee. At most
    ``MAX_HELD`` (2 here) wait: 4 is refused with ``MailboxFull``."""
    monkeypatch.setattr(_cluster_flush, "MAX_HELD", 2)
    async with _stage(etcd_server, "a") as stage, asyncio.timeout(3 * WAIT):
        stopping = await _in_flight_at_the_release(stage)
        ref = stage.sender.ref("Recorder", stage.key)
        await ref.tell(Numbered(n=2))
        await stage.log.held.wait()
        await ref.tell(Numbered(n=3))
        with pytest.raises(MailboxFull, match=rf"2 messages to Recorder/{stage.key} already"):
            await ref.tell(Numbered(n=4))
        Busy.gate.set()
        await stopping  # o is gone: 1 never reaches it
        assert SEEN == [0]
        await stage.proxy.heal()  # the held bytes meet o's closed side: the link breaks
        await _seen(2, 3)
        assert SEEN == [0, 2, 3]
        assert stage.sender.delivery_stats().unordered == 2
        assert [m for m in stage.log.messages if "sent on 2 held message(s) without waiting" in m]


async def test_the_order_holds_when_the_senders_member_watch_sees_the_holder_gone_first(
    etcd_server: EtcdMember, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sender's directory watch lags: it still shows ``o``'s claim when its member
    watch shows ``o`` gone (two watches, no order between them). ``o`` lingers (a
    message reached it while it left) with 1 still held by the proxy; the sender's
    next tell, 2, which its placement now sends to ``n``, waits for the marker through
    ``o``, behind 1: the recorder sees 0, 9 (the one that kept ``o`` lingering), 1, 2."""
    monkeypatch.setattr(_cluster_leave, "LINGER", 2.0)  # o stays up for 1
    async with _stage(etcd_server, "a") as stage, asyncio.timeout(3 * WAIT):
        ref = await _on_o_and_o_busy(stage)
        stage.watcher.late_delete = stage.watcher.follow_delete  # the claim's release
        stopping = asyncio.ensure_future(stage.o.stop())
        await stage.sender.wait_members(_leaving("o"), WAIT)
        await stage.watcher.late_held.wait()  # o released the claim; a does not see it
        await ref.tell(Numbered(n=9))  # to o, after its release: forwarded (o lingers)
        await _seen(9)
        await stage.proxy.blackhole()
        await ref.tell(Numbered(n=1))  # on the sender's link to o: held
        Busy.gate.set()  # o's stop goes on: it deregisters, then lingers
        await stage.sender.wait_members(lambda ms: all(m.id != "o" for m in ms), WAIT)
        await ref.tell(Numbered(n=2))  # o is no member: n is the home
        await _heal_once_2_reached_n_or_is_held(stage)  # 1 reaches o, forwarded to n
        await _seen(1, 2)
        stage.watcher.late_gate.set()
        await stopping
        assert SEEN == [0, 9, 1, 2], f"{SEEN}: a newer message overtook one in flight"
        assert stage.sender.delivery_stats().unordered == 0


async def test_held_tells_go_on_counted_when_the_marker_is_not_answered_in_time(
    etcd_server: EtcdMember, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, but ``o`` stays up while the proxy holds 1 and the marker behind it:
    after ``FLUSH_TIMEOUT`` the sender sends 2 on to ``n`` without the order guarantee,
    counted and logged; 1, let through later, is forwarded and handled after it."""
    monkeypatch.setattr(_cluster_flush, "FLUSH_TIMEOUT", 0.3)
    async with _stage(etcd_server, "a") as stage, asyncio.timeout(3 * WAIT):
        stopping = await _in_flight_at_the_release(stage)
        ref = stage.sender.ref("Recorder", stage.key)
        await ref.tell(Numbered(n=2))
        await stage.log.held.wait()
        await _seen(2)  # the marker timed out: 2 went on
        assert stage.sender.delivery_stats().unordered == 1
        assert [m for m in stage.log.messages if "not through o in 0.3s" in m]
        await stage.proxy.heal()
        await _seen(1)
        assert SEEN == [0, 2, 1]  # the order the sender could not guarantee, counted
        Busy.gate.set()
        await stopping
