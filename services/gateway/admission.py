"""Admission: the per-tenant bounds every new job and every measurement passes, held across
gateway replicas.

Counting a tenant's jobs and then recording a new one lets parallel requests all pass the count
(twelve at a quota of five were accepted). Here the count and the taking of a place are one
compare-and-set on a KV record per tenant, so two replicas, or twelve requests on one, cannot both
take the last place:

- `jobs.<tenant>`: {job id: admitted at} of the tenant's unfinished jobs. Every admission first
  drops ids whose job record ended or is gone, so the record heals itself (a job that ended on
  another gateway, a gateway that died between admitting and recording) and never drifts from the
  job records. An id admitted moments ago may have no record yet (its gateway writes it right
  after admission): it counts for UNRECORDED_GRACE_S.
- `measure.<tenant>`: {slot id: expires at} of the tenant's Evaluate, Compare and RunBenchmark
  calls in flight, renewed while each runs (as a job lease is), so a gateway that dies frees its
  slots within MEASUREMENT_LEASE_S.

The store's size bound (retention's check_room) is checked in the same admission of a job.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError

from services.common.runtime.auth import Principal
from services.common.store.kv_records import key_value_bucket
from services.common.store.events import TERMINAL_STATES
from services.gateway.access import OPEN_SEGMENT
from services.gateway.job_store import JobNotFound, JobStore
from services.common.runtime.settings import ServiceSettings
from services.gateway.jobs import new_job_id

ADMISSION_BUCKET = "modelpress_admission"
# Evaluate, Compare and RunBenchmark calls one tenant may have in flight across the mesh: declared
# once, as the operator's setting.
MAX_MEASUREMENTS_PER_TENANT = ServiceSettings.model_fields["max_measurements_per_tenant"].default
# How long an admitted job id without a job record still counts: its gateway records it within
# milliseconds of admission; one that died in between leaves an id that goes after this.
UNRECORDED_GRACE_S = 30.0
# A measurement slot's lease; renewed every third of it while the call runs.
MEASUREMENT_LEASE_S = 30.0
# Compare-and-set rounds before giving up: each round one of the contenders wins, so this is far
# past any real burst of one tenant's requests.
CAS_ATTEMPTS = 200


class QuotaExceeded(RuntimeError):
    """A tenant's limit is reached (RESOURCE_EXHAUSTED)."""


class AdmissionBusy(RuntimeError):
    """The tenant's admission record kept changing under every attempt (UNAVAILABLE: try again)."""


Held = dict[str, float]
Edit = Callable[[Held | None], Awaitable[Held]]


def _segment(tenant: str) -> str:
    return tenant or OPEN_SEGMENT


class TenantRecords:
    """One {id: stamp} map per KV key, changed by compare-and-set only."""

    def __init__(self, js: JetStreamContext, bucket: str = ADMISSION_BUCKET) -> None:
        self._js = js
        self._bucket = bucket
        self._kv = None

    async def ensure(self) -> TenantRecords:
        self._kv = await key_value_bucket(self._js, self._bucket)
        return self

    async def read(self, key: str) -> Held:
        try:
            entry = await self._kv.get(key)
        except (KeyNotFoundError, NotFoundError):
            return {}
        return json.loads(entry.value or b"{}")

    async def change(self, key: str, edit: Edit) -> Held:
        """Applies `edit` (given the map, or None while the key does not exist) and writes its answer
        if nobody wrote the key in between; otherwise reads and edits again. An exception from
        `edit` (a refusal) leaves the record as it was. Returns what was written."""
        for attempt in range(CAS_ATTEMPTS):
            try:
                entry = await self._kv.get(key)
            except (KeyNotFoundError, NotFoundError):
                entry = None
            held = json.loads(entry.value or b"{}") if entry is not None else None
            wanted = await edit(None if held is None else dict(held))
            if wanted == held:
                return wanted
            value = json.dumps(wanted, sort_keys=True).encode()
            try:
                if entry is None:
                    await self._kv.create(key, value)
                else:
                    await self._kv.update(key, value, last=entry.revision)
                return wanted
            except KeyWrongLastSequenceError:
                # Another request (here or on another gateway) wrote first: back off a little,
                # more the longer the contention, so the contenders spread out.
                await asyncio.sleep(random.uniform(0, 0.002 * min(attempt + 1, 25)))
        raise AdmissionBusy(f"admission: the record {key!r} changed under {CAS_ATTEMPTS} attempts in a row; "
                            "try again")


