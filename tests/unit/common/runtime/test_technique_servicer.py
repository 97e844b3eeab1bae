"""The TechniqueService every technique serves, over a real gRPC channel in this process (no NATS):
Describe publishes the registry, CheckConfig names each problem, Run refuses what it cannot run before
any work and hands the engine its parsed config."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
from google.protobuf import struct_pb2
from pydantic import Field, model_validator

from modelpress.v1 import common_pb2, technique_pb2, technique_pb2_grpc
from services.common.contract.config import MethodConfig, over_budget
from services.common.contract.engine_api import Method, StageResult
from services.common.store.model_source import describe
from services.common.runtime import technique_servicer
from services.common.runtime.technique_servicer import SERVICE_NAME, TechniqueServicer, add_technique_service
from services.common.store.artifact_store import ArtifactNotFound

ROWS_BUDGET = 32_000


class TrimConfig(MethodConfig):
    rows: int = Field(4, ge=1, le=64, description="Rows to look at")
    keep: int = Field(2, ge=1, le=64, description="Rows kept, at most `rows`")
    mode: str = Field("fast", description="How to trim")
    reference: str = Field("", description="Artifact to compare with (empty: the job's input model)")

    artifact_fields = {"reference": (common_pb2.ARTIFACT_FORMAT_HF_SAFETENSORS,)}
    original_default_fields = ("reference",)

    @model_validator(mode="after")
    def _keep_at_most_rows(self):
        if self.keep > self.rows:
            raise ValueError(f"keep: {self.keep} is more than rows ({self.rows})")
        return self

    def work_problems(self) -> list[str]:
        return over_budget("rows", "rows × 1,000", self.rows * 1_000, ROWS_BUDGET)


class ScaleConfig(MethodConfig):
    factor: float = Field(0.5, gt=0, le=1, description="Scale applied to every weight")


ran: list[tuple[str, MethodConfig]] = []


def _engine(name: str):
    def run(config, src: Path, dst: Path, reporter) -> StageResult:
        ran.append((name, config))
        return StageResult(format=common_pb2.ARTIFACT_FORMAT_HF_SAFETENSORS, metrics={"ran": name})
    return run


REGISTRY = {
    "trim": Method("trim", "Trims rows", TrimConfig, _engine("trim"), accepts=(), produces=()),
    "scale": Method("scale", "Scales weights", ScaleConfig, _engine("scale")),
}


class FakeModels:
    """The model source without a store: every artifact but `a-missing` is a folder here."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.asked: list[common_pb2.ModelRef] = []

    async def local_folder(self, ref: common_pb2.ModelRef) -> Path:
        self.asked.append(ref)
        if ref.artifact_id == "a-missing":
            raise ArtifactNotFound(f"artifact {ref.artifact_id!r} not found")
        return self.root / (ref.artifact_id or "path-model")


def fake_runtime(tmp_path: Path) -> SimpleNamespace:
    return SimpleNamespace(worker_id="tester@unit:0", models=FakeModels(tmp_path))


async def _served(servicer: TechniqueServicer):
    server = grpc.aio.server()
    assert add_technique_service(server, servicer) == SERVICE_NAME == "modelpress.v1.TechniqueService"
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    return server, channel, technique_pb2_grpc.TechniqueServiceStub(channel)


@pytest.fixture
async def served(tmp_path):
    runtime = fake_runtime(tmp_path)
    server, channel, stub = await _served(TechniqueServicer(common_pb2.TECHNIQUE_PRUNER, REGISTRY, runtime))
    yield SimpleNamespace(stub=stub, runtime=runtime)
    await channel.close()
    await server.stop(None)


def _spec(method: str, **config) -> common_pb2.StageSpec:
    values = struct_pb2.Struct()
    values.update(config)
    return common_pb2.StageSpec(technique=common_pb2.TECHNIQUE_PRUNER, method=method, config=values)


def _stage(method: str, original: str = "", **config) -> common_pb2.StageRequest:
    values = struct_pb2.Struct()
    values.update(config)
    request = common_pb2.StageRequest(job_id="j-1", input=common_pb2.ModelRef(artifact_id="a-input"),
                                      method=method, config=values)
    if original:
        request.original.CopyFrom(common_pb2.ModelRef(artifact_id=original))
    return request


