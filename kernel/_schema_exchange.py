"""What two nodes tell each other about their message schemas, and what they make of it.

Each node sends its schema document (``kerna._schema.export`` of the types it decodes,
as compact JSON, zlib-compressed) when it meets a peer: in the tcp handshake and with
nats presence probes, as the transport's opaque ``schema``. On the first frame from a
peer the kernel compares: for each tag both know with different fingerprints it runs
the same check as ``kerna schema check`` (``peer_problems``). A compatible difference (a
field added with a default, a removed field that had one) is logged once at INFO; an
incompatible one is logged once at WARNING with what breaks and listed by
``Kernel.schema_mismatches()`` (what the node's status shows).

The document also says which frame layouts the node reads beyond the first ones, under
the key ``WIRE_KEY`` (a str no message tag is): ``WIRE_BATCHES`` means it reads batch
frames (``kerna._wire_frames``), so a peer may send it those (``reads_batches``). An
older node's document has no such key (it gets no batches); an older node reading ours
skips the key, as it skips any tag it does not know.

A document whose compressed form is over ``MAX_SENT`` is replaced by the fingerprints
alone (JSON, as nodes before this exchange sent): a peer that sent only fingerprints
cannot be judged, so each differing tag counts as a mismatch. What a peer sends is
untrusted: it is decompressed to at most ``MAX_RECEIVED`` bytes and read defensively.
"""

from __future__ import annotations

import json
import logging
import zlib
from typing import Any

from ._schema import export, peer_problems
from ._wire_types import MessageTypes

__all__ = [
    "MAX_RECEIVED",
    "MAX_SENT",
    "WIRE_BATCHES",
    "WIRE_KEY",
    "SchemaExchange",
    "reads_batches",
]

log = logging.getLogger("kerna.remote")

MAX_SENT = 48 * 1024  # bytes of a compressed document (the tcp handshake takes 64 KiB)
MAX_RECEIVED = 4 * 1024 * 1024  # bytes a peer's document may inflate to
WIRE_KEY = "\x00wire"  # (a NUL: no message tag has one)
WIRE_BATCHES = "batches"


class SchemaExchange:
    """One node's side of the schema exchange (see the module docstring)."""

    def __init__(self, types: MessageTypes) -> None:
        self._types = types
        self._mismatches: dict[str, dict[str, list[str]]] = {}  # peer -> tag -> problems
        self._compatible: dict[str, set[str]] = {}  # peer -> tags logged as compatible

    def document(self) -> bytes:
        """What this node sends a peer: its schema document, or its fingerprints.

        Raises:
            TypeError: msgspec cannot describe a registered type's field.
        """
        messages: dict[str, Any] = export(self._types.tags().values())["messages"]
        messages[WIRE_KEY] = WIRE_BATCHES
        text = json.dumps(messages, sort_keys=True, separators=(",", ":")).encode()
        packed = zlib.compress(text, 6)
        if len(packed) <= MAX_SENT:
            return packed
        fingerprints = {
            tag: entry if tag == WIRE_KEY else entry["fingerprint"]
            for tag, entry in messages.items()
        }
        return json.dumps(fingerprints, sort_keys=True).encode()

    def mismatches(self) -> dict[str, list[str]]:
        """Per peer, the tags whose schemas are incompatible with ours."""
        return {peer: sorted(tags) for peer, tags in self._mismatches.items() if tags}

    def compare(self, peer: str, sent: bytes | str) -> None:
        """Judge what ``peer`` sent (``PeerInfo.schema``) against our types; log each
        differing tag once per peer and keep the incompatible ones."""
        theirs = _read(peer, sent)
        if theirs is None:
            return
        ours = export(self._types.tags().values())["messages"]
        if all(isinstance(v, str) for v in theirs.values()):  # fingerprints only
            problems = {
                tag: [f"{tag}: fingerprints differ (the peer sent no schema to check)"]
                for tag, fp in theirs.items()
                if tag in ours and ours[tag]["fingerprint"] != fp
            }
        else:
            problems = peer_problems(theirs, ours)
        known = self._mismatches.setdefault(peer, {})
        compatible = self._compatible.setdefault(peer, set())
        for tag, found in sorted(problems.items()):
            if found and tag not in known:
                known[tag] = found
                log.warning(
                    "schema of %r is incompatible between this node and %s: %s"
                    " (messages of that type fail to decode; kerna schema check tells more)",
                    tag,
                    peer,
                    "; ".join(found),
                )
            elif not found and tag not in compatible:
                compatible.add(tag)
                log.info("schema of %r differs compatibly between this node and %s", tag, peer)


def reads_batches(peer: str, sent: bytes | str) -> bool:
    """Whether the schema document ``peer`` sent says it reads batch frames."""
    theirs = _read(peer, sent)
    return theirs is not None and theirs.get(WIRE_KEY) == WIRE_BATCHES


def _read(peer: str, sent: bytes | str) -> dict[str, Any] | None:
    data = sent.encode() if isinstance(sent, str) else bytes(sent)
    if not data:
        return None
    if data[:1] != b"{":
        inflate = zlib.decompressobj()
        try:
            data = inflate.decompress(data, MAX_RECEIVED)
        except zlib.error as exc:
            log.warning(
                "%s sent a schema document that does not inflate (%s); not compared", peer, exc
            )
            return None
        if inflate.unconsumed_tail:
            log.warning("%s sent a schema document over %d bytes", peer, MAX_RECEIVED)
            return None
    try:
        theirs = json.loads(data)
    except ValueError:
        log.warning("%s sent a schema document that is not JSON; not compared", peer)
        return None
    return theirs if isinstance(theirs, dict) else None
