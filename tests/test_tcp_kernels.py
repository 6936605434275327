"""Two kernels over tcp:// with a cluster secret: asks and tells between them take the
same delivery path as over inproc:// (kerna._remote), and a wrong secret delivers
nothing."""

from __future__ import annotations

import asyncio
import gc

import pytest

from kerna import Agent, Kernel, RemoteError, Request, handler
from kerna.testing import FaultProxy, free_ports
from kerna.transports import PeerUnreachable

pytestmark = pytest.mark.anyio

TCP = "tcp://127.0.0.1:0"
OPTIONS = {"secret": b"cluster secret"}


class Double(Request[int]):
    n: int


class Doubler(Agent):
    @handler
    async def double(self, msg: Double) -> int:
        return msg.n * 2


async def test_concurrent_asks_between_kernels_over_tcp_each_get_their_own_reply() -> None:
    async with (
        Kernel(transport=TCP, transport_options=OPTIONS, stop_grace=0.1) as a,
        Kernel(transport=TCP, transport_options=OPTIONS, stop_grace=0.1) as b,
    ):
        b.register(Doubler)
        assert b.address is not None
        assert b.address.startswith("tcp://127.0.0.1:")
        refs = [a.ref(Doubler, f"d{i % 8}", node=b.address) for i in range(400)]
        async with asyncio.timeout(10):
            replies = await asyncio.gather(
                *(ref.ask(Double(n=i), timeout=10) for i, ref in enumerate(refs))
            )
        assert replies == [i * 2 for i in range(400)]


async def test_a_kernel_with_the_wrong_secret_cannot_ask_over_tcp() -> None:
    async with (
        Kernel(transport=TCP, transport_options={"secret": b"one"}, stop_grace=0.1) as a,
        Kernel(transport=TCP, transport_options={"secret": b"two"}, stop_grace=0.1) as b,
    ):
        b.register(Doubler)
        assert b.address is not None
        with pytest.raises(PeerUnreachable, match="secret"):
            await a.ref(Doubler, "d", node=b.address).ask(Double(n=1), timeout=5)
        assert b.stats().types["Doubler"].handled == 0
    # The failed ask's reply future must not be failed again by the stop, unretrieved
    # ("Future exception was never retrieved", which the loop reports on collection).
    gc.collect()


class Hold(Request[str]):
    pass


class Holder(Agent):
    """Holds every ask until its kernel stops it (``holding`` says one arrived)."""

    holding: asyncio.Event

    @handler
    async def hold(self, msg: Hold) -> str:
        Holder.holding.set()
        await asyncio.Event().wait()
        return "never"


async def held_by_a_stopping_kernel(a: Kernel) -> RemoteError:
    """What ``a`` gets for an ask that a new kernel's agent holds until that kernel
    stops. That kernel never sent anything to ``a``: its error reply has to open its
    connection to ``a`` first."""
    Holder.holding = asyncio.Event()
    async with Kernel(transport=TCP, transport_options=OPTIONS, stop_grace=0.1) as b:
        b.register(Holder)
        assert b.address is not None
        asked = asyncio.ensure_future(a.ref(Holder, "h", node=b.address).ask(Hold(), timeout=10))
        async with asyncio.timeout(5):
            await Holder.holding.wait()
        await b.stop()
    async with asyncio.timeout(5):
        with pytest.raises(RemoteError) as caught:
            await asked
    return caught.value


async def test_an_ask_a_stopping_kernel_was_handling_gets_its_error_reply_not_node_lost() -> None:
    # The stop must not close the transport while that reply's connection opens: a
    # would see the connection break (NodeLost) instead of the error.
    async with Kernel(transport=TCP, transport_options=OPTIONS, stop_grace=0.1) as a:
        error = await held_by_a_stopping_kernel(a)
    assert error.type_name == "kerna.KernelStopped", error
    assert "was busy" in error.message


async def test_the_error_reply_of_a_stopping_kernel_arrives_before_its_connections_end() -> None:
    # The reply's connection is slow (a proxy delays every chunk to a), the asker's
    # connection to the stopping kernel is not: closing both at once, the stopping
    # kernel would end the fast one while its reply is still on the slow one.
    (port,) = free_ports(1)
    async with FaultProxy(f"127.0.0.1:{port}") as proxy:
        await proxy.delay(0.05)
        async with Kernel(
            transport=f"tcp://127.0.0.1:{port}",
            transport_options={**OPTIONS, "advertise": f"tcp://{proxy.endpoint}"},
            stop_grace=0.1,
        ) as a:
            error = await held_by_a_stopping_kernel(a)
    assert error.type_name == "kerna.KernelStopped", error
    assert "was busy" in error.message


async def test_stop_stays_within_its_bound_when_a_peer_never_reads_the_end_of_stream() -> None:
    # a's connection to b goes through a proxy that, once blackholed, forwards nothing:
    # b never reads the end of a's stream, so a's transport waits for it in vain; the
    # stop's bound (grace + 2 x cancel_grace) caps that wait (CLOSE_WAIT is 0.5 s).
    (port,) = free_ports(1)
    async with FaultProxy(f"127.0.0.1:{port}") as proxy:
        options = {**OPTIONS, "advertise": f"tcp://{proxy.endpoint}"}
        async with Kernel(transport=f"tcp://127.0.0.1:{port}", transport_options=options) as b:
            b.register(Doubler)
            assert b.address is not None
            a = Kernel(transport=TCP, transport_options=OPTIONS, cancel_grace=0.05)
            await a.start()
            try:
                assert await a.ref(Doubler, "d", node=b.address).ask(Double(n=2), timeout=5) == 4
                await proxy.blackhole()
            finally:
                loop = asyncio.get_running_loop()
                started = loop.time()
                async with asyncio.timeout(5):
                    await a.stop(grace=0)
                took = loop.time() - started
    assert took < 2 * 0.05 + 0.3, took  # grace + 2 x cancel_grace, with a margin
