"""Version 1 of an application's messages (tests/test_wire_evolution.py)."""

from kerna import Message, Request


class Price(Message, tag="evo.Price"):
    value: float


class Quote(Request[Price], tag="evo.Quote"):
    symbol: str


class Order(Message, tag="evo.Order"):
    id: int
    note: str = ""  # removed in v2: it had a default


def samples() -> list[Message]:
    return [Order(id=1, note="first"), Quote(symbol="ACME")]


REPLY = Price(value=1.5)
