"""A process on one version of an application's messages, speaking kerna's wire.

``python -m tests.wire_peer encode``: the delivery frames of ``evo_msgs.samples()`` and
a reply frame (``evo_msgs.REPLY`` to a ``Quote``) on stdout. ``decode``: the frames on
stdin decoded, one JSON line each: the message as this version reads it, or the
WireError's reason and tag. Frames are length-prefixed (4 bytes, big-endian). Which
version: the ``evo_msgs`` module on PYTHONPATH (tests/evolution/v1, v2, v3).
"""

from __future__ import annotations

import sys

import evo_msgs  # type: ignore[import-not-found]
import msgspec

from kerna import AgentId
from kerna._envelope import ASK, TELL, Envelope
from kerna._schema import message_types
from kerna._wire import Delivery, MessageTypes, WireCodec, WireError


def _codec() -> WireCodec:
    types = MessageTypes()
    types.add_all(message_types(["evo_msgs"]))
    return WireCodec(types)


def encode() -> None:
    wire = _codec()
    out = sys.stdout.buffer
    frames = []
    for i, message in enumerate(evo_msgs.samples()):
        kind = ASK if isinstance(message, evo_msgs.Quote) else TELL
        env = Envelope(i + 1, kind, AgentId("Desk", "d"), message, None, i + 1, 0, 30.0)
        frames.append(wire.encode(env, "tcp://peer:1", now=0.0))
    frames.append(wire.encode_reply(99, evo_msgs.Quote, evo_msgs.REPLY))
    for frame in frames:
        out.write(len(frame).to_bytes(4, "big") + frame)
    out.flush()


def decode() -> None:
    wire = _codec()
    data = sys.stdin.buffer.read()
    pos = 0
    while pos < len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        frame = data[pos + 4 : pos + 4 + size]
        pos += 4 + size
        try:
            got = wire.decode(frame, "tcp://other-version:1")
        except WireError as exc:
            line = {"error": str(exc.reason), "tag": exc.tag}
        else:
            value = got.message if isinstance(got, Delivery) else got.value
            line = {"type": type(value).__name__, "value": msgspec.to_builtins(value)}
        sys.stdout.write(msgspec.json.encode(line).decode() + "\n")


if __name__ == "__main__":
    {"encode": encode, "decode": decode}[sys.argv[1]]()
