"""gRPC adapter of the optimizer. Its engine has not landed yet: Describe lists no methods and
Run answers UNIMPLEMENTED, so nothing pretends to succeed."""

from __future__ import annotations

import grpc

from modelpress.v1 import common_pb2, optimizer_pb2, optimizer_pb2_grpc
from services.common.server import ServiceRuntime
from services.common.technique_servicer import TechniqueServicer

NOT_YET = "the optimizer has no methods yet; they arrive with the optimizer issue (#5)"


class OptimizerServicer(optimizer_pb2_grpc.OptimizerServiceServicer):
    def __init__(self, runtime: ServiceRuntime) -> None:
        self._technique = TechniqueServicer(common_pb2.TECHNIQUE_OPTIMIZER, {}, runtime)

    async def Describe(self, request, context):
        return optimizer_pb2.OptimizerServiceDescribeResponse(description=self._technique.description())

    async def Run(self, request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, NOT_YET)
        yield  # pragma: no cover - makes this an async generator


async def register(server: grpc.aio.Server, runtime: ServiceRuntime) -> list[str]:
    optimizer_pb2_grpc.add_OptimizerServiceServicer_to_server(OptimizerServicer(runtime), server)
    return [optimizer_pb2.DESCRIPTOR.services_by_name["OptimizerService"].full_name]
