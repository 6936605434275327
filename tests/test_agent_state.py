"""Agent state: local reads, compare-and-swap saves, restarts, fencing, bad data."""

from __future__ import annotations

import asyncio
import itertools
from typing import ClassVar

import msgspec
import pytest

from kerna import (
    ActivationFailed,
    Agent,
    ConfigError,
    Kernel,
    Message,
    RegistrationError,
    RemoteError,
    handler,
)
from kerna.state import Layout, StateBackend, connect

pytestmark = pytest.mark.anyio
_names = itertools.count()


class Count(msgspec.Struct, frozen=True):
    n: int = 0


class Inc(Message):
    by: int = 1


class Total(Message):
    n: int


class Read(Message):
    pass


class Counter(Agent, state=Count):
    runs: ClassVar[int] = 0

    @handler
    async def inc(self, msg: Inc) -> Total:
        Counter.runs += 1
        await self.save(Count(n=self.state.n + msg.by))
        return Total(n=self.state.n)

    @handler
    async def read(self, msg: Read) -> int:
        return int(self.state.n)


def shared_url() -> str:
    return f"memory://agent-state-{next(_names)}"


async def test_counter_contract() -> None:
    async with Kernel() as kernel:
        kernel.register(Counter)
        ref = kernel.ref(Counter, "c1")
        assert await ref.ask(Inc(), timeout=5) == Total(n=1)
        assert await ref.ask(Inc(by=41), timeout=5) == Total(n=42)
        assert await ref.ask(Read()) == 42


async def test_a_new_kernel_continues_from_committed_state() -> None:
    url = shared_url()
    async with Kernel(state=url) as first:
        first.register(Counter)
        for _ in range(3):
            await first.ref(Counter, "c1").ask(Inc())
    async with Kernel(state=url) as second:
        second.register(Counter)
        assert await second.ref(Counter, "c1").ask(Inc()) == Total(n=4)


async def test_state_survives_deactivation() -> None:
    async with Kernel() as kernel:
        kernel.register(Counter)
        ref = kernel.ref(Counter, "c")
        await ref.ask(Inc(by=5))
        await asyncio.wait_for(ref.deactivate(), 5)
        assert await ref.ask(Read()) == 5


async def _write_behind_its_back(backend: StateBackend, key: str, value: Count) -> None:
    await backend.put(Layout().state("Counter", key), msgspec.msgpack.encode(value))


async def test_lost_compare_and_swap_reloads_and_raises_conflict() -> None:
    async with Kernel() as kernel:
        kernel.register(Counter)
        ref = kernel.ref(Counter, "c")
        await ref.ask(Inc())
        await _write_behind_its_back(kernel.state_backend, "c", Count(n=100))
        with pytest.raises(RemoteError) as info:
            await ref.ask(Inc())
        assert info.value.type_name == "kerna.Conflict"
        assert await ref.ask(Read()) == 100  # reloaded
        assert await ref.ask(Inc()) == Total(n=101)


async def test_conflict_retries_rerun_the_handler_on_fresh_state() -> None:
    async with Kernel() as kernel:
        kernel.register(Counter, conflict_retries=2)
        ref = kernel.ref(Counter, "c")
        await ref.ask(Inc())
        await _write_behind_its_back(kernel.state_backend, "c", Count(n=10))
        Counter.runs = 0
        assert await ref.ask(Inc()) == Total(n=11)
        assert Counter.runs == 2


async def test_linearizable_reload_sees_outside_writes() -> None:
    class Reader(Agent, state=Count):
        @handler
        async def read(self, msg: Read) -> int:
            state = await self.reload(linearizable=True)
            return int(state.n)

    async with Kernel() as kernel:
        kernel.register(Reader)
        ref = kernel.ref(Reader, "r")
        assert await ref.ask(Read()) == 0
        await kernel.state_backend.put(
            Layout().state("Reader", "r"), msgspec.msgpack.encode(Count(7))
        )
        assert await ref.ask(Read()) == 7


