"""gRPC adapter of the evaluator: its recipe stage through the TechniqueService, and the EvaluatorService
(measurement, comparison, hardware benchmarks, reports)."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from modelpress.v1 import common_pb2, evaluator_pb2, evaluator_pb2_grpc
from services.common.models import modelio
from services.common.store.artifact_store import ArtifactNotFound
from services.common.contract.config import ConfigError, MethodConfig, parse_config
from services.common.measure.machine import describe_machine
from services.common.store.model_source import describe
from services.common.runtime.server import ServiceRuntime
from services.common.runtime.stage_runner import abort_with
from services.common.runtime.technique_servicer import TechniqueServicer, add_technique_service
from services.evaluator import report as reports
from services.evaluator.benchmark_store import BenchmarkStore
from services.evaluator.comparison import comparison_row, threshold_set_message
from services.evaluator.figures import metrics_message, stage_figures
from services.evaluator.engine import (EvaluationConfig, ProbeScope, compare_folders, evaluate_folder,
                                       probe_scope)
from services.evaluator.formats import check_measurable
from services.common.contract.thresholds import THRESHOLD_SETS, UnknownThresholdSet, threshold_set

EVALUATE_METHOD = "evaluate"
MAX_COMPARED = 8


@dataclass(frozen=True)
class EvaluateStage:
    """The evaluator's one stage method, as Describe lists it and CheckConfig checks it. Not an engine
    method: its Run (EvaluationStageServicer.run_stage) measures the input and hands it on unchanged."""

    name: str = EVALUATE_METHOD
    summary: str = ("Measures the model passing through (size, FLOPs, latency grid, peak RSS, quality) "
                    "and hands it on unchanged")
    config_cls: type[MethodConfig] = EvaluationConfig
    accepts: tuple[int, ...] = ()  # any format the evaluator can load (checked when it runs)
    model_kinds: tuple[str, ...] = ()  # it measures encoders and causal LMs alike
    produces: tuple[int, ...] = ()  # its input's
    metrics: tuple = ()


def spec_to_config(spec: common_pb2.EvaluationSpec, **extra) -> EvaluationConfig:
    """Unset (zero) fields of the spec take the declared defaults."""
    given = {
        "batch_size": spec.batch_size,
        "sequence_length": spec.sequence_length,
        "latency_iterations": spec.latency_iterations,
        "quality_windows": spec.quality_windows,
        "threads": spec.threads,
        "decode_tokens": spec.decode_tokens,
        "quality_sentences": spec.quality_sentences,
        "quality_split": spec.quality_split,
        "batch_sizes": ",".join(str(b) for b in spec.batch_sizes),
        "sequence_lengths": ",".join(str(s) for s in spec.sequence_lengths),
    }
    return parse_config(EvaluationConfig, {**{k: v for k, v in given.items() if v}, **extra})


def benchmark_rows(model_label: str, metrics: common_pb2.ModelMetrics, power_w: float | None
                   ) -> list[common_pb2.HardwareBenchmark]:
    """One HardwareBenchmark per timed shape and phase, in the seed's shape."""
    rows = []
    memory = metrics.cuda_max_memory_mb or metrics.peak_rss_mb
    for latency in [metrics.latency, *metrics.latency_grid, *([metrics.decode] if metrics.HasField("decode") else [])]:
        row = common_pb2.HardwareBenchmark(
            benchmark_id="b-" + uuid.uuid4().hex[:16], model=model_label, device_name=metrics.device,
            device_type=metrics.machine.device_type or "cpu", batch_size=latency.batch_size,
            sequence_length=latency.sequence_length, throughput=latency.tokens_per_s,
            samples_per_s=latency.samples_per_s, latency_p50_ms=latency.p50_ms, latency_p95_ms=latency.p95_ms,
            latency_p99_ms=latency.p99_ms, latency_stdev_ms=latency.stdev_ms, iterations=latency.iterations,
            memory_usage_mb=memory, threads=latency.threads, phase=latency.phase)
        row.machine.CopyFrom(metrics.machine)
        row.recorded_at.GetCurrentTime()
        if power_w is not None and latency is metrics.latency:
            row.power_consumption_w = power_w
        rows.append(row)
    return rows


