"""Topics: subscriptions of agent types to topics, and event delivery.

A publish builds one envelope and puts that same envelope in every subscriber's
mailbox. A subscriber that cannot take an event gets nothing, and the event becomes a
dead letter for it; the others still receive it. Dead letters themselves are published
here on ``kerna.dead_letters``, never blocking and never about a dead letter.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

from ._activation import Activation
from ._envelope import EVENT, Envelope, outgoing
from ._errors import ActivationFailed, Fenced, MailboxFull, UnknownAgent
from ._failures import describe
from ._ids import AgentId
from ._message import DeadLetter, DeadLetterReason

if TYPE_CHECKING:
    from ._runtime import Runtime

__all__ = ["DEAD_LETTERS", "Subscription", "Topics"]

DEAD_LETTERS = "kerna.dead_letters"


class Subscription:
    """A topic bound to an agent type; ``key(message)`` picks the agent per event.

    ``cached_key`` and ``cached`` remember the last key and its activation: most
    topics hit few keys.
    """

    __slots__ = ("cached", "cached_key", "key", "topic", "type_name")

    def __init__(self, topic: str, type_name: str, key: Callable[[Any], str]) -> None:
        self.topic = topic
        self.type_name = type_name
        self.key = key
        self.cached_key: str | None = None
        self.cached: Activation | None = None

    def __repr__(self) -> str:
        return f"Subscription({self.topic!r} -> {self.type_name})"


def default_key(_: Any) -> str:
    return "default"


class Topics:
    """The kernel's subscriptions, by topic."""

    __slots__ = ("_by_topic", "_runtime")

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._by_topic: dict[str, list[Subscription]] = {}

    def subscribe(
        self, topic: str, type_name: str, key: Callable[[Any], str] | None
    ) -> Subscription:
        sub = Subscription(topic, type_name, key or default_key)
        self._by_topic.setdefault(topic, []).append(sub)
        return sub

    def subscriptions(self, topic: str) -> list[Subscription]:
        """The subscriptions of ``topic`` on this kernel (a copy)."""
        return list(self._by_topic.get(topic, ()))

    def summary(self) -> dict[str, list[str]]:
        """Per topic, the agent types subscribed to it here, sorted (what a cluster
        node publishes in its member record; the dead-letter topic is per node)."""
        return {
            topic: sorted({sub.type_name for sub in subs})
            for topic, subs in sorted(self._by_topic.items())
            if topic != DEAD_LETTERS and subs
        }

    def unsubscribe(self, subscription: Subscription) -> None:
        subs = self._by_topic.get(subscription.topic)
        if subs and subscription in subs:
            subs.remove(subscription)
            if not subs:
                del self._by_topic[subscription.topic]

    def fan_out(self, env: Envelope) -> Awaitable[None] | None:
        """Put the event ``env`` in every subscriber's mailbox (``Runtime.deliver``).

        Returns None when every subscriber took it, or an awaitable that waits for room
        in a ``wait`` mailbox and then goes on with the remaining subscribers.
        """
        topic: Any = env.target  # a str for events (no cast(): this is the hot path)
        listed = self._by_topic.get(topic)
        if not listed:
            return None
        # A subscriber may unsubscribe while we go: iterate over a copy (of two or more).
        rest = iter(listed if len(listed) == 1 else tuple(listed))
        parked = self._offer(env, rest)
        if parked is None:
            return None
        return self._fan_out_rest(env, rest, parked)

    def _offer(self, env: Envelope, rest: Iterator[Subscription]) -> tuple[Activation, Any] | None:
        """Offer ``env`` to the subscriptions left in ``rest`` until a mailbox parks the
        sender: then that activation and its waiter (``rest`` resumes after it)."""
        for sub in rest:
            act = self._subscriber(sub, env)
            if act is None:
                continue
            try:
                waiter = act.put(env)
            except MailboxFull as exc:  # counted as rejected by the mailbox
                self._runtime.publish_dead_letter(env, act.id, DeadLetterReason.MAILBOX_FULL, exc)
                continue
            if waiter is not None:
                return act, waiter
        return None

    async def _fan_out_rest(
        self,
        env: Envelope,
        rest: Iterator[Subscription],
        parked: tuple[Activation, Any] | None,
    ) -> None:
        while parked is not None:
            act, waiter = parked
            try:
                await waiter
            except (ActivationFailed, Fenced) as exc:  # refused while parked: counted
                self._runtime.publish_dead_letter(env, act.id, DeadLetterReason.NOT_DELIVERED, exc)
            parked = self._offer(env, rest)

    def _subscriber(self, sub: Subscription, env: Envelope) -> Activation | None:
        """The activation that receives ``env`` through ``sub``, or None (dead-lettered)."""
        rt = self._runtime
        try:
            key: object = sub.key(env.payload)
        except Exception as exc:
            rt.undeliverable(env, sub.type_name, DeadLetterReason.SUBSCRIPTION_KEY_FAILED, exc)
            return None
        last = sub.cached
        if last is not None and key == sub.cached_key and not last.closed:
            act = last
        else:
            atype = rt.types.get(sub.type_name)
            if atype is None:
                error: Exception = UnknownAgent(
                    f"{sub!r}: no agent type {sub.type_name!r} is registered",
                    agent_type=sub.type_name,
                )
                rt.undeliverable(env, sub.type_name, DeadLetterReason.UNKNOWN_AGENT, error)
                return None
            if not isinstance(key, str):
                error = TypeError(
                    f"key function of {sub!r} returned {type(key).__qualname__}, not str"
                )
                rt.undeliverable(
                    env, sub.type_name, DeadLetterReason.SUBSCRIPTION_KEY_FAILED, error
                )
                return None
            act = rt.activation(AgentId(sub.type_name, key), atype)
            sub.cached, sub.cached_key = act, key
        if act.failure is not None:
            rt.undeliverable(env, act.id, DeadLetterReason.ACTIVATION_FAILED, act.copy_failure())
            return None
        return act

    def publish_dead_letter(
        self, env: Envelope, target: AgentId | str, reason: str, error: BaseException | None
    ) -> None:
        """Publish a ``DeadLetter`` about ``env`` to its subscribers without blocking."""
        message = env.payload
        subs = self._by_topic.get(DEAD_LETTERS)
        if not subs or isinstance(message, DeadLetter):
            return  # a dead letter about a dead letter would loop
        dead = DeadLetter(
            target=str(target),
            message=message,
            reason=reason,
            error=None if error is None else describe(error),
            correlation_id=env.correlation_id,
            message_id=env.id,
        )
        rt = self._runtime
        dl_env = outgoing(rt.ids, EVENT, DEAD_LETTERS, dead, None, env)
        for sub in tuple(subs):
            act = self._subscriber(sub, dl_env)
            if act is not None:
                try:
                    act.put(dl_env, may_wait=False)
                except MailboxFull as exc:  # counted; not published again (a DeadLetter)
                    rt.undeliverable(dl_env, act.id, DeadLetterReason.MAILBOX_FULL, exc)
