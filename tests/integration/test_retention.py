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
from services.common.server import start_service
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
