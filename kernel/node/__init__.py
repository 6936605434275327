"""``kerna.node``: the node daemon (``kerna node --config node.toml``).

A node is one kernel in its own process: its configuration (``load_config``: a TOML
file and ``KERNA_*`` environment variables), its agent modules, HTTP probes, Prometheus
metrics and a JSON admin API (``NodeHttp``), JSON logs (``JsonFormatter``) and a
graceful stop on SIGTERM (``run_node``). Needs the ``node`` extra
(``pip install 'kerna[node]'``: aiohttp, prometheus-client).
"""

from ._config import (
    HttpSection,
    LogSection,
    NodeConfig,
    NodeConfigError,
    NodeSection,
    StateSection,
    TransportSection,
    load_config,
)
from ._daemon import kernel_options, load_agents, run_node
from ._http import NodeHttp
from ._logs import JsonFormatter, configure_logging
from ._messages import BadMessage, decode_message

__all__ = [
    "BadMessage",
    "HttpSection",
    "JsonFormatter",
    "LogSection",
    "NodeConfig",
    "NodeConfigError",
    "NodeHttp",
    "NodeSection",
    "StateSection",
    "TransportSection",
    "configure_logging",
    "decode_message",
    "kernel_options",
    "load_agents",
    "load_config",
    "run_node",
]
