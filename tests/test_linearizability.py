"""Tests of the history checker: known-good and known-bad histories, the recorder, and
random histories from a simulated linearizable register, accepted as they are and
rejected once a read is made to return a value that was never written."""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
from collections.abc import Hashable
from dataclasses import replace
from typing import Literal, NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from .linearizability import Cas, History, Op, Operation, Read, Write, check

K = "k"


def done(h: History, client: str, op: Op, result: Hashable = None, key: str = K) -> None:
    """A sequential operation: invoked and completed with nothing in between."""
    h.invoke(client, key, op).ok(result)


def assert_illegal(h: History | list[Operation]) -> str:
    result = check(h)
    assert result.outcome == "illegal", result.explanation
    assert not result.ok
    return result.explanation


def assert_ok(h: History | list[Operation]) -> None:
    result = check(h)
    assert result.ok, result.explanation


# Known-good histories


def test_empty_history() -> None:
    result = check(History())
    assert result.ok
    assert result.keys == {}


def test_sequential() -> None:
    h = History()
    done(h, "a", Read(), None)
    done(h, "a", Write(1))
    done(h, "b", Read(), 1)
    done(h, "b", Cas(1, 2), True)
    done(h, "a", Cas(1, 3), False)
    done(h, "a", Read(), 2)
    done(h, "b", Write(None))
    done(h, "a", Cas(None, 4), True)
    done(h, "b", Read(), 4)
    assert_ok(h)


@pytest.mark.parametrize("seen", [1, 2])
def test_overlapping_writes_read_sees_either(seen: int) -> None:
    h = History()
    w1 = h.invoke("a", K, Write(1))
    w2 = h.invoke("b", K, Write(2))
    r = h.invoke("c", K, Read())
    w1.ok()
    w2.ok()
    r.ok(seen)
    done(h, "c", Read(), seen)  # whichever it saw is the final value
    assert_ok(h)


def test_read_concurrent_with_write_sees_old_then_new() -> None:
    h = History()
    done(h, "a", Write(1))
    w = h.invoke("a", K, Write(2))
    done(h, "b", Read(), 1)
    done(h, "c", Read(), 2)
    done(h, "b", Read(), 2)
    w.ok()
    assert_ok(h)


@pytest.mark.parametrize("winner", [1, 2])
def test_cas_race_exactly_one_wins(winner: int) -> None:
    h = History()
    done(h, "a", Write(0))
    c1 = h.invoke("a", K, Cas(0, 1))
    c2 = h.invoke("b", K, Cas(0, 2))
    c2.ok(winner == 2)
    c1.ok(winner == 1)
    done(h, "c", Read(), winner)
    assert_ok(h)


def test_ambiguous_write_shows_up_later() -> None:
    h = History()
    done(h, "a", Write(1))
    h.invoke("a", K, Write(2)).ambiguous()
    done(h, "b", Read(), 1)  # not yet applied: it may take effect long after the timeout
    done(h, "b", Read(), 2)
    done(h, "a", Read(), 2)
    assert_ok(h)


def test_ambiguous_write_never_shows_up() -> None:
    h = History()
    done(h, "a", Write(1))
    h.invoke("a", K, Write(2)).ambiguous()
    done(h, "b", Read(), 1)
    done(h, "a", Write(3))
    done(h, "b", Read(), 3)
    assert_ok(h)


def test_ambiguous_cas_may_have_swapped() -> None:
    h = History()
    done(h, "a", Write(1))
    h.invoke("a", K, Cas(1, 2)).ambiguous()
    done(h, "b", Cas(2, 3), True)
    done(h, "b", Read(), 3)
    assert_ok(h)


def test_pending_operation_counts_as_ambiguous() -> None:
    h = History()
    h.invoke("a", K, Write(7))  # its caller was cancelled: never completed
    done(h, "b", Read(), 7)
    assert_ok(h)
    assert h.operations()[0].ambiguous


def test_ambiguous_read_is_unconstrained() -> None:
    h = History()
    done(h, "a", Write(1))
    h.invoke("b", K, Read()).ambiguous()
    assert_ok(h)
    assert check(h).keys[K].operations == 1


def test_keys_are_independent() -> None:
    h = History()
    done(h, "a", Write(1), key="x")
    done(h, "a", Write(2), key="y")
    done(h, "b", Read(), 1, key="x")
    done(h, "b", Read(), 2, key="y")
    result = check(h)
    assert result.ok, result.explanation
    assert set(result.keys) == {"x", "y"}


