"""A probe's figures (a dict) as the ModelMetrics message: only what was measured is set, and every
figure left unset is named in `not_measured` with why, so no surface can read a 0 for it."""

from __future__ import annotations

from modelpress.results import NOT_PRODUCED
from modelpress.v1 import common_pb2

# Figures a measurement may leave out (proto3 `optional` scalars and sub-messages of ModelMetrics).
OPTIONAL_SCALARS = ("flops", "perplexity", "top1_accuracy", "quality_tokens", "cuda_max_memory_mb")
OPTIONAL_MESSAGES = ("latency", "decode", "encoder")
_REFERENCE_FIGURES = ("mean_reference_cosine", "min_reference_cosine", "neighbour_agreement", "same_tokenization")


def latency_message(figures: dict) -> common_pb2.LatencyStats:
    return common_pb2.LatencyStats(**{k: v for k, v in figures.items()
                                      if k in common_pb2.LatencyStats.DESCRIPTOR.fields_by_name})


def encoder_message(figures: dict) -> common_pb2.EncoderQuality:
    """Without a reference model the reference figures stay unset (they would read as 0 otherwise)."""
    kept = {k: v for k, v in figures.items()
            if k in common_pb2.EncoderQuality.DESCRIPTOR.fields_by_name
            and (figures.get("has_reference") or k not in _REFERENCE_FIGURES)}
    return common_pb2.EncoderQuality(**kept)


def device_name(machine: dict) -> str:
    if not machine:
        return ""
    if machine.get("device_type") == "gpu" and machine.get("gpu_name"):
        return machine["gpu_name"]
    return f"{machine.get('cpu_model', '')} ({machine.get('logical_cores', 0)} threads)"


def metrics_message(figures: dict) -> common_pb2.ModelMetrics:
    machine = figures.get("machine", {})
    metrics = common_pb2.ModelMetrics(
        size_on_disk_bytes=figures["size_on_disk_bytes"],
        parameters=figures.get("parameters", 0),
        parameter_bytes=figures.get("parameter_bytes", 0),
        peak_rss_mb=figures.get("peak_rss_mb", 0.0),
        architecture=figures.get("architecture", ""),
        kind=figures.get("kind", ""),
        machine=common_pb2.MachineInfo(**machine) if machine else None,
        device=device_name(machine),
    )
    for name in OPTIONAL_SCALARS:
        if figures.get(name) is not None:
            setattr(metrics, name, figures[name])
    if "latency" in figures:
        metrics.latency.CopyFrom(latency_message(figures["latency"]))
    metrics.latency_grid.extend(latency_message(f) for f in figures.get("latency_grid", []))
    if figures.get("decode") is not None:
        metrics.decode.CopyFrom(latency_message(figures["decode"]))
    if "encoder" in figures:
        metrics.encoder.CopyFrom(encoder_message(figures["encoder"]))
    if "timing_load" in figures:
        metrics.timing_load.CopyFrom(common_pb2.MachineLoad(**figures["timing_load"]))
    said = figures.get("not_measured", {})
    for name in (*OPTIONAL_SCALARS, *OPTIONAL_MESSAGES):
        if not metrics.HasField(name):
            metrics.not_measured[name] = said.get(name, NOT_PRODUCED)
    return metrics


def stage_figures(metrics: common_pb2.ModelMetrics) -> dict:
    """An evaluate stage's figures as its StageOutput's metrics: the measured ones, and why the others
    were not (a Struct has no null that survives every reader, so a missing figure is left out)."""
    flat = {"size_on_disk_bytes": metrics.size_on_disk_bytes, "parameters": metrics.parameters,
            "peak_rss_mb": metrics.peak_rss_mb}
    for name in ("flops", "perplexity", "top1_accuracy"):
        if metrics.HasField(name):
            flat[name] = getattr(metrics, name)
    if metrics.HasField("latency"):
        flat["latency_p50_ms"] = metrics.latency.p50_ms
    if metrics.HasField("encoder"):
        flat["knn_topic_accuracy"] = metrics.encoder.knn_topic_accuracy
    if metrics.not_measured:
        flat["not_measured"] = dict(metrics.not_measured)
    return flat
