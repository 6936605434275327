"""The optional second level of ``@cached``: answers shared through Redis.

``@cached(ttl=..., maxsize=..., redis=client)`` (``pip install 'kerna[redis]'``): on a
first-level miss, the computation task (the single flight, as without Redis) first
reads Redis, and computes only if Redis has no answer; a computed answer is written to
Redis with the same TTL (``SET ... PX``) before any asker is answered. So kernels in
other processes (nodes) that share the Redis compute an answer once it is stored; two
nodes that miss at the same moment both compute (unless ``scope="cluster"`` routes
both misses to one key's agent, which reads Redis once for them). Errors are cached
at neither level.

The choices:

- The client is the caller's (``redis.asyncio.Redis``, or ``redis=lambda kernel:
  client`` to pick one per kernel): it is used on the kernel's loop and closed by its
  owner, after the kernel stops. kerna opens and closes no connection of its own.
- Keys: ``{prefix}{module}.{qualname}:{hex}``, the hex a BLAKE2b digest of the message's
  wire tag and the msgpack-encoded message (or the ``key=`` result, which must then
  encode as msgpack): stable across processes and releases while the message's schema
  is. Values: the answer encoded as msgpack, decoded as the handler's return annotation
  (a value that no longer decodes is a miss).
- TTL: Redis's own clock (real time); a ``VirtualClock`` moves only the first level.
- Redis failing (down, refusing, or slower than ``redis_timeout``, 0.5 s by default,
  per read and per write) never fails an ask: the level is skipped for that operation,
  counted (``CacheStats.l2_errors``) and logged at WARNING on ``kerna.plugins``, at
  most once per 10 seconds per handler.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from kerna import ConfigError

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from kerna import Kernel

__all__ = ["MISSING", "Counts", "RedisLevel", "RedisOption", "check_option", "stable_digest"]

log = logging.getLogger("kerna.plugins")

RedisOption = Any  # a redis.asyncio.Redis, or a function of the kernel returning one
MISSING: Any = object()
_encode = msgspec.msgpack.Encoder().encode
_QUIET = 10.0  # seconds between two WARNINGs about one handler's Redis


def stable_digest(where: str, message: Any, custom: Any, has_custom: bool, needs: str) -> str:
    """The hex BLAKE2b digest of ``message``'s wire tag and its msgpack encoding (or of
    ``custom``, what ``key=`` returned, with ``has_custom``): the same in every process
    and release while the message's schema is, as a key that other processes read
    needs (Redis keys; the key's agent of ``scope="cluster"``).

    Raises:
        TypeError: the message (or the ``key=`` result) does not encode; the message
            names ``where`` (the handler) and what the key is for (``needs``).
    """
    message_type = type(message)
    tag = str(message_type.__struct_config__.tag)
    what = "the key= result" if has_custom else "the message"
    try:
        data = _encode(custom if has_custom else message)
    except Exception as exc:
        raise TypeError(
            f"@cached {where}: {what} of a {message_type.__qualname__}"
            f" does not encode as msgpack ({exc}), as {needs} needs"
        ) from exc
    return hashlib.blake2b(tag.encode() + b"\0" + data, digest_size=16).hexdigest()


def check_option(option: RedisOption) -> None:
    """Raises:
    ConfigError: redis-py is not installed.
    TypeError: ``option`` is neither a client nor a function.
    """
    try:
        from redis.asyncio import Redis
    except ImportError as exc:
        raise ConfigError(
            f"@cached(redis=...) needs redis-py: pip install 'kerna[redis]' ({exc})"
        ) from exc
    if not (isinstance(option, Redis) or callable(option)):
        raise TypeError(
            "@cached redis= takes a redis.asyncio.Redis client or a function of the"
            f" kernel returning one, got {option!r}"
        )


class Counts(typing.Protocol):
    """Where the level counts (the handler's counters in one kernel)."""

    l2_hits: int
    l2_errors: int


class RedisLevel:
    """The Redis side of one ``@cached`` handler."""

    __slots__ = ("_client", "_decoder", "_fn", "_logged", "_timeout", "prefix")

    def __init__(
        self, option: RedisOption, fn: Callable[..., Any], prefix: str, timeout: float
    ) -> None:
        check_option(option)
        self._client = option
        self._fn = fn
        self._timeout = timeout
        self._decoder: msgspec.msgpack.Decoder[Any] | None = None
        self._logged = -_QUIET
        self.prefix = f"{prefix}{fn.__module__}.{fn.__qualname__}:"

    def client(self, kernel: Kernel) -> Redis:
        from redis.asyncio import Redis

        option = self._client
        client = option if isinstance(option, Redis) else option(kernel)
        if not isinstance(client, Redis):
            raise TypeError(f"@cached redis= function returned {client!r}, not a Redis client")
        return client

    def key(self, message: Any, custom: Any, has_custom: bool) -> str:
        """The Redis key of ``message`` (``custom``: what ``key=`` returned).

        Raises:
            TypeError: the message (or the ``key=`` result) does not encode.
        """
        where = self._fn.__qualname__
        return self.prefix + stable_digest(where, message, custom, has_custom, "a Redis key")

    def _decode(self, data: bytes) -> Any:
        decoder = self._decoder
        if decoder is None:
            returns = typing.get_type_hints(self._fn).get("return", Any)
            decoder = self._decoder = msgspec.msgpack.Decoder(returns)
        return decoder.decode(data)

    async def get(self, kernel: Kernel, key: str, counts: Counts) -> Any:
        """The stored answer, or ``MISSING`` (also when Redis fails: counted, logged)."""
        try:
            async with asyncio.timeout(self._timeout):
                data = await self.client(kernel).get(key)
        except Exception as exc:  # TimeoutError included: a slow Redis is skipped
            self._failed("read", exc, counts)
            return MISSING
        if data is None:
            return MISSING
        if isinstance(data, str):  # a client made with decode_responses=True
            data = data.encode("utf-8", "surrogateescape")
        try:
            value = self._decode(data)
        except msgspec.DecodeError as exc:  # stored by another schema: recompute
            self._failed("decode", exc, counts)
            return MISSING
        counts.l2_hits += 1
        return value

    async def put(self, kernel: Kernel, key: str, value: Any, ttl: float, counts: Counts) -> None:
        """Store ``value`` for ``ttl`` seconds (a failure is counted and logged)."""
        try:
            data = _encode(value)
        except Exception as exc:
            self._failed("encode the answer for", exc, counts)
            return
        try:
            async with asyncio.timeout(self._timeout):
                await self.client(kernel).set(key, data, px=max(1, int(ttl * 1000)))
        except Exception as exc:
            self._failed("write", exc, counts)

    def _failed(self, what: str, exc: Exception, counts: Counts) -> None:
        counts.l2_errors += 1
        now = time.monotonic()
        if now - self._logged >= _QUIET:
            self._logged = now
            log.warning(
                "@cached %s: could not %s Redis (%r); answered without it",
                self._fn.__qualname__,
                what,
                exc,
            )
