"""The systems under test, each with its workload entry points and sizes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from types import ModuleType

from . import _autogen, _floor, _kerna, _pykka
from ._common import LoopName, Sizes

__all__ = ["FULL", "System", "systems"]

FULL = Sizes()
AUTOGEN = replace(
    FULL, w1_messages=20_000, w2_sequential=5_000, w2_per_caller=100, w3_events=2_000,
    w4_agents=20_000,
)  # fmt: skip
"""autogen-core handles ~3-11k messages/s here: full sizes would take ~10 minutes."""
PYKKA = replace(FULL, w4_agents=2_000)
"""pykka spends one OS thread per actor (thread limit ~10k here)."""


@dataclass(frozen=True)
class System:
    """One column of the results: a system on one event loop, with its sizes."""

    name: str
    kind: str  # the W4 subprocess's system name
    loop: LoopName
    sizes: Sizes
    w1: Callable[[int], float]
    w2_sequential: Callable[[int], tuple[float, float]]
    w2_concurrent: Callable[[int, int], float]
    w3: Callable[[int, int], float]


def _on_loop(
    name: str, kind: str, mod: ModuleType, loop: LoopName, sizes: Sizes, **options: bool
) -> System:
    """``options`` go to every workload function of ``mod`` (the floor's ``lean``)."""
    return System(
        name=name,
        kind=kind,
        loop=loop,
        sizes=sizes,
        w1=lambda n: mod.w1(n, loop, **options),
        w2_sequential=lambda n: mod.w2_sequential(n, loop, **options),
        w2_concurrent=lambda c, k: mod.w2_concurrent(c, k, loop, **options),
        w3=lambda e, s: mod.w3(e, s, loop, **options),
    )


def systems(scale: float = 1.0) -> list[System]:
    """Every system, in the order the first run visits them (sizes times ``scale``);
    each later run starts one system further on."""
    full, autogen, pykka = FULL.scaled(scale), AUTOGEN.scaled(scale), PYKKA.scaled(scale)
    return [
        _on_loop("floor", "floor", _floor, "asyncio", full),
        _on_loop("lean floor", "lean-floor", _floor, "asyncio", full, lean=True),
        _on_loop("kerna", "kerna", _kerna, "asyncio", full),
        _on_loop("floor (uvloop)", "floor", _floor, "uvloop", full),
        _on_loop("lean floor (uvloop)", "lean-floor", _floor, "uvloop", full, lean=True),
        _on_loop("kerna (uvloop)", "kerna", _kerna, "uvloop", full),
        _on_loop("autogen-core", "autogen-core", _autogen, "asyncio", autogen),
        System(
            name="pykka",
            kind="pykka",
            loop="asyncio",  # unused: pykka runs on threads
            sizes=pykka,
            w1=_pykka.w1,
            w2_sequential=_pykka.w2_sequential,
            w2_concurrent=_pykka.w2_concurrent,
            w3=_pykka.w3,
        ),
    ]
