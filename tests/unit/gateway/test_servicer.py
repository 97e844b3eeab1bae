"""The gateway's request-level behaviour (services/gateway/servicer.py) over a real gRPC channel and the
session's real nats-server, with no engine anywhere: the mesh is faked at the catalog's interface
(describe, check_config, require_live, the optimizer's ListEngines), answering from the techniques' own
registries and their own CheckConfig, and the job runner records jobs without running them.

What a request gets wrong is refused before a job exists, with the field it is about; what it names
that does not exist is NOT_FOUND; what is not built says so."""

from __future__ import annotations

import importlib
import uuid

import grpc
import pytest
from google.protobuf import struct_pb2

from modelpress.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, optimizer_pb2
from services.common.runtime.cite import shown
from services.common.runtime.server import open_runtime
from services.common.runtime.settings import ServiceSettings
from services.common.contract.techniques import TECHNIQUE_SERVICES
from services.common.runtime.technique_servicer import TechniqueServicer
from services.common.store.kv_records import RecordBucket
from services.gateway.access import Grants
from services.gateway.admission import Admission
from services.gateway.catalog import ServiceUnavailable
from services.gateway.job_store import JobStore
from services.gateway.jobs import JobRunner
from services.gateway.leases import JobLeases
from services.gateway.retention import Retention, RetentionPolicy
from services.gateway.servicer import GatewayServicer
from services.gateway.user_recipes import RecipeStore

ENGINES = {t: name for t, name in TECHNIQUE_SERVICES.items() if t != common_pb2.TECHNIQUE_EVALUATOR}
MINILM = common_pb2.ModelRef(builtin="minilm-l6")
SMOLLM = common_pb2.ModelRef(builtin="smollm2-135m")


class CatalogMesh:
    """The catalog's interface answered in process: each engine technique's real registry behind a
    TechniqueServicer (Describe's description, CheckConfig's check), liveness and engines as set."""

    def __init__(self, runtime) -> None:
        registries = {t: importlib.import_module(f"services.{name}.engine").METHODS
                      for t, name in ENGINES.items()}
        self.servicers = {t: TechniqueServicer(t, methods, runtime) for t, methods in registries.items()}
        self.dead: set[int] = set()
        self.engines = [common_pb2.EngineInfo(name="tensorrt", precisions=["fp16"], available=False,
                                              reason="no NVIDIA GPU on this worker",
                                              methods={"fp16": "tensorrt-fp16"})]
        self.checked: list[common_pb2.StageSpec] = []

    async def describe(self, technique: int) -> common_pb2.ServiceDescription:
        if technique in self.dead:
            raise ServiceUnavailable(f"{TECHNIQUE_SERVICES[technique]}: UNAVAILABLE: connection refused")
        return self.servicers[technique].description()

    async def check_config(self, technique: int, stage: common_pb2.StageSpec) -> tuple[list[str], list[str]]:
        self.checked.append(stage)
        return self.servicers[technique].check_config(stage)

    async def require_live(self, techniques) -> None:
        dead = sorted(TECHNIQUE_SERVICES[t] for t in set(techniques) & self.dead)
        if dead:
            raise ServiceUnavailable(f"no live replica of {', '.join(dead)}: nothing answers its health "
                                     "check")

    @property
    def optimizer(self) -> CatalogMesh:
        return self

    async def ListEngines(self, request, wait_for_ready=None, timeout=None):
        return optimizer_pb2.OptimizerServiceListEnginesResponse(engines=self.engines)


class RecordingRunner(JobRunner):
    """The real runner's records, leases and cancel; a submitted job is recorded but never started."""

    def start(self, job_id: str) -> None:
        self.started.append(job_id)


@pytest.fixture(scope="module")
async def gateway(nats_url, tmp_path_factory):
    home = tmp_path_factory.mktemp("gateway-home")
    runtime = await open_runtime(ServiceSettings(name="gateway", listen="127.0.0.1:0", nats_url=nats_url,
                                                 home=home))
    js = runtime.js
    mesh = CatalogMesh(runtime)
    grants = await Grants(js).ensure()
    leases = await JobLeases(js, holder=f"unit-gateway-{uuid.uuid4().hex[:6]}").ensure()
    jobs = await JobStore(js, bucket="unit_gateway_servicer_jobs").ensure()
    runner = await RecordingRunner(js, jobs, runtime.store, runtime.events, mesh, grants, leases).ensure()
    runner.started = []
    comparisons = await RecordBucket(js, "unit_gateway_comparisons", common_pb2.Comparison).ensure()
    retention = Retention(runner, grants, runtime.store, runtime.events, RetentionPolicy())
    server = grpc.aio.server()
    recipes = await RecipeStore(js).ensure()
    admission = await Admission(js, jobs, retention.check_room, max_jobs=runtime.settings.max_jobs_per_tenant,
                                bucket="unit_gateway_admission").ensure()
    servicer = GatewayServicer(runtime, runner, mesh, comparisons, recipes, grants, retention, admission)
    gateway_pb2_grpc.add_GatewayServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield gateway_pb2_grpc.GatewayServiceStub(channel), runner, mesh
    await channel.close()
    await server.stop(None)
    await runtime.nc.close()


