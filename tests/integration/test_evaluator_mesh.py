"""Evaluation, comparison, hardware benchmarks and reports through the gateway (real gRPC, real NATS)."""

from __future__ import annotations

import asyncio
import json
import statistics
import shutil

import grpc
import pytest

from modelpress.v1 import common_pb2
from modelpress import Client
from services.common.measure.isa import support

FAST = common_pb2.EvaluationSpec(batch_size=1, sequence_length=16, latency_iterations=3, quality_windows=1,
                                 decode_tokens=2, quality_sentences=60)


def call(fn, *args, **kwargs):
    return asyncio.to_thread(fn, *args, **kwargs)


@pytest.fixture
def bert_pair(tiny_bert_dir, noisy_bert_dir, allowed_root):
    """The tiny encoder and a copy with noise on every weight, under the allowed root."""
    same, noisy = allowed_root / "bert", allowed_root / "bert-noisy"
    shutil.copytree(tiny_bert_dir, same)
    shutil.copytree(noisy_bert_dir, noisy)
    return same, noisy


async def test_compare_checks_a_threshold_set_and_keeps_a_report(gateway, model_dir):
    client = Client(gateway)
    job = await call(client.create_job, f"path:{model_dir}", "int8-compact",
                     evaluation=common_pb2.EvaluationSpec(skip=True))
    await call(lambda: list(client.watch(job.job_id)))
    job = await call(client.get_job, job.job_id)
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error

    comparison = await call(client.compare, [f"path:{model_dir}", f"artifact:{job.output.id}"], spec=FAST,
                            threshold_set="seed-int8")
    # Three rounds asked; up to three times as many while the ratio is too noisy to read.
    assert 3 <= comparison.interleaved_rounds <= 9 and comparison.machine.logical_cores >= 1
    base, int8 = comparison.rows
    assert base.baseline and not int8.baseline and base.size_ratio == 1.0
    assert int8.size_ratio == pytest.approx(int8.metrics.size_on_disk_bytes / base.metrics.size_on_disk_bytes)
    assert int8.size_ratio < 0.5 and int8.parameter_ratio == 1.0 and int8.flops_ratio > 0
    # The speedup is the median of per-round ratios of the same interleaved rounds, with its interval.
    per_round = sorted(b / m for b, m in zip(base.metrics.latency.samples_ms, int8.metrics.latency.samples_ms))
    main = int8.speed[0]
    assert main.phase == "prefill" and int8.speedup == main.speedup == pytest.approx(statistics.median(per_round))
    assert main.ci95_low <= main.speedup <= main.ci95_high and main.rounds == comparison.interleaved_rounds
    assert [r.phase for r in int8.speed] == ["prefill", "decode"]
    assert len(int8.metrics.latency.samples_ms) == comparison.interleaved_rounds
    assert comparison.load.logical_cores >= 1
    assert [c.metric for c in int8.checks] == ["size_ratio", "quality_retention"]
    size_check = int8.checks[0]
    assert size_check.passed and size_check.value == int8.size_ratio and size_check.threshold == 0.5
    assert int8.passed == all(c.passed for c in int8.checks)

    page = (await call(client.report, comparison_id=comparison.comparison_id, fmt="html")).decode()
    assert page.count("data:image/png;base64,") >= 2 and "seed-int8" in page
    data = json.loads(await call(client.report, comparison_id=comparison.comparison_id, fmt="json"))
    assert data["kind"] == "comparison" and len(data["comparison"]["rows"]) == 2


async def test_encoders_are_scored_on_task_quality_against_the_baseline(gateway, bert_pair):
    client = Client(gateway)
    same, noisy = bert_pair
    comparison = await call(client.compare, [f"path:{same}", f"path:{same}", f"path:{noisy}"], spec=FAST,
                            threshold_set="recovery-99")
    base, twin, drifted = comparison.rows
    assert base.metrics.kind == "encoder" and base.metrics.encoder.sentences == 60
    assert twin.metrics.encoder.mean_reference_cosine == pytest.approx(1.0, abs=1e-5)
    assert twin.metrics.encoder.has_reference and twin.metrics.encoder.neighbour_agreement == 1.0
    assert twin.quality_retention == pytest.approx(1.0, abs=1e-5) and twin.passed
    assert not twin.metrics.HasField("decode") and not twin.metrics.HasField("perplexity")
    assert drifted.metrics.encoder.mean_reference_cosine < 0.99 and not drifted.passed
    assert drifted.metrics.encoder.neighbour_agreement < 1.0
    assert drifted.quality_retention == pytest.approx(min(
        drifted.metrics.encoder.knn_topic_accuracy / base.metrics.encoder.knn_topic_accuracy,
        drifted.metrics.encoder.mean_reference_cosine))


