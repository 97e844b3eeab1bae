"""gRPC adapter of the pruner engine."""

from __future__ import annotations

import grpc

from modelpress.v1 import common_pb2, pruner_pb2, pruner_pb2_grpc
from services.common.runtime.server import ServiceRuntime
from services.common.runtime.technique_servicer import TechniqueServicer
from services.pruner.engine import METHODS


class PrunerServicer(pruner_pb2_grpc.PrunerServiceServicer):
    def __init__(self, runtime: ServiceRuntime) -> None:
        self._technique = TechniqueServicer(common_pb2.TECHNIQUE_PRUNER, METHODS, runtime)

    async def Describe(self, request, context):
        return pruner_pb2.PrunerServiceDescribeResponse(description=self._technique.description())

    async def CheckConfig(self, request, context):
        errors, over_budget = self._technique.check_config(request.stage)
        return pruner_pb2.PrunerServiceCheckConfigResponse(errors=errors, over_budget=over_budget)

    async def Run(self, request, context):
        async for update in self._technique.run_stage(request.stage, context):
            yield pruner_pb2.PrunerServiceRunResponse(update=update)


async def register(server: grpc.aio.Server, runtime: ServiceRuntime) -> list[str]:
    pruner_pb2_grpc.add_PrunerServiceServicer_to_server(PrunerServicer(runtime), server)
    return [pruner_pb2.DESCRIPTOR.services_by_name["PrunerService"].full_name]
