"""Gates: bounds an evaluate stage's figures must meet for the pipeline to go on.

A gate is a threshold set's name (recovery-99, seed-int4 ... as the evaluator's comparisons use)
or metric bounds written `metric OP value`, comma-separated: `quality_retention>=0.99, speedup>=2`.
Figures are ratios against the job's original model, from one interleaved measurement.

A gate is parsed once, when the gateway resolves the stage (chain.resolve_stages): its checks travel
in the StageSpec (`gate_checks`) and the job checks those (`stage_gate`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from modelpress.results import NOT_PRODUCED, not_measured_reason
from modelpress.v1 import common_pb2
from services.common.contract.thresholds import THRESHOLD_SETS, Threshold

# What a bound may name: the comparison row's ratios and the result's relative changes.
GATE_METRICS = {
    "size_ratio": "size on disk / the original's",
    "parameter_ratio": "parameters / the original's",
    "flops_ratio": "FLOPs / the original's",
    "memory_ratio": "peak RSS / the original's",
    "speedup": "main-phase p50 speed-up (prefill or forward), interleaved",
    "decode_speedup": "per-token decode speed-up (causal LMs), interleaved",
    "quality_retention": "quality kept (perplexity or embedding metric), 1 = all",
    "perplexity_increase": "(compressed - original) / original perplexity",
    "accuracy_loss": "(original - compressed) / original task accuracy",
}
# Where each comes from: the comparison row's ratios, the result's relative changes.
_ROW_METRICS = ("size_ratio", "parameter_ratio", "flops_ratio", "memory_ratio", "speedup",
                "quality_retention")
_RESULT_METRICS = ("perplexity_increase", "accuracy_loss")
_BOUND = re.compile(r"^\s*([a-z_]+)\s*(>=|<=)\s*([-+0-9.eE]+)\s*$")


@dataclass(frozen=True)
class Gate:
    text: str
    checks: tuple[Threshold, ...]


class InvalidGate(ValueError):
    pass


def parse_gate(text: str) -> Gate | None:
    """The gate `text` names (None when empty); InvalidGate says what is wrong."""
    text = text.strip()
    if not text:
        return None
    if text in THRESHOLD_SETS:
        return Gate(text, THRESHOLD_SETS[text].checks)
    checks = []
    for part in text.split(","):
        match = _BOUND.match(part)
        if not match:
            raise InvalidGate(f"{part.strip()!r} is neither a threshold set ({', '.join(THRESHOLD_SETS)}) "
                              f"nor a bound METRIC>=VALUE or METRIC<=VALUE")
        metric, comparison, value = match.groups()
        if metric not in GATE_METRICS:
            raise InvalidGate(f"{metric!r} is not a gate metric; allowed: {', '.join(GATE_METRICS)}")
        try:
            threshold = float(value)
        except ValueError:
            raise InvalidGate(f"{value!r} in {part.strip()!r} is not a number") from None
        checks.append(Threshold(metric, comparison, threshold, f"{metric} {comparison} {threshold:g}"))
    return Gate(text, tuple(checks))


def gate_checks(gate: Gate | None) -> list[common_pb2.ThresholdCheck]:
    """The parsed gate as a StageSpec carries it (value, passed and not_measured unset)."""
    return [common_pb2.ThresholdCheck(metric=c.metric, comparison=c.comparison, threshold=c.threshold,
                                      description=c.description) for c in (gate.checks if gate else ())]


def stage_gate(spec: common_pb2.StageSpec) -> Gate | None:
    """The gate the gateway parsed when it resolved the stage; for a job stored before StageSpec
    carried it, the stage's text parsed here (once per check)."""
    if not spec.gate_checks:
        return parse_gate(spec.gate)
    return Gate(spec.gate.strip(), tuple(Threshold(c.metric, c.comparison, c.threshold, c.description)
                                         for c in spec.gate_checks))


def gate_figures(row: common_pb2.ComparisonRow, result: common_pb2.CompressionResult) -> dict[str, float]:
    """The gate metrics that were measured; a figure that was not is absent (never 0)."""
    figures = {name: getattr(row, name) for name in _ROW_METRICS if row.HasField(name)}
    for name in _RESULT_METRICS:
        if result.HasField(name):
            figures[name] = getattr(result, name)
    if result.HasField("decode_speedup"):
        figures["decode_speedup"] = result.decode_speedup.speedup
    return figures


def gate_not_measured(row: common_pb2.ComparisonRow, result: common_pb2.CompressionResult) -> dict[str, str]:
    """Why each gate metric missing from gate_figures was not measured, as the evaluator said."""
    reasons = {name: row.not_measured.get(name, NOT_PRODUCED)
               for name in _ROW_METRICS if not row.HasField(name)}
    for name in _RESULT_METRICS:
        if not result.HasField(name):
            reasons[name] = result.not_measured.get(name, NOT_PRODUCED)
    if not result.HasField("decode_speedup"):
        reasons["decode_speedup"] = not_measured_reason("decode", result.original, result.compressed)
    return reasons


def failed_checks(gate: Gate, figures: dict[str, float], not_measured: dict[str, str] | None = None
                  ) -> list[str]:
    """One line per failed bound: the measured figure and the bound. A figure the evaluation did
    not produce (the perplexity of an encoder, the FLOPs of an ONNX graph) fails, saying why when
    `not_measured` knows: a gate is never passed by omission."""
    failures = []
    for check in gate.checks:
        value = figures.get(check.metric)
        if value is None:
            why = (not_measured or {}).get(check.metric)
            failures.append(f"{check.metric} was not measured{': ' + why if why else ''} "
                            f"(bound {check.comparison} {check.threshold:g})")
        elif not check.passes(value):
            failures.append(f"{check.metric} = {value:.4g}, bound {check.comparison} {check.threshold:g} "
                            f"({check.description})")
    return failures
