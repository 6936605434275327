"""Two kernels over tcp:// with a cluster secret: asks and tells between them take the
same delivery path as over inproc:// (kerna._remote), and a wrong secret delivers
nothing."""

from __future__ import annotations

import asyncio
import gc

import pytest

from kerna import Agent, Kernel, Request, handler
from kerna.transports import PeerUnreachable

pytestmark = pytest.mark.anyio

TCP = "tcp://127.0.0.1:0"


class Double(Request[int]):
    n: int


class Doubler(Agent):
    @handler
    async def double(self, msg: Double) -> int:
        return msg.n * 2


async def test_concurrent_asks_between_kernels_over_tcp_each_get_their_own_reply() -> None:
    options = {"secret": b"cluster secret"}
    async with (
        Kernel(transport=TCP, transport_options=options, stop_grace=0.1) as a,
        Kernel(transport=TCP, transport_options=options, stop_grace=0.1) as b,
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
