"""Writes whose outcome is unknown stay unknown, and the activation catches up.

A backend raises ``OutcomeUnknown`` when a write may or may not have been applied (etcd
lost the answer during a leader failover). ``save``, ``emit`` and the activation claim
then try to confirm the outcome; when they cannot, the caller gets ``OutcomeUnknown``
(never a plain ``Unavailable``, which would say "certainly not applied"), and the
activation reloads its state before its next message, so the next handler sees the
write if it was applied and its next write does not conflict with itself.

The deterministic cases inject faults around a real ``memory://`` store
(tests/faulty.py); the last ones take a real etcd cluster's quorum away mid-write.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Sequence

import msgspec
import pytest

from kerna import Agent, AgentRef, Kernel, Message, RemoteError, Unavailable, handler
from kerna.state import Compare, Delete, Layout, Op, Put, StateBackend, TxnResult, connect
from kerna.state._memory import MemoryBackend
from kerna.testing import EtcdCluster

from .agents import GetValue, Register, SetValue, Value
from .faulty import FaultyBackend

pytestmark = pytest.mark.anyio
_names = itertools.count()


class Total(msgspec.Struct, frozen=True):
    n: int = 0
    events: int = 0


class Added(Message, tag="ambiguous.added"):
    n: int


class Add(Message):
    n: int


class GetTotal(Message):
    pass


class Ledger(Agent, state=Total, event_sourced=True):
    @staticmethod
    def apply(state: Total, event: Added) -> Total:
        return Total(state.n + event.n, state.events + 1)

    @handler
    async def add(self, msg: Add) -> int:
        await self.emit(Added(n=msg.n))
        return int(self.state.n)

    @handler
    async def total(self, msg: GetTotal) -> Total:
        return self.state  # type: ignore[no-any-return]


async def stored_value(backend: StateBackend, key: str) -> tuple[str, int]:
    kv = await backend.get(Layout().state("Register", key))
    assert kv is not None
    return msgspec.msgpack.decode(kv.value, type=Value).v, kv.mod_revision


async def ask_error(ref: AgentRef, message: Message) -> RemoteError:
    with pytest.raises(RemoteError) as info:
        await ref.ask(message, timeout=5)
    return info.value


# -- save ----------------------------------------------------------------------------------


async def test_save_applied_but_unconfirmed_is_outcome_unknown_and_the_next_message_sees_it(
    faulty: FaultyBackend,
) -> None:
    async with Kernel(state=faulty, lease_ttl=30) as kernel:
        kernel.register(Register)
        ref = kernel.ref(Register, "r")
        await ref.ask(SetValue(v="one"), timeout=5)
        faulty.plan("applied", "down")  # the write lands; confirming it fails
        error = await ask_error(ref, SetValue(v="two"))
        assert error.type_name == "kerna.OutcomeUnknown", error
        assert not faulty.script
        # the next handler sees the write (the activation reloaded it) ...
        assert await ref.ask(GetValue(), timeout=5) == "two"
        # ... and its next write does not conflict with it
        rev = await ref.ask(SetValue(v="three"), timeout=5)
        assert await stored_value(faulty.inner, "r") == ("three", rev)


async def test_save_lost_and_unconfirmed_is_outcome_unknown_and_the_next_message_sees_the_old(
    faulty: FaultyBackend,
) -> None:
    async with Kernel(state=faulty, lease_ttl=30) as kernel:
        kernel.register(Register)
        ref = kernel.ref(Register, "r")
        await ref.ask(SetValue(v="one"), timeout=5)
        faulty.plan("lost", "down")
        error = await ask_error(ref, SetValue(v="two"))
        assert error.type_name == "kerna.OutcomeUnknown", error
        assert await ref.ask(GetValue(), timeout=5) == "one"
        rev = await ref.ask(SetValue(v="three"), timeout=5)
        assert await stored_value(faulty.inner, "r") == ("three", rev)


async def test_save_whose_answer_was_lost_is_confirmed_when_the_store_answers_again(
    faulty: FaultyBackend,
) -> None:
    async with Kernel(state=faulty, lease_ttl=30) as kernel:
        kernel.register(Register)
        ref = kernel.ref(Register, "r")
        await ref.ask(SetValue(v="one"), timeout=5)
        for fault, value in (("applied", "two"), ("lost", "three")):
            faulty.plan(fault)  # the confirmation reaches the store
            rev = await ref.ask(SetValue(v=value), timeout=5)
            assert await stored_value(faulty.inner, "r") == (value, rev)
        rev = await ref.ask(SetValue(v="four"), timeout=5)
        assert await stored_value(faulty.inner, "r") == ("four", rev)


async def test_a_failed_reload_fails_that_message_and_the_next_one_reloads(
    faulty: FaultyBackend,
) -> None:
    async with Kernel(state=faulty, lease_ttl=30) as kernel:
        kernel.register(Register)
        ref = kernel.ref(Register, "r")
        await ref.ask(SetValue(v="one"), timeout=5)
        faulty.plan("applied", "down")
        assert (await ask_error(ref, SetValue(v="two"))).type_name == "kerna.OutcomeUnknown"
        faulty.plan("down")  # the reload before the next message fails
        error = await ask_error(ref, GetValue())
        assert error.type_name == "kerna.Unavailable", error
        assert not faulty.script
        assert await ref.ask(GetValue(), timeout=5) == "two"  # the agent lives on, reloads
        await ref.ask(SetValue(v="three"), timeout=5)
        assert kernel.stats().types["Register"].activations == 1


async def test_a_stale_activation_reloads_before_a_conflict_retry(
    faulty: FaultyBackend,
) -> None:
    async with Kernel(state=faulty, lease_ttl=30) as kernel:
        kernel.register(Register, conflict_retries=2)
        ref = kernel.ref(Register, "r")
        await ref.ask(SetValue(v="one"), timeout=5)
        faulty.plan("applied", "down")
        assert (await ask_error(ref, SetValue(v="two"))).type_name == "kerna.OutcomeUnknown"
        before = len(faulty.calls)
        rev = await ref.ask(SetValue(v="three"), timeout=5)
        assert faulty.calls[before:] == ["get", "txn"]  # reload, then one write: no conflict
        assert await stored_value(faulty.inner, "r") == ("three", rev)


# -- emit ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("fault", "seen"), [("applied", Total(3, 2)), ("lost", Total(1, 1))])
async def test_emit_unconfirmed_is_outcome_unknown_and_the_next_message_sees_the_log(
    faulty: FaultyBackend, fault: str, seen: Total
) -> None:
    async with Kernel(state=faulty, lease_ttl=30) as kernel:
        kernel.register(Ledger)
        ref = kernel.ref(Ledger, "l")
        assert await ref.ask(Add(n=1), timeout=5) == 1
        faulty.plan(fault, "down")
        error = await ask_error(ref, Add(n=2))
        assert error.type_name == "kerna.OutcomeUnknown", error
        assert not faulty.script
        assert await ref.ask(GetTotal(), timeout=5) == seen
        assert await ref.ask(Add(n=10), timeout=5) == seen.n + 10  # no conflict with itself


async def test_emit_whose_answer_was_lost_is_confirmed_when_the_store_answers_again(
    faulty: FaultyBackend,
) -> None:
    async with Kernel(state=faulty, lease_ttl=30) as kernel:
        kernel.register(Ledger)
        ref = kernel.ref(Ledger, "l")
        assert await ref.ask(Add(n=1), timeout=5) == 1
        faulty.plan("applied")
        assert await ref.ask(Add(n=2), timeout=5) == 3
        faulty.plan("lost")
        assert await ref.ask(Add(n=4), timeout=5) == 7
        assert await ref.ask(GetTotal(), timeout=5) == Total(7, 3)
    async with Kernel(state=faulty.inner) as kernel:  # the log holds each event once
        kernel.register(Ledger)
        assert await kernel.ref(Ledger, "l").ask(GetTotal(), timeout=5) == Total(7, 3)


# -- the claim lost between the two attempts -----------------------------------------------


class LosesTheClaim(FaultyBackend):
    """A ``FaultyBackend`` whose next faulted transaction is followed, before its caller
    can try again, by the loss of the agent's claim (the kernel's lease lapsed) and,
    with ``other_write``, another writer's write of the state key."""

    def __init__(self) -> None:
        super().__init__(MemoryBackend())
        self.claim_of: tuple[str, str] | None = None  # (type, key): lose it after a fault
        self.other_write: bytes | None = None

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        try:
            return await super().txn(compares, success, failure)
        except Unavailable:
            if self.claim_of is not None:
                agent_type, key = self.claim_of
                self.claim_of = None
                ops: list[Op] = [Delete(Layout().claim(agent_type, key))]
                if self.other_write is not None:
                    ops.append(Put(Layout().state(agent_type, key), self.other_write))
                await self.inner.txn([], ops)
            raise


