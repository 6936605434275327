"""kerna.plugins: middleware (breakers, retries, caching, batching, tracing, metrics).

The middleware chain and its plug-ins come with their own issues; this package holds
nothing yet.
"""

__all__: list[str] = []