@pytest.fixture
def served(gateway):
    stub, runner, mesh = gateway
    mesh.dead.clear()
    mesh.checked.clear()
    return stub, runner, mesh


def create(model=MINILM, recipe="w4a16-rtn", evaluation=None, **overrides) -> gateway_pb2.CreateJobRequest:
    request = gateway_pb2.CreateJobRequest(model=model, recipe=recipe,
                                           evaluation=evaluation or common_pb2.EvaluationSpec(skip=True))
    request.overrides.update(overrides)
    return request


async def refused(call, request) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(request)
    return info.value


async def test_a_valid_request_records_a_job_with_its_resolved_stages(served):
    stub, runner, mesh = served
    job = (await stub.CreateJob(create(group_size=128))).job
    assert job.job_id in runner.started and job.state == common_pb2.JOB_STATE_PENDING
    (stage,) = job.stages
    assert (stage.spec.technique, stage.spec.method) == (common_pb2.TECHNIQUE_QUANTIZER, "rtn")
    assert dict(stage.spec.config) == {"bits": 4, "group_size": 128}  # the recipe's values, the override's
    assert [s.config for s in mesh.checked] == [stage.spec.config]  # validated by its service, once
    assert (await stub.GetJob(gateway_pb2.GetJobRequest(job_id=job.job_id))).job == job
    listed = (await stub.ListJobs(gateway_pb2.ListJobsRequest())).jobs
    assert job.job_id in [j.job_id for j in listed]
    cancelled = (await stub.CancelJob(gateway_pb2.CancelJobRequest(job_id=job.job_id))).job
    assert cancelled.state == common_pb2.JOB_STATE_CANCELLED
    again = await refused(stub.CancelJob, gateway_pb2.CancelJobRequest(job_id=job.job_id))
    assert again.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert again.details() == f"job {job.job_id} already ended (JOB_STATE_CANCELLED)"


BAD_REQUESTS = {
    "unknown recipe": (create(recipe="w4a16-nope"),
                       "recipe: unknown recipe 'w4a16-nope'; allowed: fp16, bf16, "),
    "no recipe": (create(recipe=""), "recipe: required (or give a pipeline)"),
    "bad override value": (create(group_size=100), ("overrides.group_size: 100 is neither 0 (one scale per "
                                                    "output channel) nor a power of two from 16 to 1024")),
    "unknown override": (create(colour="red"), ("overrides.colour: no stage takes this field; allowed: bits, "
                                                "embedding_bits, group_size, head_bits, symmetric")),
    "unknown stage": (create(**{"quantize.bits": 4}),
                      "overrides.quantize.bits: no stage named 'quantize'; stages: rtn"),
    "unknown builtin": (create(model=common_pb2.ModelRef(builtin="gpt-17")),
                        "model.builtin: unknown builtin model 'gpt-17'; allowed: smollm2-135m, minilm-l6"),
    "malformed artifact id": (create(model=common_pb2.ModelRef(artifact_id="a b")),
                              "model.artifact_id: 'a b' is not an artifact id (letters, digits, "),
    "no model": (create(model=common_pb2.ModelRef()), "model: set one of artifact_id, builtin or path"),
    "evaluation bound": (create(evaluation=common_pb2.EvaluationSpec(batch_size=1000)),
                         "evaluation.batch_size: 1000 is outside [1, 256]"),
    "gguf on an encoder": (create(model=MINILM, recipe="gguf-q8_0"),
                           ("stages[0] (gguf-q8_0): gguf-q8_0 takes causal-lm models; the job's model is an "
                            "encoder")),
    "heads on an encoder": (create(model=MINILM, recipe="prune-heads"),
                            "stages[0] (prune): heads takes causal-lm models; the job's model is an encoder"),
}


