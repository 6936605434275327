"""A nats node's sending side: ``send`` and ``send_now``, each peer's bounded queue and
the task that publishes it in order, and the publish a sender makes itself to an idle
peer (``NatsTransport``'s docstring, in ``kerna.transports._nats``, says what a sender
sees; ``kerna.transports._nats_client`` how a lone frame reaches the socket).
"""

from __future__ import annotations

import asyncio

import nats.errors

from ._base import PeerUnreachable, SendQueueFull, TransportClosed
from ._nats_client import start_publish
from ._nats_peer import NEVER, NatsPeers, NatsServerUnavailable, Peer

__all__ = ["NatsSending"]


class NatsSending(NatsPeers):
    """A nats transport's sends (see the module docstring)."""

    _ping_interval: float

    async def send(self, peer: str, frame: bytes, *, wait: bool = True) -> None:
        """Queue ``frame`` for ``peer`` (a ``nats://server/node-name`` address).

        Raises:
            SendQueueFull: the queue is full, or a sender waits for room, and
                ``wait`` is False.
            FrameTooLarge: over ``max_frame_size`` (the server's limit after start).
            PeerUnreachable: ``peer`` is not a nats address with a valid node name.
            NatsServerUnavailable: nats-py gave up on the server connection.
            TransportClosed: closed (or closes while this waits), or not started.
        """
        if self._closed or self._nc is None:
            raise TransportClosed(f"{self!r} is {'closed' if self._closed else 'not started'}")
        self.check_frame(frame)
        if self._nc.is_closed:
            raise NatsServerUnavailable(f"the connection to nats server {self.server} is closed")
        p = self._peers.get(peer) or self._add_peer(peer)
        if p.checked_at == NEVER:
            await self._first_contact(p)
        # Behind a sender that waits for room (as send_now, and tcp): this one waits
        # too, at least for the next room, instead of going ahead of it.
        behind = p.waiting > 0
        while behind or self._full(p):
            if not wait:
                raise SendQueueFull(f"send queue to {peer} is full ({self.send_queue} frames)")
            behind = False
            p.room.clear()
            p.waiting += 1
            try:
                await p.room.wait()
            except BaseException:
                p.room.set()  # given up (cancelled): the senders behind look again
                raise
            finally:
                p.waiting -= 1
            if self._closed:
                raise TransportClosed(f"{self!r} closed while a send to {peer} waited")
        self._put(p, bytes(frame))

    def send_now(self, peer: str, frame: bytes) -> bool:
        """See ``Transport.send_now``: a peer already found present, with room in its
        queue and no sender waiting for room, takes ``frame`` at once (no first-contact
        probe to wait for)."""
        if self._closed or self._nc is None or self._nc.is_closed:
            return False
        p = self._peers.get(peer)
        if p is None or p.checked_at == NEVER or p.waiting or self._full(p):
            return False
        self.check_frame(frame)
        self._put(p, bytes(frame))
        return True

    def _full(self, p: Peer) -> bool:
        # Frames handed to nats-py in this loop pass still count: its flusher writes
        # them in the next, so a burst takes no more than the queue would.
        return len(p.queue) + p.busy + p.taken >= self.send_queue

    def _put(self, p: Peer, frame: bytes) -> None:
        """Publish ``frame`` now if ``p`` is idle (nothing queued or publishing) and not
        due for its presence probe, else queue it for ``p``'s task.

        Published now, a lone frame reaches nats-py in this loop pass instead of the
        next (a request or reply does not wait for a task switch); the first of a pass
        goes to the socket itself if nothing is ahead of it there
        (``ReaderClient.publish_now``). nats-py's publish is
        a coroutine that, unless its buffer is over ``pending_size``, returns without
        waiting; if it waits, the rest of it holds ``p``'s place: ``p``'s task finishes
        it before any frame queued after it.
        """
        nc = self._nc
        assert nc is not None
        loop = asyncio.get_running_loop()
        # (Found present at the first frame of this pass: the probe is not due for
        # the rest of the pass.)
        if p.queue or p.busy or (not p.taken and loop.time() - p.checked_at > self._ping_interval):
            p.queue.append(frame)
            p.ready.set()
            return
        if not p.taken and p.headers is None and nc.publish_now(p.subject, p.reply, frame):
            rest = None  # written to the socket (ReaderClient)
        else:
            try:
                rest = start_publish(
                    nc.publish(p.subject, frame, reply=p.reply, headers=p.headers), p.address
                )
            except (nats.errors.Error, OSError) as exc:  # as p's task would: p is lost
                self._lose(p, self._server_error(exc))
                return
        if rest is not None:
            p.busy, p.started = True, rest
            p.ready.set()
            return
        if not p.taken:
            loop.call_soon(self._next_pass, p)
        p.taken += 1

    @staticmethod
    def _next_pass(p: Peer) -> None:
        p.taken = 0
        p.room.set()

    def _add_peer(self, peer: str) -> Peer:
        subject = self._peer_subject(peer)
        if subject is None:
            raise PeerUnreachable(f"{peer!r} is not a nats node address (nats://host:port/name)")
        p = Peer(peer, subject, self._from)
        p.task = asyncio.get_running_loop().create_task(
            self._drain(p), name=f"kerna nats send to {peer}"
        )
        self._peers[peer] = p
        return p

    async def _drain(self, p: Peer) -> None:
        loop = asyncio.get_running_loop()
        nc = self._nc
        assert nc is not None
        while True:
            await p.ready.wait()
            p.ready.clear()
            if (started := p.started) is not None:  # a sender's publish, waiting in nats-py
                try:
                    await started
                except (nats.errors.Error, OSError) as exc:
                    self._lose(p, self._server_error(exc))
                    continue
                finally:
                    p.busy, p.started = False, None
                    p.room.set()
            while p.queue:
                if loop.time() - p.checked_at > self._ping_interval:
                    error = await self._probe(nc, p)
                    if error is not None:
                        self._lose(p, error)
                        break
                    p.checked_at = loop.time()
                    self._lost.discard(p.address)
                p.busy = True  # the frame keeps its place in the count while it waits
                try:
                    await nc.publish(p.subject, p.queue.popleft(), reply=p.reply, headers=p.headers)
                except (nats.errors.Error, OSError) as exc:
                    self._lose(p, self._server_error(exc))
                    break
                finally:
                    p.busy = False
                p.room.set()
