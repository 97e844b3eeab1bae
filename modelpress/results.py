"""The seed's CompressionResult, computed from the evaluator's before/after figures."""

from __future__ import annotations

from modelpress.v1 import common_pb2


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def task_accuracy(metrics: common_pb2.ModelMetrics) -> float:
    """The seed's `accuracy`: next-token top-1 for causal LMs, held-out topic k-NN accuracy of the
    sentence embeddings for encoders."""
    return metrics.encoder.knn_topic_accuracy if metrics.kind == "encoder" else metrics.top1_accuracy


def compression_result(job_id: str, original: common_pb2.ModelMetrics, compressed: common_pb2.ModelMetrics,
                       artifact_id: str, *, speed: list[common_pb2.SpeedRatio] = (),
                       load: common_pb2.MachineLoad | None = None) -> common_pb2.CompressionResult:
    """`speed`: the compressed model's paired ratios to the original from one interleaved run
    (main phase, then decode); latency_improvement is the main one."""
    accuracy_before, accuracy_after = task_accuracy(original), task_accuracy(compressed)
    by_phase = {r.phase: r for r in speed}
    main = speed[0] if speed else None
    result = common_pb2.CompressionResult(
        job_id=job_id,
        original_model_size_bytes=original.size_on_disk_bytes,
        compressed_model_size_bytes=compressed.size_on_disk_bytes,
        compression_ratio=_ratio(original.size_on_disk_bytes, compressed.size_on_disk_bytes),
        original_params=original.parameters,
        compressed_params=compressed.parameters,
        param_reduction_ratio=1 - _ratio(compressed.parameters, original.parameters) if original.parameters else 0.0,
        original_latency_ms=original.latency.p50_ms,
        compressed_latency_ms=compressed.latency.p50_ms,
        latency_improvement=main.speedup if main else _ratio(original.latency.p50_ms, compressed.latency.p50_ms),
        original_memory_mb=original.peak_rss_mb,
        compressed_memory_mb=compressed.peak_rss_mb,
        memory_reduction=1 - _ratio(compressed.peak_rss_mb, original.peak_rss_mb) if original.peak_rss_mb else 0.0,
        original_accuracy=accuracy_before,
        compressed_accuracy=accuracy_after,
        accuracy_loss=_ratio(accuracy_before - accuracy_after, accuracy_before),
        original_perplexity=original.perplexity,
        compressed_perplexity=compressed.perplexity,
        perplexity_increase=_ratio(compressed.perplexity - original.perplexity, original.perplexity),
        compressed_artifact_id=artifact_id,
    )
    result.original.CopyFrom(original)
    result.compressed.CopyFrom(compressed)
    if main:
        result.prefill_speedup.CopyFrom(main)
    if "decode" in by_phase:
        result.decode_speedup.CopyFrom(by_phase["decode"])
        result.original_decode_ms = original.decode.p50_ms
        result.compressed_decode_ms = compressed.decode.p50_ms
    if load is not None:
        result.timing_load.CopyFrom(load)
    return result


def result_fields(result: common_pb2.CompressionResult, recipe: str = "") -> dict:
    """The result as JSON under the proto's own field names (units in the names: `_bytes`, `_ms`,
    `_mb`; ratios plain), the interleaved speed ratios and load, and the one-line outcome.
    The same names as the proto and the client: there is one set of names."""
    from google.protobuf import json_format

    from modelpress.headline import job_headline

    out = {field.name: getattr(result, field.name) for field in result.DESCRIPTOR.fields
           if field.type != field.TYPE_MESSAGE}
    for name in ("prefill_speedup", "decode_speedup", "timing_load"):
        if result.HasField(name):
            out[name] = json_format.MessageToDict(getattr(result, name), preserving_proto_field_name=True,
                                                  always_print_fields_with_no_presence=True)
    told = job_headline(recipe, result)
    out["headline"] = {"text": told.text, "colour": told.colour, "regressions": told.regressions,
                       "unreliable": told.unreliable}
    return out
