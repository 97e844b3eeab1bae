"""How error messages quote what a caller sent: short, so a megabyte input never becomes a
megabyte of status details (gRPC refuses metadata that large and answers something else)."""

from __future__ import annotations

SHOWN_CHARACTERS = 48


def shown(value: str, limit: int = SHOWN_CHARACTERS) -> str:
    """A caller's input as an error message cites it: quoted, cut to `limit` characters."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}… ({len(value)} characters)"
