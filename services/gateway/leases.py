"""One gateway runs a job at a time, however many gateways share the mesh.

A running job holds a lease: a KV key naming its gateway and an expiry, taken with create (no key
yet) or compare-and-set over an expired holder, and renewed by compare-and-set while the job runs.
A gateway that dies stops renewing; once the lease expires another gateway takes the job over
from its last finished stage. Expiry is wall-clock time, so gateways need roughly synced clocks
(seconds, against a lease of LEASE_S).

A cancel sent to a gateway that does not run the job is a request beside the lease (key
`cancel.<job_id>`): the holder sees it at its next renewal, stops the job and records CANCELLED
itself — writing the record from outside would race the holder's own saves of it.
"""

from __future__ import annotations

import json
import time

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError

from services.common.store.kv_records import key_value_bucket

LEASES_BUCKET = "modelpress_job_leases"
LEASE_S = 15.0


class JobLeases:
    def __init__(self, js: JetStreamContext, holder: str, lease_s: float = LEASE_S) -> None:
        self._js = js
        self.holder = holder
        self.lease_s = lease_s
        self._kv = None
        self._revisions: dict[str, int] = {}

    async def ensure(self) -> "JobLeases":
        self._kv = await key_value_bucket(self._js, LEASES_BUCKET)
        return self

    def _value(self) -> bytes:
        return json.dumps({"holder": self.holder, "expires": time.time() + self.lease_s}).encode()

    async def acquire(self, job_id: str) -> str | None:
        """Takes the job's lease. Returns None when taken; otherwise the holder that keeps it
        (another gateway whose lease has not expired)."""
        try:
            self._revisions[job_id] = await self._kv.create(job_id, self._value())
            return None
        except KeyWrongLastSequenceError:
            pass
        try:
            entry = await self._kv.get(job_id)
        except (KeyNotFoundError, NotFoundError):
            return await self.acquire(job_id)  # released in between
        held = json.loads(entry.value or b"{}")
        if held.get("holder") != self.holder and held.get("expires", 0) > time.time():
            return held.get("holder", "another gateway")
        try:
            self._revisions[job_id] = await self._kv.update(job_id, self._value(), last=entry.revision)
            return None
        except KeyWrongLastSequenceError:  # another gateway took it first
            return "another gateway"

    async def renew(self, job_id: str) -> bool:
        """Extends the lease; False when it was lost (another gateway took the job over)."""
        revision = self._revisions.get(job_id)
        if revision is None:
            return False
        try:
            self._revisions[job_id] = await self._kv.update(job_id, self._value(), last=revision)
            return True
        except (KeyWrongLastSequenceError, KeyNotFoundError, NotFoundError):
            self._revisions.pop(job_id, None)
            return False

    async def release(self, job_id: str) -> None:
        if self._revisions.pop(job_id, None) is not None:
            for key in (job_id, _cancel_key(job_id)):
                try:
                    await self._kv.delete(key)
                except (KeyNotFoundError, NotFoundError):
                    pass

    async def live_holder(self, job_id: str) -> str | None:
        """The gateway whose unexpired lease holds the job, or None."""
        try:
            entry = await self._kv.get(job_id)
        except (KeyNotFoundError, NotFoundError):
            return None
        held = json.loads(entry.value or b"{}")
        return held.get("holder") if held.get("expires", 0) > time.time() else None

    async def request_cancel(self, job_id: str) -> None:
        await self._kv.put(_cancel_key(job_id), b"1")

    async def cancel_requested(self, job_id: str) -> bool:
        try:
            return bool((await self._kv.get(_cancel_key(job_id))).value)
        except (KeyNotFoundError, NotFoundError):
            return False


def _cancel_key(job_id: str) -> str:
    return f"cancel.{job_id}"
