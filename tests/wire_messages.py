"""Message types the wire tests and the wire fuzzer encode (module level: tags resolve)."""

from __future__ import annotations

from typing import Any

from kerna import Message, Request


class Pong(Message, tag="test.Pong"):
    n: int


class Ping(Request[Pong], tag="test.Ping"):
    n: int
    note: str = ""


class Point(Message, tag="test.Point"):
    x: float
    y: float


class Shape(Message, tag="test.Shape"):
    name: str
    points: list[Point]
    meta: dict[str, Any] = {}


class Tree(Message, tag="test.Tree"):
    children: list[Any]


class Lookup(Request[list[Pong]], tag="test.Lookup"):
    keys: list[str]


class Count(Request[int], tag="test.Count"):
    pass


ALL: tuple[type[Message], ...] = (Pong, Ping, Point, Shape, Tree, Lookup, Count)
