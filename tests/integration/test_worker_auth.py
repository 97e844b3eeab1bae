"""Technique services that answer the gateway alone: mutual TLS with the mesh's own CA (local_pki)
and a signed ticket on every call (mesh_tickets). A job through the gateway runs; a caller that
reaches a worker's port directly is refused before any servicer code runs, whatever it names;
Health/Watch answers on every service; a worker's NATS user cannot change the gateway's records."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nats import errors as nats_errors

from modelpress import Client
from modelpress.v1 import common_pb2, evaluator_pb2, technique_pb2
from services.cli import launcher
from services.cli.local_pki import CLIENT_ROLE, issue_mesh_tls
from services.common.runtime import mesh_tickets
from services.common.runtime.server import STAGE_CACHE_BUCKET, start_service
from services.common.runtime.settings import ServiceSettings
from services.common.store import nats_conn
from services.common.store.events import STREAM, subject
from services.common.store.nats_conn import without_secret
from services.common.store.nats_server import start_nats_server, with_credentials
from tests.integration.conftest import SERVICES, _registrar

SKIP_EVAL = common_pb2.EvaluationSpec(skip=True)
RUN = "/modelpress.v1.TechniqueService/Run"
DESCRIBE = "/modelpress.v1.TechniqueService/Describe"
EVALUATE = "/modelpress.v1.EvaluatorService/Evaluate"
RENDER_REPORT = "/modelpress.v1.EvaluatorService/RenderReport"


def call(fn, *args, **kwargs):
    return asyncio.to_thread(fn, *args, **kwargs)


@pytest.fixture(scope="module")
async def signed_mesh(nats_url, tmp_path_factory):
    """Five workers asking for mutual TLS and tickets, and a gateway holding the CA, its client
    identity and the secret. Yields (gateway target, worker ports, the PKI, the secret)."""
    folder = tmp_path_factory.mktemp("mesh-auth")
    pki = issue_mesh_tls(folder / "tls", SERVICES)
    secret_file = folder / "mesh.secret"
    secret_file.write_text(mesh_tickets.new_secret() + "\n")
    common = {"listen": "127.0.0.1:0", "nats_url": nats_url, "home": folder / "home", "grace_s": 1,
              "mesh_secret": secret_file}
    def worker(name: str) -> ServiceSettings:
        return ServiceSettings(name=name, tls_cert=pki.cert(name), tls_key=pki.key(name), tls_client_ca=pki.ca,
                               **common)

    workers = {name: await start_service(worker(name), _registrar(name)) for name in SERVICES}
    # Two quantizers behind one target, as `up --replicas quantizer=2` lists them: TLS still checks
    # each one's certificate (services/gateway/catalog.py's _tls_name).
    second = await start_service(worker("quantizer"), _registrar("quantizer"))
    targets = {name: f"127.0.0.1:{w.port}" for name, w in workers.items()}
    targets["quantizer"] = launcher.replica_target([workers["quantizer"].port, second.port])
    gateway = await start_service(ServiceSettings(
        name="gateway", targets=targets, targets_tls_ca=pki.ca, targets_tls_cert=pki.cert(CLIENT_ROLE),
        targets_tls_key=pki.key(CLIENT_ROLE), **common), _registrar("gateway"))
    yield (f"127.0.0.1:{gateway.port}", {name: w.port for name, w in workers.items()}, pki,
           mesh_tickets.read_secret(secret_file))
    await gateway.stop(grace_s=1)
    for running in [*workers.values(), second]:
        await running.stop(grace_s=1)


@pytest.fixture(scope="module")
def tiny_llama_allowed(tiny_llama_dir):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MODELPRESS_ALLOWED_ROOTS", str(tiny_llama_dir))
        yield tiny_llama_dir


@pytest.fixture(scope="module")
async def finished_job(signed_mesh, tiny_llama_allowed):
    """(a) A job through the gateway: the gateway's tickets and client certificate get it through."""
    gateway, *_ = signed_mesh
    client = Client(gateway, timeout_s=30)
    job = await call(client.create_job, f"path:{tiny_llama_allowed}", "fp16", evaluation=SKIP_EVAL, recompute=True)
    await call(lambda: list(client.watch(job.job_id)))
    return await call(client.get_job, job.job_id)


