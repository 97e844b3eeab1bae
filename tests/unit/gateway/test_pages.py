"""Listings in pages (services/gateway/pages.py): a token names the last item given, so items added
or removed between pages shift nothing; a page stops at its size or its byte bound, whichever first."""

from __future__ import annotations

import pytest

from services.common.contract.chain import InvalidArgument
from services.gateway import pages
from services.gateway.pages import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, page, page_size_of


def key(item: str) -> tuple[str]:
    return (item,)


def walk(items, page_size=0, size=len):
    token, seen, sizes = "", [], []
    while True:
        chosen, token = page("Things", items, key, size, page_size, token)
        seen += chosen
        sizes.append(sum(map(size, chosen)))
        if not token:
            return seen, sizes


def test_pages_cover_every_item_once_in_order():
    items = [f"i{n:03d}" for n in range(250)]
    first, token = page("Things", items, key, len, 0, "")
    assert first == items[:DEFAULT_PAGE_SIZE] and token
    assert walk(items)[0] == items
    assert walk(items, page_size=7)[0] == items
    assert page("Things", items, key, len, 250, "") == (items, "")  # all of them: no next page
    assert page("Things", [], key, len, 0, "") == ([], "")


def test_an_item_added_or_removed_between_pages_shifts_nothing():
    items = ["a", "c", "e", "g"]
    first, token = page("Things", items, key, len, 2, "")
    assert first == ["a", "c"]
    rest, token = page("Things", ["b", "d", "e", "g"], key, len, 2, token)  # "a" and "c" gone, "b" "d" new
    assert rest == ["d", "e"] and token


def test_a_page_stops_at_its_byte_bound_and_holds_one_item_at_least(monkeypatch):
    monkeypatch.setattr(pages, "PAGE_BYTES", 100)
    items = [f"{n:02d}" + "x" * 38 for n in range(10)]  # 40 bytes each, 46 with the overhead
    seen, sizes = walk(items)
    assert seen == items and sizes == [80] * 5
    huge = ["a" * 500, "b"]
    assert walk(huge)[0] == huge  # one item over the bound still gets its own page


def test_page_sizes_and_tokens_are_checked():
    assert page_size_of(0) == DEFAULT_PAGE_SIZE and page_size_of(5) == 5
    assert page_size_of(10**6) == MAX_PAGE_SIZE
    with pytest.raises(InvalidArgument, match=r"^page_size: must be >= 0"):
        page_size_of(-1)
    _, token = page("Things", ["a", "b"], key, len, 1, "")
    for bad in ("not-a-token", "eyJ4IjoxfQ", token + "x"):
        with pytest.raises(InvalidArgument, match=r"^page_token: not a token of Things"):
            page("Things", ["a", "b"], key, len, 1, bad)
    with pytest.raises(InvalidArgument, match=r"^page_token: not a token of Others"):
        page("Others", ["a", "b"], key, len, 1, token)  # another listing's token
