"""gRPC adapter of the distiller engine."""

from __future__ import annotations

import grpc

from modelpress.v1 import common_pb2, distiller_pb2, distiller_pb2_grpc
from services.common.runtime.server import ServiceRuntime
from services.common.runtime.technique_servicer import TechniqueServicer
from services.distiller.engine import METHODS


class DistillerServicer(distiller_pb2_grpc.DistillerServiceServicer):
    def __init__(self, runtime: ServiceRuntime) -> None:
        self._technique = TechniqueServicer(common_pb2.TECHNIQUE_DISTILLER, METHODS, runtime)

    async def Describe(self, request, context):
        return distiller_pb2.DistillerServiceDescribeResponse(description=self._technique.description())

    async def CheckConfig(self, request, context):
        errors, over_budget = self._technique.check_config(request.stage)
        return distiller_pb2.DistillerServiceCheckConfigResponse(errors=errors, over_budget=over_budget)

    async def Run(self, request, context):
        async for update in self._technique.run_stage(request.stage, context):
            yield distiller_pb2.DistillerServiceRunResponse(update=update)


async def register(server: grpc.aio.Server, runtime: ServiceRuntime) -> list[str]:
    distiller_pb2_grpc.add_DistillerServiceServicer_to_server(DistillerServicer(runtime), server)
    return [distiller_pb2.DESCRIPTOR.services_by_name["DistillerService"].full_name]
