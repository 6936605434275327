"""The transport seam: chosen by URL through the kerna.transports entry points, and
importable without the kernel."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kerna import ConfigError, TransportError
from kerna.transports import (
    FrameTooLarge,
    PeerUnreachable,
    SendQueueFull,
    Transport,
    TransportClosed,
    open_transport,
    transport_class,
)


@pytest.mark.parametrize("url", ["", "tcp:/x", 42, "://x", "t cp://x"])
def test_a_malformed_transport_url_is_a_config_error_naming_it(url: object) -> None:
    with pytest.raises(ConfigError, match="transport URL"):
        transport_class(url)  # type: ignore[arg-type]


def test_an_unknown_scheme_is_a_config_error_listing_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"no transport for scheme 'pigeon'.*tcp"):
        open_transport("pigeon://coop")


def test_transport_errors_are_kerna_transport_errors() -> None:
    for error in (FrameTooLarge, PeerUnreachable, SendQueueFull, TransportClosed):
        assert issubclass(error, TransportError)


def test_the_base_class_checks_its_options() -> None:
    class Null(Transport):
        scheme = "null"

        @property
        def address(self) -> str:
            return self.url

        async def start(self, on_frame: object, on_peer_lost: object) -> None:
            pass

        async def send(self, peer: str, frame: bytes, *, wait: bool = True) -> None:
            self.check_frame(frame)

        async def aclose(self) -> None:
            pass

    with pytest.raises(ConfigError, match="max_frame_size"):
        Null("null://x", max_frame_size=0)
    with pytest.raises(ConfigError, match="send_queue"):
        Null("null://x", send_queue=True)
    small = Null("null://x", max_frame_size=4)
    small.check_frame(b"1234")
    with pytest.raises(FrameTooLarge, match="5 bytes"):
        small.check_frame(b"12345")
    with pytest.raises(TypeError, match="bytes"):
        small.check_frame("text")  # type: ignore[arg-type]


def test_importing_kerna_transports_does_not_load_the_kernel() -> None:
    code = (
        "import sys, kerna.transports\n"
        "loaded = [m for m in ('kerna._kernel', 'kerna._blocking', 'anyio') if m in sys.modules]\n"
        "print(loaded)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
