"""Kernels on real etcd: agent state across kernels and restarts, replicas, fencing,
and a leader killed under a steady write load through agents (checked for
linearizability with tests/linearizability.py)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

import msgspec
import pytest

from kerna import ActivationFailed, Kernel, RemoteError
from kerna.state import Replica, StateBackend, connect
from kerna.state._layout import Layout
from kerna.testing import EtcdCluster, EtcdMember, FaultProxy

from .agents import GetValue, Register, SetValue, Value
from .linearizability import History, Read, Write, check

pytestmark = pytest.mark.anyio

FAST = {"timeout": 1.0, "probe_interval": 0.1, "probe_timeout": 0.3}


def prefix(request: pytest.FixtureRequest) -> str:
    """A key prefix of this test's own: the session's etcd server is shared."""
    return f"k{abs(hash(request.node.nodeid)) % 10**8}/"


async def test_state_on_etcd_survives_kernel_restart(
    etcd_server: EtcdMember, request: pytest.FixtureRequest
) -> None:
    p = prefix(request)
    async with Kernel(state=etcd_server.url, state_prefix=p) as kernel:
        kernel.register(Register)
        await kernel.ref(Register, "r").ask(SetValue(v="one"))
        await kernel.ref(Register, "r").ask(SetValue(v="two"))
    async with Kernel(state=etcd_server.url, state_prefix=p) as kernel:
        kernel.register(Register)
        assert await kernel.ref(Register, "r").ask(GetValue()) == "two"


async def test_write_in_one_kernel_shows_in_the_others_replica(
    etcd_server: EtcdMember, request: pytest.FixtureRequest
) -> None:
    p = prefix(request)
    async with (
        Kernel(state=etcd_server.url, state_prefix=p) as a,
        Kernel(state=etcd_server.url, state_prefix=p) as b,
    ):
        a.register(Register)
        b.register(Register)
        async with b.replica(Register) as replica:
            for i in range(20):
                rev = await a.ref(Register, f"r{i % 3}").ask(SetValue(v=str(i)))
            await replica.wait_for(rev, timeout=5)
            assert {k: v.v for k, v in replica.items()} == {"r0": "18", "r1": "19", "r2": "17"}


async def test_one_owner_across_kernels_and_fencing_on_etcd(
    etcd_server: EtcdMember, request: pytest.FixtureRequest
) -> None:
    p = prefix(request)
    async with (
        Kernel(state=etcd_server.url, state_prefix=p) as a,
        Kernel(state=etcd_server.url, state_prefix=p, max_restarts=0) as b,
    ):
        a.register(Register)
        b.register(Register)
        await a.ref(Register, "r").ask(SetValue(v="a1"))
        with pytest.raises(ActivationFailed, match="active elsewhere"):
            await b.ref(Register, "r").ask(SetValue(v="b1"))
        await b.state_backend.lease_revoke(a._store().lease)  # a's lease lapses  # noqa: SLF001 - the test revokes the kernel lease
        await asyncio.wait_for(b.ref(Register, "r").deactivate(), 5)
        await b.ref(Register, "r").ask(SetValue(v="b1"))
        with pytest.raises(RemoteError) as info:
            await a.ref(Register, "r").ask(SetValue(v="a2"))
        assert info.value.type_name == "kerna.Fenced"
        assert await b.ref(Register, "r").ask(GetValue()) == "b1"


class Acks:
    """Acknowledged writes as (invoked, acknowledged) times; tests wait on conditions
    over them, woken by each new acknowledgement. A writer that meets an error it may
    not meet records it here: every wait then fails at once with it."""

    def __init__(self) -> None:
        self.times: list[tuple[float, float]] = []
        self.unexpected: RemoteError | None = None
        self._changed = asyncio.Event()

    def add(self, invoked: float) -> None:
        self.times.append((invoked, time.monotonic()))
        self._changed.set()

    def fail(self, error: RemoteError) -> None:
        self.unexpected = self.unexpected or error
        self._changed.set()

    def since(self, moment: float) -> list[tuple[float, float]]:
        """Writes invoked after ``moment`` and acknowledged."""
        return [t for t in self.times if t[0] > moment]

    def check(self) -> None:
        error = self.unexpected
        if error is not None:
            raise AssertionError(
                f"a write failed with {error.type_name}, neither a definite failure nor an "
                f"ambiguous outcome: {error.message}"
            ) from error

    async def wait(self, condition: Callable[[], bool], timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                while not condition():
                    self.check()
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            self.check()
            return False
        self.check()
        return True


async def _writer(
    kernel: Kernel, history: History, key: str, stop: asyncio.Event, acks: Acks
) -> None:
    ref = kernel.ref(Register, key)
    seq = 0
    while not stop.is_set():
        seq += 1
        value = f"{key}-{seq}"
        invoked = time.monotonic()
        op = history.invoke(f"w-{key}", key, Write(value))
        try:
            await ref.ask(SetValue(v=value), timeout=3)
        except RemoteError as exc:
            if exc.type_name == "kerna.OutcomeUnknown":
                op.ambiguous()
            elif exc.type_name in ("kerna.Unavailable", "kerna.Conflict"):
                op.fail()  # certainly not applied (a Conflict reloads; the next write is fresh)
            else:  # any other error is a bug, not an outage: it fails the test
                op.ambiguous()
                acks.fail(exc)
                return
            await asyncio.sleep(0.01)
            continue
        except TimeoutError:
            op.ambiguous()  # the handler may still be writing
            continue
        op.ok()
        acks.add(invoked)


async def _reader(
    backend: StateBackend, history: History, keys: list[str], stop: asyncio.Event, p: str
) -> None:
    layout = Layout(p)
    decoder = msgspec.msgpack.Decoder(Value)
    rng = random.Random(1)
    while not stop.is_set():
        key = rng.choice(keys)
        op = history.invoke("reader", key, Read())
        try:
            kv = await backend.get(layout.state("Register", key))
        except Exception:
            op.fail()  # a failed read has no effect
            await asyncio.sleep(0.01)
            continue
        op.ok(None if kv is None else decoder.decode(kv.value).v)
        await asyncio.sleep(0.005)


async def test_leader_killed_under_agent_write_load(etcd_cluster: EtcdCluster) -> None:
    """kill -9 of the etcd leader while agents keep saving state: every acknowledged
    write survives (the history is linearizable), writes resume within 5 s, and another
    kernel's replica converges to the final values."""
    p = "load/"
    keys = [f"r{i}" for i in range(4)]
    history = History()
    acks = Acks()
    writer_backend = await connect(etcd_cluster.url, **FAST)
    reader_backend = await connect(etcd_cluster.url, **FAST)
    observer_backend = await connect(etcd_cluster.url, **FAST)
    try:
        async with (
            Kernel(state=writer_backend, state_prefix=p, lease_ttl=10) as kernel,
            Kernel(state=observer_backend, state_prefix=p) as observer,
        ):
            kernel.register(Register)
            observer.register(Register)
            async with observer.replica(Register) as replica:
                stop = asyncio.Event()
                tasks = [
                    asyncio.ensure_future(_writer(kernel, history, k, stop, acks)) for k in keys
                ]
                tasks.append(asyncio.ensure_future(_reader(reader_backend, history, keys, stop, p)))
                try:
                    steady = await acks.wait(lambda: len(acks.times) >= 100, 20)
                    assert steady, "no steady write load before the kill"
                    leader = etcd_cluster.leader()
                    killed_at = time.monotonic()
                    leader.kill()
                    # recovery: until a write invoked after the kill is acknowledged
                    resumed = await acks.wait(lambda: bool(acks.since(killed_at)), 10)
                    assert resumed, "writes did not resume after the leader was killed"
                    recovery = min(done for _, done in acks.since(killed_at)) - killed_at
                    print(f"\nwrites resumed {recovery:.2f} s after kill -9 of the leader")
                    assert recovery < 5.0
                    settled = await acks.wait(lambda: len(acks.since(killed_at)) >= 50, 20)
                    assert settled, f"only {len(acks.since(killed_at))} writes after the kill"
                    stop.set()
                    async with asyncio.timeout(10):
                        await asyncio.gather(*tasks)
                    acks.check()
                    leader.start()
                    leader.wait_ready()
                    # the observer's replica converges to what the store holds
                    layout = Layout(p)
                    decoder = msgspec.msgpack.Decoder(Value)
                    final = {}
                    final_revision = 0
                    for key in keys:
                        kv = await reader_backend.get(layout.state("Register", key))
                        assert kv is not None
                        final[key] = decoder.decode(kv.value)
                        final_revision = max(final_revision, kv.mod_revision)
                    await replica.wait_for(final_revision, timeout=10)
                    assert {k: replica.get(k) for k in keys} == final
                finally:  # a failed assertion must not leave the load running
                    stop.set()
                    for task in tasks:
                        task.cancel()
                    async with asyncio.timeout(10):
                        await asyncio.gather(*tasks, return_exceptions=True)
        result = check(history)
        assert result.ok, result.explanation
        print(f"{len(history)} operations, linearizable; {len(acks.times)} acknowledged writes")
    finally:
        for b in (writer_backend, reader_backend, observer_backend):
            await b.aclose()


