"""autogen-ext's ``GrpcWorkerAgentRuntime``: a host and two workers, three processes.

The host (``GrpcWorkerAgentRuntimeHost``) routes; the server worker registers an echo
agent (``send_message`` -> ``APong``) and a sink agent subscribed to topic type ``w6``
(``publish_message``, autogen's one-way call); the caller is the second worker. A
worker handles each incoming message in its own task, so the closing ``AQuery`` may
overtake the last published messages: the sink answers it once it has counted ``n``.
Messages are dataclasses with autogen's JSON serializers, its idiom.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from autogen_core import (
    AgentId,
    MessageContext,
    RoutedAgent,
    TopicId,
    TypeSubscription,
    message_handler,
    try_get_known_serializers_for_type,
)
from autogen_ext.runtimes.grpc import GrpcWorkerAgentRuntime, GrpcWorkerAgentRuntimeHost

__all__ = ["Client", "serve_host", "serve_worker"]


@dataclass
class APing:
    n: int


@dataclass
class APong:
    n: int


@dataclass
class AQuery:
    n: int


MESSAGES = (APing, APong, AQuery)


class AEcho(RoutedAgent):
    def __init__(self) -> None:
        super().__init__("echo")

    @message_handler
    async def on_ping(self, message: APing, ctx: MessageContext) -> APong:
        return APong(message.n)


class ASink(RoutedAgent):
    def __init__(self) -> None:
        super().__init__("sink")
        self.count = 0
        self.last = 0
        self.changed = asyncio.Event()

    @message_handler
    async def on_ping(self, message: APing, ctx: MessageContext) -> None:
        self.count += 1
        self.last = time.perf_counter_ns()
        self.changed.set()

    @message_handler
    async def on_query(self, message: AQuery, ctx: MessageContext) -> APong:
        async with asyncio.timeout(120):
            while self.count < message.n:
                self.changed.clear()
                await self.changed.wait()
        return APong(self.last)


def _worker(host: str) -> GrpcWorkerAgentRuntime:
    worker = GrpcWorkerAgentRuntime(host_address=host)
    for cls in MESSAGES:
        worker.add_message_serializer(try_get_known_serializers_for_type(cls))
    return worker


async def serve_host(port: int, ready: Callable[[str], None]) -> None:
    """Run the host on 127.0.0.1:``port`` until cancelled."""
    host = GrpcWorkerAgentRuntimeHost(address=f"127.0.0.1:{port}")
    host.start()
    ready(f"127.0.0.1:{port}")
    try:
        await asyncio.Event().wait()
    finally:
        await host.stop()


async def serve_worker(host: str, ready: Callable[[str], None]) -> None:
    """Run the worker holding the echo and sink agents until cancelled."""
    worker = _worker(host)
    await worker.start()
    await AEcho.register(worker, "echo", AEcho)
    await ASink.register(worker, "sink", ASink)
    await worker.add_subscription(TypeSubscription(topic_type="w6", agent_type="sink"))
    ready(host)
    try:
        await asyncio.Event().wait()
    finally:
        await worker.stop()


class Client:
    """The caller worker."""

    async def connect(self, host: str) -> None:
        self.worker = _worker(host)
        await self.worker.start()
        self.echo = AgentId("echo", "e")
        self.topic = TopicId("w6", "s")

    async def ask(self, n: int) -> int:
        pong = await self.worker.send_message(APing(n), self.echo)
        assert isinstance(pong, APong)
        return pong.n

    async def tell(self, n: int) -> None:
        await self.worker.publish_message(APing(n), self.topic)

    async def last_tell_ns(self, n: int) -> int:
        pong = await self.worker.send_message(AQuery(n), AgentId("sink", "s"))
        assert isinstance(pong, APong)
        return pong.n

    async def close(self) -> None:
        await self.worker.stop()