def test_failed_operation_did_not_happen() -> None:
    h = History()
    done(h, "a", Write(1))
    h.invoke("a", K, Write(5)).fail()
    h.invoke("b", K, Cas(1, 6)).fail()
    done(h, "b", Read(), 1)
    assert_ok(h)
    assert [o.id for o in h.operations()] == [0, 3]
    assert len(h) == 4


# Known-bad histories


def test_stale_read_after_completed_write() -> None:
    h = History()
    done(h, "a", Write(1))
    done(h, "a", Write(2))
    done(h, "b", Read(), 1)
    assert "read() -> 1" in assert_illegal(h)


def test_read_of_value_never_written() -> None:
    h = History()
    done(h, "a", Write(1))
    done(h, "b", Read(), 7)
    assert_illegal(h)


def test_read_of_a_failed_write() -> None:
    h = History()
    h.invoke("a", K, Write(5)).fail()
    done(h, "b", Read(), 5)
    assert_illegal(h)


def test_read_of_value_written_later() -> None:
    h = History()
    done(h, "b", Read(), 1)
    done(h, "a", Write(1))
    assert_illegal(h)


@pytest.mark.parametrize("concurrent", [True, False])
def test_two_cas_with_same_expected_both_succeed(concurrent: bool) -> None:
    h = History()
    done(h, "a", Write(0))
    if concurrent:
        c1 = h.invoke("a", K, Cas(0, 1))
        c2 = h.invoke("b", K, Cas(0, 2))
        c1.ok(True)
        c2.ok(True)
    else:
        done(h, "a", Cas(0, 1), True)
        done(h, "b", Cas(0, 2), True)
    assert_illegal(h)


def test_cas_reported_not_swapped_although_it_matched() -> None:
    h = History()
    done(h, "a", Write(1))
    done(h, "b", Cas(1, 2), False)
    assert_illegal(h)


def test_read_goes_back_in_time() -> None:
    h = History()
    done(h, "a", Write(1))
    w = h.invoke("a", K, Write(2))
    done(h, "b", Read(), 2)
    w.ok()
    done(h, "b", Read(), 1)
    assert_illegal(h)


def test_reads_disagree_after_overlapping_writes() -> None:
    h = History()
    w1 = h.invoke("a", K, Write(1))
    w2 = h.invoke("b", K, Write(2))
    w1.ok()
    w2.ok()
    done(h, "c", Read(), 2)
    done(h, "c", Read(), 1)
    assert_illegal(h)


def test_lost_acknowledged_write() -> None:
    h = History()
    done(h, "a", Write(1))
    done(h, "a", Write(3))
    for client in "bcb":
        done(h, client, Read(), 1)
    assert_illegal(h)


def test_ambiguous_write_cannot_take_effect_twice() -> None:
    h = History()
    h.invoke("a", K, Write(2)).ambiguous()
    done(h, "b", Read(), 2)
    done(h, "b", Write(3))
    done(h, "b", Read(), 2)
    assert_illegal(h)


def test_ambiguous_write_cannot_take_effect_before_invocation() -> None:
    h = History()
    done(h, "b", Read(), 2)
    h.invoke("a", K, Write(2)).ambiguous()
    assert_illegal(h)


def test_explanation_names_key_and_smallest_failing_prefix() -> None:
    h = History()
    for v in range(10):
        done(h, "a", Write(v), key="good")
        done(h, "a", Write(v))
        done(h, "b", Read(), v)
    done(h, "b", Read(), 3)  # id 30: stale
    for v in range(5):
        done(h, "a", Write(v))
    result = check(h)
    assert result.outcome == "illegal"
    assert result.keys["good"].outcome == "ok"
    bad = result.keys[K]
    assert bad.culprit is not None
    assert bad.culprit.id == 30
    assert bad.prefix[-1] == bad.culprit
    assert len(bad.prefix) == 21  # 20 on this key before it, then the stale read
    assert "key 'k'" in result.explanation
    assert "'good'" not in result.explanation
    assert "#30 'b' read() -> 3" in result.explanation
    assert "5 earlier ops" in result.explanation