async def test_replica_resumes_without_loss_or_duplicates_after_etcd_restarts(
    etcd_server: EtcdMember, request: pytest.FixtureRequest
) -> None:
    """The whole etcd restarts while a kernel runs: its agents keep writing after, and
    a replica's watch resumes where it was, every update seen exactly once."""
    p = prefix(request)
    backend = await connect(etcd_server.url, **FAST)
    decoder = msgspec.msgpack.Decoder(Value)
    seen: list[tuple[str, str | None]] = []
    try:
        async with Kernel(state=backend, state_prefix=p) as kernel:
            kernel.register(Register)
            replica = Replica(
                backend,
                Layout(p).states_of("Register"),
                decode=decoder.decode,
                on_change=lambda key, value: seen.append((key, value.v if value else None)),
            )
            async with replica:
                writes = []
                rev = 0
                for i in range(30):
                    if i == 15:
                        await asyncio.to_thread(etcd_server.restart)
                    key = f"r{i % 3}"
                    rev = await kernel.ref(Register, key).ask(SetValue(v=str(i)), timeout=10)
                    writes.append((Layout(p).state("Register", key), str(i)))
                await replica.wait_for(rev, timeout=10)
        assert seen == writes
    finally:
        etcd_server.ensure_running()
        await backend.aclose()


