"""Listings in pages, so no answer can outgrow the gRPC message limit (16 MB): at most `page_size`
items (default DEFAULT_PAGE_SIZE, at most MAX_PAGE_SIZE) and at most PAGE_BYTES of them, then a
`next_page_token` to ask for the rest.

A token names the last item given (its sort key), not a position: items added or deleted between
two pages shift nothing, so no item is given twice or skipped among those that stay. A token is
opaque to clients; one that this listing did not give is INVALID_ARGUMENT.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from typing import TypeVar

from services.common.contract.chain import InvalidArgument

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
# Serialized bytes of one page's items: a quarter of the message limit, whatever the items hold.
# A page always holds one item at least (one record is at most NATS's 1 MB payload).
PAGE_BYTES = 4 * 1024 * 1024
# A repeated message field's own bytes per item (tag and length) beside the item's.
ITEM_OVERHEAD = 6

T = TypeVar("T")
Key = tuple[int | str, ...]


def page_size_of(requested: int) -> int:
    """The page size a request gets: its own up to MAX_PAGE_SIZE, DEFAULT_PAGE_SIZE for 0."""
    if requested < 0:
        raise InvalidArgument(f"page_size: must be >= 0 (0: the default, {DEFAULT_PAGE_SIZE}), got {requested}")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _token(listing: str, key: Key) -> str:
    text = json.dumps({"listing": listing, "after": list(key)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _after(listing: str, token: str) -> Key | None:
    if not token:
        return None
    try:
        decoded = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        after = decoded["after"]
        if decoded["listing"] != listing or not isinstance(after, list) \
                or not all(isinstance(part, (int, str)) for part in after):
            raise ValueError("not this listing's")
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise InvalidArgument(f"page_token: not a token of {listing} (give the next_page_token its "
                              "last answer gave, or none for the first page)") from None
    return tuple(after)


def page(listing: str, items: Sequence[T], key: Callable[[T], Key], size: Callable[[T], int], page_size: int,
         page_token: str) -> tuple[list[T], str]:
    """(the page of `items` after `page_token`, the token of the next page or ""); `items` in
    ascending order of `key`, which is unique per item; `size` gives an item's serialized bytes."""
    limit = page_size_of(page_size)
    after = _after(listing, page_token)
    try:
        rest = [item for item in items if after is None or key(item) > after]
    except TypeError:  # a key of another shape than this listing's
        raise InvalidArgument(f"page_token: not a token of {listing}") from None
    chosen: list[T] = []
    used = 0
    for item in rest:
        cost = size(item) + ITEM_OVERHEAD
        if len(chosen) == limit or (chosen and used + cost > PAGE_BYTES):
            break
        chosen.append(item)
        used += cost
    more = len(chosen) < len(rest)
    return chosen, _token(listing, key(chosen[-1])) if more else ""
