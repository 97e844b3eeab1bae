"""Ratios of measured models against a baseline, quality retention, and threshold checks.

Works on ModelMetrics messages (the evaluator's data model) and nothing else: no I/O.
"""

from __future__ import annotations

from modelpress.v1 import common_pb2
from services.evaluator.thresholds import ThresholdSetDef

CAUSAL_QUALITY = "min(top-1 accuracy ratio, perplexity ratio baseline/model)"
ENCODER_QUALITY = "min(topic k-NN accuracy ratio, mean cosine to the baseline's embeddings)"


def _ratio(value: float, base: float) -> float:
    return value / base if base else 0.0


def quality_retention(model: common_pb2.ModelMetrics, baseline: common_pb2.ModelMetrics) -> tuple[float, str]:
    """How much of the baseline's quality a model keeps, in [0, ~1], and what that number is.

    Conservative by design: the worse of two views, so a model cannot pass on perplexity while
    its top-1 falls, or on topic accuracy while its embeddings drift away from the baseline's."""
    if baseline.kind == "encoder":
        if not baseline.encoder.knn_topic_accuracy:
            return 0.0, ENCODER_QUALITY
        views = [_ratio(model.encoder.knn_topic_accuracy, baseline.encoder.knn_topic_accuracy)]
        if model.encoder.has_reference:
            views.append(model.encoder.mean_reference_cosine)
        return min(views), ENCODER_QUALITY
    if not (baseline.perplexity and model.perplexity and baseline.top1_accuracy):
        return 0.0, CAUSAL_QUALITY
    return min(_ratio(model.top1_accuracy, baseline.top1_accuracy),
               _ratio(baseline.perplexity, model.perplexity)), CAUSAL_QUALITY


def comparison_row(index: int, label: str, model: common_pb2.ModelMetrics, baseline: common_pb2.ModelMetrics,
                   is_baseline: bool, thresholds: ThresholdSetDef | None) -> common_pb2.ComparisonRow:
    retention, metric = quality_retention(model, baseline)
    row = common_pb2.ComparisonRow(
        index=index, model=label, baseline=is_baseline,
        size_ratio=_ratio(model.size_on_disk_bytes, baseline.size_on_disk_bytes),
        parameter_ratio=_ratio(model.parameters, baseline.parameters),
        flops_ratio=_ratio(model.flops, baseline.flops),
        latency_ratio=_ratio(model.latency.p50_ms, baseline.latency.p50_ms),
        speedup=_ratio(baseline.latency.p50_ms, model.latency.p50_ms),
        memory_ratio=_ratio(model.peak_rss_mb, baseline.peak_rss_mb),
        quality_retention=retention, quality_metric=metric,
    )
    row.metrics.CopyFrom(model)
    # The baseline is what the others are held against, not a candidate: no checks of its own.
    for check in (thresholds.checks if thresholds and not is_baseline else ()):
        value = getattr(row, check.metric)
        row.checks.add(metric=check.metric, description=check.description, value=value, threshold=check.threshold,
                       comparison=check.comparison, passed=check.passes(value))
    row.passed = all(c.passed for c in row.checks)
    return row


def threshold_set_message(definition: ThresholdSetDef) -> common_pb2.ThresholdSet:
    return common_pb2.ThresholdSet(name=definition.name, description=definition.description, checks=[
        common_pb2.ThresholdCheck(metric=c.metric, description=c.description, threshold=c.threshold,
                                  comparison=c.comparison) for c in definition.checks])
