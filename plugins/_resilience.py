"""``Resilience``: named failure-handling policies applied per target, as middleware.

::

    resilience = Resilience(
        policies={"model": Policy(timeout=2.0, retry=Retry(on=(TimeoutError,)),
                                  breaker=Breaker(failures=5), fallback=keywords)},
        targets={Sentiment: "model", "openai": "model"},
    )
    kernel = Kernel(middleware=[resilience])

A target is an agent type (its class: one breaker, one bulkhead for every agent of
the type), one agent (an ``AgentId``: its own) or a named external dependency (a str:
what handlers call through ``dependency(self, "openai")``). An agent's own target wins
over its type's. The policy applies where the call is made, in the caller: an ask to
a target (its send hooks: ``before_send`` admits the first attempt and bounds it by the
policy's timeout, ``send_failed`` does the rest when it fails, each attempt a fresh
message, see ``kerna._chain``: a call whose first attempt succeeds costs no coroutine
of its own), or a dependency call. Tells and events pass untouched (their sender does not wait for
an outcome to retry, break or replace).

Each call: the bulkhead's slot (waiting within the deadline), then the breaker's
admission (``CircuitOpen`` at once while open), then the attempt, bounded by the
policy's timeout and the message's deadline; failures are retried per ``Retry``
(``kerna.plugins._policy``); what still fails (an open breaker, a timeout, an error)
goes to the fallback, if the policy names one. A fallback that fails too: the caller
gets the original error, its ``__cause__`` set to the fallback's error (and a note on
the original saying so), the original being what the caller's error handling expects.

Degraded results: a fallback's result marks its conversation (the correlation id) as
degraded. A handler asks ``is_degraded(self)`` about the message it handles; a caller
outside any agent reads the marker of its asks with ``with degradation() as d:``
(``d.degraded``, ``d.targets``).

Breaker state changes are logged (``kerna.plugins.resilience``; an error for a
``critical`` target's opening) and published as ``BreakerChanged`` events on the topic
``BREAKERS``, in order, by one task of the kernel (also a change made just before
``stop()`` by a caller that never yielded: it goes out during the grace; one the
grace's end overtakes is counted in ``Resilience.events_dropped`` and logged);
counters are read with
``breaker_stats``/``target_stats``, and every target's at once with
``resilience_stats(kernel)`` (a node's ``/metrics``: the ``kerna_breaker_*`` series,
``kerna_retries`` and ``kerna_fallbacks``).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from kerna import (
    Agent,
    AgentId,
    CircuitOpen,
    ConfigError,
    KernelStopped,
    Message,
    MessageContext,
    UsageError,
)

from ._breaker import BreakerState, BreakerStats
from ._bulkhead import Bulkhead, BulkheadStats
from ._middleware import Middleware, SendNext
from ._policy import Policy, is_idempotent, never_retried

if TYPE_CHECKING:
    from kerna import Kernel

__all__ = [
    "BREAKERS",
    "BreakerChanged",
    "Degradation",
    "Dependency",
    "Failed",
    "Resilience",
    "TargetStats",
    "breaker_stats",
    "degradation",
    "dependency",
    "is_degraded",
    "resilience_stats",
]

log = logging.getLogger("kerna.plugins.resilience")

T = TypeVar("T")
Target = type[Agent] | AgentId | str

BREAKERS = "kerna.breakers"
"""The topic ``BreakerChanged`` events are published on."""

_PASS = (None, None, None)  # before_send's answer for what is not a call to a target
_UNKNOWN: Any = object()  # a type not looked up yet (Resilience._by_name)


class _Await(Exception):
    """A target's call must start in a coroutine (its bulkhead): ``send_failed``."""


_DEGRADED_KEPT = 100_000  # conversations remembered as degraded (oldest forgotten first)
_by_kernel: weakref.WeakKeyDictionary[Kernel, Resilience] = weakref.WeakKeyDictionary()


