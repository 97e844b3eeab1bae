"""Ratios of measured models against a baseline, quality retention, and threshold checks.

Works on ModelMetrics messages (the evaluator's data model) and nothing else: no I/O.
"""

from __future__ import annotations

from modelpress.v1 import common_pb2
from modelpress.quality_kept import quality_retention
from services.common.contract.thresholds import ThresholdSetDef


def _ratio(value: float, base: float) -> float:
    return value / base if base else 0.0

def comparison_row(index: int, label: str, model: common_pb2.ModelMetrics, baseline: common_pb2.ModelMetrics,
                   is_baseline: bool, thresholds: ThresholdSetDef | None,
                   speed: list[common_pb2.SpeedRatio] = ()) -> common_pb2.ComparisonRow:
    """`speed`: the model's paired ratios to the baseline from the interleaved run (main phase
    first); the row's speedup is that ratio when given, else the ratio of the two p50s."""
    retention, metric = quality_retention(model, baseline)
    main_speedup = speed[0].speedup if speed else _ratio(baseline.latency.p50_ms, model.latency.p50_ms)
    row = common_pb2.ComparisonRow(
        index=index, model=label, baseline=is_baseline, speed=speed,
        size_ratio=_ratio(model.size_on_disk_bytes, baseline.size_on_disk_bytes),
        parameter_ratio=_ratio(model.parameters, baseline.parameters),
        flops_ratio=_ratio(model.flops, baseline.flops),
        latency_ratio=_ratio(1.0, main_speedup),
        speedup=main_speedup,
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
