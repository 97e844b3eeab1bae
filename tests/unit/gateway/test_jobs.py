"""The job runner (services/gateway/jobs.py) with the technique services faked at the mesh (our own
interface: `stub(t).Run`, `is_live`, the evaluator's Compare and RenderReport) and everything else
real over the session's nats-server: the job store, leases, grants, events and the artifact store.

A job runs its stages in order, each on the artifact the one before made; a stage's status fails
the job with its code and words; an UNAVAILABLE stage is retried as the rule says; a gate on a figure
that was not measured fails naming why; a cancel stops the job where it is."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest

from modelpress.structs import from_struct
from modelpress.v1 import common_pb2, evaluator_pb2, technique_pb2
from services.common.contract.gates import gate_checks, parse_gate
from services.common.store.artifact_store import ArtifactStore
from services.common.store.events import EventLog
from services.gateway import jobs as jobs_module
from services.gateway.access import Grants
from services.gateway.job_store import JobStore
from services.gateway.jobs import EVALUATION_SKIPPED, STAGE_ATTEMPTS, JobRunner
from services.gateway.leases import JobLeases

QUANTIZER, PRUNER = common_pb2.TECHNIQUE_QUANTIZER, common_pb2.TECHNIQUE_PRUNER
EVALUATOR = common_pb2.TECHNIQUE_EVALUATOR
SKIP = common_pb2.EvaluationSpec(skip=True)
MODEL = common_pb2.ModelRef(builtin="minilm-l6")
S = common_pb2  # JOB_STATE_* below


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


class FakeStub:
    def __init__(self, mesh: FakeMesh, technique: int) -> None:
        self.mesh, self.technique = mesh, technique

    def Run(self, request, wait_for_ready=None):
        return self.mesh.run(self.technique, request.stage)


class FakeEvaluator:
    """Compare answers `comparison`; RenderReport answers `report` (UNIMPLEMENTED while None)."""

    def __init__(self) -> None:
        self.comparison = common_pb2.Comparison()
        self.compared: list[evaluator_pb2.EvaluatorServiceCompareRequest] = []
        self.report: common_pb2.ArtifactRef | None = None

    async def Compare(self, request, wait_for_ready=None):
        self.compared.append(request)
        return evaluator_pb2.EvaluatorServiceCompareResponse(comparison=self.comparison)

    async def RenderReport(self, request, wait_for_ready=None, timeout=None):
        if self.report is None:
            raise rpc_error(grpc.StatusCode.UNIMPLEMENTED, "no reports in this test")
        return evaluator_pb2.EvaluatorServiceRenderReportResponse(report=self.report)


class FakeMesh:
    """The technique services as the runner reaches them. Each method runs its queued behaviours in
    turn (one per attempt), then `produce`: a stored artifact naming the method and its input."""

    def __init__(self, store: ArtifactStore, tmp_path) -> None:
        self.store, self.tmp_path = store, tmp_path
        self.requests: list[tuple[int, common_pb2.StageRequest]] = []
        self.behaviours: dict[str, list] = {}
        self.cancelled: list[str] = []
        self.live: dict[int, bool] = {}
        self.evaluator = FakeEvaluator()

    def stub(self, technique: int) -> FakeStub:
        return FakeStub(self, technique)

    async def is_live(self, technique: int) -> bool:
        return self.live.get(technique, True)

    async def describe(self, technique: int) -> common_pb2.ServiceDescription:
        return common_pb2.ServiceDescription(technique=technique)

    async def run(self, technique: int, stage: common_pb2.StageRequest):
        self.requests.append((technique, stage))
        queued = self.behaviours.get(stage.method) or []
        behaviour = queued.pop(0) if queued else self.produce
        async for update in behaviour(stage):
            yield technique_pb2.TechniqueServiceRunResponse(update=update)

    async def produce(self, stage: common_pb2.StageRequest):
        yield common_pb2.StageUpdate(progress=common_pb2.StageProgress(progress=0.5, message="halfway"))
        folder = self.tmp_path / uuid.uuid4().hex
        folder.mkdir()
        source = stage.input.artifact_id or stage.input.builtin
        (folder / "made.txt").write_text(f"{stage.method} of {source}")
        ref = await self.store.put_dir(folder, fmt=common_pb2.ARTIFACT_FORMAT_HF_SAFETENSORS)
        output = common_pb2.StageOutput(artifact=ref, worker=f"{stage.method}@fake:1",
                                        key=f"key-{stage.method}", notes=[f"{stage.method} note"])
        output.metrics.update({"made_by": stage.method})
        yield common_pb2.StageUpdate(output=output)


def fails(code: grpc.StatusCode, details: str):
    async def behaviour(stage):
        raise rpc_error(code, details)
        yield  # pragma: no cover
    return behaviour


def blocks(mesh: FakeMesh, started: asyncio.Event):
    async def behaviour(stage):
        yield common_pb2.StageUpdate(progress=common_pb2.StageProgress(progress=0.1, message="started"))
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            mesh.cancelled.append(stage.method)
            raise
    return behaviour


@pytest.fixture(scope="module")
async def stores(js):
    return (await JobStore(js, bucket="unit_job_runner_jobs").ensure(),
            await ArtifactStore(js, bucket="unit_job_runner_artifacts").ensure(),
            await EventLog(js).ensure(), await Grants(js).ensure())


@pytest.fixture
async def runner(js, stores, tmp_path):
    jobs, store, events, grants = stores
    mesh = FakeMesh(store, tmp_path)
    leases = await JobLeases(js, holder=f"unit-gateway-{uuid.uuid4().hex[:6]}").ensure()
    made = await JobRunner(js, jobs, store, events, mesh, grants, leases, replica_wait_s=5).ensure()
    made.fake = mesh
    yield made
    await made.shutdown()


def spec(technique: int, method: str, **config) -> common_pb2.StageSpec:
    stage = common_pb2.StageSpec(technique=technique, method=method, name=method)
    stage.config.update(config)
    return stage


def gate_stage(text: str) -> common_pb2.StageSpec:
    stage = common_pb2.StageSpec(technique=EVALUATOR, method="evaluate", name="gate-check", gate=text)
    stage.gate_checks.extend(gate_checks(parse_gate(text)))  # as the gateway resolves it
    return stage


async def run_job(runner: JobRunner, stages, evaluation=SKIP) -> common_pb2.Job:
    job = await runner.submit(name="unit", model=MODEL, recipe="unit-pipeline", stages=stages,
                              evaluation=evaluation)
    return await asyncio.wait_for(runner.wait(job.job_id), 30)


async def events_of(runner: JobRunner, job_id: str) -> list[common_pb2.JobEvent]:
    return [e async for e in runner.events.replay(job_id, follow=False, poll_s=0.2)]


async def test_stages_run_in_order_each_on_the_artifact_the_one_before_made(runner):
    job = await run_job(runner, [spec(PRUNER, "prune", sparsity=0.5), spec(QUANTIZER, "quantize", bits=4)])
    assert job.state == S.JOB_STATE_SUCCEEDED, job.error
    (t0, first), (t1, second) = runner.fake.requests
    assert (t0, first.method, first.stage_index, t1, second.method, second.stage_index) == (
        PRUNER, "prune", 0, QUANTIZER, "quantize", 1)
    assert first.input == MODEL and second.input == common_pb2.ModelRef(artifact_id=job.stages[0].output.id)
    assert first.original == second.original == MODEL and first.job_id == second.job_id == job.job_id
    assert from_struct(first.config) == {"sparsity": 0.5} and from_struct(second.config) == {"bits": 4}
    for stage, method in zip(job.stages, ("prune", "quantize")):
        assert stage.state == S.JOB_STATE_SUCCEEDED and from_struct(stage.metrics) == {"made_by": method}
        assert (stage.worker, list(stage.notes), stage.key) == (f"{method}@fake:1", [f"{method} note"],
                                                                f"key-{method}")
    assert job.output == job.stages[1].output and list(job.artifact_ids) == [s.output.id for s in job.stages]
    folder = runner.fake.tmp_path / "fetched"
    await runner.store.get_dir(job.output.id, folder)
    assert (folder / "made.txt").read_text() == f"quantize of {job.stages[0].output.id}"
    # Skipped evaluation: a result whose figures say why they are missing; the output holds the recipe.
    assert job.progress == 1.0 and job.result.not_measured["compression_ratio"] == EVALUATION_SKIPPED
    assert (await runner.store.stat(job.output.id)).meta["recipes"] == ["unit-pipeline"]
    assert all([await runner.grants.holds("", s.output.id) for s in job.stages])
    events = await events_of(runner, job.job_id)
    flow = [(e.kind, e.stage_index) for e in events if e.kind in (S.EVENT_KIND_STAGE_STARTED,
                                                                   S.EVENT_KIND_STAGE_FINISHED)]
    assert flow == [(S.EVENT_KIND_STAGE_STARTED, 0), (S.EVENT_KIND_STAGE_FINISHED, 0),
                    (S.EVENT_KIND_STAGE_STARTED, 1), (S.EVENT_KIND_STAGE_FINISHED, 1)]
    assert [e.job_state for e in events if e.kind == S.EVENT_KIND_JOB_STATE] == [S.JOB_STATE_RUNNING,
                                                                                 S.JOB_STATE_SUCCEEDED]
    assert "report not rendered: UNIMPLEMENTED" in " ".join(e.message for e in events)


async def test_a_failing_stage_fails_the_job_with_its_status_and_words_and_nothing_after_runs(runner):
    runner.fake.behaviours["quantize"] = [fails(grpc.StatusCode.FAILED_PRECONDITION,
                                                "quantize on artifact:a-1: TensorRT is not installed")]
    job = await run_job(runner, [spec(PRUNER, "prune"), spec(QUANTIZER, "quantize"), spec(PRUNER, "again")])
    assert job.state == S.JOB_STATE_FAILED
    assert job.error == "FAILED_PRECONDITION: quantize on artifact:a-1: TensorRT is not installed"
    assert [s.state for s in job.stages] == [S.JOB_STATE_SUCCEEDED, S.JOB_STATE_FAILED, S.JOB_STATE_PENDING]
    assert job.stages[1].error == job.error and job.stages[1].HasField("finished_at")
    # Not retried (only UNAVAILABLE is), and no stage after it ran.
    assert [stage.method for _, stage in runner.fake.requests] == ["prune", "quantize"]
    assert job.result.headline.text and not job.output.id
    events = await events_of(runner, job.job_id)
    assert (events[-1].job_state, events[-1].message) == (S.JOB_STATE_FAILED, job.error)


async def test_an_unavailable_stage_is_retried_and_succeeds_on_a_later_attempt(runner):
    runner.fake.behaviours["quantize"] = [fails(grpc.StatusCode.UNAVAILABLE, "replica gone")] * 2
    job = await run_job(runner, [spec(QUANTIZER, "quantize")])
    assert job.state == S.JOB_STATE_SUCCEEDED, job.error
    assert len(runner.fake.requests) == STAGE_ATTEMPTS == 3
    retries = [e.message for e in await events_of(runner, job.job_id) if "retrying the stage" in e.message]
    assert retries == [f"quantizer unavailable (replica gone); retrying the stage (attempt {n} of 3)"
                       for n in (2, 3)]


async def test_a_stage_unavailable_on_every_attempt_fails_the_job_unavailable(runner):
    runner.fake.behaviours["quantize"] = [fails(grpc.StatusCode.UNAVAILABLE, "store did not answer")] * 3
    job = await run_job(runner, [spec(QUANTIZER, "quantize")])
    assert job.state == S.JOB_STATE_FAILED and job.error == "UNAVAILABLE: store did not answer"
    assert len(runner.fake.requests) == STAGE_ATTEMPTS


async def test_a_job_waits_visibly_for_a_live_replica_then_goes_on(runner, monkeypatch):
    monkeypatch.setattr(jobs_module, "WAIT_POLL_S", 0.05)
    monkeypatch.setattr(jobs_module, "WAIT_EVENT_EVERY_S", 0.1)
    runner.fake.live[QUANTIZER] = False
    job = await runner.submit(name="unit", model=MODEL, recipe="unit-pipeline",
                              stages=[spec(QUANTIZER, "quantize")], evaluation=SKIP)
    await asyncio.sleep(0.4)
    assert runner.fake.requests == []  # nothing sent while no replica answers
    runner.fake.live[QUANTIZER] = True
    done = await asyncio.wait_for(runner.wait(job.job_id), 30)
    assert done.state == S.JOB_STATE_SUCCEEDED, done.error
    messages = [e.message for e in await events_of(runner, job.job_id)]
    assert any(m.startswith("waiting for a live quantizer replica since ") for m in messages)
    assert any(m.startswith("quantizer is back after ") for m in messages)


async def test_with_no_live_replica_past_the_bound_the_job_fails_unavailable_naming_the_service(runner,
                                                                                                 monkeypatch):
    monkeypatch.setattr(jobs_module, "WAIT_POLL_S", 0.05)
    runner.replica_wait_s = 0.3
    runner.fake.live[QUANTIZER] = False
    job = await run_job(runner, [spec(QUANTIZER, "quantize")])
    assert job.state == S.JOB_STATE_FAILED
    assert job.error.startswith("UNAVAILABLE: no live replica of quantizer for ")
    assert "the bound is 0 s" in job.error
    assert runner.fake.requests == []


async def test_a_cancel_stops_the_running_stage_and_no_later_stage_starts(runner):
    started = asyncio.Event()
    runner.fake.behaviours["quantize"] = [blocks(runner.fake, started)]
    stages = [spec(PRUNER, "prune"), spec(QUANTIZER, "quantize"), spec(PRUNER, "again")]
    job = await runner.submit(name="unit", model=MODEL, recipe="unit-pipeline", stages=stages,
                              evaluation=SKIP)
    await asyncio.wait_for(started.wait(), 10)
    cancelled = await runner.cancel(job.job_id)
    assert cancelled.state == S.JOB_STATE_CANCELLED and cancelled.error == "cancelled by request"
    assert runner.fake.cancelled == ["quantize"]  # the in-flight call was cancelled, not left running
    assert [s.state for s in cancelled.stages] == [S.JOB_STATE_SUCCEEDED, S.JOB_STATE_CANCELLED,
                                                   S.JOB_STATE_PENDING]
    assert [stage.method for _, stage in runner.fake.requests] == ["prune", "quantize"]
    assert not runner.is_running_here(job.job_id)
    # A job that already ended is handed back as it is.
    assert (await runner.cancel(job.job_id)).state == S.JOB_STATE_CANCELLED


def _row(index: int, size: int, **ratios) -> common_pb2.ComparisonRow:
    metrics = common_pb2.ModelMetrics(kind="encoder", size_on_disk_bytes=size, parameters=22_000_000)
    metrics.not_measured["perplexity"] = "an encoder has no perplexity"
    row = common_pb2.ComparisonRow(index=index, baseline=index == 0, metrics=metrics, **ratios)
    if "flops_ratio" not in ratios:
        row.not_measured["flops_ratio"] = "an ONNX graph has no FLOPs count here"
    return row


async def test_a_gate_on_figures_that_were_not_measured_fails_naming_why(runner):
    runner.fake.evaluator.comparison = common_pb2.Comparison(
        rows=[_row(0, 90_000_000), _row(1, 30_000_000, size_ratio=1 / 3, speedup=1.4)], interleaved_rounds=3)
    gate = "perplexity_increase<=0.10, flops_ratio<=0.5"
    job = await run_job(runner, [spec(QUANTIZER, "quantize"), gate_stage(gate), spec(PRUNER, "after")],
                        evaluation=common_pb2.EvaluationSpec())
    assert job.state == S.JOB_STATE_FAILED
    assert job.error == (f"FAILED_PRECONDITION: stages[1] (gate-check): gate {gate!r} failed: "
                         "perplexity_increase was not measured: an encoder has no perplexity (bound <= 0.1); "
                         "flops_ratio was not measured: an ONNX graph has no FLOPs count here (bound <= 0.5)")
    gated = job.stages[1]
    assert gated.state == S.JOB_STATE_FAILED and gated.error == job.error.split(": ", 2)[2]
    shown = from_struct(gated.metrics)
    assert shown["size_ratio"] == pytest.approx(1 / 3) and "flops_ratio" not in shown  # never a 0
    assert shown["not_measured"]["flops_ratio"] == "an ONNX graph has no FLOPs count here"
    (compare,) = runner.fake.evaluator.compared  # the job's model against the stage's input
    assert list(compare.models) == [MODEL, common_pb2.ModelRef(artifact_id=job.stages[0].output.id)]
    assert [stage.method for _, stage in runner.fake.requests] == ["quantize"]


async def test_a_gate_that_holds_passes_the_input_on_and_says_so(runner):
    runner.fake.evaluator.comparison = common_pb2.Comparison(
        rows=[_row(0, 90_000_000), _row(1, 30_000_000, size_ratio=1 / 3, speedup=1.4)], interleaved_rounds=3)
    job = await run_job(runner, [spec(QUANTIZER, "quantize"), gate_stage("size_ratio<=0.5, speedup>=1.2"),
                                 spec(PRUNER, "after")])
    assert job.state == S.JOB_STATE_SUCCEEDED, job.error
    assert job.stages[1].output == job.stages[0].output  # an evaluate stage passes its input on
    assert [stage.input.artifact_id for _, stage in runner.fake.requests][1] == job.stages[0].output.id
    passed = [e.message for e in await events_of(runner, job.job_id) if "passed" in e.message]
    assert passed == [("gate 'size_ratio<=0.5, speedup>=1.2' passed: size_ratio = 0.3333 (<= 0.5), "
                       "speedup = 1.4 (>= 1.2)")]


async def test_the_final_evaluation_measures_the_output_against_the_model_and_keeps_its_report(runner):
    original, compressed = _row(0, 90_000_000), _row(1, 30_000_000, size_ratio=1 / 3)
    runner.fake.evaluator.comparison = common_pb2.Comparison(rows=[original, compressed],
                                                             interleaved_rounds=3)
    report_folder = runner.fake.tmp_path / "report"
    report_folder.mkdir()
    (report_folder / "report.json").write_text("{}")
    report = await runner.store.put_dir(report_folder, fmt=common_pb2.ARTIFACT_FORMAT_REPORT)
    runner.fake.evaluator.report = report
    job = await run_job(runner, [spec(QUANTIZER, "quantize")],
                        evaluation=common_pb2.EvaluationSpec(batch_size=1))
    assert job.state == S.JOB_STATE_SUCCEEDED, job.error
    (compare,) = runner.fake.evaluator.compared
    assert list(compare.models) == [MODEL, common_pb2.ModelRef(artifact_id=job.output.id)]
    assert compare.spec.batch_size == 1 and compare.skip_report
    assert job.result.compression_ratio == pytest.approx(3.0)
    assert job.result.compressed_artifact_id == job.output.id
    assert "perplexity_increase" not in [f.name for f, _ in job.result.ListFields()]
    assert job.result.evaluation_report_path == runner.fake.evaluator.report.id
    assert list(job.artifact_ids) == [job.output.id, runner.fake.evaluator.report.id]


async def test_a_stage_that_ends_without_an_output_fails_the_job_saying_so(runner):
    async def progress_only(stage):
        yield common_pb2.StageUpdate(progress=common_pb2.StageProgress(progress=1.0, message="done?"))

    runner.fake.behaviours["quantize"] = [progress_only]
    job = await run_job(runner, [spec(QUANTIZER, "quantize"), spec(PRUNER, "after")])
    assert job.state == S.JOB_STATE_FAILED
    assert job.error == "RuntimeError: quantizer ended stage 0 without an output"
    assert [s.state for s in job.stages] == [S.JOB_STATE_FAILED, S.JOB_STATE_PENDING]
    assert len(runner.fake.requests) == 1


async def test_a_resumed_job_runs_only_its_unfinished_stages_from_the_last_output(runner, tmp_path):
    folder = tmp_path / "first"
    folder.mkdir()
    (folder / "made.txt").write_text("prune of minilm-l6")
    first = await runner.store.put_dir(folder, fmt=common_pb2.ARTIFACT_FORMAT_HF_SAFETENSORS)
    stages = [common_pb2.StageStatus(index=0, spec=spec(PRUNER, "prune"), state=S.JOB_STATE_SUCCEEDED,
                                     output=first),
              common_pb2.StageStatus(index=1, spec=spec(QUANTIZER, "quantize"), state=S.JOB_STATE_PENDING)]
    job = common_pb2.Job(job_id="j-" + uuid.uuid4().hex[:16], model=MODEL, recipe="unit-pipeline",
                         state=S.JOB_STATE_RUNNING, evaluation=SKIP, stages=stages)
    await runner.jobs.put(job)  # as a gateway that died after the first stage left it
    runner.start(job.job_id)
    done = await asyncio.wait_for(runner.wait(job.job_id), 30)
    assert done.state == S.JOB_STATE_SUCCEEDED, done.error
    ((technique, stage),) = runner.fake.requests
    assert (technique, stage.method) == (QUANTIZER, "quantize")
    assert stage.input == common_pb2.ModelRef(artifact_id=first.id)
    messages = [e.message for e in await events_of(runner, job.job_id)]
    resumed = f"resumed by gateway {runner.leases.holder} after 1 finished stage(s)"
    assert any(m.startswith(resumed) for m in messages)
    assert not any(m.startswith("running on gateway") for m in messages)