def test_out_of_budget_is_unknown_not_ok() -> None:
    h = History()
    writes = [h.invoke(f"c{v}", K, Write(v)) for v in range(8)]
    for w in writes:
        w.ok()
    done(h, "r", Read(), 99)
    result = check(h, max_steps=20)
    assert result.outcome == "unknown"
    assert not result.ok
    assert "gave up" in result.explanation
    assert check(h, timeout=0).outcome == "unknown"
    assert check(h).outcome == "illegal"


def test_manual_operations_with_real_clock_ties() -> None:
    # Equal times count as concurrent: a call at the instant of a return.
    ops = [
        Operation(0, "a", K, Write(1), call=0.0, ret=1.0),
        Operation(1, "b", K, Read(), call=1.0, ret=2.0, result=None),
    ]
    assert_ok(ops)
    assert_illegal([ops[0], replace(ops[1], call=1.5)])


# The recorder


def test_completing_twice_is_an_error() -> None:
    h = History()
    op = h.invoke("a", K, Write(1))
    op.ok()
    with pytest.raises(RuntimeError, match="already completed"):
        op.ambiguous()
    with pytest.raises(RuntimeError, match="already completed"):
        op.fail()


def test_cas_result_must_be_bool() -> None:
    h = History()
    with pytest.raises(TypeError):
        h.invoke("a", K, Cas(None, 1)).ok(1)
    with pytest.raises(TypeError):
        check([Operation(0, "a", K, Cas(None, 1), call=0, ret=1, result=1)])


def test_recorded_times_follow_real_order() -> None:
    h = History()
    a = h.invoke("a", K, Write(1))
    b = h.invoke("b", K, Read())
    a.ok("ignored")
    b.ok(1)
    h.invoke("c", K, Write(2)).ambiguous()
    ops = h.operations()
    assert [(o.call, o.ret, o.result) for o in ops] == [(1, 3, None), (2, 4, 1), (5, None, None)]
    assert str(ops[0]) == "#0 'a' write(1) -> ok  t=1..3"
    assert str(ops[2]) == "#2 'c' write(2) -> ?  t=5..?"