@pytest.fixture
async def loses_the_claim() -> AsyncIterator[LosesTheClaim]:
    backend = LosesTheClaim()
    try:
        yield backend
    finally:
        await backend.aclose()


async def active(kernel: Kernel, agent_type: str) -> int:
    await kernel.wait_idle(timeout=5)  # a deactivation requested has run
    return kernel.stats().types[agent_type].active


async def test_a_save_applied_before_its_claim_was_lost_is_kept_and_the_activation_leaves(
    loses_the_claim: LosesTheClaim,
) -> None:
    async with Kernel(state=loses_the_claim, lease_ttl=30) as kernel:
        kernel.register(Register)
        ref = kernel.ref(Register, "r")
        await ref.ask(SetValue(v="one"), timeout=5)
        loses_the_claim.plan("applied")  # lands; its answer is lost; then the claim goes
        loses_the_claim.claim_of = ("Register", "r")
        rev = await ref.ask(SetValue(v="two"), timeout=5)  # the second attempt finds it
        assert await stored_value(loses_the_claim.inner, "r") == ("two", rev)
        assert await active(kernel, "Register") == 0  # it no longer owns the agent
        assert await ref.ask(GetValue(), timeout=5) == "two"  # a new activation, claimed anew
        assert await loses_the_claim.inner.get(Layout().claim("Register", "r")) is not None


