"""The cluster's options, checked, and a node's default id (``Kernel(cluster=...)``)."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._errors import ConfigError

__all__ = ["check_cluster", "default_node_id"]

_taken_ids: set[str] = set()  # default node ids given out in this process


def default_node_id() -> str:
    """``hostname-pid``; ``hostname-pid-N`` for the N-th kernel of this process."""
    base = f"{socket.gethostname()}-{os.getpid()}"
    node_id, n = base, 1
    while node_id in _taken_ids:
        n += 1
        node_id = f"{base}-{n}"
    _taken_ids.add(node_id)
    return node_id


def check_cluster(
    *,
    cluster: str | None,
    node_id: str | None,
    secret: bytes | str | None,
    secret_file: str | os.PathLike[str] | None,
    transport: str | None,
    transport_options: Mapping[str, Any] | None,
    state: object,
) -> dict[str, Any]:
    """Validate the cluster options; the transport options with the secret in them.

    A cluster needs a transport (how other nodes reach this one) and a store its nodes
    share: ``memory://`` (a URL) is private to one kernel, so it is refused; a
    ``StateBackend`` object shared by the kernels of one process is fine.

    Raises:
        ConfigError: a bad cluster name or node id, a cluster without a transport or
            on ``memory://``, both ``secret`` and ``secret_file`` (or a secret in
            ``transport_options`` too), a secret without a transport, an unreadable or
            empty secret file.
    """
    options = dict(transport_options or {})
    if cluster is not None:
        if not isinstance(cluster, str) or not cluster or "/" in cluster:
            raise ConfigError(f"cluster must be a non-empty name without '/', got {cluster!r}")
        if transport is None:
            raise ConfigError(
                f"cluster {cluster!r} needs a transport: other nodes reach this one"
                " through it (Kernel(transport='tcp://host:port'))"
            )
        if isinstance(state, str) and state.startswith("memory:"):
            raise ConfigError(
                f"cluster {cluster!r} needs a store its nodes share (etcd://...): state"
                f" {state!r} is private to this kernel"
            )
    if node_id is not None and (not isinstance(node_id, str) or not node_id or "/" in node_id):
        raise ConfigError(f"node_id must be a non-empty str without '/', got {node_id!r}")
    if secret is not None and secret_file is not None:
        raise ConfigError("give the cluster secret once: secret= or secret_file=, not both")
    if secret_file is not None:
        path = Path(secret_file)
        try:
            secret = path.read_bytes().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read secret_file {str(path)!r}: {exc}") from exc
        if not secret:
            raise ConfigError(f"secret_file {str(path)!r} is empty")
    if secret is not None:
        if not isinstance(secret, bytes | str) or not secret:
            raise ConfigError(f"secret must be non-empty bytes or str, got {type(secret)!r}")
        if transport is None:
            raise ConfigError("a secret needs a transport (Kernel(transport='tcp://...'))")
        if "secret" in options:
            raise ConfigError("the secret is given twice: secret= and transport_options")
        options["secret"] = secret
    return options
