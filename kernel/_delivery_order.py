"""Gap counting: what a node learns from the numbers other nodes put on deliveries.

Delivery between nodes is at most once: a frame written to a connection that breaks
may be lost, and nothing is sent twice. Each ``Remote`` numbers the deliveries it
queues for one peer (``Delivery.seq``: 1, 2, ... per peer, under a random 63-bit
``epoch`` drawn when it starts, so a restarted sender is told apart), and the
receiving ``Remote`` checks them with a ``DeliveryOrder``:

- ``seq == last + 1``: the normal case (one dict lookup and one int compare).
- ``seq > last + 1``: ``seq - last - 1`` deliveries were lost (a lost connection):
  counted in ``gaps``, logged at INFO once per gap (rate-limited per peer).
- ``seq <= last``: a duplicate or a reordering. kerna never sends a frame twice and a
  connection keeps order, so this is a bug detector: counted in ``out_of_order``,
  logged at WARNING, and the message is still delivered. (Akka's reliable delivery
  drops a duplicate by its number because it resends; kerna does not resend, so a
  low number is not a copy of something delivered and dropping it would lose a
  message.)
- The first number seen from a peer, or under a new epoch (the sender restarted),
  sets the baseline; nothing is counted (a restarted receiver must not count what its
  previous incarnation received).

A frame without numbers (``seq == 0``: an older peer) is not checked; kerna numbers
every delivery it sends, including those that wait for a connection or for room (they
are queued in send order by the peer's ``Backlog``, ``kerna._send_backlog``). A frame
that does not decode is refused (and counted by the codec); its number is never seen,
so it also shows as a gap. Memory: one entry per peer, kept across lost connections
(that is where gaps happen), at most ``MAX_PEERS`` (the oldest is forgotten beyond it).
"""

from __future__ import annotations

import logging
import time

import msgspec

from ._failure_log import LogBudget

__all__ = ["MAX_PEERS", "DeliveryOrder", "DeliveryStats"]

log = logging.getLogger("kerna.remote")

MAX_PEERS = 10_000
"""Peers whose numbering a node keeps; beyond it the oldest entry is forgotten (its
next delivery sets a new baseline)."""


class DeliveryStats(msgspec.Struct, frozen=True):
    """What the numbers on deliveries from other nodes showed (``Kernel.delivery_stats``).

    Attributes:
        gaps: deliveries other nodes sent here that never arrived (lost with a
            connection; delivery is at most once).
        out_of_order: deliveries whose number was not above the last one from their
            sender (a duplicate or a reordering): should always be 0 (a bug if not;
            they were delivered all the same).
        peers: per peer address, its ``(gaps, out_of_order)`` (peers with neither are
            left out; at most ``MAX_PEERS`` are remembered).
        unordered: in a cluster, messages this node held after a hand-off and sent on
            without the order guarantee (the marker through the leaving holder did not
            pass: ``kerna._cluster_flush``).
    """

    gaps: int = 0
    out_of_order: int = 0
    peers: dict[str, tuple[int, int]] = {}
    unordered: int = 0


class DeliveryOrder:
    """Per peer, the last delivery number seen (see the module docstring).

    Attributes:
        last: per peer, ``[epoch, last seq, gaps, out_of_order]``; ``Remote`` reads it
            on every numbered frame and calls ``unexpected`` when the frame is not the
            next one.
        gaps: deliveries missed, over all peers (forgotten peers included).
        out_of_order: deliveries not above their sender's last number, over all peers.
    """

    __slots__ = ("_budget", "gaps", "last", "out_of_order")

    def __init__(self) -> None:
        self.last: dict[str, list[int]] = {}
        self.gaps = 0
        self.out_of_order = 0
        self._budget = LogBudget(time.monotonic)

    def unexpected(self, peer: str, epoch: int, seq: int) -> None:
        """A numbered delivery from ``peer`` that is not the one after the last."""
        seen = self.last.get(peer)
        if seen is None or seen[0] != epoch:
            if seen is None and len(self.last) >= MAX_PEERS:
                del self.last[next(iter(self.last))]  # the oldest peer entry
            self.last[peer] = [epoch, seq, 0, 0] if seen is None else [epoch, seq, *seen[2:]]
            return
        last = seen[1]
        if seq > last:
            missed = seq - last - 1
            seen[1] = seq
            seen[2] += missed
            self.gaps += missed
            skipped = self._budget.allow(f"gap {peer}")
            if skipped is not None:
                note = f" ({skipped} earlier gaps were not logged)" if skipped else ""
                log.info(
                    "%d deliveries from %s were lost (numbers %d to %d; a lost "
                    "connection: delivery is at most once)%s",
                    missed, peer, last + 1, seq - 1, note,
                )  # fmt: skip
            return
        seen[3] += 1
        self.out_of_order += 1
        skipped = self._budget.allow(f"order {peer}")
        if skipped is not None:
            note = f" ({skipped} earlier ones were not logged)" if skipped else ""
            log.warning(
                "a delivery from %s came out of order (number %d after %d): a duplicate "
                "or a reordering, which kerna never produces (delivered all the same)%s",
                peer, seq, last, note,
            )  # fmt: skip

    def stats(self) -> DeliveryStats:
        """A snapshot of the counters."""
        peers = {p: (e[2], e[3]) for p, e in self.last.items() if e[2] or e[3]}
        return DeliveryStats(self.gaps, self.out_of_order, peers)
