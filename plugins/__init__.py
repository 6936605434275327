"""kerna.plugins: middleware (breakers, retries, caching, batching, tracing, metrics).

The chain (``_middleware``): ``Middleware``, ``@middleware(...)`` on an agent class,
``Kernel(middleware=[...])`` / ``kernel.use(...)``; installed plug-ins through the
``kerna.plugins`` entry point group, imported only when named (``available()`` lists
them).

Inference cost (needs the ``plugins`` extra, ``pip install 'kerna[plugins]'``, for
``@cached``):

- ``@cached(ttl=..., maxsize=..., key=None)`` under ``@handler``: a response cache per
  agent type, with single-flight (identical concurrent asks compute once);
  ``cache_stats(kernel, Type.handler)`` reads its hits, misses and coalesced asks;
  ``redis=client`` adds a second level shared through Redis (``kerna[redis]``).
- ``@batched(max_size=..., max_wait=...)`` instead of ``@handler``: single asks become
  one call of a batch handler; ``batch_stats(kernel, Type.handler)`` reads its counters.
"""

from ._batch import BatchStats, batch_stats, batched
from ._cache import CacheStats, cache_stats, cached
from ._middleware import Middleware, SendNext, available, middleware

__all__ = [
    "BatchStats",
    "CacheStats",
    "Middleware",
    "SendNext",
    "available",
    "batch_stats",
    "batched",
    "cache_stats",
    "cached",
    "middleware",
]
