"""What an engine sees of the mesh: a progress reporter (where a cancel lands) and its result type.

Nothing here knows about gRPC or NATS, so engines stay importable and testable alone.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelpress.v1 import common_pb2
from services.common.contract.model_kinds import CAUSAL_LM, ENCODER, MODEL_KINDS  # noqa: F401 - re-exported

FLOAT_INPUT = common_pb2.ARTIFACT_FORMAT_HF_SAFETENSORS


class StageCancelled(Exception):
    """Raised inside an engine at the next progress point after a cancel."""


class NotPossibleHere(RuntimeError):
    """The request is well formed but this worker cannot do it (a runtime or device is missing);
    the message names what is missing. Becomes FAILED_PRECONDITION."""


@dataclass(frozen=True)
class Progress:
    step: int
    total_steps: int
    message: str
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        return self.step / self.total_steps if self.total_steps else 0.0


class Checkpoints:
    """Where a long stage keeps its last checkpoint so that a retry of the same stage (another
    replica, or this one after a restart) resumes from it; this base keeps nothing (a run outside
    the mesh starts from zero every time)."""

    # The least time between two saves of a walk over blocks (set by the operator in the mesh;
    # never here, where a save would keep nothing).
    every_s: float = math.inf

    def latest(self, into: Path) -> Path | None:
        """Fetches the last saved checkpoint into the folder `into`; None when there is none."""
        return None

    def save(self, folder: Path, step: int) -> None:
        """Replaces the stored checkpoint with the folder's contents (written at `step`)."""


@dataclass
class ProgressReporter:
    """Handed to an engine; `report` is the place a cancel takes effect."""

    sink: Callable[[Progress], None] = lambda _p: None
    cancelled: threading.Event = field(default_factory=threading.Event)
    checkpoints: Checkpoints = field(default_factory=Checkpoints)

    def report(self, step: int, total_steps: int, message: str, **metrics: Any) -> None:
        self.check_cancelled()
        self.sink(Progress(step, total_steps, message, metrics))

    def check_cancelled(self) -> None:
        if self.cancelled.is_set():
            raise StageCancelled("stage cancelled")


@dataclass
class StageResult:
    """What an engine returns after writing its output folder."""

    format: int
    architecture: str = ""
    compression: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    # What a person should know about how the stage ran on this worker (an emulated precision).
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ProgressMetric:
    """A figure a method's progress events carry, so reports plot it without knowing the method."""

    name: str
    # "per-layer" (one value per `layer`), "curve" (a loss over the run) or "schedule" (a setting the
    # run varies, such as a learning rate: plotted apart from the losses, on a linear scale)
    kind: str
    description: str = ""


@dataclass(frozen=True)
class Method:
    """One entry of a service's method registry: a typed config and the function that runs it
    (config, input folder, output folder, reporter) -> result, in a worker thread."""

    name: str
    summary: str
    config_cls: type
    run: Callable[[Any, Path, Path, ProgressReporter], StageResult]
    # ArtifactFormat values of the inputs it takes (default: float HF safetensors; empty: any)
    # and of what it may write (empty: the input's format). The gateway checks a chain against
    # them before a job exists.
    accepts: tuple[int, ...] = (FLOAT_INPUT,)
    produces: tuple[int, ...] = ()
    metrics: tuple[ProgressMetric, ...] = ()
    # The model kinds (MODEL_KINDS) it takes; the gateway refuses a job on another kind before it exists.
    model_kinds: tuple[str, ...] = MODEL_KINDS
