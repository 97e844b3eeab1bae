"""How much of a baseline's quality a model keeps: one definition for comparisons, job
headlines, recommendations and strategy templates. Works on ModelMetrics only."""

from __future__ import annotations

from modelpress.v1 import common_pb2

CAUSAL_QUALITY = "min(top-1 accuracy ratio, perplexity ratio baseline/model)"
ENCODER_QUALITY = "min(topic k-NN accuracy ratio, mean cosine to the baseline's embeddings)"


def measured_retention(model: common_pb2.ModelMetrics, baseline: common_pb2.ModelMetrics
                       ) -> tuple[float | None, str, str]:
    """(quality kept or None, what that number is, why it is None: empty when measured).

    Conservative by design: the worse of two views, so a model cannot pass on perplexity while
    its top-1 falls, or on topic accuracy while its embeddings drift away from the baseline's."""
    if baseline.kind == "encoder":
        for metrics in (baseline, model):
            if not metrics.HasField("encoder"):
                return None, ENCODER_QUALITY, metrics.not_measured.get(
                    "encoder", "no held-out sentences were embedded")
        if not baseline.encoder.knn_topic_accuracy:
            return None, ENCODER_QUALITY, "the baseline's topic k-NN accuracy is 0: no ratio to it"
        views = [model.encoder.knn_topic_accuracy / baseline.encoder.knn_topic_accuracy]
        if model.encoder.has_reference:
            views.append(model.encoder.mean_reference_cosine)
        return min(views), ENCODER_QUALITY, ""
    for metrics in (baseline, model):
        for name in ("perplexity", "top1_accuracy"):
            if not metrics.HasField(name):
                return None, CAUSAL_QUALITY, metrics.not_measured.get(name, "no held-out windows were scored")
    if not (baseline.top1_accuracy and model.perplexity):
        return None, CAUSAL_QUALITY, "a figure it divides by is 0: the ratio is undefined"
    kept = min(model.top1_accuracy / baseline.top1_accuracy, baseline.perplexity / model.perplexity)
    return kept, CAUSAL_QUALITY, ""


def quality_retention(model: common_pb2.ModelMetrics, baseline: common_pb2.ModelMetrics) -> tuple[float, str]:
    """How much of the baseline's quality a model keeps, in [0, ~1], and what that number is;
    0.0 when it was not measured (a reader that must tell the two apart uses measured_retention)."""
    kept, metric, _ = measured_retention(model, baseline)
    return (kept if kept is not None else 0.0), metric
