"""What every bench/results/*.json says about where it was measured: CPU model, ISA flags,
threads, and the machine's load when the run ended (a figure is only read against its machine)."""

from __future__ import annotations

import os
from datetime import datetime, timezone

from services.common.measure.machine import describe_machine


def machine_record(threads: int | None = None) -> dict:
    machine = describe_machine().as_dict()
    try:
        load = [float(v) for v in open("/proc/loadavg").read().split()[:3]]
    except OSError:
        load = []
    if threads is None:
        try:
            import torch

            threads = torch.get_num_threads()
        except ImportError:
            threads = os.cpu_count() or 0
    return {**machine, "threads": threads, "load_average_1_5_15m": load,
            "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
