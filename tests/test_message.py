"""Messages: frozen, tagged, passed by reference."""

from __future__ import annotations

import msgspec
import pytest

from kerna import Agent, Kernel, Message, handler

pytestmark = pytest.mark.anyio


class Doc(Message):
    text: str
    tags: list[str]


class Custom(Message, tag="doc.custom"):
    x: int


def test_default_tag_is_module_and_qualname() -> None:
    assert Doc.__struct_config__.tag == f"{__name__}.Doc"
    assert Custom.__struct_config__.tag == "doc.custom"


def test_messages_are_frozen() -> None:
    doc = Doc(text="a", tags=[])
    with pytest.raises(AttributeError):
        doc.text = "b"  # type: ignore[misc]


def test_frozen_false_is_rejected() -> None:
    with pytest.raises(TypeError, match="immutable"):

        class Mutable(Message, frozen=False):  # type: ignore[call-arg]
            x: int


def test_tag_round_trips_on_the_wire() -> None:
    data = msgspec.msgpack.encode(Custom(x=1))
    assert msgspec.msgpack.decode(data, type=Custom | Doc) == Custom(x=1)


class Keeper(Agent):
    seen: list[object] = []

    @handler
    async def keep(self, msg: Doc) -> Doc:
        Keeper.seen.append(msg)
        return msg


async def test_receiver_gets_the_very_same_object(
    kernel: Kernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    encodes: list[object] = []
    real_encode = msgspec.msgpack.encode

    def counting_encode(obj: object, *args: object, **kwargs: object) -> bytes:
        encodes.append(obj)
        return real_encode(obj, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(msgspec.msgpack, "encode", counting_encode)
    monkeypatch.setattr(msgspec.json, "encode", counting_encode)
    kernel.register(Keeper)
    doc = Doc(text="x" * 10_000, tags=["a"])
    reply = await kernel.ref(Keeper, "k").ask(doc)
    await kernel.ref(Keeper, "k").tell(doc)
    kernel.subscribe("docs", Keeper, key=lambda m: "k")
    await kernel.publish("docs", doc)
    await kernel.ref(Keeper, "k").ask(doc)
    assert reply is doc
    assert all(seen is doc for seen in Keeper.seen)
    assert len(Keeper.seen) == 4
    assert encodes == []  # zero encodes in-process
