"""Ratios of measured models against a baseline, quality retention, and threshold checks.

Works on ModelMetrics messages (the evaluator's data model) and nothing else: no I/O.
"""

from __future__ import annotations

from modelpress.quality_kept import measured_retention, quality_retention  # noqa: F401 - read from here too
from modelpress.results import NOT_PRODUCED, figure, not_measured_reason
from modelpress.v1 import common_pb2
from services.common.contract.thresholds import ThresholdSetDef


def _ratio(value: float | None, base: float | None) -> float | None:
    return value / base if value is not None and base else None


def _latency(metrics: common_pb2.ModelMetrics) -> float | None:
    return metrics.latency.p50_ms if metrics.HasField("latency") else None


def _plain(metrics: common_pb2.ModelMetrics, name: str):
    """A figure every measurement has (size, parameters, peak RSS): None only when it is 0."""
    return getattr(metrics, name) or None


# Each ratio of a row and the ModelMetrics figure it divides (where a missing one's reason is).
_SOURCES = {"size_ratio": "size_on_disk_bytes", "parameter_ratio": "parameters", "flops_ratio": "flops",
            "latency_ratio": "latency", "speedup": "latency", "memory_ratio": "peak_rss_mb"}


def comparison_row(index: int, label: str, model: common_pb2.ModelMetrics, baseline: common_pb2.ModelMetrics,
                   is_baseline: bool, thresholds: ThresholdSetDef | None,
                   speed: list[common_pb2.SpeedRatio] = ()) -> common_pb2.ComparisonRow:
    """`speed`: the model's paired ratios to the baseline from the interleaved run (main phase
    first); the row's speedup is that ratio when given, else the ratio of the two p50s. A ratio
    whose figures were not both measured is left unset, with why in `not_measured`."""
    retention, metric, why_not_kept = measured_retention(model, baseline)
    main_speedup = speed[0].speedup if speed else _ratio(_latency(baseline), _latency(model))
    ratios = {
        "size_ratio": _ratio(_plain(model, "size_on_disk_bytes"), _plain(baseline, "size_on_disk_bytes")),
        "parameter_ratio": _ratio(_plain(model, "parameters"), _plain(baseline, "parameters")),
        "flops_ratio": _ratio(figure(model, "flops"), figure(baseline, "flops")),
        "latency_ratio": _ratio(1.0, main_speedup),
        "speedup": main_speedup,
        "memory_ratio": _ratio(_plain(model, "peak_rss_mb"), _plain(baseline, "peak_rss_mb")),
        "quality_retention": retention,
    }
    row = common_pb2.ComparisonRow(index=index, model=label, baseline=is_baseline, speed=speed,
                                   quality_metric=metric)
    for name, value in ratios.items():
        if value is not None:
            setattr(row, name, value)
        elif name == "quality_retention":
            row.not_measured[name] = why_not_kept
        else:
            row.not_measured[name] = _why(_SOURCES[name], model, baseline)
    row.metrics.CopyFrom(model)
    # The baseline is what the others are held against, not a candidate: no checks of its own.
    for check in (thresholds.checks if thresholds and not is_baseline else ()):
        added = row.checks.add(metric=check.metric, description=check.description, threshold=check.threshold,
                               comparison=check.comparison)
        if row.HasField(check.metric):
            added.value = getattr(row, check.metric)
            added.passed = check.passes(added.value)
        else:  # never passed by omission
            added.not_measured = row.not_measured[check.metric]
    row.passed = all(c.passed for c in row.checks)
    return row


def _why(source: str, model: common_pb2.ModelMetrics, baseline: common_pb2.ModelMetrics) -> str:
    reason = not_measured_reason(source, model, baseline)
    return "the baseline's figure is 0: a ratio to it is undefined" if reason == NOT_PRODUCED else reason


def threshold_set_message(definition: ThresholdSetDef) -> common_pb2.ThresholdSet:
    return common_pb2.ThresholdSet(name=definition.name, description=definition.description, checks=[
        common_pb2.ThresholdCheck(metric=c.metric, description=c.description, threshold=c.threshold,
                                  comparison=c.comparison) for c in definition.checks])
