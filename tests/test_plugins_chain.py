"""kerna.plugins' middleware chain: order, what it sees, sends through it, an empty
chain that is not there, and plug-ins loaded from entry points only when allowed."""

from __future__ import annotations

import asyncio
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kerna import (
    Agent,
    AgentId,
    ConfigError,
    Kernel,
    Message,
    MessageContext,
    Request,
    handler,
)
from kerna.plugins import Middleware, SendNext, available, middleware

pytestmark = pytest.mark.anyio


class Pong(Message):
    n: int
    seen: tuple[str, ...] = ()


class Ping(Request[Pong]):
    n: int


class Note(Message):
    text: str


class Echo(Agent):
    @handler
    async def ping(self, msg: Ping) -> Pong:
        return Pong(msg.n)

    @handler
    async def note(self, msg: Note) -> None:
        pass


class Relay(Agent):
    @handler
    async def ping(self, msg: Ping) -> Pong:
        return await self.ref(Echo, "inner").ask(Ping(msg.n + 1))


class Tag(Middleware):
    """Records what it saw and stamps replies with its name."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    async def handle(self, ctx: MessageContext, call_next: Callable[[], Awaitable[Any]]) -> Any:
        self.log.append(f"{self.name}>{type(ctx.message).__name__}@{ctx.target}")
        result = await call_next()
        self.log.append(f"{self.name}<")
        if isinstance(result, Pong):
            return Pong(result.n, (*result.seen, self.name))
        return result


async def test_kernel_chain_runs_outside_the_types_own_in_the_order_given() -> None:
    log: list[str] = []

    @middleware(Tag("cls", log))
    class Tagged(Echo):
        pass

    async with Kernel(middleware=[Tag("k1", log)]) as kernel:
        kernel.use(Tag("k2", log))
        kernel.register(Tagged, middleware=[Tag("reg", log)])
        pong = await kernel.ref(Tagged, "a").ask(Ping(1))
    # innermost stamps first: the reply passes reg, cls, k2, k1 on its way out
    assert pong == Pong(1, ("reg", "cls", "k2", "k1"))
    assert log == [
        "k1>Ping@Tagged/a", "k2>Ping@Tagged/a", "cls>Ping@Tagged/a", "reg>Ping@Tagged/a",
        "reg<", "cls<", "k2<", "k1<",
    ]  # fmt: skip


async def test_use_applies_to_types_registered_before_it() -> None:
    log: list[str] = []
    async with Kernel() as kernel:
        kernel.register(Echo)
        assert await kernel.ref(Echo, "a").ask(Ping(1)) == Pong(1)
        kernel.use(Tag("late", log))
        assert await kernel.ref(Echo, "a").ask(Ping(2)) == Pong(2, ("late",))
        await kernel.ref(Echo, "a").tell(Note("x"))
        await kernel.wait_idle()
    assert log == ["late>Ping@Echo/a", "late<", "late>Note@Echo/a", "late<"]
    assert kernel.middleware[0].name == "late"  # type: ignore[attr-defined]


async def test_an_empty_chain_leaves_the_plain_handlers_in_the_table() -> None:
    async with Kernel() as kernel:
        kernel.register(Echo)
        atype = kernel._runtime.types["Echo"]  # noqa: SLF001 - the hot path's table itself
        assert atype.handlers[Ping] is Echo.ping
        assert kernel._runtime.outbound == ()  # noqa: SLF001 - nothing around root sends
    async with Kernel(middleware=[Tag("t", [])]) as kernel:
        kernel.register(Echo)
        atype = kernel._runtime.types["Echo"]  # noqa: SLF001 - as above
        assert atype.handlers[Ping] is not Echo.ping
        assert atype.table[Ping] is Echo.ping


class Sends(Middleware):
    """Watches sends; asks twice when told to, with a narrowed attempt deadline."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any, int, int, str | None]] = []
        self.attempts = 1
        self.timeout: float | None = None

    async def send(self, ctx: MessageContext, call_next: SendNext) -> Any:
        sender = None if ctx.sender is None else str(ctx.sender)
        self.seen.append((ctx.kind, ctx.target, ctx.message_id, ctx.correlation_id, sender))
        result = None
        for _ in range(self.attempts):
            result = await call_next(timeout=self.timeout)
        return result


class Clock(Agent):
    """Replies with the ids and the time left it saw."""

    @handler
    async def ping(self, msg: Ping) -> Pong:
        ctx = self.context
        left = ctx.time_left()
        assert left is not None
        return Pong(ctx.message_id, (str(ctx.correlation_id), f"{left:.0f}"))


