"""Which serving replica serves which deployment: one KV key per replica slot of a deployment.

The gateway records deployments (DEPLOYMENTS_BUCKET, common_pb2.Deployment by id); a deployment
asking for N replicas has slots 0..N-1. A serving replica takes a free slot with create (no key
yet) or compare-and-set over a holder whose heartbeat is older than SLOT_S — a replica that died —
at most one slot per deployment, and rewrites its slot every few seconds with its state, its
endpoints and its live figures. The gateway reads the slots to answer GetDeployment; nobody else
writes them. Heartbeats are wall-clock times, so replicas need roughly synced clocks (seconds).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from services.common.store.kv_records import key_value_bucket

DEPLOYMENTS_BUCKET = "modelpress_deployments"
SLOTS_BUCKET = "modelpress_serving_slots"
SLOT_S = 15.0  # a slot whose heartbeat is older is free to take
HEARTBEAT_S = 3.0
LOADING, SERVING, FAILED = "loading", "serving", "failed"


@dataclass
class Slot:
    replica: str  # the holder's worker id
    state: str = LOADING
    heartbeat: float = field(default_factory=time.time)
    endpoints: dict[str, str] = field(default_factory=dict)  # protocol → address
    message: str = ""
    figures: dict = field(default_factory=dict)  # DeploymentMetrics.snapshot() and batcher stats

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @staticmethod
    def decode(raw: bytes | None) -> Slot | None:
        try:
            return Slot(**json.loads(raw or b""))
        except (ValueError, TypeError):
            return None

    @property
    def fresh(self) -> bool:
        return time.time() - self.heartbeat < SLOT_S


def slot_key(deployment_id: str, index: int) -> str:
    return f"{deployment_id}.{index}"


class ServingSlots:
    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self._kv: KeyValue | None = None

    async def ensure(self) -> ServingSlots:
        self._kv = await key_value_bucket(self._js, SLOTS_BUCKET)
        return self

    async def read(self, deployment_id: str, replicas: int) -> dict[int, tuple[Slot, int]]:
        """Slot index → (slot, revision) for the slots that have a holder's record."""
        found = {}
        for index in range(replicas):
            try:
                entry = await self._kv.get(slot_key(deployment_id, index))
            except (KeyNotFoundError, NotFoundError):
                continue
            slot = Slot.decode(entry.value)
            if slot is not None:
                found[index] = (slot, entry.revision)
        return found

    async def claim(self, deployment_id: str, replicas: int, holder: str) -> tuple[int, int] | None:
        """(slot index, revision) of a slot taken for `holder` — its own if it holds one — or None
        when every slot has a live holder."""
        held = await self.read(deployment_id, replicas)
        mine = next((i for i, (s, _) in held.items() if s.replica == holder), None)
        if mine is not None:
            return mine, held[mine][1]
        for index in range(replicas):
            key = slot_key(deployment_id, index)
            try:
                if index not in held:
                    return index, await self._kv.create(key, Slot(holder).encode())
                slot, revision = held[index]
                if not slot.fresh:
                    return index, await self._kv.update(key, Slot(holder).encode(), last=revision)
            except KeyWrongLastSequenceError:
                continue  # another replica was quicker
        return None

    async def beat(self, deployment_id: str, index: int, revision: int, slot: Slot) -> int | None:
        """Rewrites the holder's slot; the new revision, or None when it lost the slot meanwhile."""
        slot.heartbeat = time.time()
        try:
            return await self._kv.update(slot_key(deployment_id, index), slot.encode(), last=revision)
        except (KeyWrongLastSequenceError, KeyNotFoundError, NotFoundError):
            return None

    async def release(self, deployment_id: str, index: int) -> None:
        try:
            await self._kv.delete(slot_key(deployment_id, index))
        except (KeyNotFoundError, NotFoundError):
            pass

    async def release_all(self, deployment_id: str, upto: int) -> None:
        for index in range(upto):
            await self.release(deployment_id, index)
