"""gRPC adapter of the pruner. Its engine has not landed yet: Describe lists no methods and
Run answers UNIMPLEMENTED, so nothing pretends to succeed."""

from __future__ import annotations

import grpc

from modelpress.v1 import common_pb2, pruner_pb2, pruner_pb2_grpc
from services.common.server import ServiceRuntime
from services.common.technique_servicer import TechniqueServicer

NOT_YET = "the pruner has no methods yet; they arrive with the pruner issue"


class PrunerServicer(pruner_pb2_grpc.PrunerServiceServicer):
    def __init__(self, runtime: ServiceRuntime) -> None:
        self._technique = TechniqueServicer(common_pb2.TECHNIQUE_PRUNER, {}, runtime)

    async def Describe(self, request, context):
        return pruner_pb2.PrunerServiceDescribeResponse(description=self._technique.description())

    async def Run(self, request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, NOT_YET)
        yield  # pragma: no cover - makes this an async generator


async def register(server: grpc.aio.Server, runtime: ServiceRuntime) -> list[str]:
    pruner_pb2_grpc.add_PrunerServiceServicer_to_server(PrunerServicer(runtime), server)
    return [pruner_pb2.DESCRIPTOR.services_by_name["PrunerService"].full_name]