class BreakerChanged(Message, frozen=True):
    """A breaker changed state (published on ``BREAKERS``).

    Attributes:
        target: the target's name (``Type``, ``Type/key`` or the dependency's name).
        old: the state it left (``"closed"``, ``"open"``, ``"half-open"``).
        new: the state it entered.
        at: the loop time of the change.
    """

    target: str
    old: str
    new: str
    at: float


@dataclass(frozen=True)
class Failed:
    """What a fallback is given.

    Attributes:
        error: why: ``CircuitOpen``, a timeout (``AskTimeout``/``TimeoutError``) or
            the call's error (after its retries).
        target: the target's name.
        context: the message asked (an agent target), or the message being handled
            by the agent that called the dependency (None outside a handler).
        args: a dependency call's positional arguments (empty for an agent target).
        kwargs: its keyword arguments.
    """

    error: Exception
    target: str
    context: MessageContext | None
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)


class TargetStats(msgspec.Struct, frozen=True):
    """One target's counters (``Resilience.target_stats``).

    Attributes:
        calls: calls made (each counted once, whatever its attempts).
        attempts: attempts made (retries included; calls failed fast not).
        retries: retries made.
        fallbacks: calls answered by the fallback.
        fallback_failures: fallbacks that raised.
        breaker: its breaker's (closed, zero counts before the first call), or None:
            its policy has no breaker.
        bulkhead: its bulkhead's, or None.
    """

    calls: int
    attempts: int
    retries: int
    fallbacks: int
    fallback_failures: int
    breaker: BreakerStats | None
    bulkhead: BulkheadStats | None