async def test_a_save_unconfirmed_when_another_writer_took_over_adopts_its_state_and_leaves(
    loses_the_claim: LosesTheClaim,
) -> None:
    async with Kernel(state=loses_the_claim, lease_ttl=30) as kernel:
        kernel.register(Register)
        ref = kernel.ref(Register, "r")
        await ref.ask(SetValue(v="one"), timeout=5)
        loses_the_claim.plan("lost")
        loses_the_claim.claim_of = ("Register", "r")
        loses_the_claim.other_write = msgspec.msgpack.encode(Value(v="other"))
        error = await ask_error(ref, SetValue(v="two"))
        assert error.type_name == "kerna.OutcomeUnknown", error
        assert await active(kernel, "Register") == 0
        assert await ref.ask(GetValue(), timeout=5) == "other"


async def test_an_emit_applied_before_its_claim_was_lost_is_kept_and_the_activation_leaves(
    loses_the_claim: LosesTheClaim,
) -> None:
    async with Kernel(state=loses_the_claim, lease_ttl=30) as kernel:
        kernel.register(Ledger)
        ref = kernel.ref(Ledger, "l")
        assert await ref.ask(Add(n=1), timeout=5) == 1
        loses_the_claim.plan("applied")
        loses_the_claim.claim_of = ("Ledger", "l")
        assert await ref.ask(Add(n=2), timeout=5) == 3  # read back: its own event
        assert await active(kernel, "Ledger") == 0
        assert await ref.ask(GetTotal(), timeout=5) == Total(3, 2)


# -- the activation claim ------------------------------------------------------------------


async def test_an_unconfirmed_claim_is_cleaned_up_so_another_kernel_can_activate() -> None:
    name = f"memory://ambiguous-claim-{next(_names)}"
    store = await connect(name)
    faulty = FaultyBackend(await connect(name))
    claim = Layout().claim("Register", "r")
    try:
        async with (
            Kernel(state=faulty, lease_ttl=30, max_restarts=0) as a,
            Kernel(state=store, lease_ttl=30) as b,
        ):
            a.register(Register)
            b.register(Register)
            start = (await store.range("")).revision + 1
            faulty.plan("applied", "down")  # a's claim lands; confirming it fails
            error = await ask_error(a.ref(Register, "r"), SetValue(v="a"))
            assert error.type_name == "kerna.OutcomeUnknown", error
            # a does not keep a claim it does not know it holds: it deletes it
            async with asyncio.timeout(5):
                async for event in store.watch(claim, start):
                    if event.kind == "delete":
                        break
            rev = await b.ref(Register, "r").ask(SetValue(v="b"), timeout=5)
            assert await stored_value(store, "r") == ("b", rev)
    finally:
        await faulty.aclose()
        await store.aclose()


