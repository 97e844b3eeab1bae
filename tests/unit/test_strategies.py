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