def model_label(ref: common_pb2.ModelRef, chain: list[dict]) -> str:
    """How a person recognises the model in a table: where it came from and, for an artifact the mesh
    made, which method made it (the last link of its stored lineage `chain`; a folder's own
    modelpress.json is never read: an upload could claim any method)."""
    label = describe(ref)
    if chain:
        config = chain[-1].get("config") or {}
        detail = [str(chain[-1].get("method", ""))]
        if "bits" in config:
            detail.append(f"w{config['bits']}")
        if config.get("group_size"):
            detail.append(f"g{config['group_size']}")
        if config.get("activations"):
            detail.append(f"a8 {config['activations']}")
        label += f" ({' '.join(detail)})"
    return label


async def stored_chain(store, ref: common_pb2.ModelRef) -> list[dict]:
    """The lineage the stage runner stored with an artifact (none for an upload, a path or a built-in)."""
    if ref.WhichOneof("source") != "artifact_id":
        return []
    chain = (await store.stat(ref.artifact_id)).meta.get("chain", [])
    return chain if isinstance(chain, list) and all(isinstance(link, dict) for link in chain) else []


class Measurer:
    """The replica's measurements, one at a time: concurrent probes would time each other. Shared by
    the recipe stage and the EvaluatorService."""

    def __init__(self, runtime: ServiceRuntime) -> None:
        self._runtime = runtime
        self._turn = asyncio.Lock()

    async def folder(self, ref: common_pb2.ModelRef) -> Path:
        folder = await self._runtime.models.local_folder(ref)
        check_measurable(folder)
        return folder

    async def measure(self, fn, *args, **kwargs):
        """Runs `fn` in a thread, one measurement at a time. A cancelled call (deadline, caller gone)
        kills its probes and keeps the turn until its thread has ended, so no two measurements
        ever share the CPU."""
        async with self._turn:
            scope = ProbeScope()
            context = contextvars.copy_context()
            context.run(probe_scope.set, scope)
            work = asyncio.get_running_loop().run_in_executor(None, functools.partial(context.run, fn, *args, **kwargs))
            try:
                return await asyncio.shield(work)
            except asyncio.CancelledError:
                scope.cancel()
                await asyncio.wait({work})
                raise


class EvaluationStageServicer(TechniqueServicer):
    """The TechniqueService of the evaluator: Describe and CheckConfig of its one stage method, and a Run
    that measures its input and passes the same artifact on (no new artifact, no stage cache)."""

    def __init__(self, runtime: ServiceRuntime, measurer: Measurer) -> None:
        super().__init__(common_pb2.TECHNIQUE_EVALUATOR, {EVALUATE_METHOD: EvaluateStage()}, runtime,
                         version="2")
        self._measurer = measurer

    async def run_stage(self, stage: common_pb2.StageRequest, context: grpc.aio.ServicerContext
                        ) -> AsyncIterator[common_pb2.StageUpdate]:
        if stage.method not in self.methods:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, self.unknown_method(stage.method))
            return
        try:
            config = parse_config(EvaluationConfig, stage.config)
            folder = await self._measurer.folder(stage.input)
            figures = await self._measurer.measure(evaluate_folder, folder, config)
            if stage.input.WhichOneof("source") == "artifact_id":
                artifact = (await self.runtime.store.stat(stage.input.artifact_id)).ref
            else:
                fmt = common_pb2.ARTIFACT_FORMAT_HF_SAFETENSORS
                artifact = await self.runtime.store.put_dir(folder, fmt=fmt)
        except Exception as exc:  # noqa: BLE001
            await abort_with(context, exc, f"evaluate {describe(stage.input)}")
            return
        output = common_pb2.StageOutput(artifact=artifact, worker=self.runtime.worker_id)
        output.metrics.update(stage_figures(metrics_message(figures)))
        yield common_pb2.StageUpdate(output=output)


