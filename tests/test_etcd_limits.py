"""A write over etcd's request limit is a permanent ``ValueTooLarge`` naming the size and
the limit, not the transient ``Unavailable`` that callers would retry forever.

etcd refuses a request over ``--max-request-bytes`` (1.5 MiB by default) in two ways:
up to 512 KiB over it, etcd itself answers "request is too large"; past that, its gRPC
server refuses the message ("received message larger than max (N vs. M)").
"""

from __future__ import annotations

import time

import msgspec
import pytest

from kerna import Agent, Kernel, Message, RemoteError, Unavailable, ValueTooLarge, handler
from kerna.state import Put, connect
from kerna.testing import EtcdMember

pytestmark = pytest.mark.anyio

LIMIT = 1572864  # etcd's default --max-request-bytes (1.5 MiB)


@pytest.mark.parametrize("size", [LIMIT + 100_000, 10 * 2**20])
async def test_a_txn_over_the_request_limit_is_value_too_large(
    etcd_server: EtcdMember, size: int
) -> None:
    async with await connect(etcd_server.url, timeout=5.0) as backend:
        started = time.monotonic()
        with pytest.raises(ValueTooLarge) as info:
            await backend.txn([], [Put("limits/big", b"x" * size)])
        assert time.monotonic() - started < 2.5  # answered at once, not retried
        error = info.value
        assert not isinstance(error, Unavailable)
        assert error.size > size
        assert str(error.size) in str(error)
        if size > LIMIT + 512 * 1024:  # gRPC said what the limit is
            assert error.limit == LIMIT
        assert str(LIMIT) in str(error) or "1.5 MiB" in str(error)
        with pytest.raises(ValueTooLarge):
            await backend.put("limits/big", b"x" * size)
        assert await backend.get("limits/big") is None
        await backend.put("limits/small", b"x")  # the backend is fine


class Blob(msgspec.Struct, frozen=True):
    data: bytes = b""


class Store(Message):
    size: int


class Size(Message):
    pass


class Holder(Agent, state=Blob):
    @handler
    async def store(self, msg: Store) -> int:
        await self.save(Blob(b"x" * msg.size))
        return len(self.state.data)

    @handler
    async def size(self, msg: Size) -> int:
        return len(self.state.data)


async def test_saving_a_10_mib_state_on_etcd_is_value_too_large_naming_size_and_limit(
    etcd_server: EtcdMember,
) -> None:
    size = 10 * 2**20
    async with Kernel(state=etcd_server.url, state_prefix="limits-agent/") as kernel:
        kernel.register(Holder)
        ref = kernel.ref(Holder, "h")
        with pytest.raises(RemoteError) as info:
            await ref.ask(Store(size=size), timeout=10)
        error = info.value
        assert error.type_name == "kerna.ValueTooLarge", error
        assert "Holder/h" in error.message
        encoded = len(msgspec.msgpack.encode(Blob(b"x" * size)))
        assert f"state of {encoded} bytes" in error.message
        assert str(LIMIT) in error.message
        assert await ref.ask(Size(), timeout=5) == 0  # nothing was saved
        assert await ref.ask(Store(size=1000), timeout=5) == 1000  # the agent lives on


class Blobbed(Message, tag="limits.blobbed"):
    data: bytes


class Emit(Message):
    size: int


class Journal(Agent, state=Blob, event_sourced=True):
    @staticmethod
    def apply(state: Blob, event: Blobbed) -> Blob:
        return Blob(event.data)

    @handler
    async def emit_one(self, msg: Emit) -> int:
        await self.emit(Blobbed(data=b"x" * msg.size))
        return len(self.state.data)


async def test_emitting_a_10_mib_event_on_etcd_is_value_too_large(etcd_server: EtcdMember) -> None:
    async with Kernel(state=etcd_server.url, state_prefix="limits-journal/") as kernel:
        kernel.register(Journal)
        ref = kernel.ref(Journal, "j")
        with pytest.raises(RemoteError) as info:
            await ref.ask(Emit(size=10 * 2**20), timeout=10)
        assert info.value.type_name == "kerna.ValueTooLarge", info.value
        assert "Journal/j: an append of 1 event is too large" in info.value.message
        assert str(LIMIT) in info.value.message
        assert await ref.ask(Emit(size=10), timeout=5) == 10  # nothing else was appended
