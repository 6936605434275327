"""kerna.transports: pluggable transports that carry frames between nodes.

The Transport base class, ``inproc://``, ``tcp://`` and ``nats://`` come with the
transport issue; this package holds nothing yet.
"""

__all__: list[str] = []
