"""How a search spends its budget: successive halving over the candidates of the space.

1. Screen: every candidate is made and measured cheaply (few validation windows, a short latency
   probe), cheapest first; those that break a constraint (with a little slack for the screen's
   noise) are dropped, and the better half by the objective go on.
2. Full: the survivors are measured again with the full effort, best first. The search stops early
   once a finalist meets every constraint with margin and no remaining survivor could beat it even
   at the top of its screen interval.

A candidate is preferred over another only when their intervals say so: for the fastest, when its
speed-up's lower bound is above the other's upper bound; within overlapping intervals, the smaller
(then the better quality) wins. Measurements are the caller's (`measure`): this module only decides.
Every decision is kept with its reason, so the report can say why each candidate was dropped.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from services.gateway.search.space import Candidate

SCREEN, FULL = "screen", "full"
FIDELITIES = (SCREEN, FULL)
OBJECTIVES = ("fastest", "smallest")
SIZE_TIE = 0.01  # size ratios within 1 % are the same size
SCREEN_SLACK = 0.01  # a screen may read quality this much under the floor and still go on
SCREEN_SHARE = 0.6  # of the budget, for the screen; the full round has the rest
# The least a screen of each declared cost takes (space.COST_ORDER's names): one that cannot fit in the
# screen's time left is not started, so a short budget is not overrun by one long composition.
COST_FLOOR_S = {"seconds": 0.0, "minutes": 60.0, "tens of minutes": 600.0}


@dataclass(frozen=True)
class Goal:
    """Constraints (0: none) and the objective. Quality kept and speed-up are ratios to the original."""

    min_quality_kept: float = 0.99
    min_speedup: float = 0.0
    max_size_ratio: float = 0.0  # compressed / original bytes
    max_memory_ratio: float = 0.0  # compressed / original peak RSS
    objective: str = "fastest"
    margin: float = 0.005  # met "with margin": quality this far above the floor

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective: {self.objective!r} is not one of {', '.join(OBJECTIVES)}")
        for name in ("min_quality_kept", "min_speedup", "max_size_ratio", "max_memory_ratio", "margin"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}: must be a finite number ≥ 0, got {value!r}")
        if self.min_quality_kept > 1:
            raise ValueError("min_quality_kept: at most 1 (all of the original's quality)")


@dataclass(frozen=True)
class Trial:
    """One candidate measured at one fidelity (from its job's before/after comparison)."""

    candidate: str
    fidelity: str
    job_id: str = ""
    quality_kept: float | None = None
    speedup: float = 0.0
    speedup_low: float = 0.0
    speedup_high: float = 0.0
    size_ratio: float = 0.0
    memory_ratio: float | None = None
    error: str = ""
    reused: bool = False  # a stored measurement of the same content, not measured now
    seconds: float = 0.0  # what its job took when it was measured


def violations(trial: Trial, goal: Goal, slack: float = 0.0) -> list[str]:
    broken = []
    if trial.quality_kept is None or trial.quality_kept < goal.min_quality_kept - slack:
        kept = "unmeasured" if trial.quality_kept is None else f"{trial.quality_kept:.2%}"
        broken.append(f"quality kept {kept} < {goal.min_quality_kept:.2%}")
    # A speed-up is only a violation when its whole interval is below the floor.
    if goal.min_speedup and trial.speedup_high < goal.min_speedup:
        broken.append(f"speed-up {trial.speedup:.2f}× [{trial.speedup_low:.2f}–{trial.speedup_high:.2f}] < "
                      f"{goal.min_speedup:.2f}×")
    if goal.max_size_ratio and trial.size_ratio > goal.max_size_ratio:
        broken.append(f"size {trial.size_ratio:.2f}× > {goal.max_size_ratio:.2f}×")
    if goal.max_memory_ratio and (trial.memory_ratio is None or trial.memory_ratio > goal.max_memory_ratio):
        memory = "unmeasured" if trial.memory_ratio is None else f"{trial.memory_ratio:.2f}×"
        broken.append(f"peak memory {memory} > {goal.max_memory_ratio:.2f}×")
    return broken


def compare(a: Trial, b: Trial, goal: Goal) -> int:
    """-1 when `a` is preferred, 1 when `b` is, 0 when their figures cannot tell them apart."""
    faster = -1 if a.speedup_low > b.speedup_high else 1 if b.speedup_low > a.speedup_high else 0
    smaller = 0
    if abs(a.size_ratio - b.size_ratio) > SIZE_TIE * max(a.size_ratio, b.size_ratio):
        smaller = -1 if a.size_ratio < b.size_ratio else 1
    first, second = (faster, smaller) if goal.objective == "fastest" else (smaller, faster)
    if first or second:
        return first or second
    qa, qb = a.quality_kept or 0.0, b.quality_kept or 0.0
    return -1 if qa > qb else 1 if qb > qa else 0


def ranked(trials: list[Trial], goal: Goal) -> list[Trial]:
    """Best first. Ties by interval are broken by the point estimate, so the order is total."""
    point = (lambda t: -t.speedup) if goal.objective == "fastest" else (lambda t: t.size_ratio)
    by_point = sorted(trials, key=point)
    return sorted(by_point, key=functools.cmp_to_key(lambda a, b: compare(a, b, goal)))


@dataclass
class Outcome:
    trials: list[Trial] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)  # candidate → why it is not the winner
    finalists: list[Trial] = field(default_factory=list)  # full-effort trials meeting the goal, best first
    stopped_early: str = ""

    @property
    def winner(self) -> Trial | None:
        return self.finalists[0] if self.finalists else None