class EvaluatorServicer(evaluator_pb2_grpc.EvaluatorServiceServicer):
    def __init__(self, runtime: ServiceRuntime, benchmarks: BenchmarkStore, measurer: Measurer) -> None:
        self._runtime = runtime
        self._benchmarks = benchmarks
        self._measurer = measurer

    async def Evaluate(self, request, context):
        try:
            config = spec_to_config(request.spec)
            folder = await self._measurer.folder(request.model)
            has_reference = request.spec.HasField("reference")
            reference = await self._measurer.folder(request.spec.reference) if has_reference else None
            figures = await self._measurer.measure(evaluate_folder, folder, config, reference)
        except Exception as exc:  # noqa: BLE001
            await abort_with(context, exc, "evaluate")
            return
        return evaluator_pb2.EvaluatorServiceEvaluateResponse(metrics=metrics_message(figures))

    async def Compare(self, request, context):
        try:
            if not 2 <= len(request.models) <= MAX_COMPARED:
                raise ConfigError(f"models: give 2 to {MAX_COMPARED} models, got {len(request.models)}")
            if not 0 <= request.baseline_index < len(request.models):
                raise ConfigError(f"baseline_index: {request.baseline_index} is not an index of the "
                                  f"{len(request.models)} models")
            thresholds = threshold_set(request.threshold_set)
            config = spec_to_config(request.spec)
            folders = [await self._measurer.folder(ref) for ref in request.models]
            chains = [await stored_chain(self._runtime.store, ref) for ref in request.models]
            kinds = {describe(ref): modelio.model_kind(modelio.read_config(f))
                     for ref, f in zip(request.models, folders)}
            if len(set(kinds.values())) > 1:
                raise ConfigError("models: a comparison needs models of one kind, got "
                                  + ", ".join(f"{name} ({kind})" for name, kind in kinds.items()))
            figures, run = await self._measurer.measure(compare_folders, folders, request.baseline_index,
                                                        config)
        except UnknownThresholdSet as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc.args[0]))
            return
        except Exception as exc:  # noqa: BLE001
            await abort_with(context, exc, "compare")
            return
        measured = [metrics_message(f) for f in figures]
        baseline = measured[request.baseline_index]
        comparison = common_pb2.Comparison(
            comparison_id="c-" + uuid.uuid4().hex[:16], baseline_index=request.baseline_index,
            threshold_set=request.threshold_set, interleaved_rounds=run["rounds"], machine=baseline.machine,
            load=common_pb2.MachineLoad(**run["load"]),
            rows=[comparison_row(i, model_label(ref, chain), m, baseline, i == request.baseline_index, thresholds,
                                 [common_pb2.SpeedRatio(**r) for r in f["speed"]])
                  for i, (ref, chain, m, f) in enumerate(zip(request.models, chains, measured, figures))])
        comparison.created_at.GetCurrentTime()
        if not request.skip_report:
            comparison.report.CopyFrom(
                await self._store_report(reports.comparison_report(comparison)))
        return evaluator_pb2.EvaluatorServiceCompareResponse(comparison=comparison)

    async def ListThresholdSets(self, request, context):
        return evaluator_pb2.EvaluatorServiceListThresholdSetsResponse(
            threshold_sets=[threshold_set_message(s) for s in THRESHOLD_SETS.values()])

    async def Benchmark(self, request, context):
        try:
            batches = list(request.batch_sizes) or [1]
            lengths = list(request.sequence_lengths) or [128]
            config = parse_config(EvaluationConfig, {
                "batch_size": batches[0], "sequence_length": lengths[0],
                "batch_sizes": ",".join(map(str, batches)), "sequence_lengths": ",".join(map(str, lengths)),
                "latency_iterations": request.iterations or 10, "decode_tokens": request.iterations or 10,
                "threads": request.threads or 2,
                "quality_windows": 0, "quality_sentences": 0, **_cuda_if_present()})
            folder = await self._measurer.folder(request.model)
            figures = await self._measurer.measure(evaluate_folder, folder, config)
        except Exception as exc:  # noqa: BLE001
            await abort_with(context, exc, "benchmark")
            return
        rows = benchmark_rows(describe(request.model), metrics_message(figures), figures.get("power_w"))
        for row in rows:
            await self._benchmarks.put(row)
        return evaluator_pb2.EvaluatorServiceBenchmarkResponse(benchmarks=rows)

    async def ListBenchmarks(self, request, context):
        rows = await self._benchmarks.list(model=request.model, device=request.device)
        return evaluator_pb2.EvaluatorServiceListBenchmarksResponse(benchmarks=rows)

    async def RenderReport(self, request, context):
        try:
            events = [reports.to_plain(e) for e in request.events]
            methods = [reports.to_plain(m) for m in request.methods]
            lineage = []
            if request.job.output.id:
                try:
                    chain = (await self._runtime.store.stat(request.job.output.id)).meta.get("chain", [])
                    lineage = own_links(chain, request.job)
                except ArtifactNotFound:
                    lineage = []
            made = await asyncio.to_thread(reports.job_report, request.job, events, methods, lineage)
            ref = await self._store_report(made)
        except Exception as exc:  # noqa: BLE001
            await abort_with(context, exc, f"report of {request.job.job_id}")
            return
        return evaluator_pb2.EvaluatorServiceRenderReportResponse(report=ref)

    async def _store_report(self, made: reports.Report) -> common_pb2.ArtifactRef:
        with tempfile.TemporaryDirectory(prefix="mp-report-", dir=self._runtime.settings.work_dir) as tmp:
            folder = Path(tmp)
            (folder / "report.json").write_text(made.json())
            (folder / "report.html").write_text(made.html())
            return await self._runtime.store.put_dir(folder, fmt=common_pb2.ARTIFACT_FORMAT_REPORT)


