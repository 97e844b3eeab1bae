"""gRPC adapter of the optimizer engine: the TechniqueService over its method registry, and ListEngines."""

from __future__ import annotations

import grpc

from modelpress.v1 import common_pb2, optimizer_pb2, optimizer_pb2_grpc
from services.common.runtime.server import ServiceRuntime
from services.common.runtime.technique_servicer import TechniqueServicer, add_technique_service
from services.common.runtime.worker_hardware import worker_hardware
from services.optimizer.engine import METHODS
from services.optimizer.engines import ENGINES, availability


def engine_infos(features: list[str]) -> list[common_pb2.EngineInfo]:
    infos = []
    for engine in ENGINES.values():
        usable, why = availability(engine)
        infos.append(common_pb2.EngineInfo(name=engine.name, precisions=engine.precisions, available=usable,
                                           reason=why, methods=engine.methods,
                                           compute={p: engine.compute_of(p) for p in engine.precisions},
                                           emulated=engine.emulated_on(features)))
    return infos


class OptimizerServicer(optimizer_pb2_grpc.OptimizerServiceServicer):
    """What only the optimizer answers: its worker's engines. Its stages go through the TechniqueService."""

    def __init__(self, runtime: ServiceRuntime) -> None:
        self._worker = runtime.worker_id

    async def ListEngines(self, request, context):
        hardware = worker_hardware(self._worker)
        return optimizer_pb2.OptimizerServiceListEnginesResponse(
            engines=engine_infos(list(hardware.machine.isa_features)), hardware=hardware)


async def register(server: grpc.aio.Server, runtime: ServiceRuntime) -> list[str]:
    stages = TechniqueServicer(common_pb2.TECHNIQUE_OPTIMIZER, METHODS, runtime)
    stages_name = add_technique_service(server, stages)
    optimizer_pb2_grpc.add_OptimizerServiceServicer_to_server(OptimizerServicer(runtime), server)
    return [stages_name, optimizer_pb2.DESCRIPTOR.services_by_name["OptimizerService"].full_name]