class _Target:
    """A target's policy and its live parts (breaker, bulkhead, counters)."""

    def __init__(self, resilience: Resilience, name: str, policy: Policy) -> None:
        self.name = name
        self.policy = policy
        self.resilience = resilience
        self.breaker: BreakerState | None = None
        self.bulkhead = None if policy.bulkhead is None else Bulkhead(name, policy.bulkhead)
        self.calls = self.attempts = self.retries = self.fallbacks = self.fallback_failures = 0
        # Resilience.before_send's state for a first attempt, by whether it is a probe.
        self.first: tuple[tuple[_Target, bool], tuple[_Target, bool]] = (
            (self, False),
            (self, True),
        )
        # The usual call: its first attempt admitted by a healthy breaker (closed, no
        # failure counted) with no bulkhead, inline. ``healthy`` is then that breaker's
        # storage (None: no breaker made yet, or a bulkhead: the general path),
        # ``ready`` before_send's answer, and such calls are counted once, in
        # ``healthy_calls``: each is a call, an attempt and a call of the breaker's
        # (``stats`` adds them to each).
        self.healthy: Any = None
        self.healthy_calls = 0
        self.ready: tuple[tuple[_Target, bool], None, float | None] = (
            self.first[0],
            None,
            policy.timeout,
        )

    def breaker_state(self) -> BreakerState | None:
        options = self.policy.breaker
        if options is not None and self.breaker is None:
            self.breaker = BreakerState(
                self.name, options, asyncio.get_running_loop(), self.resilience.changed
            )
            if self.bulkhead is None:
                self.healthy = self.breaker.storage
        return self.breaker

    def inline(self) -> bool:
        """Whether an ask's first attempt is made inline (``Resilience.send``): no
        bulkhead, and the breaker (if any) made by an earlier call."""
        return self.bulkhead is None and (self.breaker is not None or self.policy.breaker is None)

    def ask_arguments(
        self, ctx: MessageContext, call_next: SendNext
    ) -> tuple[
        Callable[[float | None], Awaitable[Any]],
        Callable[[], float | None],
        bool,
        Callable[[Exception], Failed],
        int,
    ]:
        return (
            lambda timeout: call_next(timeout),
            ctx.time_left,
            is_idempotent(ctx.message),
            lambda error: Failed(error, self.name, ctx),
            ctx.correlation_id,
        )

    async def run(
        self,
        attempt: Callable[[float | None], Awaitable[Any]],
        time_left: Callable[[], float | None],
        idempotent: bool,
        failed: Callable[[Exception], Failed],
        correlation_id: int,
        first_error: Exception | None = None,
    ) -> Any:
        """A call under the policy: its attempts (``first_error``: the first one, made
        and counted by ``Resilience.send``, failed so), then the fallback if it still
        fails."""
        if first_error is None:
            self.calls += 1
        try:
            return await self._attempts(attempt, time_left, idempotent, first_error)
        except Exception as error:
            fallback = self.policy.fallback
            # An open breaker is what a fallback is for; a caller's mistake is not.
            if fallback is None or (never_retried(error) and not isinstance(error, CircuitOpen)):
                raise
            try:
                result = await fallback(failed(error))
            except Exception as fallback_error:
                self.fallback_failures += 1
                error.add_note(f"the fallback of {self.name} failed too: {fallback_error!r}")
                raise error from fallback_error
            self.fallbacks += 1
            self.resilience.degrade(correlation_id, self.name)
            return result

    async def _attempts(
        self,
        attempt: Callable[[float | None], Awaitable[Any]],
        time_left: Callable[[], float | None],
        idempotent: bool,
        error: Exception | None = None,
    ) -> Any:
        retry = self.policy.retry if idempotent else None
        n = 0
        while True:
            if error is None:
                try:
                    return await self._once(attempt, time_left())
                except Exception as exc:
                    error = exc
            if retry is None or n >= retry.max_retries or not retry.retries(error):
                raise error
            delay = retry.delay(n)
            left = time_left()
            if left is not None and delay >= left:
                raise error  # the retry would start at or past the deadline
            n += 1
            self.retries += 1
            error = None
            await asyncio.sleep(delay)

    async def _once(
        self, attempt: Callable[[float | None], Awaitable[Any]], left: float | None
    ) -> Any:
        bulkhead = self.bulkhead
        if bulkhead is not None:
            await bulkhead.enter(left)
        try:
            breaker = self.breaker_state()
            probe = False if breaker is None else breaker.admit()
            self.attempts += 1
            error: BaseException | None = None
            try:
                return await attempt(self.policy.timeout)
            except BaseException as exc:
                error = exc
                raise
            finally:
                if breaker is not None:
                    breaker.done(probe, error)
        finally:
            if bulkhead is not None:
                bulkhead.leave()

    def breaker_stats(self) -> BreakerStats | None:
        """Its breaker's (closed, zero counts before its first call), or None: the
        policy has no breaker."""
        breaker = self.breaker
        if breaker is not None:
            found = breaker.stats()
            if self.healthy_calls:
                found = msgspec.structs.replace(found, calls=found.calls + self.healthy_calls)
            return found
        return None if self.policy.breaker is None else _NEVER_CALLED

    def stats(self) -> TargetStats:
        return TargetStats(
            calls=self.calls + self.healthy_calls,
            attempts=self.attempts + self.healthy_calls,
            retries=self.retries,
            fallbacks=self.fallbacks,
            fallback_failures=self.fallback_failures,
            breaker=self.breaker_stats(),
            bulkhead=None if self.bulkhead is None else self.bulkhead.stats(),
        )


_NEVER_CALLED = BreakerStats("closed", 0, 0, 0, 0, 0, 0)


class Degradation:
    """The degraded-result marker of the asks made inside ``with degradation()``.

    Attributes:
        degraded: True once an ask's answer used a fallback's result somewhere in its
            conversation.
        targets: the targets whose fallbacks were used, in order.
    """

    __slots__ = ("degraded", "targets")

    def __init__(self) -> None:
        self.degraded = False
        self.targets: list[str] = []


_marker: contextvars.ContextVar[Degradation | None] = contextvars.ContextVar(
    "kerna_degradation", default=None
)


