"""Replica slots: one per replica a deployment asks for, taken by create or by compare-and-set over a
holder whose heartbeat went stale; at most one per replica; a holder that lost its slot learns it at
its next heartbeat."""

from __future__ import annotations

import uuid

from services.common.store import serving_slots
from services.common.store.serving_slots import SERVING, ServingSlots, Slot


async def test_replicas_take_one_slot_each_a_stale_holders_slot_is_taken_over_and_the_loser_learns_it(
        js, monkeypatch):
    slots = await ServingSlots(js).ensure()
    deployment = f"dep-{uuid.uuid4().hex[:12]}"
    a = await slots.claim(deployment, 2, "replica-a")
    b = await slots.claim(deployment, 2, "replica-b")
    assert a is not None and b is not None and a[0] != b[0]
    assert await slots.claim(deployment, 2, "replica-c") is None  # both slots live: none left
    assert (await slots.claim(deployment, 2, "replica-a"))[0] == a[0]  # a holder gets its own slot back

    revision = await slots.beat(deployment, a[0], a[1], Slot("replica-a", SERVING, endpoints={"http": "h:1"}))
    assert revision is not None
    held = await slots.read(deployment, 2)
    assert held[a[0]][0].state == SERVING and held[a[0]][0].endpoints == {"http": "h:1"}

    # replica-b stops beating: once its heartbeat is older than SLOT_S, replica-c takes its slot.
    monkeypatch.setattr(serving_slots, "SLOT_S", 0.0)
    taken = await slots.claim(deployment, 2, "replica-c")
    assert taken is not None and taken[0] in (a[0], b[0])
    loser = "replica-a" if taken[0] == a[0] else "replica-b"
    loser_revision = revision if loser == "replica-a" else b[1]
    assert await slots.beat(deployment, taken[0], loser_revision, Slot(loser)) is None  # it learns it lost

    await slots.release_all(deployment, 2)
    assert await slots.read(deployment, 2) == {}
