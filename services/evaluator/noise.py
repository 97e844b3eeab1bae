"""How far a latency figure or a latency ratio can be trusted: bootstrap 95 % intervals over the
timed passes, and the bound beyond which the evaluator calls a figure unreliable.

Plain Python (no torch): the intervals are percentile bootstraps with a fixed seed, so the same
samples always give the same interval.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import asdict, dataclass
from typing import Sequence

# A figure whose 95 % interval reaches beyond +-15 % of its estimate is not read as a result.
RELATIVE_BOUND = 0.15
RESAMPLES = 1000
SEED = 0


def bootstrap_median_interval(values: Sequence[float], resamples: int = RESAMPLES) -> tuple[float, float]:
    """Percentile-bootstrap 95 % interval of the median."""
    if len(values) < 2:
        return (values[0], values[0]) if values else (0.0, 0.0)
    rng = random.Random(SEED)
    n = len(values)
    medians = sorted(statistics.median(rng.choices(values, k=n)) for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[min(resamples - 1, int(0.975 * resamples))]


def too_wide(estimate: float, low: float, high: float, bound: float = RELATIVE_BOUND) -> bool:
    return estimate > 0 and (low < estimate * (1 - bound) or high > estimate * (1 + bound))


def interval_reason(what: str, estimate: float, low: float, high: float, count: int, unit: str = "") -> str:
    return (f"{what} 95 % interval [{low:.3g}, {high:.3g}]{unit} around {estimate:.3g}{unit} spans more than "
            f"+-{RELATIVE_BOUND:.0%} after {count} passes: the machine was too noisy to read it")


@dataclass(frozen=True)
class Ratio:
    """baseline time / model time over paired rounds (>1: the model is faster)."""

    phase: str
    speedup: float
    ci95_low: float
    ci95_high: float
    rounds: int
    unreliable: bool
    unreliable_reason: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def paired_speedup(baseline_ms: Sequence[float], model_ms: Sequence[float], phase: str) -> Ratio:
    """From rounds in which both were timed back to back: per-round ratios, their median and its
    interval. Pairing by round cancels drift that hits both models of a round alike."""
    ratios = [b / m for b, m in zip(baseline_ms, model_ms) if m > 0]
    if not ratios:
        return Ratio(phase, 0.0, 0.0, 0.0, 0, True, "no timed rounds")
    estimate = statistics.median(ratios)
    low, high = bootstrap_median_interval(ratios)
    wide = too_wide(estimate, low, high)
    reason = interval_reason(f"{phase} speedup", estimate, low, high, len(ratios), "x") if wide else ""
    return Ratio(phase, estimate, low, high, len(ratios), wide, reason)
