"""A linearizability checker for the registers that the fault tests exercise.

The fault tests record every operation they send to a store in a :class:`History`:
when it was invoked, and how it ended: with a result (``ok``), definitely not applied
(``fail``: dropped from the history), or with an unknown outcome (``ambiguous``: a
timeout or a lost connection after the request left). :func:`check` then asks whether
some order of the operations explains every result: a sequential run of a
read/write/compare-and-swap register, starting empty (``None``), in which each
operation takes effect at one instant between its invocation and its completion.

The search is Wing & Gong's (1993, "Testing and verifying concurrent objects") as
improved by Lowe (2017, "Testing for linearizability") and implemented by Anish
Athalye's Porcupine:

* **P-compositionality.** A history is linearizable if and only if its restriction to
  each register is, so it is split per key and each part searched alone (the fault
  tests keep each part to about 200 operations).
* **Entries.** Each operation becomes a call event and a return event, sorted by time
  (a call before a return at the same time, which makes them concurrent: the
  conservative reading), and threaded on a doubly linked list.
* **Search.** Walking the list from its head, every call met before the first return
  is an operation that may take effect next. The search tries one whose result the
  model accepts in the current state: it *lifts* both its events out of the list,
  pushes it on a stack and starts again from the head. Meeting a return whose
  operation has not taken effect is a dead end: the search pops the last operation,
  *unlifts* it (puts its events back) and tries the next candidate after it.
* **Cache.** A node of the search is the set of operations already linearized (a
  bitset) and the register's value. The continuations from a node depend on nothing
  else, so a node that has once been a dead end is never explored again.

Ambiguous operations return at +infinity: after every other event, so they may take
effect at any point after their invocation. The search succeeds as soon as every
*definite* operation is linearized; ambiguous ones still in the list then never took
effect, which is allowed. An ambiguous read constrains nothing and is dropped; an
ambiguous compare-and-swap that did not swap changed nothing, the same as never taking
effect, so linearizing one means it swapped. A node with fewer ambiguous operations
linearized can do whatever one with more can (the extra ones may stay out), so the
cache prunes a node when a dead end had the same definite operations, the same value
and a subset of its ambiguous ones; to find those small dead ends first, each node
tries its definite candidates before its ambiguous ones.

Three reductions, each keeping at least one linearization if there is any, make the
search much smaller (``_search`` gives the arguments): a read, or a CAS that did not
swap, that the current value satisfies is linearized at once, without trying
alternatives; an ambiguous operation is linearized only just before an operation that
needs its effect; and of ambiguous operations with the same effect, only the earliest
invoked one not yet linearized is tried. Measured on simulated histories of 200
operations from 8 clients, a quarter of them ambiguous, with a distinct value per
write: at most some tens of thousands of steps (tens of milliseconds) to accept one,
at most some hundreds of thousands (under half a second) to refute one with a single
bad read and find its smallest failing prefix. Few distinct values and many ambiguous
operations make refuting costlier: give every write its own value.

When a register's history is not linearizable, the explanation names its smallest
failing prefix: the history cut at each definite return (operations pending at the cut
become ambiguous) is linearizable up to some return and not after it, and a binary
search finds that return. Its operation is the one that could not be placed.

The search is exponential in the worst case, so it has a step budget and an optional
deadline; exhausting either gives the outcome ``"unknown"``, never a hang.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Final, Literal, TypeAlias

__all__ = [
    "Cas",
    "CheckResult",
    "History",
    "KeyResult",
    "Op",
    "OpHandle",
    "Operation",
    "Outcome",
    "Read",
    "Write",
    "check",
]

Outcome: TypeAlias = Literal["ok", "illegal", "unknown"]
Status: TypeAlias = Literal["pending", "ok", "failed", "ambiguous"]


@dataclass(frozen=True, slots=True)
class Read:
    """Read the register; the result is its value, ``None`` when absent."""

    def __str__(self) -> str:
        return "read()"


@dataclass(frozen=True, slots=True)
class Write:
    """Set the register to ``value`` (``None`` deletes it); the result is ignored."""

    value: Hashable

    def __str__(self) -> str:
        return f"write({self.value!r})"


@dataclass(frozen=True, slots=True)
class Cas:
    """Set the register to ``new`` if it holds ``expected``; the result says whether it did."""

    expected: Hashable
    new: Hashable

    def __str__(self) -> str:
        return f"cas({self.expected!r}, {self.new!r})"


Op: TypeAlias = Read | Write | Cas


@dataclass(frozen=True, slots=True)
class Operation:
    """One operation of a history.

    ``call`` and ``ret`` are times on one clock (the recorder's logical clock);
    ``ret`` is ``None`` for an ambiguous operation, which may take effect at any time
    after ``call``, or never. ``result`` is the value read, the boolean of a
    compare-and-swap, ``None`` for a write or an ambiguous operation.
    """

    id: int
    client: Hashable
    key: Hashable
    op: Op
    call: float
    ret: float | None
    result: Hashable = None

    @property
    def ambiguous(self) -> bool:
        return self.ret is None

    def __str__(self) -> str:
        if self.ret is None:
            outcome, end = "?", "?"
        else:
            outcome = "ok" if isinstance(self.op, Write) else repr(self.result)
            end = _time(self.ret)
        return f"#{self.id} {self.client!r} {self.op} -> {outcome}  t={_time(self.call)}..{end}"


def _time(t: float) -> str:
    return str(int(t)) if float(t).is_integer() else str(t)


class History:
    """Records register operations, from asyncio code or from threads.

    Record the invocation just before the request leaves and the completion just
    after its outcome is known, so that real-time order is kept: times come from a
    logical clock that advances under a lock with each event.

    Example::

        h = history.invoke("client-1", key, Cas(old, new))
        try:
            swapped = await store.cas(key, old, new)
        except Conflict:
            h.ok(False)  # or h.fail(), if the store reports the CAS as not applied
        except TimeoutError:
            h.ambiguous()
            raise
        else:
            h.ok(swapped)
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clock = 0
        self._handles: list[OpHandle] = []

    def invoke(self, client: Hashable, key: Hashable, op: Op) -> OpHandle:
        """Record that ``client`` invoked ``op`` on the register ``key``, now."""
        with self._lock:
            self._clock += 1
            handle = OpHandle(self, len(self._handles), client, key, op, self._clock)
            self._handles.append(handle)
        return handle

    def operations(self) -> list[Operation]:
        """The operations that count, in invocation order.

        Failed operations are left out; operations still pending (their caller was
        cancelled, say) count as ambiguous.
        """
        with self._lock:
            return [op for h in self._handles if (op := h._operation()) is not None]  # noqa: SLF001 - History and its handles are one unit

    def __len__(self) -> int:
        """How many operations were invoked, failed ones included."""
        return len(self._handles)

    def _complete(self, handle: OpHandle, status: Status, result: Hashable) -> None:
        with self._lock:
            if handle._status != "pending":  # noqa: SLF001 - History and its handles are one unit
                raise RuntimeError(f"operation #{handle.id} already completed: {handle._status}")  # noqa: SLF001 - History and its handles are one unit
            self._clock += 1
            handle._status, handle._result, handle._ret = status, result, self._clock  # noqa: SLF001 - History and its handles are one unit


class OpHandle:
    """An invoked operation, completed once by :meth:`ok`, :meth:`fail` or :meth:`ambiguous`."""

    __slots__ = ("_call", "_history", "_result", "_ret", "_status", "client", "id", "key", "op")

    def __init__(
        self, history: History, id: int, client: Hashable, key: Hashable, op: Op, call: int
    ) -> None:
        self._history = history
        self.id = id
        self.client = client
        self.key = key
        self.op = op
        self._call = call
        self._ret = 0
        self._status: Status = "pending"
        self._result: Hashable = None

    def ok(self, result: Hashable = None) -> None:
        """It completed: ``result`` is the value read, or whether a CAS swapped.

        A compare-and-swap that did not swap completed too (it saw another value):
        record it with ``ok(False)``, not :meth:`fail`.

        Raises:
            TypeError: a compare-and-swap's result is not a bool.
            RuntimeError: the operation was already completed.
        """
        if isinstance(self.op, Cas) and not isinstance(result, bool):
            raise TypeError(f"a compare-and-swap completes with a bool, not {result!r}")
        self._history._complete(self, "ok", None if isinstance(self.op, Write) else result)  # noqa: SLF001 - History and its handles are one unit

    def fail(self) -> None:
        """It definitely did not take effect (raised before sending, or rejected unapplied).

        Raises:
            RuntimeError: the operation was already completed.
        """
        self._history._complete(self, "failed", None)  # noqa: SLF001 - History and its handles are one unit

    def ambiguous(self) -> None:
        """Its outcome is unknown: it may take effect at any time after its invocation, or never.

        Raises:
            RuntimeError: the operation was already completed.
        """
        self._history._complete(self, "ambiguous", None)  # noqa: SLF001 - History and its handles are one unit

    def _operation(self) -> Operation | None:
        if self._status == "failed":
            return None
        definite = self._status == "ok"
        return Operation(
            id=self.id,
            client=self.client,
            key=self.key,
            op=self.op,
            call=self._call,
            ret=self._ret if definite else None,
            result=self._result if definite else None,
        )


@dataclass(frozen=True, slots=True)
class KeyResult:
    """The verdict on one register.

    ``operations`` counts those searched (ambiguous reads constrain nothing and are
    left out); ``steps`` the search steps spent. When ``outcome`` is ``"illegal"``,
    ``prefix`` holds the operations invoked before the smallest failing prefix ends, in
    invocation order, and ``culprit`` the operation whose return ends it.
    """

    key: Hashable
    outcome: Outcome
    operations: int
    steps: int
    explanation: str = ""
    prefix: tuple[Operation, ...] = ()
    culprit: Operation | None = None


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The verdict on a history: ``"illegal"`` if any register's is, else ``"unknown"`` if any."""

    outcome: Outcome
    keys: Mapping[Hashable, KeyResult]

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    @property
    def explanation(self) -> str:
        """What went wrong, one paragraph per register that is not ``"ok"``."""
        bad = [r.explanation for r in self.keys.values() if r.outcome != "ok"]
        return "\n".join(bad) if bad else f"linearizable ({len(self.keys)} keys)"


def check(
    history: History | Iterable[Operation],
    *,
    max_steps: int = 1_000_000,
    timeout: float | None = None,
) -> CheckResult:
    """Check that ``history`` is linearizable as a set of read/write/CAS registers.

    Args:
        history: a recorder, or operations (from :meth:`History.operations`, possibly
            edited, or built by hand with distinct ``id``\\s per key).
        max_steps: search steps allowed per register, explanation included, before
            its outcome is ``"unknown"``.
        timeout: seconds allowed for the whole check, after which the register being
            searched and those not yet searched are ``"unknown"``.

    Raises:
        TypeError: a completed compare-and-swap has a result that is not a bool.
    """
    ops = history.operations() if isinstance(history, History) else list(history)
    by_key: dict[Hashable, list[Operation]] = {}
    for o in ops:
        if isinstance(o.op, Cas) and o.ret is not None and not isinstance(o.result, bool):
            raise TypeError(f"a compare-and-swap completes with a bool: {o}")
        by_key.setdefault(o.key, []).append(o)
    deadline = None if timeout is None else time.monotonic() + timeout
    keys = {key: _check_key(key, kops, max_steps, deadline) for key, kops in by_key.items()}
    outcomes = {r.outcome for r in keys.values()}
    outcome: Outcome = (
        "illegal" if "illegal" in outcomes else "unknown" if "unknown" in outcomes else "ok"
    )
    return CheckResult(outcome, keys)


def _check_key(
    key: Hashable, ops: list[Operation], max_steps: int, deadline: float | None
) -> KeyResult:
    ops = [o for o in ops if not (o.ambiguous and isinstance(o.op, Read))]
    outcome, steps = _search(ops, max_steps, deadline)
    if outcome == "ok":
        return KeyResult(key, outcome, len(ops), steps)
    if outcome == "unknown":
        why = (
            f"key {key!r}: gave up after {steps} search steps ({len(ops)} ops); raise"
            " max_steps or timeout, shorten the history, or write distinct values"
        )
        return KeyResult(key, outcome, len(ops), steps, why)

    # Illegal: binary search for the first definite return past which no prefix is
    # linearizable. Prefixes are monotone (a linearization of a longer prefix, cut at
    # an instant, is one of the shorter), and the last one is the whole history.
    returns = sorted(o.ret for o in ops if o.ret is not None)
    lo, hi = 0, len(returns) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        found, spent = _search(_cut(ops, returns[mid]), max_steps - steps, deadline)
        steps += spent
        if found == "illegal":
            hi = mid
        elif found == "ok":
            lo = mid + 1
        else:  # out of budget: settle for the prefix known to fail
            break
    end = returns[hi]
    culprit = next(o for o in ops if o.ret == end)
    prefix = tuple(sorted((o for o in ops if o.call <= end), key=lambda o: (o.call, o.id)))
    return KeyResult(
        key, "illegal", len(ops), steps, _explain(key, len(ops), prefix, culprit), prefix, culprit
    )


def _cut(ops: list[Operation], end: float) -> list[Operation]:
    """The history as it stood at time ``end``: operations still pending become ambiguous."""
    cut: list[Operation] = []
    for o in ops:
        if o.call > end:
            continue
        if o.ret is not None and o.ret <= end:
            cut.append(o)
        elif not isinstance(o.op, Read):  # a pending read constrains nothing
            cut.append(replace(o, ret=None, result=None))
    return cut


_SHOWN = 16  # operations listed in an explanation


def _explain(key: Hashable, total: int, prefix: tuple[Operation, ...], culprit: Operation) -> str:
    end = culprit.ret
    lines = [
        f"key {key!r}: not linearizable ({total} ops). It is linearizable up to, not past,"
        f" the return of {culprit}.",
        f"The {len(prefix)} ops invoked by then, in invocation order:",
    ]
    if len(prefix) > _SHOWN:
        lines.append(f"  ... {len(prefix) - _SHOWN} earlier ops")
    for o in prefix[-_SHOWN:]:
        mark = ""
        if o is culprit:
            mark = "   <- cannot take effect"
        elif o.ret is not None and end is not None and o.ret > end:
            mark = "   (returned later)"
        lines.append(f"  {o}{mark}")
    return "\n".join(lines)


_READ, _WRITE, _CAS_SWAPPED, _CAS_NOT_SWAPPED = range(4)
_PURE, _EFFECT, _AMBIGUOUS = range(3)  # candidate classes, tried in this order
_FREE: Final = object()  # no constraint on the next operation


def _search(ops: list[Operation], max_steps: int, deadline: float | None) -> tuple[Outcome, int]:
    """Search for a linearization of one register's operations; see the module docstring.

    The list lives in arrays indexed by node: node 0 is the head, node ``2i + 1`` the
    call of ``ops[i]`` and ``2i + 2`` its return. ``match`` maps a call to its return
    (-1 for a return). Lifting an operation unlinks its two nodes; unlifting relinks
    them in the reverse order, which restores the list exactly because lifts and
    unlifts nest like a stack.

    Three reductions keep the search small without losing a linearization. All rest on
    one fact: an ambiguous operation's return is after every other event, so
    linearizing one never makes another operation a candidate, and one not yet
    linearized stays a candidate to the end.

    * A *pure* candidate (a definite read, or a CAS that did not swap) that the
      current value satisfies is linearized next and no alternative is tried: moving
      it to the front of any completion keeps the completion valid, since it changes
      nothing and no unlinearized operation returned before its call.
    * An ambiguous operation is linearized only just before an operation that *needs*
      it: one that the value before it does not satisfy. Any linearization can be
      made so: if the next operation would succeed without it, then either that one
      is pure and the two swap, or it sets the value and the ambiguous one is dropped
      (it did not take effect). ``need`` holds the value before it, to test the next.
    * Ambiguous operations with the same effect are interchangeable once invoked, so
      of two such, the later is only tried once the earlier is linearized.

    The cache is keyed by (definite bitset, value, need), and a dead end there also
    rules out every node with more ambiguous operations linearized (see the module
    docstring), so each key keeps the ambiguous bitsets of its dead ends.
    """
    n = len(ops)
    kind: list[int] = []
    cls: list[int] = []
    arg: list[Hashable] = []  # the value written, or a CAS's expected value
    new: list[Hashable] = []  # a CAS's new value
    res: list[Hashable] = []  # the value read
    twin: list[int] = []  # the previous ambiguous operation with the same effect, or -1
    for o in ops:
        a: Hashable = None
        b: Hashable = None
        if isinstance(o.op, Read):
            k = _READ
        elif isinstance(o.op, Write):
            k, a = _WRITE, o.op.value
        else:  # an ambiguous CAS that takes effect swapped; one that did not is a no-op
            k = _CAS_SWAPPED if o.ret is None or o.result else _CAS_NOT_SWAPPED
            a, b = o.op.expected, o.op.new
        kind.append(k)
        arg.append(a)
        new.append(b)
        res.append(o.result)
        twin.append(-1)
        if o.ret is None:
            cls.append(_AMBIGUOUS)
        else:
            cls.append(_PURE if k in (_READ, _CAS_NOT_SWAPPED) else _EFFECT)
    last_twin: dict[tuple[int, Hashable, Hashable], int] = {}
    for i in sorted(range(n), key=lambda i: (ops[i].call, i)):
        if cls[i] == _AMBIGUOUS:
            twin[i] = last_twin.get((kind[i], arg[i], new[i]), -1)
            last_twin[kind[i], arg[i], new[i]] = i

    def step(i: int, value: Hashable) -> tuple[bool, Hashable]:
        """Whether ``ops[i]`` can take effect on ``value``, and the value after."""
        k = kind[i]
        if k == _READ:
            return value == res[i], value
        if k == _WRITE:
            return True, arg[i]
        if k == _CAS_SWAPPED:
            return value == arg[i], new[i]
        return value != arg[i], value

    events = sorted(
        [(o.call, 0, 2 * i + 1) for i, o in enumerate(ops)]
        + [(math.inf if o.ret is None else o.ret, 1, 2 * i + 2) for i, o in enumerate(ops)]
    )
    order = [0] + [node for _, _, node in events]
    nxt = [-1] * (2 * n + 1)
    prv = [-1] * (2 * n + 1)
    for a_node, b_node in itertools.pairwise(order):
        nxt[a_node] = b_node
        prv[b_node] = a_node
    match = [-1] + [2 * i + 2 if j == 0 else -1 for i in range(n) for j in (0, 1)]

    def lift(call: int) -> None:
        for node in (call, match[call]):
            nxt[prv[node]] = nxt[node]
            if nxt[node] >= 0:
                prv[nxt[node]] = prv[node]

    def unlift(call: int) -> None:
        for node in (match[call], call):
            nxt[prv[node]] = node
            if nxt[node] >= 0:
                prv[nxt[node]] = node

    dead: dict[tuple[int, Hashable, object], list[int]] = {}
    stack: list[tuple[int, Hashable, object, int]] = []  # (call, value, need, phase) before
    state: Hashable = None
    need: object = _FREE
    done_def = done_amb = 0  # bitsets of linearized operations
    amb_left = cls.count(_AMBIGUOUS)
    left = n - amb_left  # definite operations not yet linearized
    entry = nxt[0]
    phase = _PURE  # the class of candidates being tried at this node
    steps = 0
    while left:
        steps += 1
        if steps > max_steps:
            return "unknown", steps
        if deadline is not None and steps & 1023 == 1 and time.monotonic() >= deadline:
            return "unknown", steps
        stuck = False
        if match[entry] >= 0:  # a call: try to linearize it next
            i = entry >> 1
            if cls[i] == phase and (phase != _AMBIGUOUS or twin[i] < 0 or done_amb >> twin[i] & 1):
                ok, after = step(i, state)
                if ok and (need is _FREE or not step(i, need)[0]):
                    bit = 1 << i
                    if phase == _AMBIGUOUS:
                        d, m, then = done_def, done_amb | bit, state
                    else:
                        d, m, then = done_def | bit, done_amb, _FREE
                    seen = dead.get((d, after, then))
                    if seen is None or all(s & ~m for s in seen):
                        stack.append((entry, state, need, phase))
                        state, need, done_def, done_amb = after, then, d, m
                        if phase == _AMBIGUOUS:
                            amb_left -= 1
                        else:
                            left -= 1
                        lift(entry)
                        entry, phase = nxt[0], _PURE
                        continue
                    stuck = phase == _PURE  # its only continuation is a known dead end
            if not stuck:
                entry = nxt[entry]
                continue
        elif phase == _PURE or (phase == _EFFECT and amb_left):
            entry, phase = nxt[0], phase + 1  # no candidate of this class worked: next class
            continue
        # A dead end: backtrack, through forced pure operations, to an open choice.
        while True:
            seen = dead.setdefault((done_def, state, need), [])
            seen[:] = [s for s in seen if done_amb & ~s]  # drop those this one subsumes
            seen.append(done_amb)
            if not stack:
                return "illegal", steps
            entry, state, need, phase = stack.pop()
            i = entry >> 1
            if phase == _AMBIGUOUS:
                done_amb ^= 1 << i
                amb_left += 1
            else:
                done_def ^= 1 << i
                left += 1
            unlift(entry)
            if phase != _PURE:
                break
        entry = nxt[entry]
    return "ok", steps
