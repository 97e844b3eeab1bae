"""A replica's machine as the messages that carry it (ListEngines, every service's Describe)."""

from __future__ import annotations

from modelpress.v1 import common_pb2
from services.common.measure.isa import supports
from services.common.measure.machine import this_cpu


def worker_hardware(worker: str) -> common_pb2.WorkerHardware:
    cpu = this_cpu()
    return common_pb2.WorkerHardware(
        worker=worker, machine=common_pb2.MachineInfo(**cpu.as_dict()), isa_class=cpu.isa_class,
        compute=[common_pb2.PrecisionSupport(**s.as_dict()) for s in supports(cpu.isa_features)])