async def test_replica_resyncs_after_compaction_during_a_disconnect(
    etcd_cluster: EtcdCluster,
) -> None:
    """A replica cut off from its member (a fault proxy resetting every connection)
    while others write and compact the history reloads the prefix when it comes back
    (Compacted) and converges. The member itself keeps up (a frozen member could serve
    the old history on resume before it applied the compaction: no resync to see)."""
    follower = etcd_cluster.followers()[0]
    proxy = await FaultProxy(follower.endpoint).start()
    watching = await connect("etcd://" + proxy.endpoint, **FAST)  # this member only
    direct = await connect("etcd://" + follower.endpoint, **FAST)
    writer = await connect(etcd_cluster.url_from(etcd_cluster.leader()), **FAST)
    try:
        async with Replica(watching, "rs/") as replica:
            rev = await writer.put("rs/k0", b"0")
            await replica.wait_for(rev, timeout=10)
            await proxy.reset()
            try:
                # the connection breaks (or the liveness probe drops it): disconnected
                async with asyncio.timeout(10):
                    while watching.endpoint is not None:  # noqa: ASYNC110 - no event for it
                        await asyncio.sleep(0.02)
                for i in range(1, 20):
                    rev = await writer.put(f"rs/k{i % 4}", str(i).encode())
                rev = await writer.put("rs/k9", b"last")
                await writer.delete("rs/k0")
                rev = await writer.put("rs/k8", b"after-delete")
                await writer.compact(rev)
                await writer.put("other/after-compaction", b"x")
                # a linearizable read on the member: it has applied the compaction
                assert await direct.get("other/after-compaction") is not None
            finally:
                await proxy.heal()
            await replica.wait_for(rev, timeout=15)
            expected = {f"rs/k{k}": str(16 + k).encode() for k in (1, 2, 3)}
            expected |= {"rs/k9": b"last", "rs/k8": b"after-delete"}
            assert dict(replica.items()) == expected
            assert replica.resyncs >= 1
    finally:
        await writer.aclose()
        await watching.aclose()
        await direct.aclose()
        await proxy.aclose()
