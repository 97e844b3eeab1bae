"""Runs one engine method in this (fresh) process and prints wall time, peak RSS and figures.

    python bench/method_once.py SERVICE METHOD CONFIG_JSON SRC_DIR DST_DIR

SERVICE is the engine package (quantizer, pruner); its registry `METHODS` names the method.
Besides the process's peak RSS it prints the resident size before the call and the highest one
sampled (every 20 ms) between the method's first and last progress event with a `layer` in it:
the peak while it walks the blocks, apart from loading before and writing after; and the highest
RSS seen at each block's events (flat when the walk's memory does not grow with depth).
"""

from __future__ import annotations

import importlib
import json
import resource
import sys
import threading
import time
from pathlib import Path

from services.common.contract.config import parse_config
from services.common.contract.engine_api import Progress, ProgressReporter

PAGE = resource.getpagesize()


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE / 2**20


class RssSampler(threading.Thread):
    """The highest RSS seen while `walking` is set."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.walking = threading.Event()
        self.stop = threading.Event()
        self.walk_peak = 0.0
        self.by_block: dict[int, float] = {}  # the highest RSS seen at each block's layer events
        self.phase = "before the first event"
        self.by_phase: dict[str, float] = {}  # the highest RSS sampled after each kind of progress message

    def run(self) -> None:
        while not self.stop.wait(0.02):
            now = rss_mb()
            self.by_phase[self.phase] = max(self.by_phase.get(self.phase, 0.0), now)
            if self.walking.is_set():
                self.walk_peak = max(self.walk_peak, now)


def main() -> None:
    service, method, config_json, src, dst = sys.argv[1:6]
    chosen = importlib.import_module(f"services.{service}.engine").METHODS[method]
    config = parse_config(chosen.config_cls, json.loads(config_json))
    sampler = RssSampler()
    sampler.start()

    def sink(progress: Progress) -> None:
        sampler.phase = " ".join(w for w in progress.message.split()[:2] if not any(c.isdigit() for c in w))
        if "layer" not in progress.metrics:
            return
        sampler.walking.set()
        now = rss_mb()
        sampler.walk_peak = max(sampler.walk_peak, now)
        if "block" in progress.metrics:
            block = int(progress.metrics["block"])
            sampler.by_block[block] = max(sampler.by_block.get(block, 0.0), now)
        if progress.step >= progress.total_steps - 1:  # the last layer: writing the output follows
            sampler.walking.clear()

    # The libraries the method loads its model with, imported first: the resident size before the
    # call then counts code, not weights.
    import compressed_tensors  # noqa: F401
    import transformers.modeling_utils  # noqa: F401

    before = rss_mb()
    start = time.perf_counter()
    result = chosen.run(config, Path(src), Path(dst), ProgressReporter(sink=sink))
    sampler.stop.set()
    json.dump({
        "wall_s": time.perf_counter() - start,
        "rss_before_mb": before,
        "walk_peak_rss_mb": sampler.walk_peak,
        "walk_rss_by_block_mb": [round(sampler.by_block[b]) for b in sorted(sampler.by_block)],
        "rss_by_phase_mb": {phase: round(mb) for phase, mb in sampler.by_phase.items()},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "metrics": result.metrics,
        "compression": result.compression,
    }, sys.stdout, default=str)


if __name__ == "__main__":
    main()
