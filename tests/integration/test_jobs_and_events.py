"""Job records (KV) and the job event stream against a real nats-server."""

import asyncio
import uuid

import pytest

from modelpress.v1 import common_pb2
from services.common.store import events as ev
from services.gateway.job_store import JobNotFound, JobStore


@pytest.fixture
async def jobs(js):
    return await JobStore(js, bucket="test_jobs").ensure()


@pytest.fixture
async def log(js):
    return await ev.EventLog(js).ensure()


async def test_job_records_round_trip_list_and_delete(jobs):
    job = common_pb2.Job(job_id="j-" + uuid.uuid4().hex[:8], recipe="fp16", state=common_pb2.JOB_STATE_PENDING)
    job.created_at.GetCurrentTime()
    await jobs.put(job)
    assert await jobs.get(job.job_id) == job
    job.state = common_pb2.JOB_STATE_RUNNING
    await jobs.put(job)
    assert (await jobs.get(job.job_id)).state == common_pb2.JOB_STATE_RUNNING
    assert job.job_id in [j.job_id for j in await jobs.list()]
    await jobs.delete(job.job_id)
    with pytest.raises(JobNotFound):
        await jobs.get(job.job_id)


async def test_late_watcher_replays_the_whole_history_in_order(log):
    job_id = "j-" + uuid.uuid4().hex[:8]
    for step in range(1, 6):
        await log.publish(ev.make_event(job_id, common_pb2.EVENT_KIND_STAGE_PROGRESS, step=step, total_steps=5))
    await log.publish(ev.make_event(job_id, common_pb2.EVENT_KIND_JOB_STATE, job_state=common_pb2.JOB_STATE_SUCCEEDED))
    seen = [e async for e in log.replay(job_id)]
    assert [e.sequence for e in seen] == [1, 2, 3, 4, 5, 6]
    assert [e.step for e in seen[:5]] == [1, 2, 3, 4, 5]
    assert ev.is_terminal(seen[-1])
    # A second late watcher sees exactly the same history.
    assert [e async for e in log.replay(job_id)] == seen


async def test_live_watcher_follows_until_the_terminal_event(log):
    job_id = "j-" + uuid.uuid4().hex[:8]
    await log.publish(ev.make_event(job_id, common_pb2.EVENT_KIND_JOB_STATE, job_state=common_pb2.JOB_STATE_RUNNING))
    watcher = asyncio.create_task(_collect(log.replay(job_id)))
    await asyncio.sleep(0.3)
    assert not watcher.done()
    await log.publish(ev.make_event(job_id, common_pb2.EVENT_KIND_STAGE_PROGRESS, step=1))
    await log.publish(ev.make_event(job_id, common_pb2.EVENT_KIND_JOB_STATE, job_state=common_pb2.JOB_STATE_FAILED))
    seen = await asyncio.wait_for(watcher, 10)
    assert [e.kind for e in seen] == [common_pb2.EVENT_KIND_JOB_STATE, common_pb2.EVENT_KIND_STAGE_PROGRESS,
                                      common_pb2.EVENT_KIND_JOB_STATE]


async def test_purge_removes_a_jobs_events(log):
    job_id = "j-" + uuid.uuid4().hex[:8]
    await log.publish(ev.make_event(job_id, common_pb2.EVENT_KIND_LOG, message="x"))
    await log.purge(job_id)
    assert [e async for e in log.replay(job_id, follow=False)] == []


async def _collect(stream):
    return [e async for e in stream]
