"""Fuzz the wire decoder: generated and mutated frames, in-process.

Every frame goes to ``WireCodec.decode``, which must return a ``Delivery``, a ``Reply``
or a ``Batch`` or raise ``WireError``, and nothing else (a crash), each within a bounded
time (a hang). Two engines:

- ``mutate`` (default; what ``make test`` runs a slice of, ``tests/test_wire_fuzz.py``):
  a seeded evolutionary mutator. It starts from valid frames of every kind (deliveries
  of nested, optional and ``Any``-typed messages, replies, error replies, batches of
  deliveries: ``kerna._wire_frames`` tag 4), mixes in
  structure-aware generated frames (frame-shaped arrays of random msgpack values), and
  applies bit flips, interesting bytes, truncations, insertions, deletions, splices of
  two frames, length-field corruption (a str/array/map header turned into a huge
  32-bit length) and injected deep nesting. Mutants that still decode join the corpus
  (bounded), so later mutations start from odd-but-valid frames.
- ``atheris`` (``pip install atheris``, the ``fuzz`` extra): coverage-guided over the
  instrumented ``kerna._wire`` modules, seeded with the same corpus; an exception
  other than ``WireError`` aborts it with the input.

Run::

    python -m tests.fuzz_wire --frames 1000000 --seed 1
    python -m tests.fuzz_wire --engine atheris --frames 200000
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from typing import Any

import msgspec

from kerna import AgentId, Message
from kerna._envelope import ASK, EVENT, TELL, Envelope
from kerna._wire import Batch, MessageTypes, WireCodec, WireError

from .wire_messages import ALL, Count, Lookup, Ping, Point, Pong, Shape, Tree

HANG_SECONDS = 1.0  # per frame: far above any honest decode (microseconds), robust to load
_INTERESTING = [0x00, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xC3]
_INTERESTING += [0xC4, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCF, 0xD3, 0xD4, 0xD8, 0xD9, 0xDB]
_INTERESTING += [0xDC, 0xDD, 0xDE, 0xDF, 0xE0, 0xFF]
_LENGTH_HEADERS = {0xD9, 0xDA, 0xDB, 0xDC, 0xDD, 0xDE, 0xDF, 0xC4, 0xC5, 0xC6}
_LENGTH_HEADERS |= set(range(0x80, 0xC0))
_HUGE = {0: b"\xdb", 1: b"\xdd", 2: b"\xdf", 3: b"\xc6", 4: b"\xc9"}


class Result(msgspec.Struct):
    """What a run found."""

    frames: int = 0
    decoded: int = 0
    batches: int = 0  # of the decoded: batch frames
    batch_items: int = 0  # their items, decoded or refused alone
    refused: dict[str, int] = {}
    crashes: list[str] = []  # "ExceptionType: text: frame hex"
    hangs: list[str] = []
    slowest: float = 0.0
    seconds: float = 0.0


def codec() -> WireCodec:
    """A codec that knows the fuzzed message types."""
    types = MessageTypes()
    types.add_all(ALL)
    return WireCodec(types)


def seed_frames(wire: WireCodec) -> list[bytes]:
    """Valid frames of every kind, to mutate."""
    caller = AgentId("Caller", "c")
    messages: list[Message] = [
        Pong(n=1),
        Ping(n=-(2**40), note="héllo"),
        Point(x=1.5, y=-0.0),
        Shape("sq", [Point(0, 0), Point(1, 1)], {"k": [1, "two", None, {"x": b"\x00"}]}),
        Tree(children=[[1, [2, [3, {"deep": [4]}]]], "leaf"]),
        Lookup(keys=["a", "b"]),
        Count(),
    ]
    frames = []
    for i, message in enumerate(messages):
        frames.append(
            wire.encode(
                Envelope(
                    i + 1, ASK, AgentId("Echo", f"k{i}"), message, caller, 9, 8, 3.0,
                    (caller,), None, {"trace": "abc"},
                ),
                "tcp://127.0.0.1:9",
                now=0.0,
            )
        )  # fmt: skip
        frames.append(wire.encode(Envelope(i + 100, TELL, AgentId("A", "b"), message)))
        frames.append(wire.encode(Envelope(i + 200, EVENT, "topic", message)))
    frames.append(wire.encode_reply(5, Ping, Pong(n=3)))
    frames.append(wire.encode_reply(6, Lookup, [Pong(n=1), Pong(n=2)]))
    frames.append(wire.encode_reply(7, Count, 42))
    frames.append(wire.encode_reply(8, "other.Request", {"a": [1, 2.5, "x"]}))
    frames.append(wire.encode_error(9, ValueError("boom")))
    frames += batch_frames(wire, messages, caller)
    return frames


def batch_frames(wire: WireCodec, messages: list[Message], caller: AgentId) -> list[bytes]:
    """Batch frames (tag 4) as a node sends them: asks with their remaining times and a
    routing of every field, tells and events of a few messages each."""
    frames = []
    for i, message in enumerate(messages):
        payloads = [wire.encode_payload(message) for _ in range(3)]
        ask = Envelope(
            i + 300, ASK, AgentId("Echo", f"k{i}"), message, caller, 9, 8, 3.0, (caller,),
            None, {"trace": "abc"},
        )  # fmt: skip
        items = [(i + 301 + j, p, 9, 8, 2.5 - j) for j, p in enumerate(payloads)]
        frames.append(wire.encode_batch(ask, items, "tcp://127.0.0.1:9", epoch=5, seq=7))
        tell = Envelope(i + 400, TELL, AgentId("A", "b"), message)
        frames.append(wire.encode_batch(tell, [(i + 401, payloads[0], i + 401, 0)]))
        event = Envelope(i + 500, EVENT, "topic", message)
        items = [(i + 501 + j, p, 1, 2, None) for j, p in enumerate(payloads)]
        frames.append(wire.encode_batch(event, items))
    return frames


def _value(rng: random.Random, depth: int) -> Any:
    """A random msgpack value (structure-aware generation)."""
    pick = rng.randrange(12 if depth < 6 else 8)
    if pick == 0:
        return None
    if pick == 1:
        return rng.random() < 0.5
    if pick == 2:
        return rng.choice([0, 1, -1, 127, 128, -33, 2**31, 2**63 - 1, -(2**63), 2**64 - 1])
    if pick == 3:
        return rng.choice([0.0, -1.5, 1e308, float("nan"), float("inf")])
    if pick == 4:
        return rng.choice(["", "x", "test.Pong", "test.Ping", "n", "type", "é" * 3])
    if pick == 5:
        return rng.randbytes(rng.randrange(4))
    if pick in (6, 7):
        return rng.randrange(-5, 300)
    if pick in (8, 9):
        return [_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    return {
        rng.choice(["type", "n", "x", "y", "keys", "note", "children"]): _value(rng, depth + 1)
        for _ in range(rng.randrange(4))
    }


def generated_frame(rng: random.Random) -> bytes:
    """A frame-shaped array: a frame tag, then fields of plausible and random types."""
    tag = rng.choice([1, 1, 1, 2, 2, 3, 0, 4, 4, 5])
    if tag == 4:
        return _generated_batch(rng)
    fields: list[Any] = [tag, rng.choice([1, 0, -1, 2**63, 5])]
    if tag == 1:
        fields += [rng.choice([0, 1, 2, 3]), rng.choice([t.__struct_config__.tag for t in ALL])]
        fields += [rng.choice(["A", "topic", 7]), rng.choice(["k", None])]
        payload = _value(rng, 1)
        if isinstance(payload, dict) and rng.random() < 0.7:
            payload["type"] = fields[3]
        fields.append(payload)
    else:
        fields += [_value(rng, 1) for _ in range(rng.randrange(5))]
    fields += [_value(rng, 1) for _ in range(rng.randrange(8))]
    return msgspec.msgpack.encode(fields)


def _generated_batch(rng: random.Random) -> bytes:
    """A batch-shaped array: tag 4, a routing of plausible and random fields, items that
    are [id, payload, ...] arrays (or anything)."""
    tag = rng.choice([t.__struct_config__.tag for t in ALL] + ["nope", 3])
    fields: list[Any] = [4, rng.choice([0, 1, 2, 3, -1]), tag]
    fields += [rng.choice(["A", "topic", 7]), rng.choice(["k", None, 1])]
    items: list[Any] = []
    for _ in range(rng.choice([0, 1, 2, 5, 40])):
        if rng.random() < 0.1:
            items.append(_value(rng, 2))
            continue
        payload = _value(rng, 2)
        if isinstance(payload, dict) and rng.random() < 0.7:
            payload["type"] = tag
        entry = [rng.choice([1, 2, 0, -1, 2**63, 2**64 - 1, "x"]), payload]
        entry += [_value(rng, 2) for _ in range(rng.randrange(5))]
        items.append(entry)
    fields.append(items if rng.random() < 0.95 else _value(rng, 1))
    fields += [_value(rng, 1) for _ in range(rng.randrange(8))]
    return msgspec.msgpack.encode(fields)


def mutate(rng: random.Random, frame: bytes, corpus: list[bytes]) -> bytes:
    """One to four random mutations of ``frame`` (one, more often than not)."""
    if rng.random() < 0.3:
        structural = _swap_value(rng, frame)
        if structural is not None:
            return structural
    data = bytearray(frame)
    for _ in range(1 if rng.random() < 0.6 else rng.randrange(2, 5)):
        op = rng.randrange(9)
        n = len(data)
        if op == 0 and n:  # bit flips
            for _ in range(rng.randrange(1, 9)):
                data[rng.randrange(n)] ^= 1 << rng.randrange(8)
        elif op == 1 and n:  # an interesting byte
            data[rng.randrange(n)] = rng.choice(_INTERESTING)
        elif op == 2 and n:  # truncation
            del data[rng.randrange(n) :]
        elif op == 3:  # random insertion
            at = rng.randrange(n + 1)
            data[at:at] = rng.randbytes(rng.randrange(1, 9))
        elif op == 4 and n:  # deletion of a range
            at = rng.randrange(n)
            del data[at : at + rng.randrange(1, 17)]
        elif op == 5:  # splice with another frame
            other = rng.choice(corpus)
            data = data[: rng.randrange(n + 1)] + other[rng.randrange(len(other) + 1) :]
        elif op == 6:  # length-field corruption: a header claims a huge length
            heads = [i for i, b in enumerate(data) if b in _LENGTH_HEADERS]
            if heads:
                at = rng.choice(heads)
                size = rng.choice([0xFFFFFFFF, 0x7FFFFFFF, n, n + 1, 2**16])
                data[at : at + 1] = _HUGE[rng.randrange(5)] + size.to_bytes(4, "big")
        elif op == 7:  # deep nesting
            at = rng.randrange(n + 1)
            data[at:at] = rng.choice([b"\x91", b"\x81\xa1n", b"\xdc\x00\x01"]) * rng.choice(
                [30, 33, 200, 5000]
            )
        elif n > 1:  # duplicate a chunk
            at = rng.randrange(n)
            data[at:at] = data[at : at + rng.randrange(1, 33)]
    return bytes(data)


def _swap_value(rng: random.Random, frame: bytes) -> bytes | None:
    """A structural mutation: one value somewhere in the decoded frame replaced by a
    random one (a field of the wrong type, a missing or extra field, another tag)."""
    try:
        tree = msgspec.msgpack.decode(frame)
    except (msgspec.DecodeError, RecursionError):
        return None
    node = tree
    while isinstance(node, (list, dict)) and node:
        keys = list(range(len(node))) if isinstance(node, list) else list(node)
        key = rng.choice(keys)
        child = node[key]
        if not isinstance(child, (list, dict)) or not child or rng.random() < 0.3:
            if isinstance(node, dict) and rng.random() < 0.2:
                del node[key]
            elif isinstance(node, list) and rng.random() < 0.1:
                node.append(_value(rng, 3))
            else:
                node[key] = _value(rng, 3)
            break
        node = child
    try:
        return msgspec.msgpack.encode(tree)
    except (TypeError, OverflowError, msgspec.EncodeError):
        return None


def run(frames: int, seed: int, progress: Callable[[int], None] | None = None) -> Result:
    """Feed ``frames`` generated and mutated frames to one codec; see the docstring."""
    rng = random.Random(seed)
    wire = codec()
    corpus = seed_frames(wire)
    seeds = len(corpus)
    result = Result()
    started = time.perf_counter()
    for i in range(frames):
        if i < seeds:
            frame = corpus[i]
        elif rng.random() < 0.15:
            frame = generated_frame(rng)
        else:
            frame = mutate(rng, rng.choice(corpus), corpus)
        t0 = time.perf_counter()
        try:
            got = wire.decode(frame, "fuzz://peer")
        except WireError:
            pass
        except Exception as exc:
            result.crashes.append(f"{type(exc).__name__}: {exc}: {frame.hex()}")
        else:
            result.decoded += 1
            if type(got) is Batch:
                result.batches += 1
                result.batch_items += len(got.envelopes)
            if len(corpus) < 2000 and len(frame) < 4096:
                corpus.append(frame)
        took = time.perf_counter() - t0
        result.slowest = max(result.slowest, took)
        if took > HANG_SECONDS:
            result.hangs.append(f"{took:.2f}s: {frame.hex()}")
        if progress is not None and i % 100_000 == 0:
            progress(i)
    result.frames = frames
    result.refused = {str(k): v for k, v in sorted(wire.errors.items())}
    result.seconds = time.perf_counter() - started
    return result


def _atheris(frames: int, seed: int) -> int:
    """Run atheris in a child process over a seed corpus in a temporary directory (the
    fuzzer ends its process with ``_exit``: this one removes the directory)."""
    import subprocess
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="kerna-wire-corpus-") as corpus:
        for i, frame in enumerate(seed_frames(codec())):
            (Path(corpus) / f"seed{i}").write_bytes(frame)
        command = [sys.executable, "-m", "tests.fuzz_wire", "--atheris-corpus", corpus]
        command += [f"-runs={frames}", f"-seed={seed}", "-max_len=4096", corpus]
        return subprocess.run(command, check=False).returncode


def _atheris_child(argv: list[str]) -> None:
    import atheris

    atheris.instrument_all()  # the loaded Python code: kerna._wire, _wire_depth among it
    wire = codec()

    def one(data: bytes) -> None:
        try:
            wire.decode(data, "fuzz://peer")
        except WireError:
            pass

    atheris.Setup([sys.argv[0], *argv], one)
    atheris.Fuzz()


def main(argv: list[str] | None = None) -> int:
    """The command line; exit code 1 on any crash or hang."""
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz_wire")
    parser.add_argument("--frames", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--engine", choices=("mutate", "atheris"), default="mutate")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--atheris-corpus"]:
        _atheris_child(argv[2:])
    args = parser.parse_args(argv)
    if args.engine == "atheris":
        return _atheris(args.frames, args.seed)
    result = run(args.frames, args.seed, lambda i: print(f"  {i} frames", file=sys.stderr))
    print(
        f"{result.frames} frames in {result.seconds:.1f}s: {result.decoded} decoded "
        f"({result.batches} batches of {result.batch_items} items), "
        f"refused {result.refused}, {len(result.crashes)} crashes, {len(result.hangs)} hangs, "
        f"slowest {result.slowest * 1e3:.2f} ms"
    )
    for line in result.crashes[:10] + result.hangs[:10]:
        print(line[:400])
    return 1 if result.crashes or result.hangs else 0


if __name__ == "__main__":
    sys.exit(main())
