"""Retention through a gateway with short TTLs, on this module's own nats-server (its sweeps must
not reach other modules' jobs): finished jobs and unused uploads go when their TTL passes, tagged
ones stay, every service drops its cached copy of what was deleted, and a full store refuses new
uploads and jobs with RESOURCE_EXHAUSTED."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from modelpress import Client
from modelpress.v1 import common_pb2
from services.common.store import nats_conn
from services.common.store.artifact_store import ArtifactNotFound, ArtifactStore
from services.common.runtime.server import start_service
from services.common.store.stage_checkpoints import CHECKPOINT, checkpoint_id
from tests.conftest import served_nats
from tests.integration.conftest import _registrar

NO_EVAL = common_pb2.EvaluationSpec(skip=True)
TTL_S = 3.0


def call(fn, *args, **kwargs):
    return asyncio.to_thread(fn, *args, **kwargs)


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory):
    yield from served_nats(tmp_path_factory, "nats-retention")


@pytest.fixture(scope="module")
async def retaining_gateway(workers):
    settings = workers.model_copy(update={"job_ttl_s": TTL_S, "artifact_ttl_s": TTL_S, "retention_sweep_s": 0.5})
    service = await start_service(settings, _registrar("gateway"))
    yield Client(f"127.0.0.1:{service.port}")
    await service.stop(grace_s=1)


async def _gone(fn) -> bool:
    try:
        await call(fn)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND, exc.details()
        return True
    return False


async def test_ttls_delete_what_is_untagged_and_every_cached_copy(retaining_gateway, workers, tiny_llama_dir):
    client = retaining_gateway
    plain, pinned = await asyncio.gather(call(client.upload, tiny_llama_dir, name="plain"),
                                         call(client.upload, tiny_llama_dir, name="pinned"))
    jobs = [await call(client.create_job, f"artifact:{ref.id}", "fp16", evaluation=NO_EVAL, recompute=True)
            for ref in (plain, pinned)]
    for job in jobs:
        await call(lambda: list(client.watch(job.job_id)))
    done = [await call(client.get_job, job.job_id) for job in jobs]
    assert all(job.state == common_pb2.JOB_STATE_SUCCEEDED for job in done), [job.error for job in done]
    await call(client.tag, done[1].output.id, "kept-result")
    cached = workers.cache_dir / "artifacts" / plain.id
    assert cached.exists()  # the quantizer fetched the upload to run its stage

    for _ in range(int(6 * TTL_S / 0.5)):
        if await _gone(lambda: client.get_job(jobs[0].job_id)) and await _gone(lambda: client.lineage(plain.id)):
            break
        await asyncio.sleep(0.5)
    assert await _gone(lambda: client.get_job(jobs[0].job_id))
    assert await _gone(lambda: client.lineage(done[0].output.id))
    assert await _gone(lambda: client.lineage(plain.id))  # its job gone, the upload outlived its TTL
    assert not cached.exists()
    # The tagged result keeps its job, and the job its input.
    assert (await call(client.get_job, jobs[1].job_id)).state == common_pb2.JOB_STATE_SUCCEEDED
    assert (await call(client.lineage, pinned.id)).artifact.artifact.id == pinned.id


async def test_a_checkpoint_is_kept_while_its_job_runs_and_no_longer(retaining_gateway, workers, model_dir, tmp_path):
    """A worker's last checkpoint save can land after its job was cancelled (and its checkpoints
    deleted): the sweep removes checkpoints of jobs that ended or are gone, never of a running one."""
    client = retaining_gateway
    training = {"max_steps": 0, "max_minutes": 10.0, "calibration_samples": 24, "calibration_sequence_length": 32,
                "batch_size": 4, "validate_every": 1000, "warmup_steps": 1}
    job = await call(client.create_job, f"path:{model_dir}", "distill-response", overrides=training,
                     evaluation=NO_EVAL, recompute=True)
    while (await call(client.get_job, job.job_id)).state != common_pb2.JOB_STATE_RUNNING:
        await asyncio.sleep(0.2)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "walk.pt").write_bytes(b"saved")
    nc = await nats_conn.connect(workers.nats_url, name="tests-retention")
    try:
        store = ArtifactStore(nats_conn.jetstream(nc))
        await store.ensure()
        running, orphan = checkpoint_id(job.job_id, 0, "f" * 16), checkpoint_id("j-" + "0" * 16, 0, "e" * 16)
        for artifact_id in (running, orphan):
            await store.replace_dir(tmp_path / "ckpt", fmt=CHECKPOINT, artifact_id=artifact_id)
        await asyncio.sleep(4 * 0.5)  # four sweeps
        assert await _gone_from(store, orphan) and not await _gone_from(store, running)

        await call(client.cancel_job, job.job_id)
        await call(lambda: list(client.watch(job.job_id)))
        await store.replace_dir(tmp_path / "ckpt", fmt=CHECKPOINT, artifact_id=running)  # a late save
        for _ in range(20):
            if await _gone_from(store, running):
                break
            await asyncio.sleep(0.5)
        assert await _gone_from(store, running)
    finally:
        await nc.close()


async def _gone_from(store: ArtifactStore, artifact_id: str) -> bool:
    try:
        await store.stat(artifact_id)
    except ArtifactNotFound:
        return True
    return False


async def test_a_full_store_refuses_uploads_and_jobs(workers, tiny_llama_dir, model_dir):
    # Last in the module: this gateway sets the store's bound for everyone on this nats-server.
    settings = workers.model_copy(update={"store_max_bytes": 1})
    service = await start_service(settings, _registrar("gateway"))
    try:
        client = Client(f"127.0.0.1:{service.port}")
        for attempt in (lambda: client.upload(tiny_llama_dir),
                        lambda: client.create_job(f"path:{model_dir}", "fp16", evaluation=NO_EVAL)):
            with pytest.raises(grpc.RpcError) as info:
                await call(attempt)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "store_max_bytes" in info.value.details()
    finally:
        await service.stop(grace_s=1)
