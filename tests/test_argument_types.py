"""Arguments of the wrong type are a TypeError naming the argument (also a ValueError,
which bad options were before), whatever entry point takes them."""

from __future__ import annotations

from typing import Any

import pytest

from kerna import Kernel

from .agents import Echo, Ping

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("ask_timeout", "1"),
        ("lease_ttl", True),
        ("idle_timeout", "300"),
        ("mailbox_size", "10"),
        ("mailbox_size", 2.5),
        ("overflow", 3),
        ("max_restarts", "3"),
        ("restart_backoff", "0.1"),
        ("stop_grace", [1]),
        ("cancel_grace", "1"),
        ("state", 42),
    ],
)
def test_a_kernel_option_of_the_wrong_type_is_a_type_error_naming_it(
    option: str, value: Any
) -> None:
    with pytest.raises(TypeError, match=option) as caught:
        Kernel(**{option: value})
    assert isinstance(caught.value, ValueError)  # what bad options raised before


@pytest.mark.parametrize(
    ("option", "value"),
    [("mailbox_size", "1"), ("max_restarts", 1.0), ("conflict_retries", "2")],
)
async def test_a_register_option_of_the_wrong_type_is_a_type_error_naming_it(
    kernel: Kernel, option: str, value: Any
) -> None:
    with pytest.raises(TypeError, match=option):
        kernel.register(Echo, **{option: value})
    kernel.register(Echo)  # nothing was half-registered


@pytest.mark.parametrize("headers", [["a"], {"a": 1}, {1: "a"}])
async def test_headers_that_are_not_str_to_str_are_a_type_error(
    kernel: Kernel, headers: Any
) -> None:
    kernel.register(Echo)
    ref = kernel.ref(Echo, "a")
    with pytest.raises(TypeError, match="headers"):
        await ref.tell(Ping(n=1), headers=headers)
    with pytest.raises(TypeError, match="headers"):
        await ref.ask(Ping(n=1), headers=headers)
    with pytest.raises(TypeError, match="headers"):
        await kernel.publish("t", Ping(n=1), headers=headers)
    assert (await ref.ask(Ping(n=2))).n == 2  # the kernel serves on


async def test_stop_grace_of_the_wrong_type_is_a_type_error_and_the_kernel_still_stops() -> None:
    kernel = Kernel()
    await kernel.start()
    with pytest.raises(TypeError, match="grace"):
        await kernel.stop("1")  # type: ignore[arg-type]
    assert kernel.running
    await kernel.stop()
    assert not kernel.running