async def test_benchmarks_persist_and_filter(gateway, model_dir):
    client = Client(gateway)
    rows = await call(client.run_benchmark, f"path:{model_dir}", batch_sizes=[1, 2], sequence_lengths=[8],
                      iterations=3)
    shapes = sorted((r.phase, r.batch_size, r.sequence_length) for r in rows)
    assert shapes == [("decode", 1, 8), ("prefill", 1, 8), ("prefill", 2, 8)]
    for row in rows:
        assert row.device_type == "cpu" and row.device_name and row.machine.isa_features is not None
        assert 0 < row.latency_p50_ms <= row.latency_p95_ms <= row.latency_p99_ms
        # Three passes asked; more (up to nine) while the p50 is too noisy to read.
        assert row.throughput > 0 and row.memory_usage_mb > 0 and 3 <= row.iterations <= 9
    stored = await call(client.list_benchmarks, model=str(model_dir))
    assert {r.benchmark_id for r in rows} <= {r.benchmark_id for r in stored}
    assert await call(client.list_benchmarks, model=str(model_dir), device="no-such-device") == []


async def test_bad_evaluation_requests_are_refused(gateway, model_dir, bert_pair):
    client = Client(gateway)
    cases = [
        (lambda: client.compare([f"path:{model_dir}", f"path:{bert_pair[0]}"], spec=FAST),
         grpc.StatusCode.INVALID_ARGUMENT, "one kind"),
        (lambda: client.compare([f"path:{model_dir}"]), grpc.StatusCode.INVALID_ARGUMENT, "at least 2"),
        (lambda: client.compare([f"path:{model_dir}"] * 2, baseline_index=2), grpc.StatusCode.INVALID_ARGUMENT,
         "baseline_index"),
        (lambda: client.compare([f"path:{model_dir}", "artifact:a-gone"]), grpc.StatusCode.NOT_FOUND,
         "models[1].artifact_id"),
        (lambda: client.compare([f"path:{model_dir}"] * 2, threshold_set="nope", spec=FAST),
         grpc.StatusCode.INVALID_ARGUMENT, "threshold_set: unknown 'nope'"),
        (lambda: client.run_benchmark(f"path:{model_dir}", batch_sizes=[0]), grpc.StatusCode.INVALID_ARGUMENT,
         "batch_sizes"),
        (lambda: client.evaluate(f"path:{model_dir}", common_pb2.EvaluationSpec(sequence_lengths=[9999])),
         grpc.StatusCode.INVALID_ARGUMENT, "evaluation.sequence_lengths"),
        (lambda: client.report(job_id="j-none"), grpc.StatusCode.NOT_FOUND, "j-none"),
        (lambda: client.report(comparison_id="c-none"), grpc.StatusCode.NOT_FOUND, "c-none"),
        (lambda: client.report(job_id="j-x", fmt="pdf"), grpc.StatusCode.INVALID_ARGUMENT, "format"),
    ]
    for fn, code, needle in cases:
        with pytest.raises(grpc.RpcError) as info:
            await call(fn)
        assert info.value.code() == code and needle in info.value.details(), info.value.details()


async def test_threshold_sets_carry_the_seed_criteria(gateway):
    sets = {s.name: s for s in await call(Client(gateway).list_threshold_sets)}
    assert {"seed-int8", "seed-int4", "seed-distillation", "seed-pruning", "seed-deployment", "recovery-99"} <= set(sets)
    assert [(c.metric, c.comparison, c.threshold) for c in sets["seed-int4"].checks] == [
        ("size_ratio", "<=", 0.25), ("quality_retention", ">=", 0.95)]


