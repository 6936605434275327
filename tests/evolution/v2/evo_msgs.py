"""Version 2: compatible with version 1 (a field added with a default, a field removed
that had a default, a new message type)."""

from kerna import Message, Request


class Price(Message, tag="evo.Price"):
    value: float
    currency: str = "EUR"  # added, with a default


class Quote(Request[Price], tag="evo.Quote"):
    symbol: str
    venue: str = "XETRA"  # added, with a default


class Order(Message, tag="evo.Order"):
    id: int
    priority: int = 0  # added, with a default; `note` removed


class Cancel(Message, tag="evo.Cancel"):  # a new message type
    id: int


def samples() -> list[Message]:
    return [Order(id=2, priority=5), Quote(symbol="ACME", venue="NYSE"), Cancel(id=2)]


REPLY = Price(value=2.5, currency="USD")
