"""Limits that hold and listings that stay private, on gateways checking API tokens over the real
in-process mesh: a burst of parallel jobs never passes a tenant's quota (on one gateway or two
sharing the KV), RecommendStrategy's measuring jobs pass the same door, free text is bounded,
listings come in pages, one tenant cannot hold the evaluator, and no tenant sees another's job ids
or private artifacts through strategies, recommendations, benchmarks or lineage."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import grpc
import pytest

from modelpress import Client
from modelpress.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from services.common.runtime import auth
from services.common.runtime.server import start_service
from services.gateway import pages
from services.gateway.jobs import JobRunner
from tests.integration.conftest import _registrar

SKIP_EVAL = common_pb2.EvaluationSpec(skip=True)
# A real measurement, as small as the tiny model allows (seconds).
QUICK = common_pb2.EvaluationSpec(sequence_length=24, latency_iterations=2, quality_windows=1, decode_tokens=2)
NAMES = ("acme", "globex", "ops")


def call(fn, *args, **kwargs):
    return asyncio.to_thread(fn, *args, **kwargs)


async def _error(fn) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        await call(fn)
    return info.value


@pytest.fixture
def tokens(tmp_path_factory):
    """Tenants of this test alone (the session's NATS keeps every earlier test's jobs and outcomes)."""
    path = tmp_path_factory.mktemp("limits-auth") / "tokens.json"
    suffix = uuid.uuid4().hex[:6]
    roles = {"acme": "user", "globex": "user", "ops": "operator"}
    return path, {name: auth.add_token(path, name=name, tenant=f"{name}-{suffix}", role=roles[name])
                  for name in NAMES}


@contextlib.asynccontextmanager
async def gateways(workers, tokens, count: int = 1, **limits):
    """`count` gateways on one mesh and KV, checking `tokens`, with `limits` set; yields their targets."""
    settings = workers.model_copy(update={"auth_tokens": tokens[0], **limits})
    running = [await start_service(settings, _registrar("gateway")) for _ in range(count)]
    try:
        yield [f"127.0.0.1:{service.port}" for service in running]
    finally:
        for service in running:
            await service.stop(grace_s=1)


def clients(target: str, tokens) -> tuple[Client, Client, Client]:
    return tuple(Client(target, token=tokens[1][name]) for name in NAMES)


@pytest.fixture
def jobs_never_start(monkeypatch):
    """Admitted jobs stay PENDING (their runner never starts them), so none ends during a test of
    how many are admitted; the test cancels them."""
    monkeypatch.setattr(JobRunner, "start", lambda self, job_id: None)


async def _cancel_all(client: Client) -> None:
    for job in await call(client.list_jobs):
        if job.state not in (common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED,
                             common_pb2.JOB_STATE_CANCELLED):
            await call(client.cancel_job, job.job_id)


def aio_stub(target: str) -> gateway_pb2_grpc.GatewayServiceStub:
    """A stub on the event loop: parallel calls without a thread each (the in-process gateways
    share this process's default thread pool)."""
    return gateway_pb2_grpc.GatewayServiceStub(grpc.aio.insecure_channel(target))


def bearer(tokens, name: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {tokens[1][name]}")]


async def test_twelve_parallel_jobs_at_a_quota_of_five_on_two_gateways_admit_five_and_recommend_waits_too(
        workers, tokens, model_dir, jobs_never_start):
    async with gateways(workers, tokens, count=2, max_jobs_per_tenant=5) as targets:
        acmes = [clients(target, tokens)[0] for target in targets]
        stubs = [aio_stub(target) for target in targets]
        request = gateway_pb2.CreateJobRequest(model=common_pb2.ModelRef(path=str(model_dir)), recipe="fp16",
                                               evaluation=SKIP_EVAL)
        answers = await asyncio.gather(*(stubs[i % 2].CreateJob(request, metadata=bearer(tokens, "acme"), timeout=60)
                                         for i in range(12)), return_exceptions=True)
        try:
            accepted = [a.job for a in answers if isinstance(a, gateway_pb2.CreateJobResponse)]
            refused = [a for a in answers if not isinstance(a, gateway_pb2.CreateJobResponse)]
            assert len(accepted) == 5, answers
            assert {e.code() for e in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
            assert all("max_jobs_per_tenant 5" in e.details() for e in refused)
            assert sorted(j.job_id for j in await call(acmes[1].list_jobs)) == sorted(j.job_id for j in accepted)

            # RecommendStrategy's measuring jobs pass the same door: refused, not run past the quota.
            recommend = gateway_pb2.RecommendStrategyRequest(model=common_pb2.ModelRef(path=str(model_dir)),
                                                             candidate_recipes=["int8-weight-only"], evaluation=QUICK)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stubs[0].RecommendStrategy(recommend, metadata=bearer(tokens, "acme"), timeout=30)
            error = info.value
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_jobs_per_tenant 5" in error.details()
            assert len(await call(acmes[0].list_jobs)) == 5

            # A cancelled job's place comes back.
            await call(acmes[0].cancel_job, accepted[0].job_id)
            assert await call(acmes[1].create_job, f"path:{model_dir}", "fp16", evaluation=SKIP_EVAL)
        finally:
            await _cancel_all(acmes[0])


async def test_free_text_past_its_bound_is_invalid_argument_naming_the_field(workers, tokens, model_dir):
    async with gateways(workers, tokens) as (target,):
        acme, _, _ = clients(target, tokens)
        error = await _error(lambda: acme.create_job(f"path:{model_dir}", "fp16", evaluation=SKIP_EVAL,
                                                     name="n" * 1_000_000))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details() == "name: at most 256 characters, got 1000000"
        error = await _error(lambda: acme.create_recipe({"name": "mine", "summary": "s" * 900_000, "stages": [
            {"name": "q", "technique": "quantizer", "method": "rtn"}]}))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details() == "pipeline.summary: at most 2048 characters, got 900000"
        assert not await call(acme.list_jobs)


async def test_list_jobs_comes_in_pages_within_the_byte_bound(workers, tokens, model_dir, jobs_never_start,
                                                               monkeypatch):
    async with gateways(workers, tokens) as (target,):
        acme, globex, _ = clients(target, tokens)
        made = [await call(acme.create_job, f"path:{model_dir}", "fp16", evaluation=SKIP_EVAL, name=f"{i}" * 256)
                for i in range(5)]
        try:
            stub = gateway_pb2_grpc.GatewayServiceStub(grpc.insecure_channel(target))
            metadata = [("authorization", f"Bearer {tokens[1]['acme']}")]

            def pages_of(page_size: int) -> list[gateway_pb2.ListJobsResponse]:
                answers, token = [], ""
                while True:
                    answers.append(stub.ListJobs(gateway_pb2.ListJobsRequest(page_size=page_size, page_token=token),
                                                 metadata=metadata, timeout=30))
                    token = answers[-1].next_page_token
                    if not token:
                        return answers

            newest_first = [j.job_id for j in reversed(made)]
            by_size = await call(pages_of, 2)
            assert [len(p.jobs) for p in by_size] == [2, 2, 1]
            assert [j.job_id for p in by_size for j in p.jobs] == newest_first
            # The byte bound: two of these jobs fit in it, three do not.
            monkeypatch.setattr(pages, "PAGE_BYTES", 2 * made[0].ByteSize() + 200)
            by_bytes = await call(pages_of, 0)
            assert [len(p.jobs) for p in by_bytes] == [2, 2, 1]
            assert all(p.ByteSize() <= pages.PAGE_BYTES + 100 for p in by_bytes)
            assert [j.job_id for p in by_bytes for j in p.jobs] == newest_first
            # The client follows the pages; another tenant's listing has none of them.
            assert [j.job_id for j in await call(acme.list_jobs)] == newest_first
            assert not await call(globex.list_jobs)
            error = await _error(lambda: stub.ListJobs(gateway_pb2.ListJobsRequest(page_token="forged"),
                                                       metadata=metadata, timeout=30))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith("page_token:")
        finally:
            await _cancel_all(acme)


async def test_one_tenant_past_its_measurements_is_resource_exhausted_while_another_measures(workers, tokens,
                                                                                              model_dir):
    async with gateways(workers, tokens, max_measurements_per_tenant=1) as (target,):
        stub = aio_stub(target)
        spec = common_pb2.EvaluationSpec(sequence_length=16, latency_iterations=2, quality_windows=1, decode_tokens=2)
        request = gateway_pb2.EvaluateRequest(model=common_pb2.ModelRef(path=str(model_dir)), spec=spec)
        answers = await asyncio.gather(*(stub.Evaluate(request, metadata=bearer(tokens, name), timeout=300)
                                         for name in ("acme", "acme", "globex")), return_exceptions=True)
        acme_answers, globex_answer = answers[:2], answers[2]
        refused = [a for a in acme_answers if isinstance(a, grpc.aio.AioRpcError)]
        assert len(refused) == 1, answers
        assert refused[0].code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_measurements_per_tenant 1" in refused[0].details()
        assert isinstance(globex_answer, gateway_pb2.EvaluateResponse), globex_answer


async def test_no_tenant_sees_another_tenants_jobs_or_private_artifacts(workers, tokens, tiny_llama_dir, model_dir):
    async with gateways(workers, tokens) as (target,):
        acme, globex, ops = clients(target, tokens)

        async def run(client: Client, model: str, recipe: str, **options) -> common_pb2.Job:
            job = await call(client.create_job, model, recipe, **options)
            await call(lambda: list(client.watch(job.job_id)))
            job = await call(client.get_job, job.job_id)
            assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
            return job

        # acme's measured job (a stored outcome), and a job on its private upload whose output
        # globex's job on the same bytes (its own upload) reuses.
        measured = await run(acme, f"path:{model_dir}", "fp16", evaluation=QUICK, recompute=True)
        private = await call(acme.upload, tiny_llama_dir)
        made = await run(acme, f"artifact:{private.id}", "bf16", evaluation=SKIP_EVAL, recompute=True)
        theirs = await run(globex, f"artifact:{(await call(globex.upload, tiny_llama_dir)).id}", "bf16",
                           evaluation=SKIP_EVAL)
        assert theirs.stages[0].reused and theirs.output.id == made.output.id
        await call(acme.run_benchmark, f"artifact:{private.id}", batch_sizes=[1], sequence_lengths=[8], iterations=2)
        secrets = (measured.job_id, made.job_id, private.id)

        def strategies_text(client: Client) -> str:
            return " ".join(s.evidence for s in client.list_strategies())

        assert measured.job_id in await call(strategies_text, acme)
        assert measured.job_id not in await call(strategies_text, globex)

        recommend = {"candidate_recipes": ["fp16"], "stored_only": True,
                     "evaluation": common_pb2.EvaluationSpec(sequence_length=QUICK.sequence_length)}
        try:
            answer = str(await call(globex.recommend, f"path:{model_dir}", **recommend))
        except grpc.RpcError as exc:  # nothing of its own stored: FAILED_PRECONDITION
            assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc.details()
            answer = exc.details()
        assert measured.job_id not in answer
        operator_view = await call(ops.recommend, f"path:{model_dir}", **recommend)
        assert measured.job_id in [r.job_id for r in operator_view.recommendations]

        rows = f"artifact:{private.id}"
        assert await call(acme.list_benchmarks, model=rows) and await call(ops.list_benchmarks, model=rows)
        assert not await call(globex.list_benchmarks, model=rows)

        def lineage(client: Client) -> gateway_pb2.GetLineageResponse:
            return client.lineage(made.output.id)

        for client in (acme, ops):
            seen = await call(lineage, client)
            assert [(s.job_id, s.input) for s in seen.stages] == [(made.job_id, f"artifact:{private.id}")]
        shared = await call(lineage, globex)
        assert shared.artifact.artifact.id == made.output.id and [s.method for s in shared.stages] == ["bf16"]
        listed = await call(globex.list_artifacts)
        assert made.output.id in [a.artifact.id for a in listed]
        for secret in secrets:
            assert secret not in str(shared) and secret not in str(listed)
