"""Named threshold sets a comparison checks each model against (pass/fail per metric).

The seed's acceptance criteria are built in by name, beside recovery levels in the manner
of llm-compressor's `recovery_threshold`. Every metric is a ratio against the baseline,
computed in `comparison.py`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Threshold:
    metric: str
    comparison: str  # ">=" or "<="
    threshold: float
    description: str

    def passes(self, value: float) -> bool:
        return value >= self.threshold if self.comparison == ">=" else value <= self.threshold


@dataclass(frozen=True)
class ThresholdSetDef:
    name: str
    description: str
    checks: tuple[Threshold, ...]


def _size(at_most: float) -> Threshold:
    return Threshold("size_ratio", "<=", at_most, f"size on disk at most {at_most:.0%} of the baseline")


def _quality(at_least: float) -> Threshold:
    return Threshold("quality_retention", ">=", at_least, f"quality at least {at_least:.0%} of the baseline")


THRESHOLD_SETS: dict[str, ThresholdSetDef] = {s.name: s for s in (
    ThresholdSetDef("seed-int8", "Seed criterion 1, INT8: size -50 %, quality loss < 5 %",
                    (_size(0.50), _quality(0.95))),
    ThresholdSetDef("seed-int4", "Seed criterion 1, INT4: size -75 %, quality loss < 5 %",
                    (_size(0.25), _quality(0.95))),
    ThresholdSetDef("seed-distillation", "Seed criterion 2: parameters -60 %, quality kept >= 90 %",
                    (Threshold("parameter_ratio", "<=", 0.40, "parameters at most 40 % of the baseline"),
                     _quality(0.90))),
    ThresholdSetDef("seed-pruning", "Seed criterion 3: FLOPs -50 %, inference +30 % faster",
                    (Threshold("flops_ratio", "<=", 0.50, "FLOPs at most 50 % of the baseline"),
                     Threshold("speedup", ">=", 1.30, "p50 latency at least 1.3x faster"))),
    ThresholdSetDef("seed-deployment", "Seed criterion 5: inference >= 2x faster, memory -50 %",
                    (Threshold("speedup", ">=", 2.0, "p50 latency at least 2x faster"),
                     Threshold("memory_ratio", "<=", 0.50, "peak RSS at most 50 % of the baseline"))),
    ThresholdSetDef("recovery-99", "Quality at least 99 % of the baseline (llm-compressor's recovery bar)",
                    (_quality(0.99),)),
    ThresholdSetDef("recovery-95", "Quality at least 95 % of the baseline", (_quality(0.95),)),
)}


class UnknownThresholdSet(KeyError):
    pass


def threshold_set(name: str) -> ThresholdSetDef | None:
    """The named set; None for the empty name (ratios only)."""
    if not name:
        return None
    if name not in THRESHOLD_SETS:
        raise UnknownThresholdSet(f"threshold_set: unknown {name!r}; known: {', '.join(THRESHOLD_SETS)}")
    return THRESHOLD_SETS[name]
