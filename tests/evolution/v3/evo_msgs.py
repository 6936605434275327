"""Version 3: incompatible with version 1 on purpose (each kind of breaking change)."""

from kerna import Message, Request


class Price(Message, tag="evo.Price"):
    value: float
    venue: str  # a new field without a default


class Quote(Request[int], tag="evo.Quote"):  # the reply type changed
    symbol: str


class Order(Message, tag="evo.Order.v3"):  # the tag changed
    id: str  # retyped
    note: str = ""


def samples() -> list[Message]:
    return [Order(id="3"), Quote(symbol="ACME")]


REPLY = 3
