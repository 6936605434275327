"""How the nats transport drives nats-py: a client whose reader hands data frames over
at once and that writes a lone frame at once, and a publish started in the sender's own
step.

nats-py runs a subscription's callback in a task of its own, fed by a queue from the
connection's reader: every message waits a loop pass (and a ``Msg``, a queue put and
get, a task step) before its callback sees it. ``on_frame`` is synchronous and cheap (the
kernel decodes and queues the frame), so ``ReaderClient`` calls it from the reader as
the message is parsed, as the tcp transport does from its own reader: a request or a
reply reaches the kernel a loop pass sooner on each node. Only messages with no header,
on the one subject ``direct_subject``, whose reply subject names a kerna node, go that
way (a version 2 peer's data frames), and only while nothing waits in the
subscription's queue (they would overtake it); the rest (probes, goodbyes, version 1
frames, and anything malformed) go through nats-py's subscription as before, so each
kind is handled in one place.

The hook is nats-py's ``Client._process_msg``, which its parser awaits for every
message (nats-py 2.x); it reads the subscription's queue through nats-py's ``_subs``
(by sid) and ``Subscription.pending_msgs``. Should a later nats-py stop calling it,
every message takes the subscription's path again: slower, not wrong.
``tests/test_nats_transport.py`` fails if the direct path is not taken on the
installed nats-py.

Sending, nats-py's ``publish`` appends the message to its buffer and wakes its flusher
task, which writes the buffer a loop pass later (and costs a queue and a task step per
pass). ``ReaderClient.publish_now`` writes a message with no header to the socket at
once instead, as nats-py writes its own pings, when that keeps order and bounds: nothing
of nats-py's waits to be written (it would be overtaken), the connection is up over TCP
(a websocket transport writes only when drained), the socket takes more (its transport
is not paused: what it holds stays within its high-water mark and one frame). The
transport calls it for the first frame to a peer in a loop pass (the rest of a pass's
frames go out together from the flusher, in one write, as before). A request or a reply
so leaves a loop pass sooner on each node.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import types
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Protocol, cast

from nats.aio.client import Client
from nats.aio.transport import TcpTransport
from nats.protocol.command import pub_cmd

__all__ = ["ReaderClient", "start_publish"]

log = logging.getLogger("kerna.transports.nats")

DirectCallback = Callable[[str, bytes], None]
"""``(sender's address, frame)``, called from the reader; never raises."""


class ReaderClient(Client):
    """A nats-py ``Client`` that hands the data frames on ``direct_subject`` to
    ``on_direct`` from its reader task, and writes a lone frame to the socket at once
    (``publish_now``); see the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self.direct_subject = b""  # set with on_direct once subscribed
        self.on_direct: DirectCallback | None = None
        self.direct_frames = 0  # handed over from the reader
        self.written_at_once = 0  # frames publish_now wrote
        self.dropped_undecodable = 0  # messages nats-py could not read (see _process_msg)

    async def _process_msg(
        self,
        sid: int,
        subject: bytes,
        reply: bytes,
        data: bytes,
        headers: bytes,  # (its parser passes None for a message without one)
    ) -> None:
        on_direct = self.on_direct
        if (
            not headers
            and on_direct is not None
            and subject == self.direct_subject
            and reply.startswith(b"nats://")
            # Not ahead of what waits for the subscription's task (a header-named frame
            # its sender sent before this one): on_frame sees one subject's frames in
            # the order they came.
            and (sub := self._subs.get(sid)) is not None
            and not sub.pending_msgs
        ):
            try:
                sender = reply.decode()
            except UnicodeDecodeError:
                pass  # dropped below, as nats-py would fail on it
            else:
                self.stats["in_msgs"] += 1
                self.stats["in_bytes"] += len(data)
                self.direct_frames += 1
                try:
                    on_direct(sender, data)
                except Exception:  # the reader must go on for the other frames
                    log.exception("nats: on_frame raised for a frame from %s", sender)
                return
        try:
            await super()._process_msg(sid, subject, reply, data, headers)
        except UnicodeDecodeError:
            # nats-py decodes the subjects of every message in its reader, and a reply
            # subject that is not UTF-8 (anyone who may publish to a node's subject can
            # send one) would end its read loop: this node would hear nothing more.
            self.dropped_undecodable += 1
            log.warning(
                "nats: dropped a message on %r whose reply subject %r is not UTF-8",
                subject,
                reply[:200],
            )
        except Exception:
            # Whatever else nats-py raises for one message ends its read loop the same
            # way: a header block shorter than its "NATS/1.0" (nats-server passes any
            # on) raises IndexError in its _process_headers.
            self.dropped_undecodable += 1
            log.warning(
                "nats: dropped a message on %r that nats-py could not process",
                subject,
                exc_info=True,
            )

    def publish_now(self, subject: str, reply: str, payload: bytes) -> bool:
        """Write a message without header to the server's socket now, if that keeps
        order and bounds (see the module docstring): True if written; False if it was
        not, and the caller publishes it as usual."""
        transport = self._transport
        if (
            self._pending
            or self._status != Client.CONNECTED
            or len(payload) > self._max_payload  # nats-py's publish raises for it
            or not isinstance(transport, TcpTransport)
            or not _takes_more(transport)
        ):
            return False
        cast(_Socket, transport).write(pub_cmd(subject, reply, payload))  # nats-py's PUB
        self.stats["out_msgs"] += 1
        self.stats["out_bytes"] += len(payload)
        self.written_at_once += 1
        return True


class _Socket(Protocol):
    """What is used of nats-py's ``TcpTransport`` (its methods have no annotations)."""

    def write(self, payload: bytes) -> object: ...

    def drain(self) -> Coroutine[Any, Any, object]: ...


def _takes_more(transport: TcpTransport) -> bool:
    """Whether the socket's transport takes more now (it is not paused for its buffer
    over the high-water mark, nor closing, nor lost): its ``drain`` returns at once."""
    drain = cast(_Socket, transport).drain()
    try:
        drain.send(None)
    except StopIteration:
        return True
    except Exception:  # lost or failed: nats-py's own publish path reports it
        return False
    drain.close()  # it would wait for room: let nats-py's flusher wait
    return False


if sys.version_info >= (3, 12):

    def start_publish(publish: Coroutine[Any, Any, None], peer: str) -> asyncio.Task[None] | None:
        """Run ``publish`` up to its first suspension now, as an eager task: None if it
        finished (what it raised is raised here), else the task that goes on with it."""
        task = asyncio.Task(publish, loop=asyncio.get_running_loop(), eager_start=True)
        if not task.done():
            task.set_name(f"kerna nats publish to {peer}")
            return task
        task.result()
        return None

else:

    def start_publish(publish: Coroutine[Any, Any, None], peer: str) -> asyncio.Task[None] | None:
        """Run ``publish`` up to its first suspension now: None if it finished (what it
        raised is raised here), else a task that goes on with it from there.

        Python 3.11 has no eager tasks: the first step runs in the sender's task, and
        the rest in a task that passes up to asyncio what the coroutine waits on, as an
        eager task would (nats-py's publish uses no ``current_task`` before it waits).
        """
        try:
            waits_on = publish.send(None)
        except StopIteration:
            return None
        return asyncio.get_running_loop().create_task(
            _go_on(publish, waits_on), name=f"kerna nats publish to {peer}"
        )


async def _go_on(coro: Coroutine[Any, Any, None], waits_on: object) -> None:
    # Cancelled before its first step (aclose right after the send), this never runs
    # and ``coro`` stays suspended until it is collected, which closes it.
    await _resume(coro, waits_on)


@types.coroutine
def _resume(coro: Coroutine[Any, Any, None], waits_on: object) -> Generator[Any, Any, None]:
    """Drive ``coro``, already started and waiting on ``waits_on``, to its end: each
    future it waits on goes up to the task awaiting this, each wake-up (or exception,
    such as a cancellation) back down to ``coro``."""
    while True:
        try:
            sent = yield waits_on
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:
            try:
                waits_on = coro.throw(exc)
            except StopIteration:
                return
        else:
            try:
                waits_on = coro.send(sent)
            except StopIteration:
                return