def test_a_job_through_the_gateway_runs_on_workers_that_ask_for_tickets_and_certificates(finished_job):
    assert finished_job.state == common_pb2.JOB_STATE_SUCCEEDED, finished_job.error
    assert finished_job.stages[0].worker.startswith("quantizer@")


def _channel(port: int, pki, *, client_cert: bool) -> grpc.aio.Channel:
    identity = {"private_key": pki.key(CLIENT_ROLE).read_bytes(),
                "certificate_chain": pki.cert(CLIENT_ROLE).read_bytes()} if client_cert else {}
    return grpc.aio.secure_channel(f"127.0.0.1:{port}",
                                   grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes(), **identity))


def _attacks(job: common_pb2.Job) -> dict[str, tuple[str, str, object, object]]:
    """What a caller past the gateway tried: (worker, method path, request, response class)."""
    run = technique_pb2.TechniqueServiceRunRequest(stage=common_pb2.StageRequest(
        job_id=job.job_id, stage_index=0, input=job.model, method="fp16", recompute=True))
    evaluate = evaluator_pb2.EvaluatorServiceEvaluateRequest(model=common_pb2.ModelRef(artifact_id=job.output.id))
    forged = common_pb2.Job(job_id=job.job_id, tenant="victim", state=common_pb2.JOB_STATE_SUCCEEDED)
    report = evaluator_pb2.EvaluatorServiceRenderReportRequest(job=forged)
    return {"quantizer.Run": ("quantizer", RUN, run, technique_pb2.TechniqueServiceRunResponse),
            "evaluator.Evaluate": ("evaluator", EVALUATE, evaluate, evaluator_pb2.EvaluatorServiceEvaluateResponse),
            "evaluator.RenderReport": ("evaluator", RENDER_REPORT, report,
                                       evaluator_pb2.EvaluatorServiceRenderReportResponse)}


async def _attempt(channel: grpc.aio.Channel, method: str, request, response_cls, ticket: str | None
                   ) -> grpc.aio.AioRpcError:
    metadata = ((mesh_tickets.TICKET_HEADER, ticket),) if ticket is not None else ()
    kind = channel.unary_stream if method == RUN else channel.unary_unary
    rpc = kind(method, request_serializer=type(request).SerializeToString,
               response_deserializer=response_cls.FromString)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        answer = rpc(request, metadata=metadata, timeout=10)
        if method == RUN:
            async for _ in answer:
                pass
        else:
            await answer
    return info.value


async def _last_event_seq(js, job_id: str) -> int:
    return (await js.get_last_msg(STREAM, subject(job_id))).seq


async def test_direct_calls_to_a_worker_are_refused_and_publish_nothing(signed_mesh, finished_job, js):
    """(b) Run naming another tenant's job, Evaluate of its output and RenderReport of a forged job,
    called on the workers' ports: no client certificate is a failed handshake; the gateway's own
    certificate without a good ticket is UNAUTHENTICATED naming what is wrong; nothing lands in the
    job's event stream."""
    _, ports, pki, secret = signed_mesh
    before = await _last_event_seq(js, finished_job.job_id)
    wrong_secret = mesh_tickets.new_secret().encode()
    for name, (worker, method, request, response_cls) in _attacks(finished_job).items():
        async with _channel(ports[worker], pki, client_cert=False) as anonymous:
            refused = await _attempt(anonymous, method, request, response_cls, mesh_tickets.sign(secret, method, request))
        assert refused.code() == grpc.StatusCode.UNAVAILABLE, (name, refused.code(), refused.details())

        other = technique_pb2.TechniqueServiceRunRequest(stage=common_pb2.StageRequest(job_id="someone-elses"))
        tickets = {
            "no ticket": (None, "no mesh ticket"),
            "garbage": ("v1.not-a-ticket", "malformed mesh ticket"),
            "forged": (mesh_tickets.sign(wrong_secret, method, request), "bad mesh ticket signature"),
            "another request's": (mesh_tickets.sign(secret, method, other), "bad mesh ticket signature"),
            "another method's": (mesh_tickets.sign(secret, DESCRIBE, request), "bad mesh ticket signature"),
            "expired": (mesh_tickets.sign(secret, method, request, time.time() - 2 * mesh_tickets.FRESH_FOR_S),
                        "expired mesh ticket"),
        }
        async with _channel(ports[worker], pki, client_cert=True) as channel:
            for label, (ticket, reason) in tickets.items():
                refused = await _attempt(channel, method, request, response_cls, ticket)
                assert refused.code() == grpc.StatusCode.UNAUTHENTICATED, (name, label, refused.code(),
                                                                           refused.details())
                assert reason in refused.details(), (name, label, refused.details())
    assert await _last_event_seq(js, finished_job.job_id) == before

    # The same channel with a good ticket is served: the refusals above are the tickets' doing.
    async with _channel(ports["quantizer"], pki, client_cert=True) as channel:
        request = technique_pb2.TechniqueServiceDescribeRequest()
        describe = channel.unary_unary(DESCRIBE, request_serializer=type(request).SerializeToString,
                                       response_deserializer=technique_pb2.TechniqueServiceDescribeResponse.FromString)
        answer = await describe(request, timeout=10,
                                metadata=((mesh_tickets.TICKET_HEADER, mesh_tickets.sign(secret, DESCRIBE, request)),))
        assert answer.description.technique == common_pb2.TECHNIQUE_QUANTIZER