@contextmanager
def degradation() -> Iterator[Degradation]:
    """Watch the asks made (from outside any agent) in this block for degraded results::

    with degradation() as d:
        reply = await kernel.ref(Review, "r").ask(Check(text))
    if d.degraded: ...
    """
    marker = Degradation()
    token = _marker.set(marker)
    try:
        yield marker
    finally:
        _marker.reset(token)


class Resilience(Middleware):
    """Policies by name and the targets they apply to (see the module docstring).

    Args:
        policies: ``Policy`` objects by name.
        targets: target -> policy name; a target is an Agent class, an ``AgentId`` or
            a dependency's name.

    Attributes:
        events_dropped: ``BreakerChanged`` events not published because the end of
            the stop's grace came first (a publish still waiting for room in a
            subscriber's mailbox); each drop is logged too.

    Raises:
        ConfigError: a target names an unknown policy, or is neither an Agent class,
            an AgentId nor a non-empty str; a policy is not a ``Policy``.
    """

    def __init__(self, policies: Mapping[str, Policy], targets: Mapping[Target, str]) -> None:
        for name, policy in policies.items():
            if not isinstance(policy, Policy):
                raise ConfigError(f"policy {name!r} must be a kerna.plugins.Policy: {policy!r}")
        self._types: dict[type[Agent], _Target] = {}
        self._ids: dict[AgentId, _Target] = {}
        self._dependencies: dict[str, _Target] = {}
        for target, policy_name in targets.items():
            if policy_name not in policies:
                raise ConfigError(
                    f"target {target!r} names policy {policy_name!r}, which is not defined "
                    f"(policies: {', '.join(sorted(policies)) or 'none'})"
                )
            policy = policies[policy_name]
            if isinstance(target, AgentId):
                self._ids[target] = _Target(self, str(target), policy)
            elif isinstance(target, type) and issubclass(target, Agent):
                self._types[target] = _Target(self, target.__qualname__, policy)
            elif isinstance(target, str) and target:
                self._dependencies[target] = _Target(self, target, policy)
            else:
                raise ConfigError(
                    f"a target is an Agent class, an AgentId or a dependency name, not {target!r}"
                )
        names = [t.name for t in self._all_targets()]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:  # events, stats and metrics name targets: each name must say which
            raise ConfigError(f"two targets have the same name: {', '.join(twice)}")
        self._by_name: dict[str, _Target | None] = {}  # registered type name -> target
        self._kernel: Kernel | None = None
        self._degraded: dict[int, list[str]] = {}  # conversation -> fallbacks used
        self._events: deque[BreakerChanged] = deque()  # changes not yet published
        self._publisher: asyncio.Task[None] | None = None
        self.events_dropped = 0

    def attach(self, kernel: Kernel) -> None:
        """Bind to ``kernel`` (``Kernel(middleware=)`` and ``use`` call it).

        Raises:
            UsageError: it is already part of another kernel's chain.
        """
        if self._kernel is not None and self._kernel is not kernel:
            raise UsageError("a Resilience serves one kernel: make one per kernel")
        self._kernel = kernel
        _by_kernel[kernel] = self

    # -- the chain's hook ----------------------------------------------------------------

    # The hooks are the chain's synchronous ones (kerna._chain.SyncHooks) and
    # send_failed: a call whose first attempt succeeds (the usual case) makes no
    # coroutine or closure of Resilience's; a failure, an open breaker or a bulkhead
    # goes to send_failed, a coroutine, which retries, waits and falls back.

    def before_send(self, ctx: MessageContext) -> tuple[Any, None, float | None]:
        """A call to a target: its first attempt admitted (the breaker), bounded by the
        policy's timeout; the state is ``(target, probe)``. Anything else passes.

        Raises:
            CircuitOpen: the breaker is open (``send_failed`` gets it: the fallback).
        """
        agent = ctx.target
        target = (
            self._by_name.get(agent.type, _UNKNOWN)
            if type(agent) is AgentId and not self._ids  # (the usual case: one dict lookup)
            else _UNKNOWN
        )
        if target is _UNKNOWN:
            target = self._agent_target(agent)
        if target is None or ctx.kind != "ask":  # (a tell to a target passes too)
            return _PASS
        storage = target.healthy
        if storage is not None and storage.clean:  # the usual case (see _Target.ready)
            target.healthy_calls += 1
            ready: tuple[Any, None, float | None] = target.ready
            return ready
        if target.bulkhead is not None:  # its slot may need waiting for: send_failed
            raise _Await()
        breaker = target.breaker or target.breaker_state()
        target.calls += 1
        if breaker is None:
            probe = False
        elif breaker.storage.clean:  # (breaker.admit's first case, inline)
            breaker.calls += 1
            probe = False
        else:
            probe = breaker.admit()
        target.attempts += 1
        return target.first[probe], None, target.policy.timeout

    def after_send(
        self, ctx: MessageContext, state: Any, result: Any, error: BaseException | None
    ) -> None:
        if state is not None:  # (error: a cancellation; failures go to send_failed)
            target, probe = state
            breaker = target.breaker
            # (breaker.done's first case, inline: a success on a healthy breaker)
            if breaker is not None and (probe or error is not None or not breaker.storage.clean):
                breaker.done(probe, error)
        if error is None and self._degraded and ctx.sender is None and ctx.kind == "ask":
            self._root_answered(ctx.correlation_id)  # a root ask: its conversation is over

    async def send_failed(
        self, ctx: MessageContext, state: Any, error: Exception, call_next: SendNext
    ) -> Any:
        """The first attempt failed, or was not made (``state`` None: an open breaker
        or a bulkhead): the policy's retries, then its fallback."""
        if state is not None:
            target, probe = state
            breaker = target.breaker
            if breaker is not None:
                breaker.done(probe, error)
            result = await target.run(*target.ask_arguments(ctx, call_next), first_error=error)
        else:
            found = self._agent_target(ctx.target) if ctx.kind == "ask" else None
            if found is None:
                raise error  # not a target's: it goes on as it came
            if isinstance(error, _Await):  # a bulkhead: the whole call under the policy
                result = await found.run(*found.ask_arguments(ctx, call_next))
            else:  # the breaker refused the first attempt (counted as a call)
                result = await found.run(*found.ask_arguments(ctx, call_next), first_error=error)
        if self._degraded and ctx.sender is None:  # a root ask: its conversation is over
            self._root_answered(ctx.correlation_id)
        return result

    def _agent_target(self, agent: object) -> _Target | None:
        if not isinstance(agent, AgentId):
            return None
        if self._ids:  # (no policy per id: no AgentId hashed per send)
            own = self._ids.get(agent)
            if own is not None:
                return own
        try:
            return self._by_name[agent.type]
        except KeyError:
            pass
        found = None
        kernel = self._kernel
        for cls, target in self._types.items():
            name = cls.__name__ if kernel is None else kernel.ref(cls, "").id.type
            if name == agent.type:
                found = target
        self._by_name[agent.type] = found
        return found

    # -- degraded conversations ------------------------------------------------------------

    def degrade(self, correlation_id: int, target: str) -> None:
        """Mark a conversation as having used ``target``'s fallback."""
        degraded = self._degraded
        used = degraded.get(correlation_id)
        if used is None:
            used = degraded[correlation_id] = []
            if len(degraded) > _DEGRADED_KEPT:
                del degraded[next(iter(degraded))]
        used.append(target)

    def _root_answered(self, correlation_id: int) -> None:
        used = self._degraded.pop(correlation_id, None)
        if used is not None:
            marker = _marker.get()
            if marker is not None:
                marker.degraded = True
                marker.targets.extend(used)

    def degraded(self, correlation_id: int) -> bool:
        """Whether the conversation ``correlation_id`` used a fallback's result so far."""
        return correlation_id in self._degraded

    # -- breaker events ----------------------------------------------------------------

    def changed(self, target: str, old: str, new: str) -> None:
        """A breaker changed state: log, publish ``BreakerChanged``."""
        critical = any(
            t.name == target and t.policy.tier == "critical" for t in self._all_targets()
        )
        level = logging.ERROR if new == "open" and critical else logging.WARNING
        log.log(level, "circuit breaker of %s: %s -> %s", target, old, new)
        kernel = self._kernel
        if kernel is None or not kernel.running:
            return
        self._events.append(BreakerChanged(target, old, new, kernel.loop.time()))
        if self._publisher is None:  # one task publishes them all, in order
            self._publisher = kernel.create_task(self._publish(kernel), name="breaker events")

    async def _publish(self, kernel: Kernel) -> None:
        """Publish the queued ``BreakerChanged`` events, oldest first, until none is left.

        The change is made in the caller's task, which may never yield (a loop failing
        fast on an open breaker): this task may first run once ``stop()`` has begun.
        A kernel task's sends are taken during the grace, so the events still go out;
        those the grace's end overtakes (this task cancelled while a publish waits for
        room, or run only after it) are counted in ``events_dropped`` and logged;
        nothing is raised from a task nobody awaits.
        """
        events = self._events
        try:
            while events:
                await kernel.publish(BREAKERS, events[0])
                events.popleft()
        except KernelStopped:
            self._drop("the kernel is stopping")
        except asyncio.CancelledError:
            self._drop("cancelled at stop")
            raise
        finally:
            self._publisher = None

    def _drop(self, why: str) -> None:
        dropped = len(self._events)
        self._events.clear()
        self.events_dropped += dropped
        log.warning("%d BreakerChanged event(s) not published: %s", dropped, why)

    def _all_targets(self) -> Iterator[_Target]:
        yield from self._types.values()
        yield from self._ids.values()
        yield from self._dependencies.values()

    # -- counters ------------------------------------------------------------------------

    def target_of(self, target: Target) -> _Target:
        if isinstance(target, AgentId):
            found = self._ids.get(target)
        elif isinstance(target, str):
            found = self._dependencies.get(target)
        else:
            found = self._types.get(target)
        if found is None:
            raise ConfigError(f"{target!r} is not a target of this Resilience")
        return found

    def target_stats(self, target: Target) -> TargetStats:
        """The counters of ``target`` (as given in ``targets``).

        Raises:
            ConfigError: it is not a target here.
        """
        return self.target_of(target).stats()

    def stats(self) -> dict[str, TargetStats]:
        """Every target's counters, by its name (``Type``, ``Type/key`` or the
        dependency's name), sorted by name."""
        return {t.name: t.stats() for t in sorted(self._all_targets(), key=lambda t: t.name)}

    def dependency(self, name: str, agent: Agent | None = None) -> Dependency:
        """See ``dependency``.

        Raises:
            ConfigError: no dependency of that name is a target here.
        """
        target = self._dependencies.get(name)
        if target is None:
            raise ConfigError(
                f"no dependency {name!r} is a target (dependencies: "
                f"{', '.join(sorted(self._dependencies)) or 'none'})"
            )
        return Dependency(target, agent)


