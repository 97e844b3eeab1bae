"""Two distiller replicas as real processes behind one target (as `modelpress up --replicas
distiller=2` runs them): the replica running a stage is SIGKILLed mid-training and the stage goes on
on the other from the last checkpoint the dead one stored, with no restart of anything."""

from __future__ import annotations

import asyncio

import pytest

from modelpress import Client
from modelpress.v1 import common_pb2
from services.common.store.nats_server import free_port
from services.common.runtime.server import start_service
from services.cli.launcher import replica_target
from tests.integration.conftest import _registrar
from tests.integration.processes import ServiceProcess

NO_EVAL = common_pb2.EvaluationSpec(skip=True)
TRAINING = {"max_steps": 60, "checkpoint_every": 10, "validate_every": 1000, "calibration_samples": 24,
            "calibration_sequence_length": 32, "batch_size": 4, "warmup_steps": 1}
KILL_AFTER_STEP = 12


def call(fn, *args, **kwargs):
    return asyncio.to_thread(fn, *args, **kwargs)


@pytest.fixture(scope="module")
async def replicas(workers, nats_url):
    procs = [ServiceProcess("distiller", nats_url, workers.home, free_port()) for _ in range(2)]
    await asyncio.gather(*(call(proc.start) for proc in procs))
    yield procs
    for proc in procs:
        proc.stop()


@pytest.fixture(scope="module")
async def client_of_replicas(workers, replicas):
    target = replica_target([int(proc.listen.rpartition(":")[2]) for proc in replicas])
    settings = workers.model_copy(update={"targets": {**workers.targets, "distiller": target}, "replica_wait_s": 30})
    service = await start_service(settings, _registrar("gateway"))
    yield Client(f"127.0.0.1:{service.port}")
    await service.stop(grace_s=1)


async def test_a_killed_replica_s_stage_continues_on_the_other_from_its_checkpoint(client_of_replicas, replicas,
                                                                                  tiny_llama_dir):
    client = client_of_replicas
    model = await call(client.upload, tiny_llama_dir)
    job = await call(client.create_job, f"artifact:{model.id}", "distill-response", overrides=TRAINING,
                     evaluation=NO_EVAL, recompute=True)

    def running_replica_after_step() -> str:
        worker = ""
        for event in client.watch(job.job_id):
            if event.kind != common_pb2.EVENT_KIND_STAGE_PROGRESS:
                continue
            worker = event.metrics["worker"] if "worker" in event.metrics else worker
            if "learning_rate" in event.metrics and event.step >= KILL_AFTER_STEP:
                return worker
        raise AssertionError("the job ended before the kill")

    worker = await call(running_replica_after_step)
    port = worker.rpartition(":")[2]
    doomed, other = sorted(replicas, key=lambda proc: not proc.listen.endswith(f":{port}"))
    assert doomed.listen.endswith(f":{port}"), (worker, [proc.listen for proc in replicas])
    doomed.kill()
    killed_at = asyncio.get_running_loop().time()
    events = await call(lambda: list(client.watch(job.job_id)))
    job = await call(client.get_job, job.job_id)
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    stage = job.stages[0]
    assert stage.worker.endswith(other.listen.rpartition(":")[2]), (stage.worker, other.listen)
    resumed = int(stage.metrics["resumed_from_step"])
    every = TRAINING["checkpoint_every"]
    assert resumed >= KILL_AFTER_STEP - KILL_AFTER_STEP % every and resumed % every == 0
    assert stage.metrics["steps"] == TRAINING["max_steps"]
    assert any("unavailable" in e.message and "attempt 2" in e.message for e in events)
    # The other replica took the stage at once (no wait for the dead one to come back).
    assert not any("waiting for a live distiller replica" in e.message for e in events)
    assert asyncio.get_running_loop().time() - killed_at < 120
