"""Strategy templates take their expected figures from one model kind, never a median across kinds."""

import pytest

from modelpress.v1 import common_pb2
from services.gateway.strategies import strategy


def _job(job_id: str, kind: str, ratio: float, speedup: float) -> common_pb2.Job:
    job = common_pb2.Job(job_id=job_id, recipe="int8-weight-only", model=common_pb2.ModelRef(builtin="m"))
    job.result.compressed_model_size_bytes = 100
    job.result.compression_ratio, job.result.latency_improvement = ratio, speedup
    for metrics in (job.result.original, job.result.compressed):
        metrics.kind = kind
        metrics.perplexity, metrics.top1_accuracy = 10.0, 0.5
    return job


def test_the_most_measured_kind_sets_the_figures_and_the_other_is_named():
    jobs = [_job("j-1", "causal-lm", 2.4, 0.9), _job("j-2", "causal-lm", 2.6, 1.1),
            _job("j-3", "encoder", 3.9, 1.8)]
    made = strategy("int8-weight-only", jobs)
    assert made.expected_compression_ratio == pytest.approx(2.5)
    assert made.expected_speedup == pytest.approx(1.0)
    assert made.evidence.startswith("causal-lm: median of 2")
    assert "encoder (1 job(s), not in these figures)" in made.evidence and "3.90x" in made.evidence


def _on(job: common_pb2.Job, flags: list[str]) -> common_pb2.Job:
    job.result.compressed.machine.isa_features[:] = flags
    return job


def test_figures_come_from_the_isa_class_asked_for_and_say_when_there_are_none():
    avx2, amx = ["avx2"], ["avx2", "avx512_bf16", "amx_bf16", "amx_int8"]
    jobs = [_on(_job("j-1", "causal-lm", 2.0, 0.8), avx2), _on(_job("j-2", "causal-lm", 2.0, 3.0), amx)]
    assert strategy("int8-weight-only", jobs, "amx").expected_speedup == pytest.approx(3.0)
    on_avx2 = strategy("int8-weight-only", jobs, "avx2")
    assert on_avx2.expected_speedup == pytest.approx(0.8) and on_avx2.measured_isa_class == "avx2"
    borrowed = strategy("int8-weight-only", jobs[1:], "avx2")
    assert borrowed.evidence.startswith("no measurement on an avx2 CPU; figures from amx")
    assert "emulated" in strategy("openvino-bf16", [], "avx2").emulated_on_isa
    assert not strategy("openvino-bf16", [], "amx").emulated_on_isa
