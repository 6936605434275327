"""kerna.plugins: middleware (breakers, retries, caching, batching, tracing, metrics).

Inference cost (needs the ``plugins`` extra, ``pip install 'kerna[plugins]'``, for
``@cached``):

- ``@cached(ttl=..., maxsize=..., key=None)`` under ``@handler``: a response cache per
  agent type, with single-flight (identical concurrent asks compute once);
  ``cache_stats(kernel, Type.handler)`` reads its hits, misses and coalesced asks.
"""

from ._cache import CacheStats, cache_stats, cached

__all__ = ["CacheStats", "cache_stats", "cached"]
