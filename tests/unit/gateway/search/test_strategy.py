"""Successive halving decides on measured figures with their intervals: constraints drop candidates
with a reason, the screen keeps the better half, the full round stops once the leader cannot be beaten,
a spent budget leaves candidates unmeasured (said so), and a preference needs the intervals to agree."""

from __future__ import annotations

import asyncio

import pytest

from services.gateway.search.space import Candidate
from services.gateway.search.strategy import (
    FULL,
    SCREEN,
    Goal,
    Trial,
    compare,
    successive_halving,
    violations,
)


def _candidate(name: str) -> Candidate:
    return Candidate(name=name, stages=(), uses_data="none", cost="seconds", compute="int8", finish=name)


def _trial(name: str, fidelity: str = FULL, *, speedup=2.0, spread=0.1, quality=0.995, size=0.5, memory=0.5, **kw):
    return Trial(name, fidelity, job_id=f"j-{name}-{fidelity}", quality_kept=quality, speedup=speedup,
                 speedup_low=speedup - spread, speedup_high=speedup + spread, size_ratio=size, memory_ratio=memory, **kw)


class _Measurer:
    """Figures per candidate (the same at both fidelities unless given per fidelity); records the calls."""

    def __init__(self, figures: dict, clock=None, seconds_each: float = 0.0):
        self.figures, self.calls, self.clock, self.seconds_each = figures, [], clock, seconds_each

    async def __call__(self, candidate: Candidate, fidelity: str) -> Trial:
        self.calls.append((candidate.name, fidelity))
        if self.clock is not None:
            self.clock[0] += self.seconds_each
        given = self.figures[candidate.name]
        given = given.get(fidelity, given) if isinstance(given, dict) and fidelity in given else given
        return _trial(candidate.name, fidelity, **given)


def _run(figures, goal=None, *, budget=1e9, seconds_each=0.0, keep=0.5):
    clock = [0.0]
    measure = _Measurer(figures, clock, seconds_each)
    outcome = asyncio.run(successive_halving([_candidate(n) for n in figures], measure, goal or Goal(), deadline=budget,
                                             now=lambda: clock[0], keep=keep))
    return outcome, measure.calls


def test_constraints_drop_with_reasons_and_the_screen_keeps_the_better_half():
    figures = {"a": {"speedup": 3.0}, "b": {"speedup": 2.0}, "c": {"speedup": 1.2}, "d": {"speedup": 1.5},
               "lossy": {"speedup": 5.0, "quality": 0.90}, "broken": {"error": "the engine fell over"}}
    outcome, calls = _run(figures)
    assert outcome.winner.candidate == "a" and outcome.winner.fidelity == FULL
    assert "quality kept 90.00% < 99.00%" in outcome.dropped["lossy"]
    assert outcome.dropped["broken"] == f"{SCREEN}: failed: the engine fell over"
    # Four pass the screen; the better two are measured at full effort, the others are outranked.
    assert {n for n, f in calls if f == FULL} <= {"a", "b"} and "outranked" in outcome.dropped["c"]
    assert "outranked" in outcome.dropped["d"]


def test_the_full_round_stops_once_the_leader_cannot_be_beaten():
    figures = {"a": {"speedup": 3.0}, "b": {"speedup": 2.0}, "c": {"speedup": 1.9}, "d": {"speedup": 1.8}}
    outcome, calls = _run(figures, keep=1.0)
    assert [n for n, f in calls if f == FULL] == ["a"]  # b's screen interval tops out below a's lower bound
    assert outcome.stopped_early and "not measured at full effort" in outcome.dropped["b"]
    # With overlapping intervals it goes on: nothing is settled.
    close = {"a": {"speedup": 2.05}, "b": {"speedup": 2.0}}
    outcome, calls = _run(close, keep=1.0)
    assert [n for n, f in calls if f == FULL] == ["a", "b"] and not outcome.stopped_early


def test_a_preference_needs_the_intervals_to_agree_then_size_then_quality_decide():
    goal = Goal()
    assert compare(_trial("x", speedup=3.0), _trial("y", speedup=2.0), goal) == -1
    # Overlapping speed intervals: the smaller wins, whatever the point estimates.
    assert compare(_trial("x", speedup=2.05, size=0.5), _trial("y", speedup=2.0, size=0.25), goal) == 1
    assert compare(_trial("x", speedup=2.0, quality=0.999), _trial("y", speedup=2.0, quality=0.995), goal) == -1
    smallest = Goal(objective="smallest")
    assert compare(_trial("x", speedup=3.0, size=0.5), _trial("y", speedup=1.2, size=0.25), smallest) == 1


def test_a_spent_budget_leaves_candidates_unmeasured_and_says_so():
    figures = {name: {"speedup": 2.0 + i / 10} for i, name in enumerate("abcdef")}
    outcome, calls = _run(figures, budget=3.5, seconds_each=1.0)
    # The screen has 60 % of the budget (three measurements here), the full round the rest: the leader is
    # measured at full effort although the space was larger than the budget.
    assert [f for _, f in calls] == [SCREEN] * 3 + [FULL] and outcome.winner is not None
    unmeasured = [n for n, why in outcome.dropped.items() if "budget ran out" in why]
    assert set(unmeasured) >= {"d", "e", "f"}


def test_a_screen_that_cannot_fit_in_the_time_left_is_not_started():
    import dataclasses

    clock = [0.0]
    measure = _Measurer({"quick": {"speedup": 2.0}, "composed": {"speedup": 3.0}, "later": {"speedup": 1.5}},
                        clock, seconds_each=30.0)
    candidates = [_candidate("quick"), dataclasses.replace(_candidate("composed"), cost="tens of minutes"),
                  _candidate("later")]
    # 8 minutes: 4.8 for the screen, so a composition that takes tens of minutes is never begun.
    outcome = asyncio.run(successive_halving(candidates, measure, Goal(), deadline=480.0, now=lambda: clock[0]))
    assert ("composed", SCREEN) not in measure.calls and ("later", SCREEN) in measure.calls
    assert "takes tens of minutes, more than the search's budget has left" in outcome.dropped["composed"]
    assert outcome.winner.candidate == "quick"


def test_speed_and_memory_constraints_read_intervals_and_unmeasured_figures():
    goal = Goal(min_speedup=2.0, max_memory_ratio=0.5)
    assert violations(_trial("x", speedup=1.95, spread=0.1), goal) == []  # its interval reaches 2.0
    assert "speed-up" in violations(_trial("x", speedup=1.5, spread=0.1), goal)[0]
    assert "peak memory unmeasured" in violations(_trial("x", memory=None), goal)[0]
    with pytest.raises(ValueError, match="objective"):
        Goal(objective="cheapest")
    with pytest.raises(ValueError, match="min_quality_kept"):
        Goal(min_quality_kept=1.5)