@pytest.mark.parametrize(("request_", "names"), BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
async def test_a_bad_request_is_invalid_argument_naming_the_field_and_creates_no_job(served, request_, names):
    stub, runner, _ = served
    before = {j.job_id for j in await runner.jobs.list()}
    error = await refused(stub.CreateJob, request_)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert error.details().startswith(names), error.details()
    assert {j.job_id for j in await runner.jobs.list()} == before


async def test_a_path_outside_the_allowed_roots_or_missing_is_invalid_argument_naming_it(served, tmp_path,
                                                                                          monkeypatch):
    stub, runner, _ = served
    before = len(await runner.jobs.list())
    error = await refused(stub.CreateJob, create(model=common_pb2.ModelRef(path="/etc")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == ("model.path: local paths are disabled (the operator sets "
                               "MODELPRESS_ALLOWED_ROOTS)")
    monkeypatch.setenv("MODELPRESS_ALLOWED_ROOTS", str(tmp_path))
    error = await refused(stub.CreateJob, create(model=common_pb2.ModelRef(path="/etc")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == f"model.path: '/etc' is outside the allowed roots {tmp_path.resolve()}"
    error = await refused(stub.CreateJob, create(model=common_pb2.ModelRef(path=str(tmp_path / "absent"))))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == f"model.path: {shown(str(tmp_path / 'absent'))} is not a folder"
    assert len(await runner.jobs.list()) == before


async def test_a_user_pipeline_is_checked_like_a_recipe(served):
    stub, runner, _ = served
    submitted = list(runner.started)
    pipeline = common_pb2.Pipeline(name="mine", stages=[
        common_pb2.StageSpec(technique=common_pb2.TECHNIQUE_QUANTIZER, method="rtn", name="q"),
        common_pb2.StageSpec(technique=common_pb2.TECHNIQUE_EVALUATOR, method="evaluate", name="check",
                             gate="size_ratio<=0.5, colour>=2")])
    request = gateway_pb2.CreateJobRequest(model=SMOLLM, pipeline=pipeline,
                                           evaluation=common_pb2.EvaluationSpec(skip=True))
    error = await refused(stub.CreateJob, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("stages[1] (check).gate: 'colour' is not a gate metric; allowed: ")
    request.pipeline.stages[0].config.update({"bits": 3})
    request.pipeline.stages[1].gate = "size_ratio<=0.5"
    error = await refused(stub.CreateJob, request)  # a value its service refuses, placed in the stage
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("stages[0] (q).config.bits: "), error.details()
    assert runner.started == submitted  # nothing was submitted either way
    assert not [j for j in await runner.jobs.list() if j.recipe == "mine"]


async def test_an_artifact_that_does_not_exist_is_not_found_before_a_job_exists(served):
    stub, _, _ = served
    missing = common_pb2.ModelRef(artifact_id="a-00000000000000000000")
    error = await refused(stub.CreateJob, create(model=missing))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "model.artifact_id: artifact 'a-00000000000000000000' not found"


async def test_an_engine_no_worker_can_run_is_refused_before_a_job_exists(served):
    stub, runner, _ = served
    before = len(await runner.jobs.list())
    error = await refused(stub.CreateJob, create(model=SMOLLM, recipe="tensorrt-fp16"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == ("stages[0] (tensorrt-fp16): tensorrt-fp16 needs the tensorrt engine, which no "
                               "optimizer worker can run: no NVIDIA GPU on this worker")
    assert len(await runner.jobs.list()) == before


async def test_a_service_with_no_live_replica_is_unavailable_naming_it_before_a_job_exists(served):
    stub, runner, mesh = served
    before = len(await runner.jobs.list())
    mesh.dead.add(common_pb2.TECHNIQUE_EVALUATOR)  # the job's evaluation needs it
    error = await refused(stub.CreateJob, create(evaluation=common_pb2.EvaluationSpec()))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error.details() == "no live replica of evaluator: nothing answers its health check"
    mesh.dead = {common_pb2.TECHNIQUE_PRUNER}  # its methods cannot even be described
    error = await refused(stub.CreateJob, create())
    assert error.code() == grpc.StatusCode.UNAVAILABLE and error.details().startswith("pruner: UNAVAILABLE")
    assert len(await runner.jobs.list()) == before


@pytest.mark.parametrize("call", ["GetJob", "CancelJob", "DeleteJob", "GetResult"])
async def test_an_unknown_job_is_not_found_and_a_malformed_id_invalid(served, call):
    stub, _, _ = served
    request_of = {"GetJob": gateway_pb2.GetJobRequest, "CancelJob": gateway_pb2.CancelJobRequest,
                  "DeleteJob": gateway_pb2.DeleteJobRequest, "GetResult": gateway_pb2.GetResultRequest}[call]
    missing = await refused(getattr(stub, call), request_of(job_id="j-0000000000000000"))
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    assert missing.details() == "job 'j-0000000000000000' not found"
    malformed = await refused(getattr(stub, call), request_of(job_id="j.*"))
    assert malformed.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert malformed.details().startswith("job_id: 'j.*' is not a job id")
    empty = await refused(getattr(stub, call), request_of(job_id=""))
    assert (empty.code(), empty.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "job_id: required")


@pytest.mark.parametrize("call", ["WatchJob", "DownloadArtifact"])
async def test_a_stream_of_an_unknown_job_is_not_found_before_its_first_message(served, call):
    stub, _, _ = served
    request_of = {"WatchJob": gateway_pb2.WatchJobRequest,
                  "DownloadArtifact": gateway_pb2.DownloadArtifactRequest}
    with pytest.raises(grpc.aio.AioRpcError) as info:
        [m async for m in getattr(stub, call)(request_of[call](job_id="j-0000000000000000"))]
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == "job 'j-0000000000000000' not found"


async def test_validate_config_lists_each_problem_instead_of_failing(served):
    stub, _, _ = served

    async def validate(**overrides) -> gateway_pb2.ValidateConfigResponse:
        given = struct_pb2.Struct()
        given.update(overrides)
        request = gateway_pb2.ValidateConfigRequest(recipe="w4a16-rtn", overrides=given)
        return await stub.ValidateConfig(request)

    answer = await validate(group_size=100, colour="red")
    assert not answer.valid and answer.errors[0].startswith("overrides.colour: no stage takes this field")
    answer = await validate(group_size=100)
    assert not answer.valid and len(answer.errors) == 1
    assert answer.errors[0].startswith("overrides.group_size: 100 is neither 0")
    answer = await validate(group_size=128)
    assert answer.valid and answer.resolved_stages[0].config["group_size"] == 128


async def test_deploy_refusals_name_the_field_and_the_reason(served):
    stub, _, _ = served
    cases = [
        (gateway_pb2.DeployResultRequest(job_id="j-0000000000000000"), grpc.StatusCode.NOT_FOUND, "j-0000000000000000"),
        (gateway_pb2.DeployResultRequest(job_id="j-1", artifact_id="a-1"), grpc.StatusCode.INVALID_ARGUMENT,
         "set one, not both"),
        (gateway_pb2.DeployResultRequest(artifact_id="a-1", target="triton"), grpc.StatusCode.FAILED_PRECONDITION,
         "modelpress bundle"),
        (gateway_pb2.DeployResultRequest(), grpc.StatusCode.INVALID_ARGUMENT, "artifact_id: required"),
        (gateway_pb2.DeployResultRequest(artifact_id="a-missing"), grpc.StatusCode.NOT_FOUND, "a-missing"),
    ]
    for request, code, words in cases:
        error = await refused(stub.DeployResult, request)
        assert error.code() == code and words in error.details(), (request, error.details())
    error = await refused(stub.GetDeployment, gateway_pb2.GetDeploymentRequest(deployment_id="dep-nothing"))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "dep-nothing" in error.details()
    error = await refused(stub.UpdateDeployment, gateway_pb2.UpdateDeploymentRequest(deployment_id="dep-x",
                                                                                    replicas=-1))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "replicas" in error.details()


async def test_free_text_past_its_bound_is_refused_before_anything_and_a_payload_error_is_resource_exhausted(served):
    from nats.errors import MaxPayloadError

    from services.gateway.servicer import _code_for, _message_for

    stub, runner, mesh = served
    before = len(await runner.jobs.list())
    request = create()
    request.name = "n" * 1_000_000
    error = await refused(stub.CreateJob, request)
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                               "name: at most 256 characters, got 1000000")
    assert not mesh.checked and len(await runner.jobs.list()) == before  # refused before any service was asked
    # Whatever still outgrows the message bus's payload is a typed refusal, never UNKNOWN.
    assert _code_for(MaxPayloadError()) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _message_for(MaxPayloadError()).startswith("request: what it asks the mesh to store is over the message "
                                                      "bus's maximum payload")
