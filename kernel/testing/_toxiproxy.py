"""The fault proxy's API driven through a toxiproxy server (toxiproxy-python), chosen by
``fault_proxy()`` when ``TOXIPROXY_URL`` is set (``http://host:8474``).

Each fault is a toxic on both streams: ``delay`` a ``latency`` toxic, ``reset`` a
``reset_peer`` one (timeout 0), ``blackhole`` a ``timeout`` one (timeout 0: data held
until it is removed), ``drip`` a ``slicer`` one; ``heal`` removes them all. The
toxiproxy server must reach the target, and the proxy listens where the server runs.

Untested against a real toxiproxy server (none runs where kerna's tests run): the
tests check only that the variable selects it and that an unreachable server is a
clear error. toxiproxy-python's calls block, so each runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import urllib.parse
from types import TracebackType
from typing import Any

from ._proxy import FaultProxy

__all__ = ["ToxiproxyFaults", "fault_proxy"]

_names = itertools.count()


def fault_proxy(target: str | tuple[str, int]) -> FaultProxy | ToxiproxyFaults:
    """A fault proxy to ``target``: through toxiproxy when ``TOXIPROXY_URL`` is set,
    else kerna's own ``FaultProxy``. Both are used the same way (``async with``,
    ``endpoint``, ``delay``, ``reset``, ``blackhole``, ``drip``, ``heal``).

    Raises:
        ValueError: ``target`` or ``TOXIPROXY_URL`` is malformed.
    """
    url = os.environ.get("TOXIPROXY_URL")
    if url:
        return ToxiproxyFaults(target, url)
    return FaultProxy(target)


class ToxiproxyFaults:
    """A proxy on the toxiproxy server at ``url`` to ``target``, with the fault API of
    ``FaultProxy`` (see the module docstring).

    Raises:
        ValueError: ``url`` is not ``http://host:port``.
    """

    def __init__(self, target: str | tuple[str, int], url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname or parts.port is None:
            raise ValueError(f"TOXIPROXY_URL must be http://host:port, got {url!r}")
        self.url = url
        self.api = (parts.hostname, parts.port)
        self.target = target if isinstance(target, str) else f"{target[0]}:{target[1]}"
        self.name = f"kerna-{os.getpid()}-{next(_names)}"
        self.endpoint = ""
        self._proxy: Any = None
        self._toxics: list[str] = []

    async def start(self) -> ToxiproxyFaults:
        """Create the proxy on the server (``endpoint`` then says where it listens).

        Raises:
            ModuleNotFoundError: toxiproxy-python is not installed.
            ConnectionError: the toxiproxy server does not answer at ``url``.
        """
        await asyncio.to_thread(self._create)
        return self

    def _create(self) -> None:
        from toxiproxy import Toxiproxy  # here: only when TOXIPROXY_URL is set
        from toxiproxy.api import APIConsumer

        # toxiproxy-python keeps its server in class attributes (0.1.1's
        # update_api_consumer forgets base_url): set all three.
        host, port = self.api
        APIConsumer.host, APIConsumer.port = host, port
        APIConsumer.base_url = f"http://{host}:{port}"
        try:
            self._proxy = Toxiproxy().create(upstream=self.target, name=self.name)
        except OSError as exc:  # requests' ConnectionError is an OSError
            raise ConnectionError(f"toxiproxy at {self.url} (TOXIPROXY_URL): {exc}") from exc
        self.endpoint = str(self._proxy.listen)

    async def aclose(self) -> None:
        """Delete the proxy from the server."""
        if self._proxy is not None:
            await asyncio.to_thread(self._proxy.destroy)
            self._proxy = None

    async def __aenter__(self) -> ToxiproxyFaults:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _add(self, kind: str, **attributes: float) -> None:
        for stream in ("upstream", "downstream"):
            name = f"{kind}_{stream}"
            if name in self._toxics:
                await asyncio.to_thread(self._proxy.destroy_toxic, name)
                self._toxics.remove(name)
            await asyncio.to_thread(
                self._proxy.add_toxic, type=kind, name=name, stream=stream, attributes=attributes
            )
            self._toxics.append(name)

    async def delay(self, seconds: float) -> None:
        """A ``latency`` toxic of ``seconds`` on both streams.

        Raises:
            ValueError: ``seconds`` is negative.
        """
        if seconds < 0:
            raise ValueError(f"delay must be >= 0 seconds, got {seconds}")
        await self._add("latency", latency=round(seconds * 1000))

    async def reset(self) -> None:
        """A ``reset_peer`` toxic (timeout 0) on both streams."""
        await self._add("reset_peer", timeout=0)

    async def blackhole(self) -> None:
        """A ``timeout`` toxic (timeout 0: held until healed) on both streams."""
        await self._add("timeout", timeout=0)

    async def drip(self, nbytes: int, interval: float) -> None:
        """A ``slicer`` toxic: ``nbytes`` pieces, ``interval`` apart, on both streams.

        Raises:
            ValueError: ``nbytes`` < 1 or ``interval`` <= 0.
        """
        if nbytes < 1 or interval <= 0:
            raise ValueError(f"drip needs nbytes >= 1 and interval > 0, got {nbytes}, {interval}")
        await self._add(
            "slicer", average_size=nbytes, size_variation=0, delay=round(interval * 1e6)
        )

    async def heal(self) -> None:
        """Remove every toxic this proxy added."""
        for name in self._toxics:
            await asyncio.to_thread(self._proxy.destroy_toxic, name)
        self._toxics.clear()
