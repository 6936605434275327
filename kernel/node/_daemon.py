"""``kerna node``: one kernel, its agent modules and its HTTP endpoints, until a signal.

Start: the HTTP endpoints first (``/healthz`` passes and ``/readyz`` says "not started"
while the kernel starts), then the agent modules are loaded and the kernel started;
``/readyz`` passes from then on.

Stop: the first SIGTERM or SIGINT makes ``/readyz`` fail at once, then runs
``kernel.stop(stop_grace)``: new messages are refused (the admin API answers 503),
queued ones are handled within the grace, and the process exits 0. A second signal
exits at once with 128 + the signal number (what a shell reports for a signal).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import os
import signal
from typing import Any

from kerna import Kernel

from ._config import NodeConfig, agent_classes
from ._http import NodeHttp

__all__ = ["kernel_options", "load_agents", "run_node"]

log = logging.getLogger("kerna.node")


def kernel_options(config: NodeConfig) -> dict[str, Any]:
    """The ``Kernel(...)`` keyword arguments a node's configuration makes.

    The one place the config meets the kernel's constructor. A node with a transport
    and a shared store joins its cluster (``cluster=``, ``node_id=``, ``secret=``); a
    node on ``memory://`` state (private to one process) or without a transport runs
    alone, its secret (if any) going to the transport, and says so in its log.
    """
    options: dict[str, Any] = {
        "state": config.state.url,
        "lease_ttl": config.node.lease_ttl,
        "stop_grace": config.node.stop_grace,
        "ask_timeout": config.node.ask_timeout,
        "timing": config.node.timing,  # /metrics' wait and handling histograms
        "plugins": list(config.node.plugins),
    }
    transport = config.transport
    if transport.url is not None:
        options["transport"] = transport.url
        transport_options: dict[str, Any] = {}
        if joins_cluster(config):
            options["cluster"] = config.node.cluster
            options["node_id"] = config.node.id
            if config.secret is not None:
                options["secret"] = config.secret.value
        elif config.secret is not None:
            transport_options["secret"] = config.secret.value
        if transport.advertise is not None:
            transport_options["advertise"] = transport.advertise
        if transport_options:
            options["transport_options"] = transport_options
    return options


def joins_cluster(config: NodeConfig) -> bool:
    """Whether a node with this config joins its cluster: it has a transport and a
    store other nodes can share (not ``memory://``)."""
    return config.transport.url is not None and not config.state.url.startswith("memory:")


async def load_agents(kernel: Kernel, modules: list[str]) -> None:
    """Load each agent module into ``kernel``: ``setup(kernel)`` (sync or async) if the
    module defines it, else register every Agent subclass it defines.

    Raises:
        ImportError: a module does not import.
        RegistrationError: a class cannot be registered (as ``Kernel.register``).
    """
    for name in modules:
        module = importlib.import_module(name)
        setup = getattr(module, "setup", None)
        if callable(setup):
            result = setup(kernel)
            if inspect.isawaitable(result):
                await result
            log.info("loaded agent module %s (its setup)", name)
            continue
        registered = [kernel.register(cls) for cls in agent_classes(module)]
        log.info("loaded agent module %s: %s", name, ", ".join(registered))


async def run_node(config: NodeConfig) -> int:
    """Run a node until SIGTERM or SIGINT; returns the exit code (0 after a drain).

    Raises:
        OSError: the HTTP address cannot be bound.
        ConfigError: the kernel refused an option.
    """
    node = config.node
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stopping.is_set():
            log.warning("second %s: exiting at once", signal.Signals(signum).name)
            logging.shutdown()
            os._exit(128 + signum)
        log.info(
            "%s: stopping (grace %.3gs)",
            signal.Signals(signum).name,
            node.stop_grace,
            extra={"event": "stopping"},
        )
        stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    kernel = Kernel(**kernel_options(config))
    http = NodeHttp(kernel, config)
    try:
        host, port = await http.start()
        log.info("node %s: http on %s:%d", node.id, host, port, extra={"http": f"{host}:{port}"})
        await load_agents(kernel, node.agents)
        await kernel.start()
        http.ready = True
        if not joins_cluster(config):
            log.warning(
                "node %s runs alone: %s",
                node.id,
                "no transport"
                if config.transport.url is None
                else "memory:// state is "
                "private to this process (use etcd:// or sqlite:// to join a cluster)",
            )
        log.info(
            "node %s of cluster %s ready: state %s, transport %s",
            node.id,
            node.cluster,
            config.state.url.split("://", 1)[0],
            kernel.address,
            extra={"event": "ready", "http": f"{host}:{port}", "address": kernel.address},
        )
        await stopping.wait()
    finally:
        http.stopping = True
        try:
            await kernel.stop(node.stop_grace)
        finally:
            await http.close()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
    log.info("node %s stopped", node.id, extra={"event": "stopped"})
    return 0
