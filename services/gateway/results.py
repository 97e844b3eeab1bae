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
                       artifact_id: str) -> common_pb2.CompressionResult:
    accuracy_before, accuracy_after = task_accuracy(original), task_accuracy(compressed)
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
        latency_improvement=_ratio(original.latency.p50_ms, compressed.latency.p50_ms),
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
    return result


# The seed's field names (units: bytes, milliseconds, megabytes; ratios are plain numbers).
SEED_FIELDS = {
    "original_model_size": "original_model_size_bytes",
    "compressed_model_size": "compressed_model_size_bytes",
    "compression_ratio": "compression_ratio",
    "original_params": "original_params",
    "compressed_params": "compressed_params",
    "param_reduction_ratio": "param_reduction_ratio",
    "original_latency": "original_latency_ms",
    "compressed_latency": "compressed_latency_ms",
    "latency_improvement": "latency_improvement",
    "original_memory": "original_memory_mb",
    "compressed_memory": "compressed_memory_mb",
    "memory_reduction": "memory_reduction",
    "original_accuracy": "original_accuracy",
    "compressed_accuracy": "compressed_accuracy",
    "accuracy_loss": "accuracy_loss",
    "original_perplexity": "original_perplexity",
    "compressed_perplexity": "compressed_perplexity",
    "perplexity_increase": "perplexity_increase",
    "compressed_model_path": "compressed_artifact_id",
    "evaluation_report_path": "evaluation_report_path",
}


def seed_result(result: common_pb2.CompressionResult) -> dict:
    """The result under the seed's CompressionResult names (units documented in the README)."""
    out = {"job_id": result.job_id}
    out.update({seed: getattr(result, field) for seed, field in SEED_FIELDS.items()})
    return out
