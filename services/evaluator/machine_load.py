"""What else the machine does while we time: load average, other processes' CPU share, steal.

Read from /proc (Linux); where it is missing every figure is 0 and `available` is False.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

PROC = Path("/proc")


def _cpu_jiffies() -> tuple[int, int, int] | None:
    """(busy, steal, total) jiffies over all CPUs since boot."""
    try:
        fields = [int(v) for v in (PROC / "stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq
    return busy, steal, busy + idle + iowait + steal


def _own_jiffies() -> int:
    """CPU time of this process and its threads (utime + stime)."""
    try:
        parts = (PROC / "self" / "stat").read_text().rsplit(")", 1)[1].split()
        return int(parts[11]) + int(parts[12])
    except (OSError, ValueError, IndexError):
        return 0


def _load_average() -> float:
    try:
        return float((PROC / "loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0


@dataclass
class MachineLoad:
    load_average_1m: float = 0.0
    others_cpu_share: float = 0.0
    steal_share: float = 0.0
    seconds: float = 0.0
    logical_cores: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


class LoadWatch:
    """Started before timing and stopped after it; the load in between."""

    def __init__(self) -> None:
        self._start: tuple | None = None

    def start(self) -> "LoadWatch":
        self._start = (_cpu_jiffies(), _own_jiffies(), time.monotonic())
        return self

    def stop(self) -> MachineLoad:
        cores = os.cpu_count() or 1
        load = MachineLoad(load_average_1m=_load_average(), logical_cores=cores)
        if self._start is None:
            return load
        cpu_before, own_before, t0 = self._start
        cpu_after, own_after = _cpu_jiffies(), _own_jiffies()
        load.seconds = time.monotonic() - t0
        if cpu_before is None or cpu_after is None:
            return load
        busy = cpu_after[0] - cpu_before[0]
        steal = cpu_after[1] - cpu_before[1]
        total = cpu_after[2] - cpu_before[2]
        if total > 0:
            load.others_cpu_share = max(0.0, min(1.0, (busy - (own_after - own_before)) / total))
            load.steal_share = max(0.0, steal / total)
        return load
