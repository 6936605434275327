"""Topics across the cluster: each subscription gets each event once, at its key's owner.

A subscription is identified cluster-wide by its topic and agent type; each node lists
its own in its member record (``Member.topics``), so every node knows which types
subscribe to which topics where. A key function is code: it runs only on a node that
made the subscription (and so hosts the type). A publish on node P, for each agent type
subscribed to the topic anywhere:

- P subscribed it itself: P runs the key function and sends the event to the agent's
  home (``Cluster.home``: its claim's holder, or its home by hash), or puts it in the
  local activation when that is P;
- only other nodes did (P hosts nothing, say): P sends the event to one of them
  (spread by message id), which runs the key function and routes it on the same way.

On the wire such an event is addressed by its target string: ``topic\\0Type`` (key
still to compute) or ``topic\\0Type\\0key`` (for that agent); ``MessageContext.topic``
reads the topic part, so handlers see the topic it was published on. An addressed
event that reaches a node whose activation finds the claim elsewhere is forwarded like
any message (``Cluster.moved``), and still goes to that one agent. The dead-letter
topic stays local to each node.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING

import msgspec

from ._errors import MailboxFull, UnknownAgent
from ._ids import AgentId
from ._message import DeadLetterReason
from ._topics import DEAD_LETTERS

if TYPE_CHECKING:
    from ._cluster import Cluster
    from ._envelope import Envelope
    from ._topics import Subscription

__all__ = ["ClusterTopics"]

SEP = "\0"


class ClusterTopics:
    """The cluster side of publishing (see the module docstring)."""

    __slots__ = ("cluster",)

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def fan_out(self, env: Envelope) -> Awaitable[None] | None:
        """Route the event ``env`` (``Runtime.deliver``): a publish on this node, or an
        addressed event another node sent. Returns None when all of it went out, or an
        awaitable for room in a full ``wait`` mailbox."""
        target = env.target
        rt = self.cluster.runtime
        if not isinstance(target, str):  # never: agent ids do not come here
            return rt.topics.fan_out(env)
        topic, sep, rest = target.partition(SEP)
        if topic == DEAD_LETTERS:
            return rt.topics.fan_out(env)
        pending: list[Awaitable[None]] = []
        if sep:  # addressed to one subscription (and maybe its key) by another node
            type_name, sep, key = rest.partition(SEP)
            if sep:
                self._to_owner(env, topic, type_name, key, pending)
            else:
                subs = [s for s in rt.topics.subscriptions(topic) if s.type_name == type_name]
                if subs:
                    self._by_key(env, topic, subs[0], pending)
                else:
                    error = UnknownAgent(
                        f"this node has no subscription of {type_name!r} to {topic!r}",
                        agent_type=type_name,
                    )
                    rt.undeliverable(env, type_name, DeadLetterReason.UNKNOWN_AGENT, error)
            return _all(pending, env, self) if pending else None
        local = rt.topics.subscriptions(topic)
        for sub in local:
            self._by_key(env, topic, sub, pending)
        mine = {sub.type_name for sub in local}
        for type_name, nodes in self.cluster.subscribers(topic).items():
            if type_name in mine:
                continue
            node = nodes[env.id % len(nodes)]  # spread the key computing over them
            self._send(env, f"{topic}{SEP}{type_name}", node, pending)
        return _all(pending, env, self) if pending else None

    def _by_key(
        self, env: Envelope, topic: str, sub: Subscription, pending: list[Awaitable[None]]
    ) -> None:
        rt = self.cluster.runtime
        try:
            key: object = sub.key(env.payload)
        except Exception as exc:
            rt.undeliverable(env, sub.type_name, DeadLetterReason.SUBSCRIPTION_KEY_FAILED, exc)
            return
        if not isinstance(key, str):
            error = TypeError(f"key function of {sub!r} returned {type(key).__qualname__}, not str")
            rt.undeliverable(env, sub.type_name, DeadLetterReason.SUBSCRIPTION_KEY_FAILED, error)
            return
        self._to_owner(env, topic, sub.type_name, key, pending)

    def _to_owner(
        self,
        env: Envelope,
        topic: str,
        type_name: str,
        key: str,
        pending: list[Awaitable[None]],
    ) -> None:
        """Put ``env`` in the mailbox of agent ``type_name/key``, here or at its home."""
        cluster = self.cluster
        rt = cluster.runtime
        agent = AgentId(type_name, key)
        addressed = f"{topic}{SEP}{type_name}{SEP}{key}"
        act = rt.directory.get(agent)
        if act is None or act.closed:
            try:
                node = cluster.home(agent)
            except UnknownAgent as exc:
                rt.undeliverable(env, type_name, DeadLetterReason.UNKNOWN_AGENT, exc)
                return
            if node != cluster.node_id:
                self._send(env, addressed, node, pending)
                return
            atype = rt.types.get(type_name)
            if atype is None:
                error = UnknownAgent(
                    f"no agent type {type_name!r} is registered", agent_type=type_name
                )
                rt.undeliverable(env, type_name, DeadLetterReason.UNKNOWN_AGENT, error)
                return
            act = rt.activation(agent, atype)
        if act.failure is not None:
            rt.undeliverable(env, act.id, DeadLetterReason.ACTIVATION_FAILED, act.copy_failure())
            return
        mine = env if env.target == addressed else msgspec.structs.replace(env, target=addressed)
        try:
            waiter = act.put(mine)
        except MailboxFull as exc:  # counted as rejected by the mailbox
            rt.publish_dead_letter(mine, act.id, DeadLetterReason.MAILBOX_FULL, exc)
            return
        if waiter is not None:
            pending.append(waiter)

    def _send(self, env: Envelope, target: str, node: str, pending: list[Awaitable[None]]) -> None:
        cluster = self.cluster
        rt = cluster.runtime
        mine = msgspec.structs.replace(env, target=target)
        try:
            sent = cluster.route_to(node).put(mine)
        except Exception as exc:  # not a member any more, cannot be encoded
            rt.not_handled(mine, target, DeadLetterReason.NOT_DELIVERED, exc)
            return
        if sent is not None:
            pending.append(sent)

    def failed(self, env: Envelope, error: BaseException) -> None:
        """A parked delivery of ``env`` was refused meanwhile (counted there)."""
        self.cluster.runtime.publish_dead_letter(
            env, env.target, DeadLetterReason.NOT_DELIVERED, error
        )


async def _all(pending: list[Awaitable[None]], env: Envelope, topics: ClusterTopics) -> None:
    """Wait for every delivery that waits for room (or for its send)."""
    for waiter in pending:
        try:
            await waiter
        except Exception as exc:  # refused while it waited: a failed activation, a fence
            topics.failed(env, exc)