async def _run(stub, stage: common_pb2.StageRequest) -> list[technique_pb2.TechniqueServiceRunResponse]:
    return [r async for r in stub.Run(technique_pb2.TechniqueServiceRunRequest(stage=stage))]


async def test_describe_lists_every_method_of_the_registry_with_its_config(served):
    description = (await served.stub.Describe(technique_pb2.TechniqueServiceDescribeRequest())).description
    assert description.technique == common_pb2.TECHNIQUE_PRUNER
    assert description.hardware.worker == "tester@unit:0"
    methods = {m.name: m for m in description.methods}
    assert set(methods) == {"trim", "scale"}
    trim = methods["trim"]
    assert (trim.summary, trim.technique) == ("Trims rows", common_pb2.TECHNIQUE_PRUNER)
    assert [f.name for f in trim.fields] == ["rows", "keep", "mode", "reference"]
    rows = trim.fields[0]
    assert (rows.type, rows.minimum, rows.maximum, rows.default_value.number_value) == (
        common_pb2.FIELD_TYPE_INT, 1, 64, 4)
    assert [i.field for i in trim.inputs] == ["reference"]
    assert list(methods["scale"].accepts) == list(REGISTRY["scale"].accepts) and list(trim.accepts) == []


async def test_check_config_names_each_problem_and_passes_a_good_config(served):
    async def check(spec):
        return await served.stub.CheckConfig(technique_pb2.TechniqueServiceCheckConfigRequest(stage=spec))

    good = await check(_spec("trim", rows=8, keep=3))
    assert list(good.errors) == [] and list(good.over_budget) == []
    bad = await check(_spec("trim", rows=0, colour="red"))
    assert len(bad.errors) == 2
    assert any(e.startswith("rows:") for e in bad.errors) and any(e.startswith("colour:") for e in bad.errors)
    across = await check(_spec("trim", rows=2, keep=5))  # a rule across fields, each field within its bounds
    assert list(across.errors) == ["keep: 5 is more than rows (2)"]
    unknown = await check(_spec("slice"))
    assert list(unknown.errors) == ["method: unknown method 'slice'; allowed: scale, trim"]
    big = await check(_spec("trim", rows=64))
    assert list(big.errors) == [] and len(big.over_budget) == 1 and big.over_budget[0].startswith("rows:")


async def test_check_config_validates_the_struct_once_and_refuses_what_no_config_means(served, monkeypatch):
    """The one validation of a stage's values before a job exists: config.validated, called once on
    the Struct as it came (no dict in between), problems naming the field and the value."""
    calls = []
    real = technique_servicer.validated

    def counted(config_cls, values):
        calls.append(values)
        return real(config_cls, values)

    monkeypatch.setattr(technique_servicer, "validated", counted)

    async def check(spec):
        return await served.stub.CheckConfig(technique_pb2.TechniqueServiceCheckConfigRequest(stage=spec))

    spec = _spec("trim", rows=64)
    big = await check(spec)  # valid, past the budget: the budget is read off the one validated config
    assert list(big.errors) == [] and len(big.over_budget) == 1 and calls == [spec.config]
    nan = await check(_spec("scale", factor=float("nan")))
    assert list(nan.errors) == ["factor: nan is not a finite number"]
    assert list((await check(_spec("scale", factor=True))).errors) == [
        "factor: Input should be a valid number, got True"]
    assert len(calls) == 3


@pytest.mark.parametrize(("stage", "code", "names"), [
    (_stage("slice"), grpc.StatusCode.INVALID_ARGUMENT, "unknown method 'slice'; allowed: scale, trim"),
    (_stage("trim", rows=0), grpc.StatusCode.INVALID_ARGUMENT, "trim config: "),
    (_stage("scale", factor=float("inf")), grpc.StatusCode.INVALID_ARGUMENT,
     "scale config: factor: inf is not a finite number"),
    (_stage("trim", rows=64), grpc.StatusCode.RESOURCE_EXHAUSTED, "rows: rows × 1,000 = 64,000 tokens"),
    (_stage("trim", reference="a-missing"), grpc.StatusCode.NOT_FOUND, "trim config: reference"),
])
async def test_run_refuses_before_any_work(served, monkeypatch, stage, code, names):
    async def must_not_run(*args, **kwargs):
        raise AssertionError("the stage runner was reached")
        yield  # pragma: no cover

    monkeypatch.setattr(technique_servicer, "run_stage", must_not_run)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _run(served.stub, stage)
    assert info.value.code() == code and names in info.value.details()