def _of(kernel: Kernel) -> Resilience:
    found = _by_kernel.get(kernel)
    if found is None:
        raise UsageError("this kernel's middleware chain has no kerna.plugins.Resilience")
    return found


def breaker_stats(kernel: Kernel, target: Target) -> BreakerStats:
    """The state and counters of ``target``'s breaker in ``kernel`` (closed with zero
    counts until its first call).

    Raises:
        UsageError: the kernel has no ``Resilience``.
        ConfigError: ``target`` is not a target, or its policy has no breaker.
    """
    found = _of(kernel).target_of(target).breaker_stats()
    if found is None:
        raise ConfigError(f"the policy of {target!r} has no breaker")
    return found


def resilience_stats(kernel: Kernel) -> dict[str, TargetStats]:
    """The counters of every target of ``kernel``'s ``Resilience``, by target name
    (``Resilience.stats``); empty when its chain has none (a node exports them on
    ``/metrics`` and ``kerna top`` shows them)."""
    found = _by_kernel.get(kernel)
    return {} if found is None else found.stats()


def is_degraded(agent: Agent) -> bool:
    """Whether the conversation of the message ``agent`` handles used a fallback's
    result so far (in this kernel).

    Raises:
        UsageError: no message is being handled, or the kernel has no ``Resilience``.
    """
    return _of(agent.kernel).degraded(agent.context.correlation_id)


