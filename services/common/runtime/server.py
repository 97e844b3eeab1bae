"""Bootstrap shared by every service: NATS, stores, grpc.aio server, health, reflection, shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from services.common.runtime import auth, mesh_tickets
from services.common.store import nats_conn
from services.common.store.artifact_store import DELETED_SUBJECT, ArtifactStore
from services.common.store.disk_bounds import sweep_scratch
from services.common.store.events import EventLog
from services.common.store.kv_records import RecordBucket
from services.common.store.model_source import ModelSource
from modelpress.structs import jsonable
from modelpress.v1 import common_pb2
from services.common.runtime.rpc_guards import DecodeGuard, NatsAwayGuard
from services.common.runtime.settings import ServiceSettings

STAGE_CACHE_BUCKET = "modelpress_stage_cache"
# Artifacts travel over NATS, not gRPC; messages stay small except download chunks.
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.so_reuseport", 0),
    # The gateway's keepalive pings (every 20 s, with or without data) are welcome: without these
    # a stage streaming nothing for minutes got GOAWAY "too many pings" and failed UNAVAILABLE.
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 0),
]


@dataclass
class ServiceRuntime:
    settings: ServiceSettings
    nc: NATS
    js: JetStreamContext
    store: ArtifactStore
    events: EventLog
    models: ModelSource
    # Finished stages by content key (lineage.stage_key) -> their output, for reuse.
    stage_cache: RecordBucket[common_pb2.StageOutput]
    # Coroutines run on graceful shutdown, before NATS is drained.
    on_shutdown: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    @property
    def worker_id(self) -> str:
        return f"{self.settings.name}@{socket.gethostname()}:{self.settings.listen.rpartition(':')[2]}"


# Adds the service's servicers to the server; returns the full service names for health/reflection.
Register = Callable[[grpc.aio.Server, ServiceRuntime], Awaitable[list[str]]]


class InsecureNats(RuntimeError):
    """Auth is required but the NATS server lets anyone in."""


async def open_runtime(settings: ServiceSettings) -> ServiceRuntime:
    nc = await nats_conn.connect(settings.nats_url, name=f"modelpress-{settings.name}")
    if settings.require_nats_auth and not nats_conn.requires_auth(nc):
        await nc.close()
        raise InsecureNats(f"{settings.name}: the NATS server at {nats_conn.without_secret(settings.nats_url)} "
                           "accepts connections without credentials; refusing to start (require_nats_auth)")
    js = nats_conn.jetstream(nc, settings.nats_replicas)
    store = await ArtifactStore(js).ensure()
    events = await EventLog(js).ensure()
    swept = sweep_scratch(settings.work_dir.parent)
    if swept:
        logging.getLogger(settings.name).info("removed %d scratch folder(s) of ended processes", len(swept))
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    models = ModelSource(store, settings.cache_dir, max_bytes=settings.cache_max_bytes)

    async def forget_deleted(msg) -> None:
        await models.forget(msg.data.decode(errors="replace"))

    await nc.subscribe(DELETED_SUBJECT, cb=forget_deleted)
    stage_cache = await RecordBucket(js, STAGE_CACHE_BUCKET, common_pb2.StageOutput).ensure()
    return ServiceRuntime(settings, nc, js, store, events, models, stage_cache)


@dataclass
class RunningService:
    server: grpc.aio.Server
    runtime: ServiceRuntime
    health: health.aio.HealthServicer
    port: int

    async def stop(self, grace_s: float | None = None) -> None:
        # Stop taking new work first, so balancers move on, then let in-flight RPCs finish.
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.runtime.settings.grace_s if grace_s is None else grace_s)
        for hook in self.runtime.on_shutdown:
            await hook()
        await self.runtime.nc.drain()


async def start_service(settings: ServiceSettings, register: Register) -> RunningService:
    # Tokens (the gateway) or mesh tickets (a technique service) first: a caller without one learns
    # nothing, not even that its request was malformed.
    interceptors = [auth.TokenInterceptor(auth.TokenTable(settings.auth_tokens))] if settings.auth_tokens else []
    if settings.checks_mesh_tickets:
        interceptors.append(mesh_tickets.TicketInterceptor(mesh_tickets.read_secret(settings.mesh_secret)))
    interceptors += [DecodeGuard(), NatsAwayGuard()]
    runtime = await open_runtime(settings)
    server = grpc.aio.server(options=GRPC_OPTIONS, interceptors=interceptors)
    names = await register(server, runtime)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    if settings.tls_cert is not None:
        port = server.add_secure_port(settings.listen, server_credentials(settings))
    else:
        port = server.add_insecure_port(settings.listen)
    await server.start()
    if settings.checks_mesh_tickets and settings.tls_client_ca is None:
        logging.getLogger(settings.name).warning(
            "%s checks mesh tickets without mutual TLS: whoever reads the traffic to it can replay a ticket "
            "for %d s; give it --tls-cert, --tls-key and --tls-client-ca", settings.name, mesh_tickets.FRESH_FOR_S)
    for name in ["", *names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    logging.getLogger(settings.name).info(
        "%s listening on %s (%s, %s)", settings.name, settings.listen,
        "mutual TLS" if settings.tls_client_ca else "TLS" if settings.tls_cert else "plaintext",
        "tokens required" if settings.auth_tokens else "the gateway's mesh tickets required"
        if settings.checks_mesh_tickets else "no authentication")
    return RunningService(server, runtime, health_servicer, port)


def server_credentials(settings: ServiceSettings) -> grpc.ServerCredentials:
    client_ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca else None
    return grpc.ssl_server_credentials([(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())],
                                       root_certificates=client_ca, require_client_auth=client_ca is not None)


@dataclass(frozen=True)
class TargetsCredentials:
    """What the gateway presents to the technique services (services/gateway/catalog.py's Mesh)."""

    tls: grpc.ChannelCredentials | None = None  # None: plaintext
    mesh_secret: bytes | None = None  # signs every call (mesh_tickets); None: calls go unsigned


def targets_credentials(settings: ServiceSettings) -> TargetsCredentials:
    """How the gateway reaches the technique services: TLS trusting `targets_tls_ca`, presenting
    targets_tls_cert/key (else its own tls_cert/key) as the client's certificate when it has one,
    and the mesh secret its calls are signed with."""
    secret = mesh_tickets.read_secret(settings.mesh_secret) if settings.mesh_secret else None
    if settings.targets_tls_ca is None:
        return TargetsCredentials(mesh_secret=secret)
    cert, key = ((settings.targets_tls_cert, settings.targets_tls_key) if settings.targets_tls_cert
                 else (settings.tls_cert, settings.tls_key))
    tls = grpc.ssl_channel_credentials(root_certificates=settings.targets_tls_ca.read_bytes(),
                                       private_key=key.read_bytes() if key else None,
                                       certificate_chain=cert.read_bytes() if cert else None)
    return TargetsCredentials(tls=tls, mesh_secret=secret)


async def serve(settings: ServiceSettings, register: Register) -> None:
    service = await start_service(settings, register)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await service.stop()


def run_service(name: str, register: Register, argv: list[str] | None = None) -> None:
    # Whatever the service writes (scratch models, caches, spooled uploads) is its owner's alone:
    # other local users of a shared machine read none of another tenant's bytes.
    os.umask(0o077)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {name} %(levelname)s %(message)s")
    settings = ServiceSettings.from_args(name, argv)
    asyncio.run(serve(settings, register))


def to_jsonable(value: Any) -> Any:
    """Struct-safe copy of engine metrics (modelpress.structs.jsonable: NaN and infinities as None)."""
    return jsonable(value)
