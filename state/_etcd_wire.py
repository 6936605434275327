"""How kerna's keys, compares and operations map onto etcd's gRPC messages, and back.

Pure conversions used by ``EtcdBackend`` (``kerna.state._etcd``) for its requests and
by its watch streams (``kerna.state._etcd_watch``) for their events; no I/O here.
"""

from __future__ import annotations

from typing import Any

from aetcd import rpc

from kerna._errors import DecodeError

from ._types import Compare, Delete, KeyValue, Op, Put, WatchEvent

_TARGETS = {
    "version": (rpc.Compare.VERSION, "version"),
    "create": (rpc.Compare.CREATE, "create_revision"),
    "mod": (rpc.Compare.MOD, "mod_revision"),
    "value": (rpc.Compare.VALUE, "value"),
    "lease": (rpc.Compare.LEASE, "lease"),
}
_RESULTS = {
    "==": rpc.Compare.EQUAL,
    "!=": rpc.Compare.NOT_EQUAL,
    "<": rpc.Compare.LESS,
    ">": rpc.Compare.GREATER,
}


def _prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with ``prefix`` (etcd's
    ``range_end``); ``b"\\0"`` means "no end"."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\0"
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _key(raw: bytes) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise DecodeError(f"etcd key {raw!r} is not UTF-8") from None


def _kv(raw: Any) -> KeyValue:
    return KeyValue(
        _key(raw.key), raw.value, raw.create_revision, raw.mod_revision, raw.version, raw.lease
    )


def _event(raw: Any) -> WatchEvent:
    kv = raw.kv
    if raw.type == rpc.Event.DELETE:
        return WatchEvent("delete", KeyValue(_key(kv.key), b"", 0, kv.mod_revision, 0, 0))
    return WatchEvent("put", _kv(kv))


def _compare(c: Compare) -> Any:
    target, field = _TARGETS[c.target]
    expected_type = bytes if c.target == "value" else int
    if type(c.value) is not expected_type:
        raise TypeError(f"compare {c.target} of {c.key!r} with {c.value!r}")
    return rpc.Compare(key=c.key.encode(), target=target, result=_RESULTS[c.op], **{field: c.value})


def _request_op(op: Op) -> Any:
    if isinstance(op, Put):
        return rpc.RequestOp(
            request_put=rpc.PutRequest(key=op.key.encode(), value=op.value, lease=op.lease)
        )
    if isinstance(op, Delete):
        key = op.key.encode()
        end = (_prefix_end(key) if key else b"\0") if op.prefix else b""
        if op.prefix and not key:
            key = b"\0"
        return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key, range_end=end))
    return rpc.RequestOp(request_range=rpc.RangeRequest(key=op.key.encode()))
