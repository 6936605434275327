"""Event-sourced state: an append-only log per agent, folded by ``apply``.

Every event is stored at ``{prefix}log/{type}/{key}/{seq:020d}`` with its sequence
number, time, correlation id and causation id. Appends are optimistic: the transaction
requires the next sequence key to be absent (and, for a kernel's activation, its
fencing claim to be intact), so two writers can never both append sequence n. Every
``snapshot_every`` events the folded state is written to the agent's state key with
its sequence number, so that loading is "latest snapshot + replay of what follows".

The log doubles as an audit trail: ``EventLog.events()`` lists the records and
``EventLog.state_at(seq)`` rebuilds the state as of any sequence number by full replay,
ignoring snapshots.
"""

from __future__ import annotations

import time
import typing
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Generic, TypeVar

import msgspec

from kerna._errors import Conflict, DecodeError, Fenced

from ._backend import StateBackend
from ._layout import Layout
from ._types import Compare, Get, Op, Put

__all__ = ["EventLog", "EventRecord", "EventSourcing"]

S = TypeVar("S")
E = TypeVar("E")


class EventRecord(msgspec.Struct, Generic[E], frozen=True):
    """One stored event.

    Attributes:
        seq: its sequence number in the agent's log (1, 2, ...).
        time: when it was appended (Unix time, seconds).
        correlation_id: the conversation whose message produced it.
        causation_id: the message whose handler emitted it.
        event: the event itself.
    """

    seq: int
    time: float
    correlation_id: int
    causation_id: int
    event: E


class _RawRecord(msgspec.Struct, frozen=True):
    seq: int
    time: float
    correlation_id: int
    causation_id: int
    event: msgspec.Raw


class _Snapshot(msgspec.Struct, frozen=True):
    seq: int
    state: Any


class _RawSnapshot(msgspec.Struct, frozen=True):
    seq: int
    state: msgspec.Raw


class EventSourcing(Generic[S]):
    """How an agent type folds its events: state type, event type(s), ``apply``.

    Built by the kernel from an agent class (``Agent, state=..., event_sourced=True``
    with a ``@staticmethod apply(state, event) -> state``); usable on its own for audit
    tools.

    Raises:
        TypeError: ``apply`` lacks annotations or an event type is not a tagged Struct.
    """

    def __init__(
        self,
        state_type: type[S],
        apply: Callable[[S, Any], S],
        *,
        initial: Callable[[], S] | None = None,
        snapshot_every: int = 1000,
    ) -> None:
        if not (isinstance(snapshot_every, int) and snapshot_every >= 1):
            raise TypeError(f"snapshot_every must be an int >= 1, got {snapshot_every!r}")
        self.state_type = state_type
        self.apply = apply
        self.initial: Callable[[], S] = initial or state_type
        self.snapshot_every = snapshot_every
        self.event_type = _event_type_of(apply)
        self._record_decoder = msgspec.msgpack.Decoder(_RawRecord)
        self._event_decoder = msgspec.msgpack.Decoder(self.event_type)
        self._state_decoder = msgspec.msgpack.Decoder(state_type)
        self._snapshot_decoder = msgspec.msgpack.Decoder(_RawSnapshot)
        # EventRecord[event type]: records decode straight into plain EventRecord
        # instances (one allocation per event on the replay path) that compare equal to
        # any other EventRecord with the same fields.
        generic: Any = EventRecord  # subscripted with a runtime type: mypy cannot follow
        typed: Any = generic[self.event_type]
        self._typed_decoder: msgspec.msgpack.Decoder[EventRecord[Any]] = msgspec.msgpack.Decoder(
            typed
        )

    def decode_record(self, data: bytes, where: str) -> EventRecord[Any]:
        """Decode one stored record, naming agent, sequence and event type on failure."""
        try:
            return self._typed_decoder.decode(data)
        except msgspec.MsgspecError:
            pass  # find out precisely what is wrong, below (the slow path)
        try:
            raw = self._record_decoder.decode(data)
        except msgspec.MsgspecError as exc:
            raise DecodeError(f"{where}: the log record does not decode: {exc}") from exc
        try:
            event = self._event_decoder.decode(raw.event)
        except msgspec.MsgspecError as exc:
            raise DecodeError(
                f"{where} seq {raw.seq}: event of type {_tag_of(raw.event)!r} does not decode "
                f"as {_type_name(self.event_type)}: {exc}"
            ) from exc
        return EventRecord(raw.seq, raw.time, raw.correlation_id, raw.causation_id, event)

    def decode_snapshot(self, data: bytes, where: str) -> tuple[S, int]:
        try:
            snap = self._snapshot_decoder.decode(data)
            state: S = self._state_decoder.decode(snap.state)
        except msgspec.MsgspecError as exc:
            raise DecodeError(
                f"{where}: snapshot does not decode as {_type_name(self.state_type)}: {exc}"
            ) from exc
        return state, snap.seq


