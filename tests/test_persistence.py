"""The persistence contract: calls take what they need and return what is stored, raise
what went wrong, and change nothing but the store (the activation applies results)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
import pytest

from kerna import Conflict, DecodeError, Fenced
from kerna._ids import AgentId
from kerna._persistence import (
    NotWritten,
    Persistence,
    StateSpec,
    Stored,
    Written,
)
from kerna.state import EventSourcing

from .faulty import FaultyBackend

pytestmark = pytest.mark.anyio


class Count(msgspec.Struct, frozen=True):
    n: int = 0


class Added(msgspec.Struct, frozen=True):
    by: int


def add(state: Count, event: Added) -> Count:
    return Count(state.n + event.by)


PLAIN = StateSpec(Count, Count, None)
SOURCED = StateSpec(Count, Count, EventSourcing(Count, add, snapshot_every=2))


@pytest.fixture
async def store() -> AsyncIterator[Persistence]:
    persistence = await Persistence.open("memory://", prefix="kerna/", lease_ttl=30)
    try:
        yield persistence
    finally:
        await persistence.close()


async def test_a_save_returns_what_it_wrote_and_a_lost_race_carries_the_stored_state(
    store: Persistence,
) -> None:
    agent = AgentId("Counter", "c")
    claimed = await store.activate(agent, PLAIN)
    assert claimed.token > 0
    assert claimed.stored == Stored(Count())
    written = await store.save(agent, PLAIN, Count(1), token=claimed.token, revision=0)
    assert written == Written(Stored(Count(1), written.stored.revision))
    assert written.stored.revision > 0
    with pytest.raises(NotWritten) as info:  # a second writer that read revision 0
        await store.save(agent, PLAIN, Count(5), token=claimed.token, revision=0)
    assert isinstance(info.value.error, Conflict)
    assert info.value.stored == written.stored  # what the activation adopts
    assert info.value.owned
    assert await store.load(agent, PLAIN) == written.stored


async def test_activating_a_plain_state_claims_and_reads_it_in_one_transaction(
    faulty: FaultyBackend,
) -> None:
    store = Persistence(faulty, owned=False, prefix="kerna/", lease_ttl=30)
    try:
        agent = AgentId("Counter", "c")
        first = await store.activate(agent, PLAIN)
        written = await store.save(agent, PLAIN, Count(5), token=first.token, revision=0)
        await store.release(agent, first.token)
        before = len(faulty.calls)
        claimed = await store.activate(agent, PLAIN)  # a fresh claim
        assert faulty.calls[before:] == ["txn"]  # no separate state read
        assert claimed.stored == written.stored
        before = len(faulty.calls)
        again = await store.activate(agent, PLAIN)  # the claim is ours already
        assert faulty.calls[before:] == ["txn"]
        assert again == claimed
        before = len(faulty.calls)
        sourced = await store.activate(AgentId("Ledger", "l"), SOURCED)
        assert faulty.calls[before] == "txn"  # claimed, then the log is read
        assert len(faulty.calls) > before + 1
        assert sourced.stored == Stored(Count(), seq=0)
    finally:
        await store.close()


async def test_a_write_after_the_claim_is_released_is_fenced_and_nothing_is_written(
    store: Persistence,
) -> None:
    agent = AgentId("Counter", "c")
    claimed = await store.activate(agent, PLAIN)
    await store.release(agent, claimed.token)
    with pytest.raises(Fenced):
        await store.save(agent, PLAIN, Count(1), token=claimed.token, revision=0)
    with pytest.raises(Fenced):  # token 0: the activation holds no claim
        await store.save(agent, PLAIN, Count(1), token=0, revision=0)
    assert await store.load(agent, PLAIN) == Stored(Count())


async def test_an_append_returns_the_folded_state_and_its_sequence_number(
    store: Persistence,
) -> None:
    agent = AgentId("Account", "a")
    claimed = await store.activate(agent, SOURCED)
    assert claimed.stored == Stored(Count())
    events = (Added(2), Added(3))
    written = await store.emit(
        agent, SOURCED, events, state=Count(), seq=0, token=claimed.token, correlation=(7, 8)
    )
    assert written == Written(Stored(Count(5), seq=2))
    with pytest.raises(Conflict):  # appended after what another writer read
        await store.emit(
            agent, SOURCED, events, state=Count(), seq=0, token=claimed.token, correlation=(7, 9)
        )
    assert await store.load(agent, SOURCED) == Stored(Count(5), seq=2)


@pytest.mark.parametrize("spec", [PLAIN, SOURCED], ids=["plain", "event-sourced"])
async def test_the_replica_decoder_is_the_one_loading_uses(
    store: Persistence, spec: StateSpec
) -> None:
    agent = AgentId("Counter", "bad")
    await store.backend.put(store.layout.state(agent.type, agent.key), b"\xc1")
    with pytest.raises(DecodeError):
        await store.load(agent, spec)
    with pytest.raises(DecodeError):  # not msgspec's own error: the same decoding path
        Persistence.state_decoder(spec, "Counter")(b"\xc1")
