"""Admission (services/gateway/admission.py) over the session's real nats-server: two Admission
objects over one KV stand for two gateway replicas. The count of a tenant's unfinished jobs and the
taking of a place are one compare-and-set, so a burst of parallel requests never passes the quota;
places of jobs that ended or were never recorded come back by themselves; measurements hold
leased slots."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest

from modelpress.v1 import common_pb2
from services.common.runtime.auth import Principal
from services.common.store.artifact_store import StoreFull
from services.gateway import admission as admission_module
from services.gateway.admission import Admission, QuotaExceeded
from services.gateway.job_store import JobStore

PENDING, CANCELLED = common_pb2.JOB_STATE_PENDING, common_pb2.JOB_STATE_CANCELLED
BUCKET = "unit_admission"


async def room() -> None:
    return None


@pytest.fixture
async def jobs(js):
    return await JobStore(js, bucket=f"unit_admission_jobs_{uuid.uuid4().hex[:8]}").ensure()


@pytest.fixture
def tenant() -> Principal:
    return Principal(tenant=f"t-{uuid.uuid4().hex[:8]}", operator=False)


async def admit(door: Admission, jobs: JobStore, who: Principal) -> str:
    """One CreateJob's admission and record, as the servicer does it."""
    async with door.job(who) as job_id:
        await jobs.put(common_pb2.Job(job_id=job_id, tenant=who.tenant, state=PENDING))
    return job_id


async def test_twelve_parallel_admissions_on_two_replicas_at_a_quota_of_five_admit_exactly_five(js, jobs, tenant):
    replicas = [await Admission(js, jobs, room, max_jobs=5, bucket=BUCKET).ensure() for _ in range(2)]
    answers = await asyncio.gather(*(admit(replicas[i % 2], jobs, tenant) for i in range(12)),
                                   return_exceptions=True)
    admitted = [a for a in answers if isinstance(a, str)]
    refused = [a for a in answers if not isinstance(a, str)]
    assert len(admitted) == 5 and len(refused) == 7, answers
    assert all(isinstance(e, QuotaExceeded) for e in refused)
    assert str(refused[0]) == (f"jobs: tenant {tenant.tenant!r} has 5 unfinished jobs, the most it may have at once "
                               "(max_jobs_per_tenant 5); wait for one or cancel one")
    assert await replicas[1].unfinished(tenant.tenant) == sorted(admitted)
    # Another tenant has its own quota.
    other = Principal(tenant=f"o-{uuid.uuid4().hex[:8]}", operator=False)
    assert await admit(replicas[0], jobs, other)


async def test_a_job_that_ended_or_was_never_recorded_gives_its_place_back(js, jobs, tenant, monkeypatch):
    door = await Admission(js, jobs, room, max_jobs=2, bucket=BUCKET).ensure()
    first = await admit(door, jobs, tenant)
    second = await admit(door, jobs, tenant)
    with pytest.raises(QuotaExceeded):
        await admit(door, jobs, tenant)
    # Ended on whichever gateway ran it: the next admission prunes it from the record.
    ended = await jobs.get(first)
    ended.state = CANCELLED
    await jobs.put(ended)
    third = await admit(door, jobs, tenant)
    assert await door.unfinished(tenant.tenant) == sorted([second, third])

    # A block that fails (the job was not recorded) gives its place back at once.
    await door.release_job(tenant.tenant, third)
    with pytest.raises(RuntimeError, match="recording failed"):
        async with door.job(tenant):
            raise RuntimeError("recording failed")
    assert await door.unfinished(tenant.tenant) == [second]

    # A gateway that died between admitting and recording: the id counts for the grace, then goes.
    async with door.job(tenant) as orphan:
        pass  # admitted, never recorded
    assert orphan in await door.unfinished(tenant.tenant)
    monkeypatch.setattr(admission_module, "UNRECORDED_GRACE_S", 0.0)
    assert await door.unfinished(tenant.tenant) == [second]

    # A block that fails after its job was recorded (the caller went away) keeps counting it.
    with pytest.raises(RuntimeError, match="went away"):
        async with door.job(tenant) as recorded:
            await jobs.put(common_pb2.Job(job_id=recorded, tenant=tenant.tenant, state=PENDING))
            raise RuntimeError("the caller went away")
    assert await door.unfinished(tenant.tenant) == sorted([second, recorded])


async def test_a_tenant_without_a_record_starts_from_its_unfinished_job_records(js, jobs, tenant):
    for state in (PENDING, common_pb2.JOB_STATE_RUNNING, common_pb2.JOB_STATE_SUCCEEDED):
        await jobs.put(common_pb2.Job(job_id=f"j-{uuid.uuid4().hex[:16]}", tenant=tenant.tenant, state=state))
    door = await Admission(js, jobs, room, max_jobs=3, bucket=BUCKET).ensure()
    await admit(door, jobs, tenant)  # the two unfinished ones count: this is the third
    with pytest.raises(QuotaExceeded, match="has 3 unfinished jobs"):
        await admit(door, jobs, tenant)


async def test_a_full_store_refuses_before_a_place_is_taken(js, jobs, tenant):
    async def full() -> None:
        raise StoreFull("the artifact store holds 10 bytes of its 10 (store_max_bytes)")

    door = await Admission(js, jobs, full, max_jobs=5, bucket=BUCKET).ensure()
    with pytest.raises(StoreFull):
        await admit(door, jobs, tenant)
    assert await door.unfinished(tenant.tenant) == []


async def test_measurements_hold_leased_slots_per_tenant(js, jobs, tenant):
    doors = [await Admission(js, jobs, room, max_jobs=5, max_measurements=2, bucket=BUCKET).ensure() for _ in range(2)]
    started, release = asyncio.Event(), asyncio.Event()
    holding = 0

    async def measure(door: Admission) -> None:
        nonlocal holding
        async with door.measurement(tenant, "Evaluate"):
            holding += 1
            if holding == 2:
                started.set()
            await release.wait()

    running = [asyncio.create_task(measure(door)) for door in doors]
    await asyncio.wait_for(started.wait(), 10)
    with pytest.raises(QuotaExceeded) as info:
        async with doors[0].measurement(tenant, "Compare"):
            pass
    assert str(info.value) == (f"Compare: tenant {tenant.tenant!r} has 2 measurements (Evaluate, Compare, "
                               "RunBenchmark) running, the most it may run at once (max_measurements_per_tenant "
                               "2); wait for one to finish")
    other = Principal(tenant=f"o-{uuid.uuid4().hex[:8]}", operator=False)
    async with doors[1].measurement(other, "Evaluate"):
        pass  # another tenant's slots are its own
    release.set()
    await asyncio.gather(*running)
    async with doors[0].measurement(tenant, "RunBenchmark"):
        pass  # the slots came back

    # A slot whose gateway died stops counting when its lease runs out.
    key = f"measure.{tenant.tenant}"
    await doors[0]._records._kv.put(key, json.dumps({"dead-1": time.time() - 1, "dead-2": time.time() - 1}).encode())
    async with doors[0].measurement(tenant, "Evaluate"):
        pass
