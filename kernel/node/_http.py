"""The node's HTTP endpoints (aiohttp): probes, metrics and the JSON admin API.

Endpoints:

- ``GET /healthz``: 200 while the event loop is responsive: the largest lag measured
  over the last ``LAG_WINDOW`` seconds is under ``[http] max_loop_lag``; else 503 (a
  stall shows for that long, whenever the probe comes). Liveness: restart the process
  when it keeps failing.
- ``GET /readyz``: 200 once the kernel runs, has joined its cluster (its own member
  record, under its id and at its address, is in its view of the members; always, for
  a node that runs alone) and the state backend answers a read within
  ``[http] probe_timeout``; 503 while starting, stopping, while not a member (its lease
  lapsed and it has not rejoined yet, or another record holds its id), or when the
  store does not answer; also while it holds no live lease (it could not refresh it),
  though its old record may still be seen, until it registered under a new one.
  Readiness: route traffic to the node only while it passes.
- ``GET /metrics``: Prometheus text (``kerna.node._metrics``).
- ``GET /admin/status``, ``POST /admin/ask``, ``/admin/tell``, ``/admin/publish``: the
  admin API of ``kerna status|ask|tell|publish``.
- ``GET /admin/deadletters`` (query ``reason``, ``type``, ``message_type``, ``limit``)
  and ``POST /admin/deadletters/replay`` (a JSON object of the same filters and
  ``seqs``, or ``"all": true``): the kept dead letters (``Kernel.dead_letters``) and
  their replay (``Kernel.replay_dead_letters``), for ``kerna deadletters list|replay``.
  With a token configured (required when listening on anything but loopback) each admin call needs
  ``Authorization: Bearer <token>``; a missing or wrong one is 401. The probes and
  ``/metrics`` need none (what probes and scrapers expect).

Admin errors are ``{"error": <kind>, "message": <text>}`` with status 400 (bad request or
message, the field named), 401, 404 (unknown agent type), 500 (the handler raised:
``error`` is its type), 503 (not running or stopping), 504 (the ask timed out).
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import math
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kerna import AskTimeout, DeadLetterRecord, Kernel, KernelStopped, UnknownAgent

from ._config import NodeConfig
from ._members import joined, members_of
from ._messages import BadMessage, decode_message, encode_value
from ._metrics import KernelCollector, node_registry, resilience_of

__all__ = ["NodeHttp"]


LAG_INTERVAL = 0.25  # seconds between loop-lag samples
LAG_WINDOW = 5.0  # seconds of samples /healthz and kerna_loop_lag_seconds look at


class AskBody(msgspec.Struct, forbid_unknown_fields=True):
    agent_type: str
    key: str
    message: dict[str, Any]
    timeout: float | None = None


class TellBody(msgspec.Struct, forbid_unknown_fields=True):
    agent_type: str
    key: str
    message: dict[str, Any]


class PublishBody(msgspec.Struct, forbid_unknown_fields=True):
    topic: str
    message: dict[str, Any]


class ReplayBody(msgspec.Struct, forbid_unknown_fields=True):
    reason: str | None = None
    agent_type: str | None = None
    message_type: str | None = None
    seqs: list[int] | None = None
    all: bool = False


def record_json(record: DeadLetterRecord) -> dict[str, Any]:
    """A kept dead letter as JSON-ready builtins (its message keeps its ``"type"``)."""
    return {
        "seq": record.seq,
        "at": record.at,
        "target": record.target,
        "reason": record.reason,
        "kind": record.kind,
        "message_type": record.message_type,
        "message": encode_value(record.message),
        "error": record.error,
        "message_id": record.message_id,
        "correlation_id": record.correlation_id,
    }


class _Refused(Exception):
    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class NodeHttp:
    """The HTTP side of one node.

    Args:
        kernel: the node's kernel (the endpoints read it; it is started elsewhere).
        config: the node's configuration (``[http]``, the node id and cluster).

    ``ready`` is set by the daemon once the kernel runs; ``stopping`` when it begins
    to stop.
    """

    def __init__(self, kernel: Kernel, config: NodeConfig) -> None:
        self.kernel = kernel
        self.config = config
        self.ready = False
        self.stopping = False
        self._lags: collections.deque[float] = collections.deque(
            maxlen=round(LAG_WINDOW / LAG_INTERVAL)
        )
        self._token = None if config.token is None else config.token.value
        self._runner: web.AppRunner | None = None
        self._ticker: asyncio.Task[None] | None = None
        collector = KernelCollector(kernel, config.node.id, config.node.cluster, lambda: self.lag)
        self._registry = node_registry(collector)
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/admin/status", self.status)
        app.router.add_post("/admin/ask", self.ask)
        app.router.add_post("/admin/tell", self.tell)
        app.router.add_post("/admin/publish", self.publish)
        app.router.add_get("/admin/deadletters", self.dead_letters)
        app.router.add_post("/admin/deadletters/replay", self.replay)
        self.app = app

    async def start(self) -> tuple[str, int]:
        """Listen on ``[http] listen``; returns the bound (host, port).

        Raises:
            OSError: the address cannot be bound.
        """
        host, port = self.config.listen
        self._ticker = asyncio.get_running_loop().create_task(self._measure_lag())
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await runner.setup()
        self._runner = runner
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0] if runner.addresses else (host, port)
        return str(bound[0]), int(bound[1])

    async def close(self) -> None:
        """Stop listening and end the lag sampler."""
        if self._ticker is not None:
            self._ticker.cancel()
            # its CancelledError becomes a result; a cancellation of close() still raises
            await asyncio.gather(self._ticker, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()

    async def _measure_lag(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            planned = loop.time() + LAG_INTERVAL
            await asyncio.sleep(LAG_INTERVAL)
            self._lags.append(max(0.0, loop.time() - planned))

    @property
    def lag(self) -> float:
        """The largest event-loop lag measured over the last ``LAG_WINDOW`` seconds."""
        return max(self._lags, default=0.0)

    # -- probes ------------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        bound = self.config.http.max_loop_lag
        ticking = self._ticker is not None and not self._ticker.done()
        ok = ticking and self.lag < bound
        body = {
            "status": "ok" if ok else "unhealthy",
            "loop_lag": self.lag,
            "max_loop_lag": bound,
            "window": LAG_WINDOW,
        }
        return web.json_response(body, status=200 if ok else 503)

    async def readyz(self, request: web.Request) -> web.Response:
        if self.stopping or not (self.ready and self.kernel.running):
            reason = "stopping" if self.stopping else "not started"
            return web.json_response({"status": "unready", "reason": reason}, status=503)
        unjoined = joined(self.kernel)
        if unjoined is not None:
            return web.json_response({"status": "unready", "reason": unjoined}, status=503)
        try:
            async with asyncio.timeout(self.config.http.probe_timeout):
                await self.kernel.state_backend.get(f"{self.kernel.state_prefix}node/probe")
        except TimeoutError:
            reason = f"the state backend did not answer in {self.config.http.probe_timeout:g}s"
            return web.json_response({"status": "unready", "reason": reason}, status=503)
        except Exception as exc:
            reason = f"the state backend failed: {type(exc).__name__}: {exc}"
            return web.json_response({"status": "unready", "reason": reason}, status=503)
        return web.json_response({"status": "ready"})

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    # -- admin -------------------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/admin/"):
            if self._token is not None:
                given = request.headers.get("Authorization", "")
                scheme, _, credential = given.partition(" ")
                if scheme.lower() != "bearer" or not hmac.compare_digest(
                    credential.strip().encode(), self._token
                ):
                    why = "missing" if not given else "wrong"
                    return web.json_response(
                        {"error": "unauthorized", "message": f"{why} admin token"},
                        status=401,
                        headers={"WWW-Authenticate": "Bearer"},
                    )
            try:
                return await handler(request)
            except _Refused as exc:
                return web.json_response(
                    {"error": exc.kind, "message": str(exc)}, status=exc.status
                )
        return await handler(request)

    async def status(self, request: web.Request) -> web.Response:
        kernel = self.kernel
        stats = kernel.stats()
        body = {
            "node": self.config.node.id,
            "cluster": self.config.node.cluster,
            "address": kernel.address if kernel.running else None,
            "running": kernel.running,
            "ready": self.ready and kernel.running and not self.stopping,
            "types": msgspec.to_builtins(stats.types),
            "timings": msgspec.to_builtins(kernel.timings()),
            "dead_letters": stats.dead_letters,
            "dead_letter_store": msgspec.to_builtins(kernel.dead_letter_stats()),
            "handlers_running": stats.running,
            "members": members_of(kernel),
            "messages": sorted(kernel.message_types()),
            "schema_mismatches": kernel.schema_mismatches(),
            "resilience": resilience_of(kernel),
        }
        return web.json_response(body)

    async def ask(self, request: web.Request) -> web.Response:
        body = await self._body(request, AskBody)
        timeout = body.timeout
        if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
            raise _Refused(400, "bad_request", f"timeout must be > 0 seconds, got {timeout}")
        message = self._message(body.message)
        reply = await self._run(
            self.kernel.ref(body.agent_type, body.key).ask(message, timeout=timeout)
        )
        return web.json_response({"reply": encode_value(reply)})

    async def tell(self, request: web.Request) -> web.Response:
        body = await self._body(request, TellBody)
        message = self._message(body.message)
        await self._run(self.kernel.ref(body.agent_type, body.key).tell(message))
        return web.json_response({"accepted": True}, status=202)

    async def publish(self, request: web.Request) -> web.Response:
        body = await self._body(request, PublishBody)
        message = self._message(body.message)
        await self._run(self.kernel.publish(body.topic, message))
        return web.json_response({"accepted": True}, status=202)

    async def dead_letters(self, request: web.Request) -> web.Response:
        query = request.query
        unknown = sorted(set(query) - {"reason", "type", "message_type", "limit"})
        if unknown:
            raise _Refused(400, "bad_request", f"unknown query parameter {', '.join(unknown)}")
        limit = None
        if "limit" in query:
            try:
                limit = int(query["limit"])
            except ValueError:
                limit = -1
            if limit < 0:
                raise _Refused(400, "bad_request", f"limit must be an int >= 0: {query['limit']!r}")
        records = self.kernel.dead_letters(
            reason=query.get("reason"),
            agent_type=query.get("type"),
            message_type=query.get("message_type"),
            limit=limit,
        )
        stats = self.kernel.dead_letter_stats()
        body = {
            "dead_letters": [record_json(r) for r in records],
            "stats": msgspec.to_builtins(stats),
        }
        return web.json_response(body)

    async def replay(self, request: web.Request) -> web.Response:
        body = await self._body(request, ReplayBody)
        filters = (body.reason, body.agent_type, body.message_type, body.seqs)
        if body.all == any(f is not None for f in filters):
            raise _Refused(
                400,
                "bad_request",
                "name what to replay (reason, agent_type, message_type, seqs) or all: true,"
                " not both",
            )
        result = await self._run(
            self.kernel.replay_dead_letters(
                reason=body.reason,
                agent_type=body.agent_type,
                message_type=body.message_type,
                seqs=body.seqs,
            )
        )
        return web.json_response(msgspec.to_builtins(result))

    async def _body(self, request: web.Request, shape: type[Any]) -> Any:
        if not self.kernel.running:
            raise _Refused(503, "not_running", "the node is not running (starting or stopping)")
        try:
            return msgspec.json.decode(await request.read(), type=shape)
        except msgspec.ValidationError as exc:
            raise _Refused(400, "bad_request", f"request body: {exc}") from None
        except msgspec.DecodeError as exc:
            raise _Refused(400, "bad_request", f"request body is not JSON: {exc}") from None

    def _message(self, value: dict[str, Any]) -> Any:
        try:
            return decode_message(value, self.kernel.message_types())
        except BadMessage as exc:
            raise _Refused(400, "bad_message", str(exc)) from None

    async def _run(self, work: Awaitable[Any]) -> Any:
        try:
            return await work
        except AskTimeout as exc:
            raise _Refused(504, "ask_timeout", str(exc)) from None
        except KernelStopped as exc:
            raise _Refused(503, "stopping", str(exc)) from None
        except UnknownAgent as exc:
            raise _Refused(404, "unknown_agent", str(exc)) from None
        except Exception as exc:
            raise _Refused(500, type(exc).__name__, str(exc)) from None
