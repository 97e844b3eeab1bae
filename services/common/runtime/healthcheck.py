"""gRPC health probe: `python -m services.common.runtime.healthcheck HOST:PORT` exits 0 when SERVING.

Used by the local launcher and as the docker-compose health check.
"""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def health_status(target: str, timeout_s: float = 1.0, service: str = "",
                  credentials: grpc.ChannelCredentials | None = None) -> str:
    """The serving status's name, or the gRPC code that answered instead. `credentials`: TLS (a
    worker of an --auth mesh answers its mesh's client certificate only)."""
    try:
        with (grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
            return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    except grpc.RpcError as exc:
        return exc.code().name


def main() -> None:
    target = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"
    status = health_status(target, timeout_s=3.0)
    print(status)
    sys.exit(0 if status == "SERVING" else 1)


if __name__ == "__main__":
    main()
