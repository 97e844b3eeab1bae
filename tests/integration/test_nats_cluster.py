"""The mesh over a 3-server NATS JetStream cluster with a password (as `modelpress up --auth
--nats-cluster 3` runs it): streams, KV buckets and the object store at 3 replicas, strangers
refused by every server, and a server SIGKILLed mid-job — the one leading the job records — loses
no job, record, event or artifact."""

from __future__ import annotations

import asyncio

import pytest

from modelpress import Client
from modelpress.v1 import common_pb2
from services.common.store import nats_conn
from services.common.store.artifact_store import BUCKET as ARTIFACTS
from services.common.store.events import STREAM as EVENTS
from services.gateway.job_store import BUCKET as JOBS
from services.common.store.nats_conn import NatsRefused
from services.common.store.nats_server import start_nats_cluster
from services.common.runtime.server import start_service
from services.common.runtime.settings import ServiceSettings
from tests.integration.conftest import SERVICES, _registrar

REPLICATED = [f"KV_{JOBS}", EVENTS, f"OBJ_{ARTIFACTS}"]


def call(fn, *args, **kwargs):
    return asyncio.to_thread(fn, *args, **kwargs)


CREDENTIALS = ("modelpress", "cluster-s3cret")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    procs, url = start_nats_cluster(tmp_path_factory.mktemp("cluster"), 3, credentials=CREDENTIALS)
    yield procs, url
    for proc in procs:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
async def cluster_gateway(cluster, tmp_path_factory):
    _, url = cluster
    home = tmp_path_factory.mktemp("cluster-home")
    running = []
    targets = {}
    for name in SERVICES:
        settings = ServiceSettings(name=name, listen="127.0.0.1:0", nats_url=url, nats_replicas=3, home=home, grace_s=1,
                                   require_nats_auth=True)
        running.append(await start_service(settings, _registrar(name)))
        targets[name] = f"127.0.0.1:{running[-1].port}"
    gateway = ServiceSettings(name="gateway", listen="127.0.0.1:0", nats_url=url, nats_replicas=3, home=home,
                              grace_s=1, targets=targets, require_nats_auth=True)
    running.append(await start_service(gateway, _registrar("gateway")))
    yield f"127.0.0.1:{running[-1].port}"
    for service in reversed(running):
        await service.stop(grace_s=1)


async def _leader_of(url: str, stream: str) -> str:
    nc = await nats_conn.connect(url, name="tests-cluster")
    try:
        info = await nats_conn.jetstream(nc).stream_info(stream)
        return info.cluster.leader
    finally:
        await nc.close()


async def _replicas(url: str) -> dict[str, int]:
    nc = await nats_conn.connect(url, name="tests-cluster")
    try:
        js = nats_conn.jetstream(nc)
        return {stream: (await js.stream_info(stream)).config.num_replicas for stream in REPLICATED}
    finally:
        await nc.close()


# 40 s of failover waits on a fast CPU, past the suite's budget on slow ones: make test-slow runs it, and
# make chaos kills the leading NATS server under 50 jobs.
@pytest.mark.slow
async def test_a_job_outlives_the_loss_of_the_nats_server_leading_its_records(cluster, cluster_gateway, model_dir,
                                                                             tmp_path):
    procs, url = cluster
    client = Client(cluster_gateway)
    before = await call(client.upload, model_dir)
    assert await _replicas(url) == {stream: 3 for stream in REPLICATED}
    for server in url.split(","):  # every server of the cluster refuses a stranger
        with pytest.raises(NatsRefused, match="Authorization Violation"):
            await asyncio.wait_for(nats_conn.connect(server.replace("modelpress:cluster-s3cret@", ""),
                                                     name="stranger"), 30)

    pipeline = [{"name": "fp16", "technique": "quantizer", "method": "fp16"},
                {"name": "int8", "technique": "quantizer", "method": "int8-weight-only"}]
    slow = common_pb2.EvaluationSpec(sequence_length=16, latency_iterations=30, quality_windows=1)
    job = await call(client.create_job, f"artifact:{before.id}", pipeline, evaluation=slow, recompute=True)
    for _ in range(300):  # the kill lands after the first stage stored its artifact
        if (await call(client.get_job, job.job_id)).stages[0].state == common_pb2.JOB_STATE_SUCCEEDED:
            break
        await asyncio.sleep(0.1)
    leader = await _leader_of(url, f"KV_{JOBS}")
    doomed = procs[int(leader.rpartition("-")[2]) - 1]
    doomed.kill()
    doomed.wait()

    events = await call(lambda: list(client.watch(job.job_id)))
    done = await call(client.get_job, job.job_id)
    assert done.state == common_pb2.JOB_STATE_SUCCEEDED, done.error
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert events[-1].job_state == common_pb2.JOB_STATE_SUCCEEDED
    assert [s.state for s in done.stages] == [common_pb2.JOB_STATE_SUCCEEDED] * 2
    # Every artifact, made before or after the loss, comes back whole (the store checks its digest).
    for artifact_id in (before.id, done.stages[0].output.id, done.output.id):
        ref = await call(client.download, tmp_path / artifact_id, artifact_id=artifact_id)
        assert ref.id == artifact_id and (tmp_path / artifact_id / "config.json").exists()
    assert job.job_id in [j.job_id for j in await call(client.list_jobs)]
    # The two servers left elected a new leader for the job records.
    assert await _leader_of(url, f"KV_{JOBS}") not in ("", leader)