def own_links(chain: list[dict], job: common_pb2.Job) -> list[dict]:
    """The output's chain as this job's report shows it. A stage reused from another job (maybe
    another tenant's: reuse is keyed by content) keeps how it made the output, not that job's id
    nor the ids of its input and config artifacts, which this job's tenant may not hold."""
    own_input = {f"artifact:{job.model.artifact_id}"} if job.model.artifact_id else set()
    shown = []
    for link in chain:
        if link.get("job_id") == job.job_id:
            shown.append(link)
            continue
        foreign = {**link, "job_id": "", "stage_index": 0,
                   "config": {k: v for k, v in link.get("config", {}).items() if not _names_artifact(v)}}
        if str(link.get("input", "")).startswith("artifact:") and link.get("input") not in own_input:
            foreign["input"] = "(an artifact of another job)"
        shown.append(foreign)
    return shown


def _names_artifact(value) -> bool:
    return isinstance(value, str) and value.startswith("a-")


def _cuda_if_present() -> dict:
    """Benchmarks run on the GPU where this replica has one (the CPU otherwise)."""
    return {"device": "cuda"} if describe_machine().device_type == "gpu" else {}


async def register(server: grpc.aio.Server, runtime: ServiceRuntime) -> list[str]:
    benchmarks = await BenchmarkStore(runtime.js).ensure()
    measurer = Measurer(runtime)
    stage_name = add_technique_service(server, EvaluationStageServicer(runtime, measurer))
    evaluator = EvaluatorServicer(runtime, benchmarks, measurer)
    evaluator_pb2_grpc.add_EvaluatorServiceServicer_to_server(evaluator, server)
    return [stage_name, evaluator_pb2.DESCRIPTOR.services_by_name["EvaluatorService"].full_name]
