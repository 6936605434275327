"""The public names of the ``tcp://`` transport (``kerna.transports._tcp``).

``TcpTransport`` is normally opened by URL (``open_transport("tcp://host:port")`` or
``Kernel(transport="tcp://...", transport_options={...})``); this module is where its
helpers live: ``tls_contexts`` (mutual TLS contexts from files) and ``PeerInfo`` (what
``TcpTransport.peer_info`` returns).
"""

from ._tcp import PeerInfo, TcpTransport, tls_contexts
from ._tcp_handshake import PROTOCOL_VERSION, HandshakeError

__all__ = ["PROTOCOL_VERSION", "HandshakeError", "PeerInfo", "TcpTransport", "tls_contexts"]