def dependency(agent: Agent, name: str) -> Dependency:
    """The named external dependency's policy, for a call from a handler::

        reply = await dependency(self, "openai").call(client.complete, prompt)
        async with dependency(self, "openai"):
            reply = await client.complete(prompt)

    ``call`` applies the whole policy: bulkhead, breaker, timeout, retries (so ``fn``
    must be safe to call again: for one that is not, use ``async with``) and fallback.
    ``async with`` applies the bulkhead, the breaker and the timeout (a block cannot be
    retried or replaced). Timeouts are narrowed to the handled message's time left.
    One ``async with`` per object.

    Raises:
        UsageError: the agent's kernel has no ``Resilience``.
        ConfigError: no dependency of that name is a target.
    """
    return _of(agent.kernel).dependency(name, agent)


class Dependency:
    """A call site of a named dependency (see ``dependency``)."""

    def __init__(self, target: _Target, agent: Agent | None) -> None:
        self._target = target
        self._agent = agent
        self._scope: asyncio.Timeout | None = None
        self._probe: bool | None = None

    def _context(self) -> MessageContext | None:
        agent = self._agent
        if agent is None:
            return None
        try:
            return agent.context
        except UsageError:
            return None

    def _time_left(self) -> float | None:
        ctx = self._context()
        return None if ctx is None else ctx.time_left()

    def _bound(self, timeout: float | None) -> float | None:
        left = self._time_left()
        if timeout is None:
            return left
        return timeout if left is None else min(timeout, left)

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """``await fn(*args, **kwargs)`` under the dependency's whole policy.

        Raises:
            CircuitOpen: the breaker is open (and no fallback).
            TimeoutError: the call timed out (and no fallback).
            Exception: what ``fn`` raised (after retries; no fallback, or the fallback
                failed too: then ``__cause__`` is the fallback's error).
        """

        async def attempt(timeout: float | None) -> Any:
            async with asyncio.timeout(self._bound(timeout)):
                return await fn(*args, **kwargs)

        ctx = self._context()
        target = self._target
        result: T = await target.run(
            attempt,
            self._time_left,
            True,
            lambda error: Failed(error, target.name, ctx, args, kwargs),
            0 if ctx is None else ctx.correlation_id,
        )
        return result

    async def __aenter__(self) -> None:
        if self._probe is not None:
            raise UsageError("one 'async with' per dependency(...) object")
        target = self._target
        target.calls += 1
        bulkhead = target.bulkhead
        if bulkhead is not None:
            await bulkhead.enter(self._time_left())
        try:
            breaker = target.breaker_state()
            self._probe = False if breaker is None else breaker.admit()
        except BaseException:
            if bulkhead is not None:
                bulkhead.leave()
            raise
        target.attempts += 1
        self._scope = asyncio.timeout(self._bound(target.policy.timeout))
        await self._scope.__aenter__()

    async def __aexit__(self, kind: Any, error: BaseException | None, tb: Any) -> None:
        target = self._target
        scope = self._scope
        probe = self._probe
        assert scope is not None
        assert probe is not None
        try:
            await scope.__aexit__(kind, error, tb)
        except BaseException as raised:
            error = raised  # the timeout's TimeoutError, for the breaker
            raise
        finally:
            breaker = target.breaker
            if breaker is not None:
                breaker.done(probe, error)
            if target.bulkhead is not None:
                target.bulkhead.leave()
