"""A serving replica's listeners: the OIP gRPC server (with gRPC health) and the HTTP server (OIP
REST, OpenAI API, metrics), on one event loop."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from dataclasses import dataclass
from pathlib import Path

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common.contract.deployment_config import DeploymentConfig
from services.serving import http_api, oip_grpc
from services.serving.replica import Replica

# Requests carry tensors: up to this many bytes per gRPC message (each deployment checks its own,
# smaller, max_request_bytes and answers INVALID_ARGUMENT naming it).
MAX_MESSAGE = http_api.MAX_BODY
log = logging.getLogger("modelpress.serving")


@dataclass
class HttpServer:
    runner: web.AppRunner
    port: int


async def start_http(replica: Replica, host: str, port: int, tokens=None) -> HttpServer:
    """`tokens` (auth.TokenTable): every route but health and metrics needs a known bearer token."""
    runner = web.AppRunner(http_api.build_app(replica, tokens), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return HttpServer(runner, site._server.sockets[0].getsockname()[1])  # the port chosen when 0 was asked


@dataclass
class Listening:
    grpc_server: grpc.aio.Server
    http_runner: web.AppRunner
    grpc_port: int
    http_port: int

    async def stop(self, grace: float = 2.0) -> None:
        await self.grpc_server.stop(grace)
        await self.http_runner.cleanup()


async def listen(replica: Replica, grpc_address: str, http_host: str, http_port: int) -> Listening:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_MESSAGE),
                                      ("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.so_reuseport", 0)])
    name = oip_grpc.register(server, replica)
    checker = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    grpc_port = server.add_insecure_port(grpc_address)
    await server.start()
    await checker.set(name, health_pb2.HealthCheckResponse.SERVING)
    http = await start_http(replica, http_host, http_port)
    return Listening(server, http.runner, grpc_port, http.port)


async def run(models: dict[str, Path], config: DeploymentConfig, grpc_address: str, http_host: str,
              http_port: int, ready_file: Path | None = None,
              shadows: dict[str, tuple[Path, float]] | None = None) -> None:
    """Serves `models` until SIGTERM/SIGINT; writes the bound ports to `ready_file` once every model
    is loaded (tests and benches wait for it)."""
    replica = Replica()
    listening = await listen(replica, grpc_address, http_host, http_port)
    for name, folder in models.items():
        await replica.add(name, folder, config, shadow=(shadows or {}).get(name))
        log.info("serving %s from %s", name, folder)
    if ready_file is not None:
        ready_file.write_text(json.dumps({"grpc_port": listening.grpc_port, "http_port": listening.http_port}))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await listening.stop()
    replica.close()
