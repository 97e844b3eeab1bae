"""A job's events as people follow them, on stdout: one progress bar per stage with its ETA on a
terminal; off a terminal (pipes, logs, CI) plain lines, a bounded number per stage.

A stage reports every Linear it quantizes, every block it walks, every training step: hundreds of
events. Off a terminal a stage prints its start, its end, its log lines, and progress only when it
moved PERCENT_STEP points or HEARTBEAT_S seconds passed since the last line shown.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import (BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

from modelpress.v1 import common_pb2

PERCENT_STEP = 0.10
HEARTBEAT_S = 10.0
STAGE_EVENTS = (common_pb2.EVENT_KIND_STAGE_STARTED, common_pb2.EVENT_KIND_STAGE_PROGRESS,
                common_pb2.EVENT_KIND_STAGE_FINISHED)


def state_name(state: int) -> str:
    return common_pb2.JobState.Name(state).removeprefix("JOB_STATE_").lower()


def job_state_line(job_id: str, event: common_pb2.JobEvent) -> str:
    state = state_name(event.job_state)
    note = f" ({event.message})" if event.message and event.message != state else ""
    return f"job {job_id}: {state}{note}"


@dataclass
class _Shown:
    """What the last printed line of a stage said, and when."""

    started_at: float
    fraction: float = 0.0
    at: float = 0.0
    finished: bool = False


@dataclass
class StepLines:
    """Turns events into plain lines (or None where a line would add nothing); `clock` is injectable
    so the throttle can be tested without waiting."""

    job_id: str
    clock: Callable[[], float] = time.monotonic
    _stages: dict[int, _Shown] = field(default_factory=dict)

    def line(self, event: common_pb2.JobEvent) -> str | None:
        if event.kind == common_pb2.EVENT_KIND_JOB_STATE:
            return job_state_line(self.job_id, event)
        stage = f"stage {event.stage_index} {event.stage_name}".rstrip()
        if event.kind == common_pb2.EVENT_KIND_LOG:
            # A log of the job itself (queued, resumed, a search's trials) names no stage.
            return f"{stage if event.stage_name else f'job {self.job_id}'}: {event.message}"
        if event.kind not in STAGE_EVENTS:
            return None
        now = self.clock()
        shown = self._stages.setdefault(event.stage_index, _Shown(started_at=now, at=now))
        if event.kind == common_pb2.EVENT_KIND_STAGE_STARTED:
            shown.at = now
            return f"{stage} started" + (f": {event.message}" if event.message else "")
        if event.kind == common_pb2.EVENT_KIND_STAGE_FINISHED:
            shown.finished = True
            return f"{stage} finished in {now - shown.started_at:.0f} s" + (
                f": {event.message}" if event.message else "")
        fraction = min(max(event.stage_progress, 0.0), 1.0)
        moved = fraction - shown.fraction
        if shown.finished or moved <= 0 or (moved < PERCENT_STEP and now - shown.at < HEARTBEAT_S):
            return None
        shown.fraction, shown.at = fraction, now
        return f"{stage}{_steps(event)} ({fraction:.0%}{_eta(now - shown.started_at, fraction)})" + (
            f": {event.message}" if event.message else "")


def _steps(event: common_pb2.JobEvent) -> str:
    return f" {event.step}/{event.total_steps}" if event.total_steps else ""


def _eta(elapsed: float, fraction: float) -> str:
    return f", eta {elapsed * (1 - fraction) / fraction:.0f} s" if 0 < fraction < 1 else ""


def print_lines(events: Iterable[common_pb2.JobEvent], job_id: str, console: Console) -> None:
    lines = StepLines(job_id)
    for event in events:
        text = lines.line(event)
        if text is not None:
            console.print(text, markup=False, highlight=False, soft_wrap=True)


def show_bars(events: Iterable[common_pb2.JobEvent], job_id: str, console: Console) -> None:
    """One bar per stage with elapsed time and ETA; log lines and job states printed above them."""
    columns = [TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[note]}")]
    with Progress(*columns, console=console, transient=False) as bars:
        tasks: dict[int, int] = {}
        for event in events:
            key = event.stage_index
            if event.kind in STAGE_EVENTS:
                if key not in tasks:
                    tasks[key] = bars.add_task(f"stage {key}: {event.stage_name}", total=1.0, note="")
                done = 1.0 if event.kind == common_pb2.EVENT_KIND_STAGE_FINISHED else event.stage_progress
                bars.update(tasks[key], completed=done, note=event.message[:60])
            elif event.kind == common_pb2.EVENT_KIND_LOG:
                bars.console.print(event.message, markup=False)
            elif event.kind == common_pb2.EVENT_KIND_JOB_STATE:
                bars.console.print(job_state_line(job_id, event), markup=False)


def follow(events: Iterable[common_pb2.JobEvent], job_id: str, console: Console, *, quiet: bool = False,
           terminal: bool | None = None) -> None:
    """Consumes the job's events until they end: bars on a terminal, plain lines elsewhere,
    nothing printed when `quiet` (--json prints one document at the end)."""
    if quiet:
        for _ in events:
            pass
    elif console.is_terminal if terminal is None else terminal:
        show_bars(events, job_id, console)
    else:
        print_lines(events, job_id, console)
