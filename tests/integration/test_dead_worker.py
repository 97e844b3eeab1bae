"""A quantizer killed with SIGKILL mid-stage, as a real process: the job never hangs silently, and a
quantizer back within the bound goes on from the stage's last checkpoint.

The quantizer runs as its own process (so it can be killed for real); the other services and
a gateway with a short replica wait run in this process over the same nats-server.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from modelpress import Client
from modelpress.v1 import common_pb2
from services.common.store.nats_server import free_port
from tests.integration.processes import ServiceProcess, gateway_to

REPLICA_WAIT_S = 20.0
# Long enough that the stage is still running when the kill lands: seconds per block.
SLOW_STAGE = {"steps_per_block": 500, "calibration_samples": 2, "calibration_sequence_length": 32}
LINEARS_PER_BLOCK = 7  # the tiny Llama's q, k, v, o, gate, up, down
NO_EVAL = common_pb2.EvaluationSpec(skip=True)


def call(fn, *args, **kwargs):
    return asyncio.to_thread(fn, *args, **kwargs)


@pytest.fixture(scope="module")
async def quantizer(nats_url, workers):
    # A walk checkpoint after every block (not once a minute), so a kill in the second block has one to go on from.
    process = ServiceProcess("quantizer", nats_url, workers.home, free_port(), "--checkpoint-every-s", "0")
    await call(process.start)
    yield process
    process.stop()


@pytest.fixture(scope="module")
async def gateway_of_process(workers, quantizer):
    service, client = await gateway_to(workers, quantizer, REPLICA_WAIT_S)
    yield client
    await service.stop(grace_s=1)


async def _kill_once_running(client: Client, job_id: str, quantizer: ServiceProcess) -> None:
    def first_progress():
        for event in client.watch(job_id):
            if event.kind == common_pb2.EVENT_KIND_STAGE_PROGRESS and event.stage_index == 0:
                return
        raise AssertionError("the job ended before its stage reported progress")

    await call(first_progress)
    quantizer.kill()


async def test_a_killed_worker_without_replica_fails_the_job_visibly_within_the_bound(
        gateway_of_process, quantizer, tiny_llama_dir):
    client = gateway_of_process
    model = await call(client.upload, tiny_llama_dir)
    job = await call(client.create_job, f"artifact:{model.id}", "w4a16-qat", overrides=SLOW_STAGE, recompute=True,
                     evaluation=NO_EVAL)
    await _kill_once_running(client, job.job_id, quantizer)
    killed_at = time.monotonic()

    # No replica: a new job is refused at once, naming the service.
    with pytest.raises(grpc.RpcError) as info:
        await call(client.create_job, f"artifact:{model.id}", "int8-weight-only", evaluation=NO_EVAL)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "quantizer" in info.value.details()

    events = await call(lambda: list(client.watch(job.job_id)))
    ended_after = time.monotonic() - killed_at
    done = await call(client.get_job, job.job_id)
    assert done.state == common_pb2.JOB_STATE_FAILED
    assert done.error.startswith("UNAVAILABLE") and "quantizer" in done.error
    assert REPLICA_WAIT_S <= ended_after < REPLICA_WAIT_S + 15
    waits = [e for e in events if e.kind == common_pb2.EVENT_KIND_LOG and "waiting for a live quantizer" in e.message]
    # One every few seconds while it waited, each saying for how long.
    assert len(waits) >= REPLICA_WAIT_S // 5 - 1
    assert [e.metrics["waited_s"] for e in waits] == sorted(e.metrics["waited_s"] for e in waits)


async def _kill_in_the_second_block(client: Client, job_id: str, quantizer: ServiceProcess) -> None:
    def first_block_done():
        done = 0
        for event in client.watch(job_id):
            if (event.kind == common_pb2.EVENT_KIND_STAGE_PROGRESS and "block" in event.metrics
                    and event.metrics["block"] == 0):
                done += 1
                if done == LINEARS_PER_BLOCK:
                    return
        raise AssertionError("the job ended before its first block was quantized")

    await call(first_block_done)
    await asyncio.sleep(1)  # the block's checkpoint is saved before the second block trains (seconds)
    quantizer.kill()


async def test_a_worker_restarted_within_the_bound_resumes_the_walk_from_its_checkpoint(gateway_of_process, quantizer,
                                                                                      tiny_llama_dir):
    client = gateway_of_process
    if not quantizer.running():
        await call(quantizer.start)
    model = await call(client.upload, tiny_llama_dir)
    job = await call(client.create_job, f"artifact:{model.id}", "w4a16-qat", overrides=SLOW_STAGE, recompute=True,
                     evaluation=NO_EVAL)
    await _kill_in_the_second_block(client, job.job_id, quantizer)
    await asyncio.sleep(6)
    await call(quantizer.start)
    events = await call(lambda: list(client.watch(job.job_id)))
    done = await call(client.get_job, job.job_id)
    assert done.state == common_pb2.JOB_STATE_SUCCEEDED, done.error
    messages = [e.message for e in events if e.kind == common_pb2.EVENT_KIND_LOG]
    assert any("waiting for a live quantizer" in m for m in messages)
    assert any(m.startswith("quantizer is back") for m in messages)
    # The retried stage walked only the second block: the first one's codes came from the checkpoint.
    assert done.stages[0].metrics["resumed_from_block"] == 1
    assert any(e.message.endswith("resumed from the checkpoint after block 1 of 2") for e in events)