async def test_recommendation_measures_missing_candidates_then_reuses_them(gateway, model_dir):
    client = Client(gateway)
    quick = common_pb2.EvaluationSpec(batch_size=1, sequence_length=16, latency_iterations=3, quality_windows=1,
                                      decode_tokens=2)
    constraints = dict(target="edge", max_size_mb=1000, min_quality_retention=0.9,
                       candidate_recipes=["fp16", "int8-weight-only", "int8-compact"], evaluation=quick)
    # fp16 computes in f16, which most CPUs emulate: then it is never measured nor recommended.
    (worker,) = (await call(client.engines)).workers
    fp16_emulated = support("f16", worker.machine.isa_features).emulated
    measured = {"int8-weight-only", "int8-compact"} | (set() if fp16_emulated else {"fp16"})
    with pytest.raises(grpc.RpcError) as info:
        await call(client.recommend, f"path:{model_dir}", stored_only=True, **constraints)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "int8-compact" in info.value.details()

    first = await call(client.recommend, f"path:{model_dir}", **constraints)
    assert first.isa_class == worker.isa_class and "measured now on this mesh's evaluator" in first.note
    by_recipe = {r.strategy.recipe: r for r in first.recommendations}
    assert set(by_recipe) == measured | {"fp16"}
    assert {name for name, r in by_recipe.items() if r.measured_now} == measured
    if fp16_emulated:
        assert not by_recipe["fp16"].feasible and "emulated" in by_recipe["fp16"].reason
    int8 = by_recipe["int8-compact"]
    assert int8.rank == 1 and int8.feasible and "best for edge" in int8.reason  # the smallest, quality kept
    assert int8.size_mb < by_recipe["int8-weight-only"].size_mb and int8.quality_retention > 0.9
    assert int8.isa_class == worker.isa_class and int8.compute_precision == "fp32"
    job = await call(client.get_job, int8.job_id)
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED and job.recipe == "int8-compact"
    assert int8.size_mb == pytest.approx(job.result.compressed_model_size_bytes / 1e6)
    assert first.strategies[0].recipe == "int8-compact"
    assert first.baseline_size_mb > int8.size_mb and first.device_name

    again = await call(client.recommend, f"path:{model_dir}", stored_only=True,
                       **{**constraints, "max_size_mb": int8.size_mb * 0.5})
    assert not any(r.measured_now for r in again.recommendations)
    assert {r.job_id for r in again.recommendations} == {r.job_id for r in first.recommendations}
    assert not again.strategies and all("max_size_mb" in r.violated_constraints for r in again.recommendations
                                        if r.job_id)

    strategies = {s.recipe: s for s in await call(client.list_strategies)}
    assert strategies["int8-compact"].expected_compression_ratio == pytest.approx(
        job.result.compression_ratio)
    assert int8.job_id in strategies["int8-compact"].evidence
    assert strategies["int8-compact"].measured_isa_class == worker.isa_class

    with pytest.raises(grpc.RpcError) as info:
        await call(client.recommend, f"path:{model_dir}", isa_class="sse9")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "isa_class" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        await call(client.list_strategies, isa_class="sse9")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "isa_class" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        await call(client.recommend, f"path:{model_dir}", target="desktop")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "target" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        await call(client.recommend, f"path:{model_dir}", candidate_recipes=["int3"])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "candidate_recipes" in info.value.details()


async def test_an_evaluation_stage_measures_its_input_and_passes_it_on(workers, model_dir):
    from google.protobuf import struct_pb2

    from modelpress.v1 import technique_pb2, technique_pb2_grpc

    config = struct_pb2.Struct()
    config.update({"sequence_length": 16, "latency_iterations": 2, "quality_windows": 1, "decode_tokens": 0})
    stage = common_pb2.StageRequest(job_id="", stage_index=0, input=common_pb2.ModelRef(path=str(model_dir)),
                                    method="evaluate", config=config)
    async with grpc.aio.insecure_channel(workers.targets["evaluator"]) as channel:
        stub = technique_pb2_grpc.TechniqueServiceStub(channel)
        updates = [u async for u in stub.Run(technique_pb2.TechniqueServiceRunRequest(stage=stage))]
        output = updates[-1].update.output
        assert output.artifact.id.startswith("a-") and output.artifact.format == common_pb2.ARTIFACT_FORMAT_HF_SAFETENSORS
        assert output.metrics["perplexity"] > 1 and output.metrics["flops"] > 0
        # An artifact input is handed on as the very same artifact.
        stage.input.CopyFrom(common_pb2.ModelRef(artifact_id=output.artifact.id))
        again = [u async for u in stub.Run(technique_pb2.TechniqueServiceRunRequest(stage=stage))]
        assert again[-1].update.output.artifact.id == output.artifact.id
        stage.config.update({"batch_sizes": "1,x"})
        with pytest.raises(grpc.aio.AioRpcError) as info:
            [u async for u in stub.Run(technique_pb2.TechniqueServiceRunRequest(stage=stage))]
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "batch_sizes" in info.value.details()


def _probes() -> int:
    """Measurement probes this process's evaluator is running now (each is a child process)."""
    import os
    import pathlib

    count = 0
    for proc in pathlib.Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
            parent = int((proc / "stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        count += parent == os.getpid() and b"services.evaluator." in cmdline and b"probe" in cmdline
    return count


async def test_abandoned_evaluations_stop_their_probes_and_never_overlap(gateway, model_dir):
    from modelpress.v1 import gateway_pb2, gateway_pb2_grpc

    long_spec = common_pb2.EvaluationSpec(batch_size=8, sequence_length=256, latency_iterations=1000,
                                          quality_windows=1)
    request = gateway_pb2.EvaluateRequest(model=common_pb2.ModelRef(path=str(model_dir)), spec=long_spec)
    most = 0
    sampling = True

    async def sample():
        nonlocal most
        while sampling:
            most = max(most, await asyncio.to_thread(_probes))
            await asyncio.sleep(0.1)

    sampler = asyncio.create_task(sample())
    with grpc.insecure_channel(gateway) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        for _ in range(3):  # one after another, as a client retrying after its deadline would
            with pytest.raises(grpc.RpcError) as info:
                await call(stub.Evaluate, request, timeout=3)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    for _ in range(50):  # the last abandoned probe is killed, not left to run its 1000 iterations
        if not await asyncio.to_thread(_probes):
            break
        await asyncio.sleep(0.2)
    sampling = False
    await sampler
    assert await asyncio.to_thread(_probes) == 0
    assert most == 1  # a probe ran for each call, never two at once
