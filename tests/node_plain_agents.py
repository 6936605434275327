"""An agent module without ``setup``: ``kerna node`` registers its Agent classes (and
not the ones it imports)."""

from __future__ import annotations

from kerna import Agent, Message, handler

from .node_agents import Echo  # imported, not defined here: not registered from here

__all__ = ["Echo", "Greeter"]


class Hello(Message):
    name: str


class Greeter(Agent):
    @handler
    async def hello(self, msg: Hello) -> str:
        return f"hello {msg.name}"
