"""The one result schema: what a job looks like on every surface, and "not measured" as None, never 0."""

import json

import pytest

from modelpress.results import (RESULT_FIGURES, compression_result, job_document, message_document, result_fields,
                                unevaluated_result)
from modelpress.v1 import common_pb2


def _encoder(size: int, knn: float, *, onnx: bool = False) -> common_pb2.ModelMetrics:
    """An encoder as the evaluator reports it: no perplexity or decode, and no FLOPs for an ONNX graph."""
    metrics = common_pb2.ModelMetrics(kind="encoder", size_on_disk_bytes=size, parameters=22_000_000,
                                      peak_rss_mb=300.0, encoder=common_pb2.EncoderQuality(knn_topic_accuracy=knn),
                                      latency=common_pb2.LatencyStats(p50_ms=4.0))
    metrics.not_measured.update(perplexity="an encoder has no perplexity",
                                top1_accuracy="an encoder has no next-token accuracy",
                                decode="an encoder has no per-token decode")
    if onnx:
        metrics.not_measured["flops"] = "the FLOPs of an ONNX graph are not counted"
    else:
        metrics.flops = 10**9
    return metrics


def _encoder_job() -> common_pb2.Job:
    original, compressed = _encoder(90_000_000, 0.85), _encoder(23_000_000, 0.849, onnx=True)
    job = common_pb2.Job(job_id="j-1", recipe="onnx-int8", state=common_pb2.JOB_STATE_SUCCEEDED,
                         model=common_pb2.ModelRef(builtin="minilm-l6"))
    job.stages.add(index=0, state=common_pb2.JOB_STATE_SUCCEEDED,
                   spec=common_pb2.StageSpec(technique=common_pb2.TECHNIQUE_OPTIMIZER, method="onnx-int8"),
                   output=common_pb2.ArtifactRef(id="a-1", size_bytes=23_000_512,
                                                 format=common_pb2.ARTIFACT_FORMAT_ONNX))
    job.stages[0].metrics.update({"fused": 3})
    job.created_at.FromSeconds(1_800_000_000)
    speed = [common_pb2.SpeedRatio(phase="forward", speedup=1.5, ci95_low=1.4, ci95_high=1.6, rounds=10)]
    job.result.CopyFrom(compression_result("j-1", original, compressed, "a-1", speed=speed))
    return job


def test_an_encoder_result_leaves_perplexity_unset_and_says_why():
    result = _encoder_job().result
    assert not result.HasField("perplexity_increase") and not result.HasField("original_perplexity")
    assert result.not_measured["perplexity_increase"] == "an encoder has no perplexity"
    assert not result.HasField("original_decode_ms") and not result.HasField("decode_speedup")
    # What was measured is set, zero or not.
    assert result.compression_ratio == pytest.approx(90 / 23) and result.latency_improvement == 1.5
    assert result.accuracy_loss == pytest.approx(0.001 / 0.85)


def test_the_document_uses_proto_names_enum_names_int_numbers_and_null_for_the_unmeasured():
    document = job_document(_encoder_job())
    text = json.dumps(document)  # JSON-ready as it is
    assert "accuracyLoss" not in text and "sizeOnDiskBytes" not in text
    assert document["state"] == "JOB_STATE_SUCCEEDED"
    stage = document["stages"][0]
    assert stage["spec"]["technique"] == "TECHNIQUE_OPTIMIZER" and stage["output"]["format"] == "ARTIFACT_FORMAT_ONNX"
    assert stage["output"]["size_bytes"] == 23_000_512 and stage["metrics"] == {"fused": 3}
    assert stage["started_at"] is None and document["created_at"] == "2027-01-15T08:00:00Z"
    result = document["result"]
    assert result["original_model_size_bytes"] == 90_000_000 and isinstance(result["original_model_size_bytes"], int)
    assert result["perplexity_increase"] is None and result["original_perplexity"] is None
    assert result["not_measured"]["perplexity_increase"] == "an encoder has no perplexity"
    assert result["compressed"]["flops"] is None and result["original"]["flops"] == 10**9
    assert result["compressed"]["not_measured"]["flops"].startswith("the FLOPs of an ONNX graph")
    assert result["decode_speedup"] is None and result["prefill_speedup"]["speedup"] == 1.5
    # Zero fields are kept: every field of the message is a key.
    assert set(result) >= {f.name for f in common_pb2.CompressionResult.DESCRIPTOR.fields}
    assert document["error"] == "" and document["recompute"] is False
    assert result["headline"]["colour"] == "green" and result["headline"]["text"].startswith("onnx-int8: size")


def test_a_skipped_evaluation_has_no_figures_but_the_size_and_a_reason_for_each():
    result = unevaluated_result("j-2", "a-2", "evaluation skipped", compressed_size_bytes=4096)
    document = result_fields(result, "onnx-int8")
    assert document["compressed_model_size_bytes"] == 4096
    for name in RESULT_FIGURES:
        if name != "compressed_model_size_bytes":
            assert document[name] is None, name
            assert document["not_measured"][name] == "evaluation skipped"
    assert document["compression_ratio"] is None and document["original_model_size_bytes"] is None


def test_a_job_that_ended_before_its_evaluation_still_has_a_result_and_a_red_headline():
    running = common_pb2.Job(job_id="j-3", recipe="rtn", state=common_pb2.JOB_STATE_RUNNING)
    assert job_document(running)["result"] is None
    failed = common_pb2.Job(job_id="j-3", recipe="rtn", state=common_pb2.JOB_STATE_FAILED, error="boom")
    result = job_document(failed)["result"]
    assert result["headline"]["colour"] == "red" and result["compression_ratio"] is None
    assert result["not_measured"]["compression_ratio"] == "the job ended failed before its evaluation"


def test_message_document_marks_an_unset_optional_as_none_and_a_set_zero_as_zero():
    check = common_pb2.ThresholdCheck(metric="flops_ratio", threshold=0.5, comparison="<=")
    assert message_document(check)["value"] is None
    check.value = 0.0
    assert message_document(check)["value"] == 0.0


def test_a_causal_lm_result_sets_every_figure_it_has():
    def causal(size, ppl, top1):
        return common_pb2.ModelMetrics(kind="causal-lm", size_on_disk_bytes=size, parameters=100, peak_rss_mb=800,
                                       perplexity=ppl, top1_accuracy=top1, flops=10**10,
                                       latency=common_pb2.LatencyStats(p50_ms=20),
                                       decode=common_pb2.LatencyStats(p50_ms=5))
    speed = [common_pb2.SpeedRatio(phase="prefill", speedup=1.2), common_pb2.SpeedRatio(phase="decode", speedup=2.0)]
    result = compression_result("j-4", causal(400, 10.0, 0.5), causal(100, 10.5, 0.45), "a-4", speed=speed)
    assert not result.not_measured
    assert all(result.HasField(name) for name in RESULT_FIGURES)
    assert result.perplexity_increase == pytest.approx(0.05) and result.original_decode_ms == 5
