"""Where kerna keeps things in a state backend, shared by every backend and kernel.

::

    {prefix}state/{type}/{key}               an agent's state (or its latest snapshot)
    {prefix}log/{type}/{key}/{seq:020d}      an event-sourced agent's events
    {prefix}act/{type}/{key}                 the activation claim (fencing token)

Agent keys are escaped (``%`` -> ``%25``, ``/`` -> ``%2F``) so that any key maps to one
path segment and prefixes never collide. Values are msgpack.
"""

from __future__ import annotations

__all__ = ["Layout", "escape", "unescape"]


def escape(segment: str) -> str:
    """Make ``segment`` safe as one path segment."""
    return segment.replace("%", "%25").replace("/", "%2F")


def unescape(segment: str) -> str:
    return segment.replace("%2F", "/").replace("%25", "%")


class Layout:
    """Key builders under one prefix (default ``"kerna/"``)."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str = "kerna/") -> None:
        if not isinstance(prefix, str) or (prefix and not prefix.endswith("/")):
            raise ValueError(f"key prefix must be a str ending in '/', got {prefix!r}")
        self.prefix = prefix

    def state(self, agent_type: str, key: str) -> str:
        return f"{self.prefix}state/{escape(agent_type)}/{escape(key)}"

    def claim(self, agent_type: str, key: str) -> str:
        return f"{self.prefix}act/{escape(agent_type)}/{escape(key)}"

    def log_prefix(self, agent_type: str, key: str) -> str:
        return f"{self.prefix}log/{escape(agent_type)}/{escape(key)}/"

    def log(self, agent_type: str, key: str, seq: int) -> str:
        return f"{self.log_prefix(agent_type, key)}{seq:020d}"

    def states_of(self, agent_type: str) -> str:
        """Prefix of every state key of one agent type."""
        return f"{self.prefix}state/{escape(agent_type)}/"