async def test_one_activation_across_kernels_and_fencing() -> None:
    url = shared_url()
    async with Kernel(state=url, lease_ttl=30) as a, Kernel(state=url, max_restarts=0) as b:
        a.register(Counter)
        b.register(Counter)
        assert await a.ref(Counter, "c").ask(Inc()) == Total(n=1)
        with pytest.raises(ActivationFailed) as info:
            await b.ref(Counter, "c").ask(Inc())
        assert info.value.type_name == "kerna.OwnedElsewhere"
        assert "Counter/c is active elsewhere" in info.value.message
        # a's lease lapses (a paused kernel, a partition): its claim disappears ...
        await b.state_backend.lease_revoke(a._store().lease)  # noqa: SLF001 - the test inspects or forces kerna internals
        await asyncio.wait_for(b.ref(Counter, "c").deactivate(), 5)  # clear b's failure
        assert await b.ref(Counter, "c").ask(Inc()) == Total(n=2)  # ... b takes over
        # ... and a's stale activation cannot overwrite its successor
        with pytest.raises(RemoteError) as fenced:
            await a.ref(Counter, "c").ask(Inc())
        assert fenced.value.type_name == "kerna.Fenced"
        assert await b.ref(Counter, "c").ask(Read()) == 2


async def test_undecodable_state_names_the_key_and_the_kernel_lives_on() -> None:
    async with Kernel() as kernel:
        kernel.register(Counter)
        await kernel.state_backend.put(Layout().state("Counter", "bad"), b"\xc1garbage")
        with pytest.raises(ActivationFailed) as info:
            await kernel.ref(Counter, "bad").ask(Inc())
        assert info.value.type_name == "kerna.DecodeError"
        assert "'kerna/state/Counter/bad'" in info.value.message
        assert kernel.stats().types["Counter"].restarts == 0  # not retried: it cannot help
        assert await kernel.ref(Counter, "good").ask(Inc()) == Total(n=1)


async def test_state_definition_errors() -> None:
    class Mutable(msgspec.Struct):
        n: int = 0

    class NoDefaults(msgspec.Struct, frozen=True):
        n: int

    class A(Agent, state=Mutable):
        pass

    class B(Agent, state=dict):  # type: ignore[call-arg]
        pass

    class C(Agent, state=NoDefaults):
        pass

    class D(Agent, state=NoDefaults):
        @staticmethod
        def initial_state() -> NoDefaults:
            return NoDefaults(n=3)

        @handler
        async def read(self, msg: Read) -> int:
            return int(self.state.n)

    async with Kernel() as kernel:
        with pytest.raises(RegistrationError, match="must be frozen"):
            kernel.register(A)
        with pytest.raises(RegistrationError, match="must be a msgspec.Struct type"):
            kernel.register(B)
        with pytest.raises(RegistrationError, match="initial_state"):
            kernel.register(C)
        kernel.register(D)
        assert await kernel.ref(D, "d").ask(Read()) == 3


async def test_save_of_the_wrong_type() -> None:
    class Wrong(Agent, state=Count):
        @handler
        async def inc(self, msg: Inc) -> None:
            await self.save({"n": 1})

    async with Kernel() as kernel:
        kernel.register(Wrong)
        with pytest.raises(RemoteError, match="save\\(\\) takes a Count, got dict"):
            await kernel.ref(Wrong, "w").ask(Inc())


async def test_bad_state_urls() -> None:
    for url, text in [
        ("nope://x", "no state backend for scheme 'nope'"),
        ("not a url", "must look like 'scheme://...'"),
        ("memory://a/b", "memory URL takes only a name"),
    ]:
        with pytest.raises(ConfigError, match=text):
            async with Kernel(state=url):
                pass
    with pytest.raises(ValueError, match="state must be a URL"):
        Kernel(state=42)  # type: ignore[arg-type]


async def test_missing_extra_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from kerna import _schemes
    from kerna.state import _registry

    monkeypatch.setitem(_registry._BUILTIN, "etcd", "kerna_no_such_module:EtcdBackend")  # noqa: SLF001 - the test inspects or forces kerna internals
    monkeypatch.setattr(_schemes, "entry_points", lambda group: [])
    _schemes.entry_point_values.cache_clear()
    try:
        with pytest.raises(ConfigError, match=r"pip install 'kerna\[etcd\]'"):
            await connect("etcd://127.0.0.1:2379")
    finally:
        _schemes.entry_point_values.cache_clear()


async def test_kernel_on_a_backend_it_does_not_own() -> None:
    backend = await connect("memory://")
    async with Kernel(state=backend) as kernel:
        kernel.register(Counter)
        await kernel.ref(Counter, "x").ask(Inc())
    kv = await backend.get(Layout().state("Counter", "x"))  # still open: not the kernel's
    assert kv is not None
    assert [k.key async for k in backend.scan("kerna/act/")] == []  # claims released
    await backend.aclose()


async def test_concurrent_increments_through_one_agent_are_serialized() -> None:
    async with Kernel() as kernel:
        kernel.register(Counter)
        ref = kernel.ref(Counter, "c")
        await asyncio.gather(*(ref.ask(Inc()) for _ in range(100)))
        assert await ref.ask(Read()) == 100