class Admission:
    """The gateway's one door for new jobs (CreateJob, OptimizeModel, RecommendStrategy's measuring
    jobs) and for measurements (Evaluate, Compare, RunBenchmark)."""

    def __init__(self, js: JetStreamContext, jobs: JobStore, check_room: Callable[[], Awaitable[None]],
                 max_jobs: int, max_measurements: int = MAX_MEASUREMENTS_PER_TENANT,
                 bucket: str = ADMISSION_BUCKET) -> None:
        # One bucket per job store: ids are pruned against these job records.
        self._records = TenantRecords(js, bucket)
        self._jobs = jobs
        self._check_room = check_room
        self.max_jobs = max_jobs
        self.max_measurements = max_measurements

    async def ensure(self) -> Admission:
        await self._records.ensure()
        return self

    # ---- jobs ------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def job(self, principal: Principal) -> AsyncIterator[str]:
        """Admits one new job of the caller's tenant and yields its id, to record the job under
        inside the block; QuotaExceeded or StoreFull instead. When the block raises (the job was
        not recorded), the place is given back."""
        await self._check_room()
        job_id = new_job_id()
        tenant = principal.tenant

        async def add(held: Held | None) -> Held:
            unfinished = await self._unfinished(tenant, held)
            if len(unfinished) >= self.max_jobs:
                raise QuotaExceeded(
                    f"jobs: {principal.label} has {len(unfinished)} unfinished jobs, the most it may have at once "
                    f"(max_jobs_per_tenant {self.max_jobs}); wait for one or cancel one")
            return {**unfinished, job_id: time.time()}

        await self._records.change(f"jobs.{_segment(tenant)}", add)
        try:
            yield job_id
        except BaseException:
            # The block's own error is what the caller must see, not a failure to give the place back
            # (pruning frees that place later anyway).
            with contextlib.suppress(Exception):
                await asyncio.shield(self._release_unrecorded(tenant, job_id))
            raise

    async def _release_unrecorded(self, tenant: str, job_id: str) -> None:
        """Gives the place back unless the job was recorded after all (a cancel that landed after
        its record was written): a recorded job keeps counting until it ends."""
        try:
            await self._jobs.get(job_id)
        except JobNotFound:
            await self.release_job(tenant, job_id)

    async def release_job(self, tenant: str, job_id: str) -> None:
        """Gives the job's place back at once (a job deleted, or never recorded); pruning would
        find it too, this only spares the wait."""

        async def drop(held: Held | None) -> Held:
            return {k: v for k, v in (held or {}).items() if k != job_id}

        await self._records.change(f"jobs.{_segment(tenant)}", drop)

    async def unfinished(self, tenant: str) -> list[str]:
        """Ids of the tenant's admitted jobs that have not ended (what its quota counts)."""
        return sorted(await self._unfinished(tenant, await self._records.read(f"jobs.{_segment(tenant)}")))

    async def _unfinished(self, tenant: str, held: Held | None) -> Held:
        """The admitted ids still unfinished; a tenant with no record yet starts from its unfinished
        job records (jobs admitted before this record existed count too)."""
        now = time.time()
        if held is None:
            return {job.job_id: now for job in await self._jobs.list()
                    if job.tenant == tenant and job.state not in TERMINAL_STATES}
        kept = {}
        for job_id, admitted_at in held.items():
            try:
                job = await self._jobs.get(job_id)
            except JobNotFound:
                if now - admitted_at < UNRECORDED_GRACE_S:
                    kept[job_id] = admitted_at  # being recorded by its gateway right now
                continue
            if job.state not in TERMINAL_STATES:
                kept[job_id] = admitted_at
        return kept

    # ---- measurements ------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def measurement(self, principal: Principal, rpc: str) -> AsyncIterator[None]:
        """Holds one of the tenant's measurement slots while the block runs; QuotaExceeded naming
        `rpc` and the limit when all of them are taken."""
        key = f"measure.{_segment(principal.tenant)}"
        slot = uuid.uuid4().hex[:16]

        async def take(held: Held | None) -> Held:
            now = time.time()
            live = {k: expires for k, expires in (held or {}).items() if expires > now}
            if len(live) >= self.max_measurements:
                raise QuotaExceeded(
                    f"{rpc}: {principal.label} has {len(live)} measurements (Evaluate, Compare, RunBenchmark) "
                    f"running, the most it may run at once (max_measurements_per_tenant {self.max_measurements}); "
                    "wait for one to finish")
            return {**live, slot: now + MEASUREMENT_LEASE_S}

        async def renew(held: Held | None) -> Held:
            # Renewed even if pruned meanwhile (a stalled loop): the call runs, so it counts.
            return {**(held or {}), slot: time.time() + MEASUREMENT_LEASE_S}

        async def drop(held: Held | None) -> Held:
            return {k: v for k, v in (held or {}).items() if k != slot}

        async def keep() -> None:
            while True:
                await asyncio.sleep(MEASUREMENT_LEASE_S / 3)
                with contextlib.suppress(Exception):  # NATS away for a moment: the next renewal
                    await self._records.change(key, renew)

        await self._records.change(key, take)
        keeper = asyncio.create_task(keep(), name=f"measurement-slot-{slot}")
        try:
            yield
        finally:
            keeper.cancel()
            with contextlib.suppress(Exception):  # the lease frees the slot if this cannot
                await asyncio.shield(self._records.change(key, drop))
