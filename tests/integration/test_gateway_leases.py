"""Two gateways on one mesh: a job runs on one at a time (a lease in KV), and when its gateway is
SIGKILLed the other takes it over once the lease expires, from its last finished stage."""

from __future__ import annotations

import asyncio

from modelpress import Client
from modelpress.v1 import common_pb2
from services.common.store.nats_server import free_port
from services.gateway.leases import LEASE_S
from tests.integration.processes import ServiceProcess


def call(fn, *args, **kwargs):
    return asyncio.to_thread(fn, *args, **kwargs)


async def test_a_killed_gateways_job_is_taken_over_by_the_other(gateway, workers, nats_url, model_dir, monkeypatch):
    for name, target in workers.targets.items():
        monkeypatch.setenv(f"MODELPRESS_{name.upper()}_TARGET", target)
    monkeypatch.setenv("MODELPRESS_ALLOWED_ROOTS", str(model_dir.parent))
    monkeypatch.setenv("MODELPRESS_JOB_LEASE_S", "4")  # the doomed gateway's lease: expires soon after the kill
    doomed = ServiceProcess("gateway", nats_url, workers.home, free_port())
    await call(doomed.start)
    try:
        # Two stages, and an evaluation long enough to be cut: the kill lands after the first.
        pipeline = [{"name": "fp16", "technique": "quantizer", "method": "fp16"},
                    {"name": "int8", "technique": "quantizer", "method": "int8-weight-only"}]
        slow = common_pb2.EvaluationSpec(sequence_length=16, latency_iterations=30, quality_windows=1)
        job = await call(Client(doomed.listen).create_job, f"path:{model_dir}", pipeline, evaluation=slow,
                         recompute=True)
        survivor = Client(gateway)
        for _ in range(300):
            record = await call(survivor.get_job, job.job_id)
            if record.stages[-1].state == common_pb2.JOB_STATE_SUCCEEDED:
                break
            await asyncio.sleep(0.1)
        await call(doomed.kill)
        killed_at = asyncio.get_running_loop().time()
        events = await call(lambda: list(survivor.watch(job.job_id)))
        taken_after = asyncio.get_running_loop().time() - killed_at
    finally:
        doomed.stop()
    done = await call(survivor.get_job, job.job_id)
    assert done.state == common_pb2.JOB_STATE_SUCCEEDED, done.error
    runners = [e.message for e in events if "running on gateway" in e.message or "resumed by gateway" in e.message]
    assert len(runners) == 2 and runners[0].startswith("running on gateway"), runners
    assert "after 2 finished stage(s)" in runners[1], runners  # neither stage ran again
    assert runners[0].split("gateway ")[1] != runners[1].split("gateway ")[1].split(" after")[0]
    starts = [e.stage_name for e in events if e.kind == common_pb2.EVENT_KIND_STAGE_STARTED]
    assert [name for name in starts if name != "evaluate"] == ["fp16", "int8"], starts
    assert taken_after < LEASE_S * 4


async def test_a_cancel_sent_to_another_gateway_stops_the_job_where_it_runs(gateway, start_gateway, model_dir):
    other = await start_gateway()
    try:
        runner, canceller = Client(gateway), Client(f"127.0.0.1:{other.port}")
        # Bounded by time alone (a minute): only the cancel ends it sooner.
        training = {"max_steps": 100000, "max_minutes": 1.0, "calibration_samples": 24,
                    "calibration_sequence_length": 32, "batch_size": 4, "validate_every": 100000}
        job = await call(runner.create_job, f"path:{model_dir}", "distill-response", overrides=training,
                         evaluation=common_pb2.EvaluationSpec(skip=True), recompute=True)

        def training_started() -> None:
            for event in runner.watch(job.job_id):
                if event.kind == common_pb2.EVENT_KIND_STAGE_PROGRESS and "learning_rate" in event.metrics:
                    return
            raise AssertionError("the job ended before training")

        await call(training_started)
        cancelled = await call(canceller.cancel_job, job.job_id)
        assert cancelled.state == common_pb2.JOB_STATE_CANCELLED
        cancelled_at = asyncio.get_running_loop().time()
        # The gateway running it sees the cancel at its next lease renewal and stops the stage.
        last_step, still = -1, 0
        while asyncio.get_running_loop().time() - cancelled_at < LEASE_S:
            events = await call(lambda: list(runner.watch(job.job_id)))
            steps = [e.step for e in events if e.kind == common_pb2.EVENT_KIND_STAGE_PROGRESS]
            still = still + 1 if steps and steps[-1] == last_step else 0
            last_step = steps[-1] if steps else -1
            if still >= 3:
                break
            await asyncio.sleep(1.0)
        stopped_after = asyncio.get_running_loop().time() - cancelled_at
        assert still >= 3, "the stage went on training after the cancel"
        assert stopped_after < LEASE_S / 3 + 8
        record = await call(runner.get_job, job.job_id)
        assert record.state == common_pb2.JOB_STATE_CANCELLED
        assert record.stages[0].state != common_pb2.JOB_STATE_SUCCEEDED
    finally:
        await other.stop(grace_s=1)
