"""gRPC adapter of the pruner engine: the TechniqueService over its method registry."""

from __future__ import annotations

import grpc

from modelpress.v1 import common_pb2
from services.common.runtime.server import ServiceRuntime
from services.common.runtime.technique_servicer import TechniqueServicer, add_technique_service
from services.pruner.engine import METHODS


async def register(server: grpc.aio.Server, runtime: ServiceRuntime) -> list[str]:
    servicer = TechniqueServicer(common_pb2.TECHNIQUE_PRUNER, METHODS, runtime)
    return [add_technique_service(server, servicer)]
