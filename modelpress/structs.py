"""The one codec between google.protobuf.Struct (how configs, overrides and metrics travel) and
plain Python values. Every surface, client and server, converts through here.

A Struct holds every number as a double: `from_struct` gives whole numbers back as ints, so an
int field validates as one. It refuses what no config can mean (NaN, ±Infinity, nesting past
MAX_DEPTH) with a StructError naming the key; the server side reports that as InvalidArgument.
Needs protobuf only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from google.protobuf import struct_pb2

MAX_DEPTH = 8


class StructError(ValueError):
    """A Struct holding what no config means; the message starts with the key (`bits.deeper: ...`)."""


def to_struct(values: Mapping[str, Any] | struct_pb2.Struct | None) -> struct_pb2.Struct:
    """`values` (JSON-like: dicts, lists, str, numbers, bools, None) as a Struct; a Struct is copied."""
    struct = struct_pb2.Struct()
    if isinstance(values, struct_pb2.Struct):
        struct.CopyFrom(values)
    elif values:
        struct.update(values)
    return struct


def jsonable(value: Any) -> Any:
    """Engine figures as a Struct keeps them: JSON types, other objects as text, and a float that came
    out NaN or infinite as None (it was not measured; every reader refuses NaN)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return str(value)


def to_value(value: Any) -> struct_pb2.Value:
    """One JSON-like value as a Struct Value (a config field's default, as Describe publishes it)."""
    return to_struct({"value": value}).fields["value"]


def from_struct(struct: struct_pb2.Struct) -> dict[str, Any]:
    """The Struct's values as plain Python; StructError naming the key for NaN, ±Infinity or
    nesting past MAX_DEPTH."""
    return {key: _plain(value, key, 1) for key, value in struct.fields.items()}


def from_value(value: struct_pb2.Value) -> Any:
    """One Struct Value as plain Python, under from_struct's rules."""
    return _plain(value, "value", 1)


def _plain(value: struct_pb2.Value, where: str, depth: int) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            raise StructError(f"{where}: {number} is not a finite number")
        return int(number) if number.is_integer() else number
    if kind in ("struct_value", "list_value") and depth >= MAX_DEPTH:
        raise StructError(f"{where}: nested deeper than {MAX_DEPTH} levels")
    if kind == "struct_value":
        return {k: _plain(v, f"{where}.{k}", depth + 1) for k, v in value.struct_value.fields.items()}
    if kind == "list_value":
        return [_plain(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value.list_value.values)]
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    return None
