"""How much of a baseline's quality a model keeps: one definition for comparisons, job
headlines, recommendations and strategy templates. Works on ModelMetrics only."""

from __future__ import annotations

from modelpress.v1 import common_pb2

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
