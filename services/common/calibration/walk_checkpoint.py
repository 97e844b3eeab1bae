"""A block walk's progress kept between blocks, so a retried stage (on another replica, or on this
one after a restart) goes on from the first unfinished block instead of the first block.

What is kept is all the walk needs to go on exactly as if uninterrupted: the index of the next
block, that block's input hidden states, the finished layers' results (through the technique's
codec) with their progress figures, and the float tensors the steps rewrote. The keyword inputs
of the blocks (masks, position embeddings) are not kept: they come from the first pass again.
Saved through the stage's `Checkpoints` (the object store in the mesh; nothing outside it), at
most once every `store.every_s` seconds and never more often than ten times the last save took:
the hidden states of a long calibration set are large (hundreds of MB), saving stays a small share
of the walk.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from services.common.contract.engine_api import Checkpoints, ProgressReporter

log = logging.getLogger(__name__)

WALK_FILE = "walk.pt"


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class ResultCodec:
    """Turns a technique's per-layer result into what `torch.load(weights_only=True)` reads back
    (tensors, numbers, strings, lists, dicts) and back. The default keeps tensors as they are."""

    encode: Callable[[Any], Any] = _same
    decode: Callable[[Any], Any] = _same


@dataclass
class WalkState:
    next_block: int
    hidden: list[torch.Tensor]  # the input hidden states of block `next_block`, one per calibration batch
    results: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, dict] = field(default_factory=dict)  # progress figures of each result, by name
    rewritten: dict[str, torch.Tensor] = field(default_factory=dict)
    # The float model's own inputs to block `next_block`, for a walk whose targets are them (else empty).
    float_hidden: list[torch.Tensor] = field(default_factory=list)


class WalkCheckpoints:
    """Restores and saves a walk's state; one object per walk."""

    def __init__(self, store: Checkpoints, codec: ResultCodec = ResultCodec(), walk: str = "",
                 clock: Callable[[], float] = time.monotonic,
                 on_restored: Callable[[int, int], None] = lambda _next_block, _blocks: None) -> None:
        """`walk` names the walk among several of one stage (a gradual pruning's rounds)."""
        self.store = store
        self.walk = walk
        self.codec = codec
        self.on_restored = on_restored
        self.interval = store.every_s
        self.clock = clock
        self._last = clock()
        self.restored_block = 0

    def restore(self, blocks: int, hidden_like: list[torch.Tensor], with_float_stream: bool = False
                ) -> WalkState | None:
        """The stored state when there is one made for this walk (same number of blocks, hidden
        states of the same shapes and dtype, a float stream when the walk keeps one); None otherwise."""
        with tempfile.TemporaryDirectory(prefix="walk-") as scratch:
            folder = self.store.latest(Path(scratch) / "resume")
            if folder is None or not (folder / WALK_FILE).is_file():  # none, or another kind's (training)
                return None
            saved = torch.load(folder / WALK_FILE, weights_only=True)
        hidden = saved["hidden"]
        if saved["walk"] != self.walk:
            return None
        float_hidden = saved.get("float_hidden", [])
        if saved["blocks"] != blocks or [(h.shape, h.dtype) for h in hidden] != [(h.shape, h.dtype) for h in hidden_like] \
                or bool(float_hidden) != with_float_stream:
            log.warning("a stored walk checkpoint does not fit this walk (%s blocks, %d hidden batches); starting over",
                        saved["blocks"], len(hidden))
            return None
        self.restored_block = saved["next_block"]
        self._last = self.clock()
        self.on_restored(self.restored_block, blocks)
        return WalkState(next_block=saved["next_block"], hidden=hidden,
                         results={name: self.codec.decode(value) for name, value in saved["results"].items()},
                         figures=json.loads(saved["figures"]), rewritten=saved["rewritten"], float_hidden=float_hidden)

    def due(self) -> bool:
        return self.clock() - self._last >= self.interval

    def save(self, state: WalkState, blocks: int) -> None:
        """Best effort: a checkpoint that cannot be stored (a full store, NATS away) is worth
        less than the walk, which goes on without further saves."""
        try:
            self._save(state, blocks)
        except Exception as exc:  # noqa: BLE001
            log.warning("walk checkpoint after block %d not stored (%s: %s); going on without checkpoints",
                        state.next_block, type(exc).__name__, exc)
            self.interval = math.inf

    def _save(self, state: WalkState, blocks: int) -> None:
        payload = {
            "walk": self.walk, "blocks": blocks, "next_block": state.next_block,
            "hidden": [h.contiguous() for h in state.hidden],
            "results": {name: self.codec.encode(value) for name, value in state.results.items()},
            "figures": json.dumps(state.figures, default=float), "rewritten": state.rewritten,
            "float_hidden": [h.contiguous() for h in state.float_hidden],
        }
        began = self.clock()
        with tempfile.TemporaryDirectory(prefix="walk-") as scratch:
            torch.save(payload, Path(scratch) / WALK_FILE)
            self.store.save(Path(scratch), state.next_block)
        self._last = self.clock()
        self.interval = max(self.store.every_s, 10 * (self._last - began))


def stage_walk_checkpoints(reporter: ProgressReporter, codec: ResultCodec = ResultCodec(),
                           walk: str = "") -> WalkCheckpoints:
    """A stage's walk checkpoints, kept where its reporter keeps checkpoints; a resume is reported."""
    where = f"{walk}: " if walk else ""
    return WalkCheckpoints(reporter.checkpoints, codec, walk, on_restored=lambda block, blocks: reporter.report(
        0, 1, f"{where}resumed from the checkpoint after block {block} of {blocks}", resumed_from_block=block))
