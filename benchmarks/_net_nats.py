"""Raw nats-py request/reply and publish (the floor of the kerna-over-NATS row).

The server subscribes ``bench.echo`` (decode the request, reply with the same ``n``
encoded) and ``bench.w6`` (one subscription, so tells and the closing ``DONE`` query are
handled in order: a tell has no reply subject, the query has one and is answered with
the ``perf_counter_ns`` of the last tell). The caller uses ``nc.request`` (nats-py's
muxed inbox) and ``nc.publish``. Payloads are the floor's msgspec ``Frame``.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable

import nats
from nats.aio.msg import Msg

from ._net_floor import ASK, DONE, REPLY, TELL, Frame

__all__ = ["Client", "serve"]

import msgspec

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Frame).decode
ECHO, W6 = "bench.echo", "bench.w6"


async def serve(url: str, ready: Callable[[str], None]) -> None:
    """Answer on ``bench.echo`` and count on ``bench.w6`` until cancelled."""
    nc = await nats.connect(url)
    count = 0
    last = 0

    async def echo(msg: Msg) -> None:
        f = _decode(msg.data)
        await nc.publish(msg.reply, _encode(Frame(REPLY, f.id, f.n)))

    async def w6(msg: Msg) -> None:
        nonlocal count, last
        if not msg.reply:
            count += 1
            last = time.perf_counter_ns()
            return
        f = _decode(msg.data)
        await nc.publish(msg.reply, _encode(Frame(REPLY, f.id, last if count >= f.n else -count)))

    await nc.subscribe(ECHO, cb=echo, pending_msgs_limit=1_000_000)
    await nc.subscribe(W6, cb=w6, pending_msgs_limit=1_000_000)
    await nc.flush()
    ready(url)
    try:
        await asyncio.Event().wait()
    finally:
        await nc.close()


class Client:
    """A nats-py connection asking ``bench.echo`` and telling ``bench.w6``."""

    def __init__(self) -> None:
        self.ids = itertools.count(1)

    async def connect(self, url: str) -> None:
        self.nc = await nats.connect(url)

    async def ask(self, n: int) -> int:
        msg = await self.nc.request(ECHO, _encode(Frame(ASK, next(self.ids), n)), timeout=30)
        return _decode(msg.data).n

    async def tell(self, n: int) -> None:
        await self.nc.publish(W6, _encode(Frame(TELL, 0, n)))

    async def last_tell_ns(self, n: int) -> int:
        msg = await self.nc.request(W6, _encode(Frame(DONE, 0, n)), timeout=60)
        last = _decode(msg.data).n
        if last < 0:
            raise RuntimeError(f"nats W6: the receiver counted {-last:,} of {n:,} tells")
        return last

    async def close(self) -> None:
        await self.nc.close()
