"""A cap on the nesting depth of untrusted msgpack, checked before msgspec decodes it.

msgspec has no depth limit of its own: it recurses once per nested array or map (also
to skip a ``Raw`` field or an unknown one) until Python's recursion limit raises
``RecursionError``, which depends on how deep the caller already is. ``exceeds`` gives
kerna's wire decoder an explicit, configurable cap instead.

The codec scans only what can nest past its cap: the payload of a message type whose
``schema_depth`` is over it, and a frame that failed to decode (to name a depth bomb as
one). Cheap when it scans: every array or map starts with one of the header bytes
0x80-0x9f, 0xdc-0xdf, so a frame with no more such bytes than the cap (counted by
``bytes.translate`` in C) cannot nest deeper than the cap, whatever the bytes mean.
Only frames with more candidate bytes are walked, iteratively (no recursion, one pass,
bounded by the frame's length: every item takes at least one byte).
"""

from __future__ import annotations

from typing import Any

import msgspec.inspect as mi

__all__ = ["UNBOUNDED", "exceeds", "schema_depth"]

UNBOUNDED = 1 << 30
"""``schema_depth`` of a type whose values can nest without limit (``Any``, ``Raw``, a
recursive Struct, a custom type)."""

_CONTAINERS = (mi.ListType, mi.SetType, mi.FrozenSetType, mi.VarTupleType)
_SCALAR_TYPES = (
    mi.NoneType, mi.BoolType, mi.IntType, mi.FloatType, mi.StrType, mi.BytesType,
    mi.ByteArrayType, mi.MemoryViewType, mi.DateTimeType, mi.TimeType, mi.DateType,
    mi.TimeDeltaType, mi.UUIDType, mi.DecimalType, mi.EnumType, mi.LiteralType, mi.ExtType,
)  # fmt: skip


def schema_depth(tp: Any) -> int:
    """The deepest nesting any value of type ``tp`` can have once decoded: a Struct,
    list or dict adds one level, scalars none; ``UNBOUNDED`` where it has no limit.

    What a typed msgspec decoder accepts is bounded by this (a container where the
    schema has a scalar is an error at once), so a frame whose payload type is at most
    the cap deep needs no byte scan (see ``WireCodec``); unknown fields that a decoder
    skips are never decoded into objects.
    """
    return _depth(mi.type_info(tp), set())


def _depth(info: mi.Type, open_structs: set[type]) -> int:
    if isinstance(info, _SCALAR_TYPES):
        return 0
    if isinstance(info, mi.StructType | mi.DataclassType | mi.TypedDictType | mi.NamedTupleType):
        cls = info.cls
        if cls in open_structs:
            return UNBOUNDED  # a recursive type
        open_structs.add(cls)
        try:
            fields = [f.type for f in info.fields]
            return min(UNBOUNDED, 1 + max((_depth(f, open_structs) for f in fields), default=0))
        finally:
            open_structs.discard(cls)
    if isinstance(info, _CONTAINERS):
        return min(UNBOUNDED, 1 + _depth(info.item_type, open_structs))
    if isinstance(info, mi.TupleType):
        items = [_depth(t, open_structs) for t in info.item_types]
        return min(UNBOUNDED, 1 + max(items, default=0))
    if isinstance(info, mi.DictType | mi.FrozenDictType):
        inner = max(_depth(info.key_type, open_structs), _depth(info.value_type, open_structs))
        return min(UNBOUNDED, 1 + inner)
    if isinstance(info, mi.UnionType):
        return max((_depth(t, open_structs) for t in info.types), default=0)
    return UNBOUNDED  # Any, Raw, a custom type: whatever the bytes say


_CONTAINER_BYTES = bytes([*range(0x80, 0xA0), 0xDC, 0xDD, 0xDE, 0xDF])
_NOT_CONTAINER = bytes(b for b in range(256) if b not in _CONTAINER_BYTES)

# Bytes to skip after a scalar's first byte: -1 marks the variable-length ones handled
# in the walk (str, bin, ext), -2 containers, -3 the one byte msgpack never uses (0xc1).
_SKIP = [0] * 256
for _b in range(0x80, 0xA0):
    _SKIP[_b] = -2
for _b in (0xDC, 0xDD, 0xDE, 0xDF):
    _SKIP[_b] = -2
for _b in range(0xA0, 0xC0):
    _SKIP[_b] = _b & 0x1F  # fixstr
for _b in (0xC4, 0xC5, 0xC6, 0xC7, 0xC8, 0xC9, 0xD9, 0xDA, 0xDB):
    _SKIP[_b] = -1
_SKIP[0xC1] = -3
_FIXED = {0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8, 0xD0: 1, 0xD1: 2, 0xD2: 4}
_FIXED |= {0xD3: 8, 0xD4: 2, 0xD5: 3, 0xD6: 5, 0xD7: 9, 0xD8: 17}
for _b, _n in _FIXED.items():
    _SKIP[_b] = _n
# variable length: (bytes of the length field, extra bytes after it: an ext's type byte)
_VARIABLE = {0xC4: (1, 0), 0xC5: (2, 0), 0xC6: (4, 0), 0xD9: (1, 0), 0xDA: (2, 0)}
_VARIABLE |= {0xDB: (4, 0), 0xC7: (1, 1), 0xC8: (2, 1), 0xC9: (4, 1)}


def exceeds(data: bytes, cap: int) -> bool:
    """Whether the msgpack object at the start of ``data`` nests deeper than ``cap``.

    The outermost array or map is depth 1; scalars add nothing. Malformed or truncated
    input is not judged here (False): the decoder reports it.
    """
    if len(data) <= cap or len(data.translate(None, _NOT_CONTAINER)) <= cap:
        return False
    return _walk(data, cap)


def _walk(data: bytes, cap: int) -> bool:
    end = len(data)
    pos = 0
    stack: list[int] = []  # per open container: the items left in its parent
    remaining = 1
    while remaining:
        if pos >= end:
            return False
        first = data[pos]
        pos += 1
        skip = _SKIP[first]
        if skip == -2:
            if len(stack) >= cap:
                return True
            if first <= 0x8F:
                items = 2 * (first & 0x0F)
            elif first <= 0x9F:
                items = first & 0x0F
            else:
                width = 2 if first in (0xDC, 0xDE) else 4
                items = int.from_bytes(data[pos : pos + width], "big")
                pos += width
                if first >= 0xDE:
                    items *= 2
            if items:
                stack.append(remaining - 1)
                remaining = items
                continue
        elif skip == -1:
            width, extra = _VARIABLE[first]
            pos += width + extra + int.from_bytes(data[pos : pos + width], "big")
        elif skip == -3:
            return False
        else:
            pos += skip
        remaining -= 1
        while not remaining and stack:
            remaining = stack.pop()
    return False