async def _watched_status(channel: grpc.aio.Channel) -> int:
    stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=10)
    first = await stream.read()
    stream.cancel()
    return first.status


async def test_health_watch_answers_serving_on_workers_and_the_gateway_without_a_ticket(signed_mesh):
    """(c) Health stays public: Watch (a coroutine writing with context.write inside the
    interceptors' wrappers) answers SERVING; Check does too, with no ticket."""
    gateway, ports, pki, _ = signed_mesh
    for name in ("quantizer", "evaluator"):
        async with _channel(ports[name], pki, client_cert=True) as channel:
            assert await _watched_status(channel) == health_pb2.HealthCheckResponse.SERVING, name
            check = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert check.status == health_pb2.HealthCheckResponse.SERVING
    async with grpc.aio.insecure_channel(gateway) as channel:
        assert await _watched_status(channel) == health_pb2.HealthCheckResponse.SERVING


async def test_a_workers_nats_user_reads_but_cannot_change_the_gateways_buckets(tmp_path):
    """Under `up --auth` the workers connect as their own NATS user: their own bucket takes puts,
    the gateway's job records, leases and grants take none (and are not deleted), reads still work."""
    worker = launcher.worker_nats_user(tmp_path)
    proc, url = start_nats_server(tmp_path / "nats", credentials=("modelpress", "g" * 32), more_users=[worker])
    gateway_nc = worker_nc = None
    try:
        gateway_nc = await nats_conn.connect(url, name="gateway")
        gateway_js = gateway_nc.jetstream(timeout=5)
        for bucket in launcher.GATEWAY_BUCKETS:
            await (await gateway_js.create_key_value(bucket=bucket)).put("record", b"the gateway's")
        await gateway_js.create_key_value(bucket=STAGE_CACHE_BUCKET)
        worker_nc = await nats_conn.connect(with_credentials(without_secret(url), (worker.name, worker.password)),
                                            name="worker")
        # Raw JetStream with a short timeout: a refused publish is never acknowledged.
        worker_js = worker_nc.jetstream(timeout=0.5)
        await (await worker_js.key_value(STAGE_CACHE_BUCKET)).put("stage", b"a worker's output")

        async def refused(attempt) -> bool:
            try:
                await attempt
            except (nats_errors.TimeoutError, nats_errors.NoRespondersError):
                return True
            return False

        buckets = [await worker_js.key_value(bucket) for bucket in launcher.GATEWAY_BUCKETS]
        attempts = [kv.put("record", b"rewritten by a worker") for kv in buckets]
        attempts += [worker_js.delete_key_value("modelpress_grants"), worker_js.purge_stream("KV_modelpress_jobs")]
        assert all(await asyncio.gather(*(refused(a) for a in attempts)))
        for bucket in launcher.GATEWAY_BUCKETS:
            assert (await (await gateway_js.key_value(bucket)).get("record")).value == b"the gateway's", bucket
    finally:
        for nc in (worker_nc, gateway_nc):
            if nc is not None:
                await nc.close()
        proc.kill()
        proc.wait()