async def test_sends_go_through_send_hooks_and_another_attempt_is_a_fresh_message() -> None:
    sends = Sends()
    async with Kernel(middleware=[sends], ask_timeout=100) as kernel:
        kernel.register(Clock)
        kernel.register(Echo)
        kernel.register(Relay)
        sends.attempts, sends.timeout = 2, 5.0
        pong = await kernel.ref(Clock, "c").ask(Ping(0))
        kind, target, first_id, correlation, sender = sends.seen[0]
        assert (kind, target, sender, correlation) == ("ask", AgentId("Clock", "c"), None, first_id)
        # the second attempt: a new message id, the same conversation, the narrowed deadline
        assert pong.n != first_id
        assert pong.seen == (str(first_id), "5")
        sends.attempts, sends.timeout = 1, None
        sends.seen.clear()
        assert await kernel.ref(Relay, "r").ask(Ping(1)) == Pong(2)
        await kernel.ref(Echo, "e").tell(Note("x"))
    # the relay's own ask went through the chain too, from inside its handler
    assert [(k, str(t), s) for k, t, _, _, s in sends.seen] == [
        ("ask", "Relay/r", None), ("ask", "Echo/inner", "Relay/r"), ("tell", "Echo/e", None),
    ]  # fmt: skip
    assert sends.seen[1][3] == sends.seen[0][2]  # the relay's ask continues the conversation


def test_something_that_is_not_a_middleware_is_refused_naming_it() -> None:
    with pytest.raises(TypeError, match="'nope' is not a middleware"):
        Kernel(middleware=["nope"])

    class Sync:
        def handle(self, ctx: Any, call_next: Any) -> Any: ...

    with pytest.raises(TypeError, match="Sync"):
        Kernel().use(Sync())


# -- plug-ins: entry points, an allowlist ------------------------------------------------

PLUGIN = """
import os
from pathlib import Path

Path(os.environ["KERNA_SENTINEL"]).write_text("imported")


class Stamp:
    async def handle(self, ctx, call_next):
        result = await call_next()
        return type(result)(result.n, (*result.seen, "plugin"))
"""


def _sentinel(path: Path) -> str | None:
    """What the plug-in's import wrote (None: it was not imported)."""
    return path.read_text() if path.exists() else None