async def test_an_unconfirmed_claim_is_adopted_by_the_next_activation_attempt(
    faulty: FaultyBackend,
) -> None:
    async with Kernel(state=faulty, lease_ttl=30, max_restarts=1, restart_backoff=0.01) as kernel:
        kernel.register(Register)
        faulty.plan("applied", "down")  # the first attempt's claim lands unconfirmed
        rev = await kernel.ref(Register, "r").ask(SetValue(v="one"), timeout=5)
        assert await stored_value(faulty.inner, "r") == ("one", rev)
        claim = await faulty.inner.get(Layout().claim("Register", "r"))
        assert claim is not None
        assert claim.lease == kernel._store().lease  # noqa: SLF001 - the test inspects the kernel claims
        assert kernel._store().claims._orphans == {}  # nothing left to clean up behind it  # noqa: SLF001 - the test inspects the kernel claims
        rev = await kernel.ref(Register, "r").ask(SetValue(v="two"), timeout=5)
        assert await stored_value(faulty.inner, "r") == ("two", rev)


# -- real etcd: the quorum goes away under a write ----------------------------------------

FAST = {"timeout": 1.0, "probe_interval": 0.1, "probe_timeout": 0.3}


async def _quorum_back(cluster: EtcdCluster, backend: StateBackend, p: str) -> None:
    for member in cluster.members:
        await asyncio.to_thread(member.wait_ready)
    # A committed write orders itself after whatever the lost write's leader still had
    # in its log: from here on the outcome is settled (applied, or never will be).
    async with asyncio.timeout(15):
        while True:
            try:
                await backend.put(p + "barrier", b"")
                return
            except Unavailable:  # the cluster may still be electing: try again
                await asyncio.sleep(0.1)


async def test_save_during_a_quorum_loss_is_outcome_unknown_then_the_agent_catches_up(
    etcd_cluster: EtcdCluster,
) -> None:
    leader = etcd_cluster.leader()
    backend = await connect(etcd_cluster.url_from(leader), **FAST)
    p = "quorum-save/"
    try:
        async with Kernel(state=backend, state_prefix=p, lease_ttl=30) as kernel:
            kernel.register(Register)
            ref = kernel.ref(Register, "r")
            await ref.ask(SetValue(v="before"), timeout=10)
            followers = [m for m in etcd_cluster.members if m is not leader]
            for member in followers:
                member.pause()  # the leader takes the write but cannot commit it
            try:
                with pytest.raises(RemoteError) as info:
                    await ref.ask(SetValue(v="during"), timeout=10)
                assert info.value.type_name == "kerna.OutcomeUnknown", info.value
            finally:
                for member in followers:
                    member.resume()
            await _quorum_back(etcd_cluster, backend, p)
            kv = await backend.get(Layout(p).state("Register", "r"))
            assert kv is not None
            stored = msgspec.msgpack.decode(kv.value, type=Value).v
            assert stored in ("before", "during")
            assert await ref.ask(GetValue(), timeout=10) == stored
            rev = await ref.ask(SetValue(v="after"), timeout=10)  # no conflict with itself
            kv = await backend.get(Layout(p).state("Register", "r"))
            assert kv is not None
            assert (msgspec.msgpack.decode(kv.value, type=Value).v, kv.mod_revision) == (
                "after",
                rev,
            )
    finally:
        await backend.aclose()


async def test_emit_during_a_quorum_loss_is_outcome_unknown_then_the_agent_catches_up(
    etcd_cluster: EtcdCluster,
) -> None:
    leader = etcd_cluster.leader()
    backend = await connect(etcd_cluster.url_from(leader), **FAST)
    p = "quorum-emit/"
    try:
        async with Kernel(state=backend, state_prefix=p, lease_ttl=30) as kernel:
            kernel.register(Ledger)
            ref = kernel.ref(Ledger, "l")
            assert await ref.ask(Add(n=1), timeout=10) == 1
            followers = [m for m in etcd_cluster.members if m is not leader]
            for member in followers:
                member.pause()
            try:
                with pytest.raises(RemoteError) as info:
                    await ref.ask(Add(n=2), timeout=10)
                assert info.value.type_name == "kerna.OutcomeUnknown", info.value
            finally:
                for member in followers:
                    member.resume()
            await _quorum_back(etcd_cluster, backend, p)
            page = await backend.range(Layout(p).log_prefix("Ledger", "l"))
            stored = len(page.kvs)
            assert stored in (1, 2)
            expected = Total(1 if stored == 1 else 3, stored)
            assert await ref.ask(GetTotal(), timeout=10) == expected
            assert await ref.ask(Add(n=10), timeout=10) == expected.n + 10
    finally:
        await backend.aclose()