async def test_run_hands_the_engine_its_parsed_config_and_streams_the_runner_updates(served, monkeypatch,
                                                                                    tmp_path):
    seen = {}

    async def runner(runtime, stage, context, work, effective_config, version, extra_key):
        seen.update(effective_config=effective_config, version=version, extra_key=extra_key)
        yield common_pb2.StageUpdate(progress=common_pb2.StageProgress(progress=0.5))
        result = work(tmp_path / "in", tmp_path / "out", None)
        output = common_pb2.StageOutput(worker=runtime.worker_id)
        output.metrics.update(result.metrics)
        yield common_pb2.StageUpdate(output=output)

    monkeypatch.setattr(technique_servicer, "run_stage", runner)
    ran.clear()
    responses = await _run(served.stub, _stage("trim", original="a-original", rows=6))
    assert [r.update.WhichOneof("update") for r in responses] == ["progress", "output"]
    assert responses[-1].update.output.metrics["ran"] == "trim"
    ((name, config),) = ran
    assert name == "trim" and (config.rows, config.keep, config.mode) == (6, 2, "fast")  # declared defaults
    # An empty `reference` stands for the job's input model: fetched, bound, and part of the stage key.
    assert config.local_path("reference") == tmp_path / "a-original"
    assert seen["extra_key"] == {"reference": describe(common_pb2.ModelRef(artifact_id="a-original"))}
    assert seen["effective_config"] == {"rows": 6, "keep": 2, "mode": "fast", "reference": ""}
    assert seen["version"] == "1"


@pytest.mark.parametrize(("service", "technique"), [
    ("quantizer", common_pb2.TECHNIQUE_QUANTIZER), ("pruner", common_pb2.TECHNIQUE_PRUNER),
    ("distiller", common_pb2.TECHNIQUE_DISTILLER), ("optimizer", common_pb2.TECHNIQUE_OPTIMIZER)])
async def test_every_technique_registers_the_one_service_over_its_own_registry(tmp_path, service, technique):
    registry = importlib.import_module(f"services.{service}.engine").METHODS
    server = grpc.aio.server()
    register = importlib.import_module(f"services.{service}.servicer").register
    names = await register(server, fake_runtime(tmp_path))
    assert names[0] == SERVICE_NAME  # health and reflection name it; the optimizer adds OptimizerService
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = technique_pb2_grpc.TechniqueServiceStub(channel)
            description = (await stub.Describe(technique_pb2.TechniqueServiceDescribeRequest())).description
            unknown = await stub.CheckConfig(technique_pb2.TechniqueServiceCheckConfigRequest(
                stage=common_pb2.StageSpec(technique=technique, method="no-such-method")))
    finally:
        await server.stop(None)
    assert description.technique == technique
    assert {m.name for m in description.methods} == set(registry)
    for method in description.methods:
        assert [f.name for f in method.fields] == list(registry[method.name].config_cls.model_fields)
    assert unknown.errors[0].startswith("method: unknown method 'no-such-method'; allowed: ")


async def test_the_evaluator_serves_its_stage_through_the_same_contract(tmp_path):
    from services.evaluator.engine import EvaluationConfig
    from services.evaluator.servicer import EvaluationStageServicer, Measurer

    runtime = fake_runtime(tmp_path)
    server, channel, stub = await _served(EvaluationStageServicer(runtime, Measurer(runtime)))
    try:
        description = (await stub.Describe(technique_pb2.TechniqueServiceDescribeRequest())).description
        spec = common_pb2.StageSpec(technique=common_pb2.TECHNIQUE_EVALUATOR, method="evaluate")
        spec.config.update({"batch_size": 0})
        checked = await stub.CheckConfig(technique_pb2.TechniqueServiceCheckConfigRequest(stage=spec))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _run(stub, common_pb2.StageRequest(method="measure", input=common_pb2.ModelRef(path="/m")))
    finally:
        await channel.close()
        await server.stop(None)
    assert description.technique == common_pb2.TECHNIQUE_EVALUATOR
    (method,) = description.methods
    assert method.name == "evaluate"
    assert [f.name for f in method.fields] == list(EvaluationConfig.model_fields)
    assert len(checked.errors) == 1 and checked.errors[0].startswith("batch_size:")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown method 'measure'; allowed: evaluate" in info.value.details()
    assert runtime.models.asked == []  # refused before fetching anything