@pytest.fixture
def plugin(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A throwaway package ``kerna_sentinel`` installed the way pip would (a
    ``.dist-info`` with its entry point, on ``sys.path``), whose import writes a file."""
    with tempfile.TemporaryDirectory(prefix="kerna-plugin-") as folder:
        site = Path(folder)
        dist = site / "kerna_sentinel-1.0.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(
            "Metadata-Version: 2.1\nName: kerna-sentinel\nVersion: 1.0\n"
        )
        (dist / "entry_points.txt").write_text(
            "[kerna.plugins]\nsentinel = kerna_sentinel:Stamp\nbroken = kerna_broken:Nothing\n"
        )
        (site / "kerna_broken.py").write_text("raise ImportError('needs libfoo')\n")
        (site / "kerna_sentinel.py").write_text(PLUGIN)
        sentinel = site / "imported.txt"
        monkeypatch.setenv("KERNA_SENTINEL", str(sentinel))
        monkeypatch.syspath_prepend(str(site))
        try:
            yield sentinel
        finally:
            sys.modules.pop("kerna_sentinel", None)
            sys.modules.pop("kerna_broken", None)


async def test_a_plugin_is_listed_but_imported_only_when_allowed(plugin: Path) -> None:
    assert "sentinel" in available()
    async with Kernel() as kernel:  # no allowlist: nothing of the group is imported
        kernel.register(Echo)
        assert await kernel.ref(Echo, "a").ask(Ping(1)) == Pong(1)
    Kernel(plugins=[])
    assert _sentinel(plugin) is None
    assert "kerna_sentinel" not in sys.modules
    async with Kernel(plugins=["sentinel"]) as kernel:
        assert _sentinel(plugin) == "imported"
        kernel.register(Echo)
        assert await kernel.ref(Echo, "a").ask(Ping(1)) == Pong(1, ("plugin",))


def test_an_unknown_plugin_name_is_a_config_error_listing_the_installed_ones(
    plugin: Path,
) -> None:
    with pytest.raises(ConfigError, match=r"no plug-in 'nope'.*sentinel"):
        Kernel(plugins=["nope"])
    assert not plugin.exists()
    with pytest.raises(TypeError, match="list of plug-in names"):
        Kernel(plugins="sentinel")
    with pytest.raises(
        ConfigError, match=r"plug-in 'broken' \(kerna_broken:Nothing\) failed: needs"
    ):
        Kernel(plugins=["broken"])


def test_kerna_node_loads_its_plugins_list_and_no_plugins_imports_none(
    plugin: Path, tmp_path: Path
) -> None:
    from kerna._cli import build_parser
    from kerna._node_cli import without_plugins
    from kerna.node import load_config
    from kerna.node._daemon import kernel_options

    toml = tmp_path / "node.toml"
    toml.write_text('[node]\ncluster = "c"\nplugins = ["sentinel"]\n')
    args = build_parser().parse_args(["node", "--config", str(toml), "--no-plugins"])
    assert args.no_plugins
    config = load_config(str(toml))
    Kernel(**kernel_options(without_plugins(config)))
    assert not plugin.exists()
    kernel = Kernel(**kernel_options(config))
    assert plugin.read_text() == "imported"
    assert type(kernel.middleware[0]).__name__ == "Stamp"


class Stamp(Middleware):
    """Adds a header to every send: its name, and the kind of message it went on."""

    def __init__(self, name: str, value: Any = None) -> None:
        self.name = name
        self.value = value

    async def send(self, ctx: MessageContext, call_next: SendNext) -> Any:
        value = self.value if self.value is not None else ctx.kind
        return await call_next(headers={self.name: value})


class Heard(Agent):
    """Records the headers of what it handles; starts a timer on Start."""

    heard: list[tuple[str, dict[str, str]]] = []
    done: asyncio.Event = asyncio.Event()

    @handler
    async def ping(self, msg: Ping) -> Pong:
        Heard.heard.append(("ping", dict(self.context.headers)))
        return Pong(msg.n)

    @handler
    async def note(self, msg: Note) -> None:
        Heard.heard.append((msg.text, dict(self.context.headers)))
        if msg.text == "start":
            self.schedule(0.001, Note("tick"))
        if msg.text in ("tick", "event"):
            Heard.done.set()


async def test_a_send_hook_adds_headers_to_asks_tells_and_publishes_and_ticks_keep_them() -> None:
    Heard.heard, Heard.done = [], asyncio.Event()
    async with Kernel(middleware=[Stamp("x-outer"), Stamp("x-inner")]) as kernel:
        kernel.register(Heard)
        kernel.subscribe("topic", Heard)
        await kernel.ref(Heard, "h").ask(Ping(1), headers={"x-own": "1", "x-inner": "mine"})
        await kernel.ref(Heard, "h").tell(Note("start"))
        async with asyncio.timeout(5):
            await Heard.done.wait()
        Heard.done.clear()
        await kernel.publish("topic", Note("event"))
        async with asyncio.timeout(5):
            await Heard.done.wait()
    heard = dict(Heard.heard)
    # the hooks' keys win over the sender's; an inner hook's over an outer one's
    assert heard["ping"] == {"x-own": "1", "x-outer": "ask", "x-inner": "ask"}
    assert heard["start"] == {"x-outer": "tell", "x-inner": "tell"}
    assert heard["tick"] == heard["start"]  # a tick: the headers of who started the timer
    assert heard["event"] == {"x-outer": "event", "x-inner": "event"}


async def test_a_send_hook_adding_headers_that_are_not_str_is_a_type_error_naming_them() -> None:
    async with Kernel(middleware=[Stamp("x-bad", 3)]) as kernel:
        kernel.register(Echo)
        with pytest.raises(TypeError, match="headers must map str to str.*x-bad"):
            await kernel.ref(Echo, "e").tell(Note("x"))


class Closing(Middleware):
    """Counts the kernels it saw stop (what a buffering middleware flushes on)."""

    def __init__(self) -> None:
        self.stopped_kernels: list[Kernel] = []
        self.busy_at_stop: list[bool] = []

    async def handle(self, ctx: MessageContext, call_next: Callable[[], Awaitable[Any]]) -> Any:
        return await call_next()

    def stopped(self, kernel: Kernel) -> None:
        self.stopped_kernels.append(kernel)
        self.busy_at_stop.append(kernel.running)


async def test_a_middleware_hears_once_that_its_kernel_stopped_after_the_last_handler() -> None:
    own, kernels = Closing(), Closing()
    kernel = Kernel(middleware=[kernels])
    async with kernel:
        kernel.register(Echo, middleware=[own])
        assert await kernel.ref(Echo, "a").ask(Ping(1)) == Pong(1)
        assert kernels.stopped_kernels == []
    await kernel.stop()  # a second stop: not a second notice
    assert kernels.stopped_kernels == [kernel]
    assert own.stopped_kernels == [kernel]  # a type's own chain hears it too
    assert kernels.busy_at_stop == [False]