def test_recorder_from_threads() -> None:
    h = History()

    def client(name: str) -> None:
        for v in range(200):
            done(h, name, Write(v), key=name)
            done(h, name, Read(), v, key=name)

    threads = [threading.Thread(target=client, args=(f"t{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
        assert not t.is_alive(), f"{t.name} still running"
    ops = h.operations()
    assert len(ops) == 1600
    assert len({o.call for o in ops} | {o.ret for o in ops}) == 3200
    assert check(h).ok


class _Store:
    """A key-value store whose replies take a while; with ``stale`` its reads are served
    from a cache that is filled once and never invalidated."""

    def __init__(self, stale: bool) -> None:
        self.data: dict[str, int] = {}
        self.cache: dict[str, int | None] = {}
        self.stale = stale

    async def read(self, key: str, delay: float) -> int | None:
        await asyncio.sleep(delay)
        if self.stale:
            return self.cache.setdefault(key, self.data.get(key))
        return self.data.get(key)

    async def write(self, key: str, value: int, delay: float) -> None:
        await asyncio.sleep(delay)
        self.data[key] = value
        await asyncio.sleep(delay)


@pytest.mark.anyio
@pytest.mark.parametrize("stale", [False, True])
async def test_recorder_from_asyncio(stale: bool) -> None:
    store = _Store(stale)
    h = History()

    async def client(n: int) -> None:
        for i in range(6):
            delay = 0.001 * ((n * 7 + i * 3) % 4)
            if (n + i) % 2:
                op = h.invoke(n, K, Read())
                op.ok(await store.read(K, delay))
            else:
                op = h.invoke(n, K, Write(n * 10 + i))
                await store.write(K, n * 10 + i, delay)
                op.ok()

    await asyncio.gather(*(client(n) for n in range(4)))
    result = check(h)
    assert result.outcome == ("illegal" if stale else "ok"), result.explanation


# Random histories of a simulated linearizable register


Fate = Literal["ok", "fail", "ambiguous", "lost"]  # "lost": ambiguous, never took effect


class Spec(NamedTuple):
    """One planned operation of a client."""

    kind: Literal["read", "write", "cas"]
    key: int
    value: int  # written, or a CAS's new value
    expected: int | None  # a CAS's expected value
    gap: int  # idle time before the call, in units of 100
    duration: int  # call to return (or to giving up), in units of 100
    point: int  # 1..99: where in its interval it takes effect, in percent
    fate: Fate
    late: int  # an ambiguous operation's effect, this long after its call


spec = st.builds(
    Spec,
    kind=st.sampled_from(["read", "write", "cas"]),
    key=st.integers(0, 1),
    value=st.integers(0, 3),
    expected=st.sampled_from([None, 0, 1, 2, 3]),
    gap=st.integers(0, 4),
    duration=st.integers(1, 8),
    point=st.integers(1, 99),
    fate=st.sampled_from(["ok", "ok", "ok", "ok", "ok", "ok", "fail", "ambiguous", "lost"]),
    late=st.integers(1, 3000),
)
plans = st.lists(st.lists(spec, max_size=8), min_size=1, max_size=5)


def simulate(plan: list[list[Spec]]) -> History:
    """Run ``plan`` (one list of operations per client) against a linearizable register.

    Each operation that takes effect does so at one instant: strictly inside its
    interval, or for an ambiguous one anywhere after its call. The register is then
    run sequentially in the order of those instants, and the history replayed into a
    recorder in the order of calls and returns. Client ``c``'s times are ``c`` modulo
    100, so no two events coincide.
    """
    timed: list[tuple[int, int, Spec, int]] = []  # (call, return, spec, client)
    effects: list[tuple[float, int]] = []  # (instant, index into timed)
    for c, ops in enumerate(plan):
        t = c
        for s in ops:
            call = t + 100 * s.gap + 100
            ret = call + 100 * s.duration
            t = ret
            if s.fate == "ok":
                effects.append((call + s.point * s.duration, len(timed)))
            elif s.fate == "ambiguous":
                effects.append((call + s.late + 0.5, len(timed)))
            timed.append((call, ret, s, c))

    register: dict[int, int | None] = {}
    results: dict[int, Hashable] = {}
    for _, i in sorted(effects):
        s = timed[i][2]
        current = register.get(s.key)
        if s.kind == "read":
            results[i] = current
        elif s.kind == "write":
            register[s.key] = s.value
        else:
            results[i] = current == s.expected
            if current == s.expected:
                register[s.key] = s.value

    events = sorted(
        [(call, 0, i) for i, (call, _, _, _) in enumerate(timed)]
        + [(ret, 1, i) for i, (_, ret, _, _) in enumerate(timed)]
    )
    h = History()
    handles = {}
    for _, is_return, i in events:
        _, _, s, c = timed[i]
        if not is_return:
            op: Op = Read() if s.kind == "read" else Write(s.value)
            if s.kind == "cas":
                op = Cas(s.expected, s.value)
            handles[i] = h.invoke(c, s.key, op)
        elif s.fate == "ok":
            handles[i].ok(results.get(i))
        elif s.fate == "fail":
            handles[i].fail()
        else:
            handles[i].ambiguous()
    return h


@settings(max_examples=50, deadline=None)
@given(plans)
def test_simulated_linearizable_histories_pass(plan: list[list[Spec]]) -> None:
    result = check(simulate(plan))
    assert result.ok, result.explanation


@st.composite
def plans_with_a_read(draw: st.DrawFn) -> list[list[Spec]]:
    """A plan with at least one read that returns: one is put in at a random place."""
    plan = draw(plans)
    read = draw(spec.map(lambda s: s._replace(kind="read", fate="ok")))
    ops = plan[draw(st.integers(0, len(plan) - 1))]
    ops.insert(draw(st.integers(0, len(ops))), read)
    return plan


@settings(max_examples=50, deadline=None)
@given(plans_with_a_read(), st.data())
def test_read_of_unwritten_value_fails(plan: list[list[Spec]], data: st.DataObject) -> None:
    ops = simulate(plan).operations()
    reads = [i for i, o in enumerate(ops) if isinstance(o.op, Read) and not o.ambiguous]
    assert reads, "the plan has a read that returns: the property must get to check it"
    i = data.draw(st.sampled_from(reads))
    ops[i] = replace(ops[i], result="never written")
    result = check(ops)
    assert result.outcome == "illegal"
    # The smallest failing prefix ends at that read: cut before it returns, the history
    # is a cut of the linearizable one (with the read pending, so unconstrained).
    bad = result.keys[ops[i].key]
    assert bad.culprit == ops[i]


def _random_plan(
    rng: random.Random, clients: int, per_client: int, ambiguous: float
) -> list[list[Spec]]:
    """Like a fault test: each write has its own value, a CAS expects a recent one."""
    values = itertools.count(1)

    def one() -> Spec:
        value = next(values)
        u = rng.random()
        fate: Fate = "ok"
        if u < ambiguous:
            fate = "ambiguous" if u < ambiguous / 2 else "lost"
        elif u < ambiguous + 0.05:
            fate = "fail"
        return Spec(
            kind=rng.choice(["read", "read", "write", "cas"]),
            key=0,
            value=value,
            expected=rng.choice([None, *range(max(1, value - 20), value)]),
            gap=rng.randrange(3),
            duration=rng.randrange(1, 12),
            point=rng.randrange(1, 100),
            fate=fate,
            late=rng.randrange(1, 5000),
        )

    return [[one() for _ in range(per_client)] for _ in range(clients)]


@pytest.mark.parametrize("ambiguous", [0.1, 0.25])
@pytest.mark.parametrize("seed", range(4))
def test_two_hundred_operations_eight_clients(seed: int, ambiguous: float) -> None:
    h = simulate(_random_plan(random.Random(seed), 8, 25, ambiguous))
    ops = h.operations()
    assert len(ops) > 180
    result = check(h, max_steps=100_000)
    assert result.ok, result.explanation
    reads = [i for i, o in enumerate(ops) if isinstance(o.op, Read) and not o.ambiguous]
    i = reads[len(reads) // 2]
    ops[i] = replace(ops[i], result="never written")
    result = check(ops, max_steps=1_000_000)
    assert result.outcome == "illegal"
    assert result.keys[0].culprit == ops[i]


# Random small histories, legal or not, against a brute-force search


def brute_force(ops: list[Operation]) -> bool:
    """Whether some subset of the ambiguous operations, with all definite ones, has an
    order that respects real time and runs correctly on a register."""
    definite = [o for o in ops if not o.ambiguous]
    ambiguous = [o for o in ops if o.ambiguous]
    for r in range(len(ambiguous) + 1):
        for chosen in itertools.combinations(ambiguous, r):
            for order in itertools.permutations(definite + list(chosen)):
                if _respects_real_time(order) and _runs(order):
                    return True
    return False


def _respects_real_time(order: tuple[Operation, ...]) -> bool:
    return not any(
        b.ret is not None and b.ret < a.call for i, a in enumerate(order) for b in order[i + 1 :]
    )


def _runs(order: tuple[Operation, ...]) -> bool:
    value: Hashable = None
    for o in order:
        if isinstance(o.op, Read):
            if not o.ambiguous and o.result != value:
                return False
        elif isinstance(o.op, Write):
            value = o.op.value
        else:
            swapped = value == o.op.expected
            if not o.ambiguous and o.result != swapped:
                return False
            if swapped:
                value = o.op.new
    return True


register_values = st.sampled_from([None, 0, 1, 2])


@st.composite
def small_histories(draw: st.DrawFn) -> list[Operation]:
    ops = []
    for i in range(draw(st.integers(1, 5))):
        op: Op = draw(
            st.one_of(
                st.builds(Read),
                st.builds(Write, register_values),
                st.builds(Cas, register_values, register_values),
            )
        )
        call = draw(st.integers(0, 10))
        if draw(st.integers(0, 4)) == 0:
            ret, result = None, None
        else:
            ret = call + draw(st.integers(1, 5))
            result = draw(st.booleans() if isinstance(op, Cas) else register_values)
        ops.append(Operation(i, draw(st.integers(0, 2)), K, op, call, ret, result))
    return ops


@settings(max_examples=200, deadline=None)
@given(small_histories())
def test_agrees_with_brute_force(ops: list[Operation]) -> None:
    result = check(ops)
    assert result.outcome == ("ok" if brute_force(ops) else "illegal"), result.explanation
    if result.ok:
        return
    culprit = result.keys[K].culprit
    assert culprit is not None
    assert culprit.ret is not None
    assert not brute_force(_cut(ops, culprit.ret))
    earlier = [o.ret for o in ops if o.ret is not None and o.ret < culprit.ret]
    if earlier:
        assert brute_force(_cut(ops, max(earlier)))


def _cut(ops: list[Operation], end: float) -> list[Operation]:
    """The history as it stood at ``end``, operations still pending made ambiguous."""
    return [
        o if o.ret is not None and o.ret <= end else replace(o, ret=None, result=None)
        for o in ops
        if o.call <= end
    ]