def _event_type_of(apply: Callable[..., Any]) -> Any:
    fn = apply.__func__ if isinstance(apply, staticmethod) else apply
    try:
        hints = typing.get_type_hints(fn)
    except Exception as exc:
        raise TypeError(f"cannot resolve the annotations of apply: {exc}") from exc
    params = [p for p in typing.get_type_hints(fn) if p != "return"]
    if len(params) != 2:
        raise TypeError("apply must be annotated: apply(state: S, event: E1 | E2) -> S")
    event_type = hints[params[1]]
    members = typing.get_args(event_type) or (event_type,)
    for member in members:
        if not (isinstance(member, type) and issubclass(member, msgspec.Struct)):
            raise TypeError(f"event type {member!r} of apply is not a msgspec Struct")
        if len(members) > 1 and member.__struct_config__.tag is None:
            raise TypeError(f"event type {member.__qualname__} needs a tag (use kerna.Message)")
    return event_type


def _tag_of(raw: bytes) -> str:
    try:
        value = msgspec.msgpack.decode(raw)
    except msgspec.MsgspecError:
        return "<undecodable>"
    if isinstance(value, dict):
        return str(value.get("type", "<untagged>"))
    return f"<{type(value).__name__}>"


def _type_name(t: Any) -> str:
    members = typing.get_args(t) or (t,)
    return " | ".join(getattr(m, "__qualname__", repr(m)) for m in members)


