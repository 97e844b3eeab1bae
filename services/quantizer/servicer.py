"""gRPC adapter of the quantizer engine."""

from __future__ import annotations

import grpc

from modelpress.v1 import common_pb2, quantizer_pb2, quantizer_pb2_grpc
from services.common.runtime.server import ServiceRuntime
from services.common.runtime.technique_servicer import TechniqueServicer
from services.quantizer.engine import METHODS


class QuantizerServicer(quantizer_pb2_grpc.QuantizerServiceServicer):
    def __init__(self, runtime: ServiceRuntime) -> None:
        self._technique = TechniqueServicer(common_pb2.TECHNIQUE_QUANTIZER, METHODS, runtime)

    async def Describe(self, request, context):
        return quantizer_pb2.QuantizerServiceDescribeResponse(description=self._technique.description())

    async def CheckConfig(self, request, context):
        errors, over_budget = self._technique.check_config(request.stage)
        return quantizer_pb2.QuantizerServiceCheckConfigResponse(errors=errors, over_budget=over_budget)

    async def Run(self, request, context):
        async for update in self._technique.run_stage(request.stage, context):
            yield quantizer_pb2.QuantizerServiceRunResponse(update=update)


async def register(server: grpc.aio.Server, runtime: ServiceRuntime) -> list[str]:
    quantizer_pb2_grpc.add_QuantizerServiceServicer_to_server(QuantizerServicer(runtime), server)
    return [quantizer_pb2.DESCRIPTOR.services_by_name["QuantizerService"].full_name]
