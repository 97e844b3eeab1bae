"""JSON from a model's files (config.json, a safetensors header, a tokenizer's config) with its nesting bounded.

Python's json recurses once per level: a file of 100,000 '[' raises RecursionError, and one that parses
just under the limit breaks the next recursive walk over it (transformers copies configs deeply).
Real model files nest a few levels (a quantization_config's groups: six), so anything past
MAX_JSON_DEPTH is refused by name, as a typed error, before any other code sees it.
"""

from __future__ import annotations

import json
from typing import Any

MAX_JSON_DEPTH = 32
# config.json, generation_config.json, tokenizer_config.json: kilobytes. Read at most this much, so a
# huge member is refused without being held in memory (tokenizer.json is left to its own library).
MAX_JSON_BYTES = 4 * 1024 * 1024


class JsonTooDeep(ValueError):
    """A model file's JSON nests past MAX_JSON_DEPTH (INVALID_ARGUMENT: the file is malformed)."""


class JsonTooLarge(ValueError):
    """A model file's JSON is past MAX_JSON_BYTES (INVALID_ARGUMENT: no config is that large)."""


def read_capped(stream, what: str, limit: int = MAX_JSON_BYTES) -> bytes:
    """At most `limit` bytes of `stream` (a file object), or JsonTooLarge naming `what`."""
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise JsonTooLarge(f"{what}: over {limit:,} bytes, past what a model's JSON file may hold")
    return data


def nesting_depth(value: Any) -> int:
    """Levels of lists and objects in `value` (a scalar is 0), walked without recursion."""
    deepest = 0
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        pending.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def loads_bounded(data: str | bytes, what: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """json.loads of `data`, or JsonTooDeep naming `what` when it nests past `max_depth` levels.
    A ValueError (not JSON) passes through for the caller to name."""
    try:
        value = json.loads(data)
    except RecursionError:
        raise JsonTooDeep(f"{what}: JSON nested past Python's recursion limit (at most {max_depth} levels "
                          "are accepted)") from None
    depth = nesting_depth(value)
    if depth > max_depth:
        raise JsonTooDeep(f"{what}: JSON nested {depth} levels deep, past the {max_depth} a model file may take")
    return value
