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
  ``redis=client`` adds a second level shared through Redis (``kerna[redis]``);
  ``scope="cluster"`` computes identical asks from every node of a cluster once, on
  the agent keyed by the cache key.
- ``@batched(max_size=..., max_wait=...)`` instead of ``@handler``: single asks become
  one call of a batch handler; ``batch_stats(kernel, Type.handler)`` reads its counters.

Observability: ``Tracing()`` (the ``otel`` extra) puts OpenTelemetry spans around every
send and handling, the W3C ``traceparent`` carried in the message headers; ``Metrics()``
exports the kernel's metrics (the names of a node's ``/metrics``) through an
OpenTelemetry ``MeterProvider``; ``resilience_stats(kernel)`` reads every
``Resilience`` target's counters and breaker state.
"""

from ._batch import BatchStats, batch_stats, batched
from ._breaker import Breaker, BreakerStats
from ._bulkhead import BulkheadStats
from ._cache import CacheStats, cache_stats, cached
from ._middleware import Middleware, SendNext, available, middleware
from ._otel_metrics import Metrics
from ._policy import Policy, Retry, idempotent, tier_options
from ._resilience import (
    BREAKERS,
    BreakerChanged,
    Degradation,
    Dependency,
    Failed,
    Resilience,
    TargetStats,
    breaker_stats,
    degradation,
    dependency,
    is_degraded,
    resilience_stats,
)
from ._tracing import TRACEPARENT, Tracing

__all__ = [
    "BREAKERS",
    "TRACEPARENT",
    "BatchStats",
    "Breaker",
    "BreakerChanged",
    "BreakerStats",
    "BulkheadStats",
    "CacheStats",
    "Degradation",
    "Dependency",
    "Failed",
    "Metrics",
    "Middleware",
    "Policy",
    "Resilience",
    "Retry",
    "SendNext",
    "TargetStats",
    "Tracing",
    "available",
    "batch_stats",
    "batched",
    "breaker_stats",
    "cache_stats",
    "cached",
    "degradation",
    "dependency",
    "idempotent",
    "is_degraded",
    "middleware",
    "resilience_stats",
    "tier_options",
]