Measure = Callable[[Candidate, str], Awaitable[Trial]]


async def successive_halving(candidates: list[Candidate], measure: Measure, goal: Goal, *, deadline: float,
                             now: Callable[[], float] = time.monotonic, keep: float = 0.5,
                             screen_share: float = SCREEN_SHARE,
                             on_trial: Callable[[Trial], None] | None = None) -> Outcome:
    """`screen_share` of the time left is the screen's, the rest the full round's: a space larger than
    the budget leaves its most expensive candidates unscreened, never the finalists unmeasured."""
    outcome = Outcome()
    screen_until = now() + max(0.0, deadline - now()) * screen_share

    async def run(candidate: Candidate, fidelity: str) -> Trial | None:
        if now() >= (screen_until if fidelity == SCREEN else deadline):
            outcome.dropped[candidate.name] = f"not measured at {fidelity}: the search's budget ran out"
            return None
        if fidelity == SCREEN and now() + COST_FLOOR_S.get(candidate.cost, 0.0) > screen_until:
            outcome.dropped[candidate.name] = (f"not measured at {fidelity}: it takes {candidate.cost}, more than "
                                               "the search's budget has left for screening")
            return None
        trial = await measure(candidate, fidelity)
        outcome.trials.append(trial)
        if on_trial is not None:
            on_trial(trial)
        if trial.error:
            outcome.dropped[candidate.name] = f"{fidelity}: failed: {trial.error}"
            return None
        if broken := violations(trial, goal, SCREEN_SLACK if fidelity == SCREEN else 0.0):
            outcome.dropped[candidate.name] = f"{fidelity}: " + "; ".join(broken)
            return None
        return trial

    screened = [t for c in candidates if (t := await run(c, SCREEN)) is not None]
    order = ranked(screened, goal)
    survivors = order[:max(1, math.ceil(len(order) * keep))] if order else []
    for trial in order[len(survivors):]:
        outcome.dropped[trial.candidate] = (f"screen: outranked by the better {len(survivors)} "
                                            f"({trial.speedup:.2f}× at {trial.size_ratio:.2f}× the size)")
    by_name = {c.name: c for c in candidates}
    finals: list[Trial] = []
    for index, screen in enumerate(survivors):
        trial = await run(by_name[screen.candidate], FULL)
        if trial is not None:
            finals.append(trial)
        best = ranked(finals, goal)[0] if finals else None
        rest = survivors[index + 1:]
        if best is not None and rest and _settled(best, rest, goal):
            outcome.stopped_early = (f"{best.candidate} met every constraint with margin and no survivor left "
                                     "could beat it even at the top of its screen interval")
            for left in rest:
                outcome.dropped[left.candidate] = f"not measured at full effort: {outcome.stopped_early}"
            break
    outcome.finalists = ranked(finals, goal)
    for trial in outcome.finalists[1:]:
        outcome.dropped.setdefault(trial.candidate, f"full: behind {outcome.finalists[0].candidate} on the "
                                                    f"objective ({goal.objective})")
    return outcome


def _settled(best: Trial, rest: list[Trial], goal: Goal) -> bool:
    if best.quality_kept is None or best.quality_kept < goal.min_quality_kept + goal.margin:
        return False
    if goal.objective == "fastest":
        return all(t.speedup_high < best.speedup_low for t in rest)
    return all(t.size_ratio > best.size_ratio * (1 + SIZE_TIE) for t in rest)
