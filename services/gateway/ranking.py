"""Ranking measured compression candidates under a client's constraints. Pure functions.

Every candidate carries figures that were measured (a stored job result or a job run for the
request); nothing here estimates. The ranking says which constraint binds and why each
candidate sits where it does, so the answer can be checked by a person.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

TARGETS = ("cloud", "edge", "mobile")


@dataclass(frozen=True)
class Constraints:
    target: str = "cloud"
    max_size_mb: float = 0.0  # 0: no limit
    max_latency_ms: float = 0.0
    min_quality_retention: float = 0.0

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"target: {self.target!r} is not one of {', '.join(TARGETS)}")
        for name in ("max_size_mb", "max_latency_ms"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                raise ValueError(f"{name}: must be a finite number >= 0 (0: no limit), got {getattr(self, name)}")
        if not 0 <= self.min_quality_retention <= 1:
            raise ValueError(f"min_quality_retention: must be in [0, 1], got {self.min_quality_retention}")


@dataclass(frozen=True)
class Candidate:
    recipe: str
    size_mb: float
    latency_p50_ms: float
    quality_retention: float
    quality_metric: str = ""
    compression_ratio: float = 0.0
    speedup: float = 0.0
    job_id: str = ""
    measured_now: bool = False
    # Non-empty: the target CPU would emulate this candidate's compute (why); never recommended.
    unsupported: str = ""


@dataclass
class Ranked:
    candidate: Candidate
    rank: int = 0
    feasible: bool = True
    pareto_optimal: bool = False
    violated: list[str] = field(default_factory=list)
    reason: str = ""


def _limits(c: Candidate, k: Constraints) -> list[tuple[str, float, float, str]]:
    """(constraint, value, limit, direction) for each constraint the client set."""
    limits = []
    if k.max_size_mb:
        limits.append(("max_size_mb", c.size_mb, k.max_size_mb, "<="))
    if k.max_latency_ms:
        limits.append(("max_latency_ms", c.latency_p50_ms, k.max_latency_ms, "<="))
    if k.min_quality_retention:
        limits.append(("min_quality_retention", c.quality_retention, k.min_quality_retention, ">="))
    return limits


def _slack(value: float, limit: float, direction: str) -> float:
    """Relative room left before the limit (negative: violated)."""
    return (limit - value) / limit if direction == "<=" else (value - limit) / limit


def _dominates(a: Candidate, b: Candidate) -> bool:
    no_worse = (a.size_mb <= b.size_mb and a.latency_p50_ms <= b.latency_p50_ms
                and a.quality_retention >= b.quality_retention)
    better = (a.size_mb < b.size_mb or a.latency_p50_ms < b.latency_p50_ms
              or a.quality_retention > b.quality_retention)
    return no_worse and better


# Differences smaller than these are ties: a few bytes of metadata are not a smaller model, and
# latencies measured in separate jobs scatter by several percent on a shared machine.
SIZE_TIE = 0.01
LATENCY_TIE = 0.10


def _bucket(value: float, tie: float) -> int:
    return math.floor(math.log(max(value, 1e-9)) / math.log1p(tie))


def _objective(c: Candidate, target: str) -> tuple:
    """What each target favours: cloud serves many requests (speed first); edge and mobile ship the
    model to small devices (size first). Ties go to the next figure, quality last but for mobile."""
    size, latency = _bucket(c.size_mb, SIZE_TIE), _bucket(c.latency_p50_ms, LATENCY_TIE)
    if target == "cloud":
        return (latency, -c.quality_retention, c.size_mb)
    if target == "edge":
        return (size, latency, -c.quality_retention)
    return (size, -c.quality_retention, c.latency_p50_ms)


FAVOURS = {"cloud": "lowest p50 latency", "edge": "smallest size, then latency", "mobile": "smallest size, then quality"}
UNITS = {"max_size_mb": ("size", "{:.1f} MB"), "max_latency_ms": ("p50 latency", "{:.1f} ms"),
         "min_quality_retention": ("quality kept", "{:.1%}")}


def _describe(name: str, value: float, limit: float, direction: str) -> str:
    label, fmt = UNITS[name]
    return f"{label} {fmt.format(value)} {direction} {fmt.format(limit)}"


def rank(candidates: list[Candidate], constraints: Constraints) -> list[Ranked]:
    """Feasible candidates first, ordered by what the target favours; then the infeasible ones,
    fewest and smallest violations first. Each gets its reason."""
    ranked = [Ranked(c) for c in candidates]
    for r in ranked:
        r.pareto_optimal = not any(_dominates(o, r.candidate) for o in candidates if o is not r.candidate)
        limits = _limits(r.candidate, constraints)
        r.violated = [name for name, value, limit, d in limits if _slack(value, limit, d) < 0]
        if r.candidate.unsupported:
            r.violated.append("isa_class")
        r.feasible = not r.violated

    def order(r: Ranked):
        if r.feasible:
            return (0, _objective(r.candidate, constraints.target))
        worst = min((_slack(v, lim, d) for _, v, lim, d in _limits(r.candidate, constraints)), default=0.0)
        return (1, len(r.violated), -worst)

    ranked.sort(key=order)
    for position, r in enumerate(ranked, start=1):
        r.rank = position
        c = r.candidate
        figures = (f"{c.size_mb:.1f} MB ({c.compression_ratio:.2f}x smaller), p50 {c.latency_p50_ms:.1f} ms "
                   f"({c.speedup:.2f}x), quality kept {c.quality_retention:.1%}")
        limits = _limits(c, constraints)
        if r.feasible:
            head = "best for " + constraints.target if position == 1 else "feasible"
            reason = f"{head} ({FAVOURS[constraints.target]}): {figures}"
            if limits:
                name, value, limit, d = min(limits, key=lambda t: _slack(t[1], t[2], t[3]))
                reason += f"; binding: {_describe(name, value, limit, d)} ({_slack(value, limit, d):.0%} slack)"
        else:
            broken = [_describe(n, v, lim, d).replace(" <= ", " > ").replace(" >= ", " < ")
                      for n, v, lim, d in limits if n in r.violated]
            if c.unsupported:
                broken.append(c.unsupported)
            reason = f"violates {', '.join(r.violated)}: " + "; ".join(broken) + f" ({figures})"
        if r.pareto_optimal:
            reason += "; on the size/latency/quality Pareto front"
        else:
            beaten_by = [o.recipe for o in candidates if _dominates(o, c)]
            reason += f"; dominated by {', '.join(beaten_by)}"
        r.reason = reason
    return ranked
