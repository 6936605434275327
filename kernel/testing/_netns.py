"""Network partitions with ``ip netns`` and ``nft`` (root only).

``network_namespace()`` makes a network namespace joined to this one by a veth pair
(``host_address`` on this side, ``address`` inside); ``Netns.popen`` runs a process
inside it. ``partition()`` drops every packet between the two sides with an nftables
table of its own (both directions: open TCP connections hang, new ones time out, as
across a real partition), and ``heal()`` deletes that table. Nothing else of the
host's network is touched; the namespace, its veth pair and the table are removed when
the block ends.

``netns_unavailable()`` says why this cannot run here (not root, ``ip`` or ``nft``
missing), or None; the ``netns`` fixture skips with that reason.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = ["Netns", "netns_unavailable", "network_namespace"]

_numbers = itertools.count()


def netns_unavailable() -> str | None:
    """Why namespaces and nftables cannot be used here, or None when they can."""
    if os.geteuid() != 0:
        return "network partitions need root (ip netns, nft)"
    missing = [tool for tool in ("ip", "nft") if shutil.which(tool) is None]
    if missing:
        return f"network partitions need {' and '.join(missing)}: apt-get install iproute2 nftables"
    return None


def _run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")


class Netns:
    """A network namespace joined to this one by a veth pair (see the module docstring)."""

    def __init__(self) -> None:
        n = (os.getpid() * 4 + next(_numbers)) % 16384
        self.name = f"kerna{n}"  # interface names: at most 15 characters
        self.host_if = f"kh{n}"
        self.inner_if = f"kn{n}"
        # a /30 of its own in 10.213.0.0/16: .1 here, .2 inside
        base = n * 4
        prefix = f"10.213.{base // 256}"
        self.host_address = f"{prefix}.{base % 256 + 1}"
        self.address = f"{prefix}.{base % 256 + 2}"
        self._table = f"kerna_{self.name}"
        self.partitioned = False

    def create(self) -> None:
        """Create the namespace and its veth pair, both ends up.

        Raises:
            RuntimeError: an ``ip`` command failed (its error is in the message).
        """
        ns = ("ip", "netns", "exec", self.name)
        _run("ip", "netns", "add", self.name)
        _run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.inner_if)
        _run("ip", "link", "set", self.inner_if, "netns", self.name)
        _run("ip", "addr", "add", f"{self.host_address}/30", "dev", self.host_if)
        _run("ip", "link", "set", self.host_if, "up")
        _run(*ns, "ip", "addr", "add", f"{self.address}/30", "dev", self.inner_if)
        _run(*ns, "ip", "link", "set", self.inner_if, "up")
        _run(*ns, "ip", "link", "set", "lo", "up")

    def popen(self, argv: Sequence[str], **options: Any) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside the namespace (``options`` go to ``subprocess.Popen``)."""
        return subprocess.Popen(["ip", "netns", "exec", self.name, *argv], **options)

    def partition(self) -> None:
        """Drop every packet between this namespace and the host, both ways.

        Raises:
            RuntimeError: ``nft`` refused the rules.
        """
        if self.partitioned:
            return
        t = self._table
        _run("nft", "add", "table", "inet", t)
        _run("nft", "add", "chain", "inet", t, "in", "{ type filter hook input priority -10 ; }")
        _run("nft", "add", "chain", "inet", t, "out", "{ type filter hook output priority -10 ; }")
        _run("nft", "add", "rule", "inet", t, "in", "iifname", self.host_if, "drop")
        _run("nft", "add", "rule", "inet", t, "out", "oifname", self.host_if, "drop")
        self.partitioned = True

    def heal(self) -> None:
        """Delete the partition's rules (a no-op when there is no partition)."""
        if self.partitioned:
            _run("nft", "delete", "table", "inet", self._table)
            self.partitioned = False

    def delete(self) -> None:
        """Heal, then delete the namespace (which deletes its veth pair)."""
        with contextlib.suppress(RuntimeError):
            self.heal()
        with contextlib.suppress(RuntimeError):
            _run("ip", "netns", "del", self.name)
        with contextlib.suppress(RuntimeError):
            _run("ip", "link", "del", self.host_if)  # gone with the namespace, normally


@contextlib.contextmanager
def network_namespace() -> Iterator[Netns]:
    """A ``Netns``, created for the block and deleted after it.

    Raises:
        RuntimeError: ``netns_unavailable()`` gives a reason, or an ``ip`` command failed.
    """
    reason = netns_unavailable()
    if reason:
        raise RuntimeError(reason)
    netns = Netns()
    try:
        netns.create()
        yield netns
    finally:
        netns.delete()
