"""How a job's progress reads: a bounded number of plain lines per stage off a terminal, bars with an
ETA on one, and everything on the console it is given (stdout in the CLI)."""

import io

from rich.console import Console

from modelpress.v1 import common_pb2
from services.cli import progress
from services.cli.progress import HEARTBEAT_S, StepLines

K = common_pb2


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _event(kind, *, progress_=0.0, step=0, total=0, message="", stage=0, name="quantize", state=0):
    return common_pb2.JobEvent(job_id="j-1", kind=kind, stage_index=stage, stage_name=name,
                               stage_progress=progress_, step=step, total_steps=total, message=message,
                               job_state=state)


def _layers(total: int, stage: int = 0, name: str = "quantize"):
    """One progress event per quantized Linear, as the quantizer reports them."""
    return [_event(K.EVENT_KIND_STAGE_PROGRESS, progress_=(i + 1) / total, step=i + 1, total=total,
                   message=f"model.layers.{i // 7}.mlp", stage=stage, name=name) for i in range(total)]


def _stage(total: int, stage: int = 0, name: str = "quantize"):
    return [_event(K.EVENT_KIND_STAGE_STARTED, stage=stage, name=name, message="rtn"),
            *_layers(total, stage, name),
            _event(K.EVENT_KIND_STAGE_FINISHED, stage=stage, name=name, progress_=1.0, message="done")]


def test_a_stage_of_212_linears_prints_a_bounded_number_of_lines():
    clock = Clock()
    lines = StepLines("j-1", clock=clock)
    shown = []
    for event in _stage(212):
        clock.now += 0.01  # 2 s for the whole stage: no heartbeat
        shown.append(lines.line(event))
    printed = [text for text in shown if text is not None]
    assert printed[0] == "stage 0 quantize started: rtn"
    assert printed[-1].startswith("stage 0 quantize finished in 2 s")
    progress_lines = printed[1:-1]
    # One line per tenth of the stage at most, never one per Linear.
    assert 5 <= len(progress_lines) <= 10, progress_lines
    assert progress_lines[0].startswith("stage 0 quantize 22/212 (10%, eta ")
    assert all("/212 (" in text for text in progress_lines)


def test_a_slow_stage_shows_life_every_heartbeat_between_percent_steps():
    clock = Clock()
    lines = StepLines("j-1", clock=clock)
    assert lines.line(_event(K.EVENT_KIND_STAGE_STARTED)) is not None
    events = _layers(1000)[:50]  # 5 % of the stage, one event per 2 s
    printed = []
    for event in events:
        clock.now += 2.0
        printed.append(lines.line(event))
    shown = [text for text in printed if text is not None]
    # 100 s at one line per heartbeat (10 s), not one per event.
    assert len(shown) == int(100 / HEARTBEAT_S), shown
    assert shown[0].startswith("stage 0 quantize 5/1000 (0%, eta ")


def test_logs_and_job_states_always_print_and_progress_never_goes_backwards():
    lines = StepLines("j-9", clock=Clock())
    assert lines.line(_event(K.EVENT_KIND_JOB_STATE, state=K.JOB_STATE_RUNNING, message="running")) == \
        "job j-9: running"
    assert lines.line(_event(K.EVENT_KIND_JOB_STATE, state=K.JOB_STATE_FAILED, message="stage 0: boom")) == \
        "job j-9: failed (stage 0: boom)"
    assert lines.line(_event(K.EVENT_KIND_LOG, message="reusing a-1", stage=1, name="export")) == \
        "stage 1 export: reusing a-1"
    # A log of the job itself (a search's trials, a resume) names no stage.
    assert lines.line(_event(K.EVENT_KIND_LOG, message="screen onnx: 2.1×", name="")) == "job j-9: screen onnx: 2.1×"
    lines.line(_event(K.EVENT_KIND_STAGE_STARTED))
    assert lines.line(_event(K.EVENT_KIND_STAGE_PROGRESS, progress_=0.5)) is not None
    assert lines.line(_event(K.EVENT_KIND_STAGE_PROGRESS, progress_=0.3)) is None


def test_two_stages_are_throttled_apart():
    clock = Clock()
    lines = StepLines("j-1", clock=clock)
    printed = [lines.line(e) for e in [*_stage(40, 0, "transform"), *_stage(40, 1, "export")]]
    starts = [t for t in printed if t and t.endswith("started: rtn")]
    assert starts == ["stage 0 transform started: rtn", "stage 1 export started: rtn"]
    assert sum(1 for t in printed if t and t.startswith("stage 1 export 4/40")) == 1


def _console(terminal: bool) -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=terminal, width=120), buffer


def test_follow_off_a_terminal_writes_plain_lines_to_the_console_it_is_given():
    console, buffer = _console(False)
    events = [_event(K.EVENT_KIND_JOB_STATE, state=K.JOB_STATE_RUNNING, message="running"), *_stage(212)]
    progress.follow(events, "j-1", console, terminal=False)
    text = buffer.getvalue()
    assert text.startswith("job j-1: running\nstage 0 quantize started")
    assert "\x1b[" not in text and len(text.splitlines()) <= 14


def test_follow_on_a_terminal_draws_one_bar_per_stage_with_an_eta():
    console, buffer = _console(True)
    progress.follow([*_stage(20, 0, "transform"), *_stage(20, 1, "export")], "j-1", console, terminal=True)
    text = buffer.getvalue()
    assert "stage 0: transform" in text and "stage 1: export" in text and "eta" in text


def test_quiet_follow_consumes_every_event_and_prints_nothing():
    console, buffer = _console(False)
    events = iter(_stage(5))
    progress.follow(events, "j-1", console, quiet=True)
    assert buffer.getvalue() == "" and next(events, None) is None
