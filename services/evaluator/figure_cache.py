"""A model's untimed figures, measured once per content and plan in this evaluator process.

Parameters, FLOPs, peak RSS, perplexity and sentence embeddings depend on the model's files and the
probe's plan alone, and the same model is measured again and again: the original of every job on
it, of every candidate of a search, the winner in a search's closing round. Each probe costs
seconds of interpreter and library imports before it loads anything. Latency is never kept here: it
is timed in each interleaved run, beside the models it is compared with.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

from services.common.store.path_models import file_identity
from services.evaluator.probe import ProbePlan

# A job's original and its output per entry; a search's candidates share one original.
MAX_ENTRIES = 64


def content_stamp(folder: Path) -> tuple:
    """What changes whenever a file of the folder is added, removed or rewritten, without reading the bytes."""
    stamp = []
    for root, _, files in os.walk(folder):
        for name in files:
            path = Path(root) / name
            stamp.append((str(path.relative_to(folder)), *file_identity(path.stat())))
    return tuple(sorted(stamp))


class UntimedFigureCache:
    """Figures (and the embeddings file's bytes) of `measure` probes that timed nothing, keyed by the
    folder's path and content stamp and the plan with its output path reduced to whether it has one."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._entries: OrderedDict[tuple, tuple[dict, bytes | None]] = OrderedDict()
        self._lock = threading.Lock()
        self._max = max_entries

    @staticmethod
    def key(folder: Path, plan: ProbePlan) -> tuple | None:
        """None where the figures must not be reused: a timed plan, or a folder that cannot be read."""
        if plan.time_latency:
            return None
        try:
            stamp = content_stamp(folder)
        except OSError:
            return None
        plan_text = ProbePlan(**{**plan.__dict__, "embeddings_out": "wanted" if plan.embeddings_out else ""}).to_json()
        return str(Path(folder).resolve()), stamp, plan_text

    def get(self, key: tuple | None) -> tuple[dict, bytes | None] | None:
        if key is None:
            return None
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
            return found

    def put(self, key: tuple | None, figures: dict, embeddings: bytes | None) -> None:
        if key is None:
            return
        with self._lock:
            self._entries[key] = (figures, embeddings)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