class EventLog(Generic[S]):
    """The log of one agent: ``EventLog(backend, sourcing, "Account", "acct-1")``."""

    def __init__(
        self,
        backend: StateBackend,
        sourcing: EventSourcing[S],
        agent_type: str,
        key: str,
        *,
        layout: Layout | None = None,
        page_size: int = 1000,
    ) -> None:
        self.backend = backend
        self.sourcing = sourcing
        self.layout = layout or Layout()
        self.agent_type = agent_type
        self.key = key
        self.page_size = page_size
        self._where = f"{agent_type}/{key}"
        self._encoder = msgspec.msgpack.Encoder()

    async def pages(
        self, *, after: int = 0, upto: int | None = None
    ) -> AsyncIterator[list[EventRecord[Any]]]:
        """The records with ``after < seq <= upto``, one backend page at a time.

        Raises:
            DecodeError: a record does not decode (names agent, sequence and type).
        """
        # Each page asks for the next ``page_size`` sequence numbers, its range ending
        # at the key after the last of them: a store then touches only the keys of the
        # page (etcd 3.4 counts every key within a range's bounds, whatever its limit,
        # so open-ended pages made a long replay quadratic). The first page is open
        # ended (bounded by ``upto`` only): a short log, the usual case after a
        # snapshot, takes one request. A page of the window that comes back short is
        # the end of the log or a hole in it (an append after a sequence number its
        # writer never saw): one open-ended page after the window tells which.
        layout, agent_type, key = self.layout, self.agent_type, self.key
        prefix = layout.log_prefix(agent_type, key)
        limit_key = None if upto is None else layout.log(agent_type, key, upto + 1)
        decode = self.sourcing.decode_record
        where = self._where
        size = self.page_size
        seq = after  # every record up to seq has been yielded
        windowed = False
        while upto is None or seq < upto:
            start_after = layout.log(agent_type, key, seq) if seq > 0 else None
            end: str | None = limit_key
            if windowed:
                last = seq + size if upto is None else min(seq + size, upto)
                end = layout.log(agent_type, key, last + 1)
            page = await self.backend.range(prefix, start_after=start_after, end=end, limit=size)
            records = [decode(kv.value, where) for kv in page.kvs]
            if records:
                yield records
            if windowed:
                windowed = len(records) == last - seq  # short: the end or a hole
                seq = last
            elif page.more:
                windowed = True
                seq = records[-1].seq
            else:
                return

    async def events(
        self, *, after: int = 0, upto: int | None = None
    ) -> AsyncIterator[EventRecord[Any]]:
        """The records with ``after < seq <= upto``, in order (paged reads).

        Raises:
            DecodeError: a record does not decode (names agent, sequence and type).
        """
        async for records in self.pages(after=after, upto=upto):
            for record in records:
                yield record

    async def state_at(self, seq: int | None = None) -> tuple[S, int]:
        """Rebuild the state as of ``seq`` (default: the latest) by full replay.

        Returns the state and the sequence number it reflects.
        """
        return await self._replay(self.sourcing.initial(), 0, upto=seq)

    async def load(self) -> tuple[S, int]:
        """Latest snapshot plus replay of the events after it (activation)."""
        key = self.layout.state(self.agent_type, self.key)
        kv = await self.backend.get(key)
        if kv is None:
            return await self._replay(self.sourcing.initial(), 0)
        state, seq = self.sourcing.decode_snapshot(kv.value, self._where)
        return await self._replay(state, seq)

    async def _replay(self, state: S, seq: int, *, upto: int | None = None) -> tuple[S, int]:
        apply = self.sourcing.apply
        async for records in self.pages(after=seq, upto=upto):
            for record in records:  # a plain loop per page: the hot path of recovery
                state = apply(state, record.event)
            seq = records[-1].seq
        return state, seq

    async def append(
        self,
        events: Sequence[Any],
        *,
        expected_seq: int,
        state_after: S,
        fence: Compare | None = None,
        correlation_id: int = 0,
        causation_id: int = 0,
    ) -> int:
        """Append ``events`` after ``expected_seq``; returns the new last sequence number.

        ``state_after`` is the state with the events applied; it is written as a snapshot
        when the append crosses a multiple of ``snapshot_every``.

        Raises:
            Conflict: sequence ``expected_seq + 1`` is already taken.
            Fenced: ``fence`` does not hold (the writer lost its claim).
        """
        layout, agent_type, key = self.layout, self.agent_type, self.key
        now = time.time()
        first = expected_seq + 1
        encode = self._encoder.encode
        ops: list[Op] = [
            Put(
                layout.log(agent_type, key, first + i),
                encode(EventRecord(first + i, now, correlation_id, causation_id, event)),
            )
            for i, event in enumerate(events)
        ]
        last = expected_seq + len(events)
        every = self.sourcing.snapshot_every
        if last // every > expected_seq // every:
            ops.append(Put(layout.state(agent_type, key), encode(_Snapshot(last, state_after))))
        compares = [Compare.absent(layout.log(agent_type, key, first))]
        failure: list[Op] = []
        if fence is not None:
            compares.append(fence)
            failure.append(Get(fence.key))
        result = await self.backend.txn(compares, ops, failure)
        if result.succeeded:
            return last
        if fence is not None:
            claim = result.gets[0]
            if claim is None or claim.create_revision != fence.value:
                raise Fenced(f"{self._where}: this activation no longer owns the agent")
        raise Conflict(f"{self._where}: event sequence {first} is already taken")
