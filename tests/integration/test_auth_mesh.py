"""A gateway that checks API tokens: no token or an unknown one is UNAUTHENTICATED on every RPC,
another tenant's job or artifact is PERMISSION_DENIED on every RPC that touches it, an operator
sees every tenant; TLS at the gateway; NATS that asks for credentials."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess

import grpc
import pytest
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modelpress import Client
from modelpress.v1 import common_pb2, gateway_pb2
from services.common.runtime import auth
from services.common.store import nats_conn
from services.common.store.nats_conn import NatsRefused
from services.common.store.nats_server import start_nats_server
from services.common.runtime.server import InsecureNats, open_runtime, start_service
from services.common.runtime.settings import ServiceSettings
from tests.integration.conftest import SERVICES, _registrar

SKIP_EVAL = common_pb2.EvaluationSpec(skip=True)
GATEWAY = gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"]


def call(fn, *args, **kwargs):
    return asyncio.to_thread(fn, *args, **kwargs)


async def _code(fn) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        await call(fn)
    return info.value.code()


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    path = tmp_path_factory.mktemp("auth") / "tokens.json"
    return path, {name: auth.add_token(path, name=name, tenant=tenant, role=role)
                  for name, tenant, role in [("acme", "acme", "user"), ("globex", "globex", "user"),
                                             ("ops", "ops", "operator")]}


@pytest.fixture(scope="module")
async def secured(workers, tokens):
    service = await start_service(workers.model_copy(update={"auth_tokens": tokens[0]}), _registrar("gateway"))
    yield f"127.0.0.1:{service.port}", tokens[1]
    await service.stop(grace_s=1)


def _raw_call(channel: grpc.Channel, method, metadata=()):
    """Calls `method` of the gateway with an empty request, whatever its streaming shape."""
    path = f"/{GATEWAY.full_name}/{method.name}"
    request_cls = GetMessageClass(method.input_type)
    response_cls = GetMessageClass(method.output_type)
    kind = ("stream" if method.client_streaming else "unary") + "_" + ("stream" if method.server_streaming else "unary")
    stub = getattr(channel, kind)(path, request_serializer=request_cls.SerializeToString,
                                  response_deserializer=response_cls.FromString)
    request = iter([request_cls()]) if method.client_streaming else request_cls()
    answer = stub(request, metadata=metadata, timeout=20)
    return list(answer) if method.server_streaming else answer


@pytest.mark.parametrize("metadata", [(), (("authorization", "Bearer mp_not-a-token"),),
                                      (("authorization", "Basic dXNlcjpwYXNz"),)], ids=["none", "unknown", "basic"])
async def test_every_rpc_without_a_known_token_is_unauthenticated(secured, metadata):
    target, _ = secured
    with grpc.insecure_channel(target) as channel:
        for method in GATEWAY.methods:
            code = await _code(lambda: _raw_call(channel, method, metadata))
            assert code == grpc.StatusCode.UNAUTHENTICATED, (method.name, code)
        # Probes and balancers still see the gateway's health without a token.
        health = await call(health_pb2_grpc.HealthStub(channel).Check, health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_tenant_cannot_touch_another_tenants_jobs_and_artifacts(secured, tiny_llama_dir, tmp_path):
    target, keys = secured
    acme, globex, ops = (Client(target, token=keys[name]) for name in ("acme", "globex", "ops"))
    upload = await call(acme.upload, tiny_llama_dir)
    job = await call(acme.create_job, f"artifact:{upload.id}", "fp16", evaluation=SKIP_EVAL)
    assert job.tenant == "acme"
    await call(lambda: list(acme.watch(job.job_id)))
    job = await call(acme.get_job, job.job_id)
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    output = job.output.id

    denied = {
        "GetJob": lambda: globex.get_job(job.job_id),
        "GetResult": lambda: globex.get_result(job.job_id),
        "CancelJob": lambda: globex.cancel_job(job.job_id),
        "DeleteJob": lambda: globex.delete_job(job.job_id),
        "WatchJob": lambda: list(globex.watch(job.job_id)),
        "DownloadArtifact(job)": lambda: globex.download(tmp_path / "a", job_id=job.job_id),
        "DownloadArtifact(output)": lambda: globex.download(tmp_path / "b", artifact_id=output),
        "DownloadArtifact(upload)": lambda: globex.download(tmp_path / "c", artifact_id=upload.id),
        "GetLineage": lambda: globex.lineage(output),
        "TagArtifact": lambda: globex.tag(output, "stolen"),
        "DeleteArtifact": lambda: globex.delete_artifact(upload.id),
        "CreateJob": lambda: globex.create_job(f"artifact:{upload.id}", "fp16", evaluation=SKIP_EVAL),
        "OptimizeModel": lambda: globex.optimize(f"artifact:{upload.id}", "onnxruntime", evaluation=SKIP_EVAL),
        "Evaluate": lambda: globex.evaluate(f"artifact:{output}"),
        "ListJobs(tenant)": lambda: globex.list_jobs(tenant="acme"),
    }
    for name, fn in denied.items():
        code = await _code(fn)
        assert code == grpc.StatusCode.PERMISSION_DENIED, (name, code)

    assert job.job_id not in {j.job_id for j in await call(globex.list_jobs)}
    assert not {upload.id, output} & {a.artifact.id for a in await call(globex.list_artifacts)}
    assert job.job_id in {j.job_id for j in await call(acme.list_jobs)}
    assert {upload.id, output} <= {a.artifact.id for a in await call(acme.list_artifacts)}
    # The operator sees every tenant, or one.
    assert job.job_id in {j.job_id for j in await call(ops.list_jobs)}
    assert job.job_id in {j.job_id for j in await call(ops.list_jobs, tenant="acme")}
    assert not await call(ops.list_jobs, tenant="globex")
    assert (await call(ops.lineage, output)).artifact.artifact.id == output

    # The job lists the upload as its input: deleting the upload waits for the job.
    assert await _code(lambda: acme.delete_artifact(upload.id)) == grpc.StatusCode.FAILED_PRECONDITION
    assert await call(acme.delete_job, job.job_id) >= 1
    assert await call(acme.delete_artifact, upload.id) is True
    assert await _code(lambda: acme.lineage(upload.id)) == grpc.StatusCode.NOT_FOUND


async def test_a_second_holder_keeps_the_bytes_until_it_lets_go(secured, tiny_llama_dir):
    target, keys = secured
    acme, ops = Client(target, token=keys["acme"]), Client(target, token=keys["ops"])
    upload = await call(acme.upload, tiny_llama_dir)
    # The operator uploads nothing, but holds everything: its delete drops every hold.
    assert await call(ops.delete_artifact, upload.id) is True
    assert await _code(lambda: acme.lineage(upload.id)) == grpc.StatusCode.NOT_FOUND


def _self_signed(folder):
    key, cert = folder / "gateway.key", folder / "gateway.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return key, cert


async def test_each_tenant_has_its_own_recipe_names(secured, model_dir):
    target, keys = secured
    acme, globex = (Client(target, token=keys[name]) for name in ("acme", "globex"))
    pipeline = {"name": "house-int8", "stages": [{"name": "q", "technique": "quantizer", "method": "rtn"}]}
    mine = await call(acme.create_recipe, pipeline)
    theirs = await call(globex.create_recipe, pipeline)
    assert (mine.version, theirs.version) == (1, 1)  # the same name, one namespace each
    await call(acme.create_recipe, pipeline)  # acme's version 2: never globex's to see
    assert [r.version for r in await call(globex.list_recipes) if r.name == "house-int8"] == [1]
    assert await _code(lambda: globex.get_recipe("house-int8@2")) == grpc.StatusCode.NOT_FOUND
    assert await call(globex.delete_recipe, "house-int8") == 1  # its own, not acme's
    assert (await call(acme.get_recipe, "house-int8")).version == 2
    assert await _code(lambda: globex.create_job(f"path:{model_dir}", "house-int8", evaluation=SKIP_EVAL)) \
        == grpc.StatusCode.INVALID_ARGUMENT
    assert await call(acme.delete_recipe, "house-int8") == 2


async def test_each_tenant_has_its_own_tags_on_a_shared_output(secured, tiny_llama_dir):
    target, keys = secured
    acme, globex, ops = (Client(target, token=keys[name]) for name in ("acme", "globex", "ops"))
    outputs = []
    for client in (acme, globex):
        upload = await call(client.upload, tiny_llama_dir)
        job = await call(client.create_job, f"artifact:{upload.id}", "fp16", evaluation=SKIP_EVAL)
        await call(lambda: list(client.watch(job.job_id)))
        outputs.append((await call(client.get_job, job.job_id)).output.id)
    assert outputs[0] == outputs[1]  # the same stage on the same bytes: one output, held by both
    shared = outputs[0]

    assert (await call(acme.tag, shared, "prod")).tag == "prod:1"
    assert (await call(acme.tag, shared, "stable")).tag == "stable:1"
    tagged = await call(globex.tag, shared, "prod")
    assert tagged.tag == "prod:1"  # its own name and versions, not acme's prod:2
    assert list(tagged.artifact.tags) == ["prod:1"]  # acme's tags are not shown to it
    assert not await call(globex.list_artifacts, tag="stable")
    assert [list(a.tags) for a in await call(acme.list_artifacts, tag="prod")] == [["prod:1", "stable:1"]]
    assert sorted((await call(ops.lineage, shared)).artifact.tags) == ["acme/prod:1", "acme/stable:1", "globex/prod:1"]


async def test_a_tls_gateway_answers_clients_that_trust_its_ca_only(workers, tokens, tmp_path):
    key, cert = _self_signed(tmp_path)
    settings = workers.model_copy(update={"auth_tokens": tokens[0], "tls_cert": cert, "tls_key": key})
    service = await start_service(settings, _registrar("gateway"))
    target = f"localhost:{service.port}"
    try:
        secure = Client(target, token=tokens[1]["acme"], tls_ca=cert, timeout_s=10)
        assert await call(secure.list_jobs) is not None
        plain = Client(target, token=tokens[1]["acme"], timeout_s=5)
        assert await _code(plain.list_jobs) == grpc.StatusCode.UNAVAILABLE
        (tmp_path / "other").mkdir()
        untrusted = Client(target, token=tokens[1]["acme"], tls_ca=_self_signed(tmp_path / "other")[1], timeout_s=5)
        assert await _code(untrusted.list_jobs) == grpc.StatusCode.UNAVAILABLE
    finally:
        await service.stop(grace_s=1)


async def test_the_gateway_reaches_tls_workers_that_answer_its_certificate_alone(nats_url, model_dir, tmp_path):
    for side in ("worker", "gateway", "stranger"):
        (tmp_path / side).mkdir()
    (worker_key, worker_cert), (gateway_key, gateway_cert) = _self_signed(tmp_path / "worker"), \
        _self_signed(tmp_path / "gateway")
    common = {"listen": "127.0.0.1:0", "nats_url": nats_url, "home": tmp_path / "home", "grace_s": 1}
    workers = {name: await start_service(ServiceSettings(name=name, tls_cert=worker_cert, tls_key=worker_key,
                                                         tls_client_ca=gateway_cert, **common), _registrar(name))
               for name in SERVICES}
    worker = workers["quantizer"]
    gateway = await start_service(ServiceSettings(
        name="gateway", targets={name: f"127.0.0.1:{w.port}" for name, w in workers.items()}, tls_cert=gateway_cert,
        tls_key=gateway_key, targets_tls_ca=worker_cert, **common), _registrar("gateway"))
    try:
        client = Client(f"localhost:{gateway.port}", tls_ca=gateway_cert, timeout_s=30)
        job = await call(client.create_job, f"path:{model_dir}", "fp16", evaluation=SKIP_EVAL, recompute=True)
        await call(lambda: list(client.watch(job.job_id)))
        job = await call(client.get_job, job.job_id)
        assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error

        # The worker answers no one else: not in plaintext, not over TLS without the gateway's certificate.
        stranger_key, stranger_cert = _self_signed(tmp_path / "stranger")
        attempts = {
            "plaintext": grpc.insecure_channel(f"127.0.0.1:{worker.port}"),
            "no client certificate": grpc.secure_channel(
                f"127.0.0.1:{worker.port}", grpc.ssl_channel_credentials(root_certificates=worker_cert.read_bytes())),
            "another certificate": grpc.secure_channel(f"127.0.0.1:{worker.port}", grpc.ssl_channel_credentials(
                root_certificates=worker_cert.read_bytes(), private_key=stranger_key.read_bytes(),
                certificate_chain=stranger_cert.read_bytes())),
        }
        for name, channel in attempts.items():
            with channel:
                probe = health_pb2_grpc.HealthStub(channel).Check
                code = await _code(lambda: probe(health_pb2.HealthCheckRequest(), timeout=5))
            assert code == grpc.StatusCode.UNAVAILABLE, (name, code)
    finally:
        await gateway.stop(grace_s=1)
        for running in workers.values():
            await running.stop(grace_s=1)


def test_tls_settings_come_in_pairs(tmp_path):
    with pytest.raises(ValueError, match="tls_cert and tls_key"):
        ServiceSettings(name="gateway", listen="127.0.0.1:0", tls_cert=tmp_path / "c.pem")
    with pytest.raises(ValueError, match="tls_client_ca needs"):
        ServiceSettings(name="gateway", listen="127.0.0.1:0", tls_client_ca=tmp_path / "ca.pem")


@pytest.mark.timeout(120)
async def test_services_refuse_an_open_nats_when_auth_is_required_and_nats_refuses_strangers(nats_url, tmp_path):
    open_settings = ServiceSettings(name="quantizer", listen="127.0.0.1:0", nats_url=nats_url, home=tmp_path,
                                    require_nats_auth=True)
    with pytest.raises(InsecureNats, match="without credentials"):
        await open_runtime(open_settings)

    proc, url = start_nats_server(tmp_path / "nats", credentials=("modelpress", "s3cret/+@"))
    try:
        assert "s3cret" in url
        runtime = await open_runtime(open_settings.model_copy(update={"nats_url": url}))
        await runtime.nc.drain()
        # A stranger, and a wrong password, are refused at once (not retried forever).
        for stranger in (url.replace("modelpress:s3cret%2F%2B%40@", ""), url.replace("s3cret", "guess")):
            with pytest.raises(NatsRefused, match="Authorization Violation"):
                await asyncio.wait_for(nats_conn.connect(stranger, name="stranger"), 30)
    finally:
        proc.kill()
        proc.wait()


@contextlib.asynccontextmanager
async def _limited_gateway(workers, tokens, **limits):
    """A gateway checking `tokens` with `limits` set; yields the acme and globex clients of it."""
    service = await start_service(workers.model_copy(update={"auth_tokens": tokens[0], **limits}),
                                  _registrar("gateway"))
    target = f"127.0.0.1:{service.port}"
    try:
        yield Client(target, token=tokens[1]["acme"]), Client(target, token=tokens[1]["globex"])
    finally:
        await service.stop(grace_s=1)


async def test_a_tenant_at_its_job_limit_is_resource_exhausted_and_others_are_not(workers, tokens, model_dir):
    # Still running when the second arrives: its evaluation's probe takes seconds to start.
    slow = common_pb2.EvaluationSpec(sequence_length=16, latency_iterations=30, quality_windows=1)
    async with _limited_gateway(workers, tokens, max_jobs_per_tenant=1) as (acme, globex):
        first = await call(acme.create_job, f"path:{model_dir}", "int8-weight-only", evaluation=slow)
        with pytest.raises(grpc.RpcError) as info:
            await call(acme.create_job, f"path:{model_dir}", "fp16", evaluation=SKIP_EVAL)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_jobs_per_tenant 1" in info.value.details()
        other = await call(globex.create_job, f"path:{model_dir}", "fp16", evaluation=SKIP_EVAL)
        for client, job in ((acme, first), (globex, other)):
            try:
                await call(client.cancel_job, job.job_id)
            except grpc.RpcError as exc:  # it may have ended already
                assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_tenant_past_its_running_slots_queues_and_a_queued_job_can_be_cancelled(workers, tokens, model_dir):
    slow = common_pb2.EvaluationSpec(sequence_length=16, latency_iterations=30, quality_windows=1)
    async with _limited_gateway(workers, tokens, max_running_jobs_per_tenant=1) as (acme, globex):
        first = await call(acme.create_job, f"path:{model_dir}", "int8-weight-only", evaluation=slow)
        while (await call(acme.get_job, first.job_id)).state == common_pb2.JOB_STATE_PENDING:
            await asyncio.sleep(0.05)  # it holds acme's one slot from here
        queued = await call(acme.create_job, f"path:{model_dir}", "fp16", evaluation=SKIP_EVAL)
        doomed = await call(acme.create_job, f"path:{model_dir}", "fp16", evaluation=SKIP_EVAL)
        other = await call(globex.create_job, f"path:{model_dir}", "fp16", evaluation=SKIP_EVAL)
        assert (await call(acme.cancel_job, doomed.job_id)).state == common_pb2.JOB_STATE_CANCELLED
        # Another tenant's job is not held back by acme's slot.
        await call(lambda: list(globex.watch(other.job_id)))
        assert (await call(globex.get_job, other.job_id)).state == common_pb2.JOB_STATE_SUCCEEDED
        events = await call(lambda: list(acme.watch(queued.job_id)))
        first, queued = [await call(acme.get_job, job.job_id) for job in (first, queued)]
        assert first.state == queued.state == common_pb2.JOB_STATE_SUCCEEDED, (first.error, queued.error)
        assert any("queued" in e.message and "max_running_jobs_per_tenant" in e.message for e in events)
        assert queued.started_at.ToNanoseconds() >= first.finished_at.ToNanoseconds()
        doomed = await call(acme.get_job, doomed.job_id)
        assert doomed.state == common_pb2.JOB_STATE_CANCELLED and not doomed.started_at.seconds
