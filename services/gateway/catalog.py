"""What the technique services can do, gathered from their Describe RPCs (cached briefly)."""

from __future__ import annotations

import asyncio
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modelpress.v1 import (common_pb2, evaluator_pb2_grpc, optimizer_pb2_grpc, technique_pb2,
                           technique_pb2_grpc)
from services.common.contract.techniques import TECHNIQUE_SERVICES
from services.common.runtime import mesh_tickets
from services.common.runtime.server import TargetsCredentials

# Round-robin over every address a target resolves to, so `--scale quantizer=3` spreads stages.
CHANNEL_OPTIONS = [
    ("grpc.lb_policy_name", "round_robin"),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.enable_retries", 1),
    # A replica that vanishes without closing its connections (a killed VM, a cut network) is
    # noticed within ~30 s by keepalive pings instead of hanging its stage forever.
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    # A restarted replica is found within seconds (gRPC's default backoff grows to 120 s). The
    # largest backoff stays under HEALTH_TIMEOUT_S so a health check made while the channel waits
    # out its backoff can still reach a replica that is back (at 3 s a restarted quantizer was
    # missed once in the suite; our reading of why, not traced).
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 1500),
]
HEALTH_TIMEOUT_S = 2.0


class ServiceUnavailable(RuntimeError):
    pass


def _tls_name(target: str) -> list[tuple[str, str]]:
    """The name TLS checks a replica's certificate against. gRPC checks a target's authority, which
    for a list of replicas (`ipv4:127.0.0.1:50052,127.0.0.1:50152`, from `modelpress up --replicas`)
    is the whole list and matches no certificate: its first host stands for all of them."""
    scheme, _, addresses = target.partition(":")
    if scheme not in ("ipv4", "ipv6") or "," not in addresses:
        return []
    host = addresses.split(",")[0].rpartition(":")[0].strip("[]")
    return [("grpc.ssl_target_name_override", host)]


class Mesh:
    """Channels to the technique services: every one serves the TechniqueService (Run, Describe,
    CheckConfig); the evaluator and the optimizer also serve their own service on the same channel.
    With a mesh secret every call carries a fresh ticket (mesh_tickets), which workers that have the
    secret ask for."""

    def __init__(self, targets: dict[str, str], describe_ttl_s: float = 30.0,
                 credentials: TargetsCredentials | None = None) -> None:
        credentials = credentials or TargetsCredentials()
        signers = mesh_tickets.signers(credentials.mesh_secret) if credentials.mesh_secret else None

        def channel(target: str) -> grpc.aio.Channel:
            if credentials.tls is not None:
                return grpc.aio.secure_channel(target, credentials.tls, options=CHANNEL_OPTIONS + _tls_name(target),
                                               interceptors=signers)
            return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS, interceptors=signers)

        self._channels = {technique: channel(targets[name]) for technique, name in TECHNIQUE_SERVICES.items()}
        self._ttl = describe_ttl_s
        self._described: dict[int, tuple[float, common_pb2.ServiceDescription]] = {}

    def stub(self, technique: int) -> technique_pb2_grpc.TechniqueServiceStub:
        return technique_pb2_grpc.TechniqueServiceStub(self._channels[technique])

    async def is_live(self, technique: int) -> bool:
        """Whether some replica of the service answers its health check as SERVING now."""
        stub = health_pb2_grpc.HealthStub(self._channels[technique])
        try:
            # wait_for_ready: a channel between reconnect attempts gets the whole timeout to connect.
            response = await stub.Check(health_pb2.HealthCheckRequest(), timeout=HEALTH_TIMEOUT_S,
                                        wait_for_ready=True)
        except grpc.aio.AioRpcError:
            return False
        return response.status == health_pb2.HealthCheckResponse.SERVING

    async def require_live(self, techniques) -> None:
        """Raises ServiceUnavailable naming every service with no live replica."""
        techniques = sorted(set(techniques))
        live = await asyncio.gather(*(self.is_live(t) for t in techniques))
        dead = [TECHNIQUE_SERVICES[t] for t, ok in zip(techniques, live) if not ok]
        if dead:
            raise ServiceUnavailable(f"no live replica of {', '.join(dead)}: nothing answers its health check")

    @property
    def evaluator(self) -> evaluator_pb2_grpc.EvaluatorServiceStub:
        """Measurement, comparison, benchmarks and reports (the evaluator's stage is `stub(...)`'s)."""
        return evaluator_pb2_grpc.EvaluatorServiceStub(self._channels[common_pb2.TECHNIQUE_EVALUATOR])

    @property
    def optimizer(self) -> optimizer_pb2_grpc.OptimizerServiceStub:
        """ListEngines (the optimizer's stages are `stub(...)`'s)."""
        return optimizer_pb2_grpc.OptimizerServiceStub(self._channels[common_pb2.TECHNIQUE_OPTIMIZER])

    async def describe(self, technique: int) -> common_pb2.ServiceDescription:
        cached = self._described.get(technique)
        if cached and time.monotonic() - cached[0] < self._ttl:
            return cached[1]
        request = technique_pb2.TechniqueServiceDescribeRequest()
        try:
            # wait_for_ready as in is_live: a channel in reconnect backoff after its replica restarted
            # would otherwise fail this call at once although the replica is serving again.
            response = await self.stub(technique).Describe(request, timeout=5.0, wait_for_ready=True)
        except grpc.aio.AioRpcError as exc:
            raise ServiceUnavailable(f"{TECHNIQUE_SERVICES[technique]}: {exc.code().name}: {exc.details()}") from exc
        self._described[technique] = (time.monotonic(), response.description)
        return response.description

    async def check_config(self, technique: int, stage: common_pb2.StageSpec) -> tuple[list[str], list[str]]:
        """The service's own check of a stage config, the one place its values are validated (rules
        across fields included): (problems, work budgets it goes past)."""
        request = technique_pb2.TechniqueServiceCheckConfigRequest(stage=stage)
        try:
            response = await self.stub(technique).CheckConfig(request, timeout=5.0, wait_for_ready=True)
        except grpc.aio.AioRpcError as exc:
            raise ServiceUnavailable(f"{TECHNIQUE_SERVICES[technique]}: {exc.code().name}: {exc.details()}") from exc
        return list(response.errors), list(response.over_budget)

    async def describe_all(self) -> tuple[list[common_pb2.MethodDescription], dict[str, str]]:
        techniques = list(TECHNIQUE_SERVICES)
        results = await asyncio.gather(*(self.describe(t) for t in techniques), return_exceptions=True)
        methods, unavailable = [], {}
        for technique, result in zip(techniques, results):
            if isinstance(result, BaseException):
                unavailable[TECHNIQUE_SERVICES[technique]] = str(result)
            else:
                methods.extend(result.methods)
        return methods, unavailable

    async def close(self) -> None:
        await asyncio.gather(*(ch.close() for ch in self._channels.values()))
