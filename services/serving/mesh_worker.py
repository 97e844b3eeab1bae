"""The serving service as a mesh worker: `python -m services.serving --listen ... --nats-url ...`.

It answers the Open Inference Protocol on its gRPC port (beside health and reflection, behind the
same token check as every mesh service) and OIP REST / OpenAI / metrics on `--http-listen`. Every
few seconds it reads the gateway's deployment records, takes a replica slot of each deployment that
has a free one (services/common/store/serving_slots.py), fetches that artifact from the store, loads
it, and rewrites its slots with state, endpoints and figures. A deployment deleted, scaled below
its slot, or given a new config is let go of (and loaded again with the new config).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import grpc

from modelpress.v1 import common_pb2
from services.common.contract.config import parse_config
from services.common.contract.deployment_config import DeploymentConfig
from services.common.runtime import auth
from services.common.runtime.server import ServiceRuntime
from services.common.store.kv_records import RecordBucket
from services.common.store.serving_slots import (
    DEPLOYMENTS_BUCKET,
    FAILED,
    HEARTBEAT_S,
    LOADING,
    SERVING,
    ServingSlots,
    Slot,
)
from services.serving import oip_grpc
from services.serving.replica import Replica, figures_of
from services.serving.server import start_http

log = logging.getLogger("modelpress.serving")
NAME_PREFIX = "name."


@dataclass
class Hosted:
    record: common_pb2.Deployment
    index: int
    revision: int
    slot: Slot
    loading: asyncio.Task | None = None


class MeshWorker:
    def __init__(self, runtime: ServiceRuntime, replica: Replica, endpoints: dict[str, str]) -> None:
        self.runtime, self.replica, self.endpoints = runtime, replica, endpoints
        self.records = RecordBucket(runtime.js, DEPLOYMENTS_BUCKET, common_pb2.Deployment)
        self.slots = ServingSlots(runtime.js)
        self.hosted: dict[str, Hosted] = {}

    async def run(self) -> None:
        # Under --auth the workers' NATS user may not create the gateway's deployments bucket: wait for it.
        while True:
            try:
                await self.records.ensure()
                await self.slots.ensure()
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - NATS refusing for now; the gateway creates the bucket
                log.info("serving: waiting for the deployments bucket (%s)", exc)
                await asyncio.sleep(HEARTBEAT_S)
        while True:
            try:
                await self.tick()
                self.replica.starting = False  # what this replica claimed is known: other names are not found
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("serving: a round over the deployments failed; trying again")
            await asyncio.sleep(HEARTBEAT_S)

    async def tick(self) -> None:
        records = {}
        for key in await self.records.keys():
            if not key.startswith(NAME_PREFIX) and (record := await self.records.get(key)) is not None:
                records[key] = record
        for deployment_id in list(self.hosted):
            record = records.get(deployment_id)
            hosted = self.hosted[deployment_id]
            if record is None or hosted.index >= record.replicas or record.config != hosted.record.config:
                await self.let_go(deployment_id, release=record is not None)
        for deployment_id, record in records.items():
            if deployment_id not in self.hosted:
                claimed = await self.slots.claim(deployment_id, record.replicas, self.runtime.worker_id)
                if claimed is not None:
                    self.take(record, *claimed)
        for deployment_id, hosted in list(self.hosted.items()):
            await self.beat(deployment_id, hosted)

    def take(self, record: common_pb2.Deployment, index: int, revision: int) -> None:
        hosted = Hosted(record, index, revision, Slot(self.runtime.worker_id, LOADING))
        self.hosted[record.deployment_id] = hosted
        self.replica.expect(record.name, record.tenant)
        hosted.loading = asyncio.create_task(self.load(hosted), name=f"load-{record.name}")

    async def load(self, hosted: Hosted) -> None:
        record = hosted.record
        try:
            config = parse_config(DeploymentConfig, record.config)
            folder = await self.runtime.models.local_folder(common_pb2.ModelRef(artifact_id=record.artifact_id))
            shadow = None
            if record.HasField("shadow") and record.shadow_share > 0:
                shadow = (await self.runtime.models.local_folder(record.shadow), record.shadow_share)
            await self.replica.add(record.name, folder, config, tenant=record.tenant, shadow=shadow)
            hosted.slot.state, hosted.slot.endpoints = SERVING, dict(self.endpoints)
            log.info("serving %s (%s) from artifact %s", record.name, record.deployment_id, record.artifact_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported on the deployment, not a crash of the worker
            hosted.slot.state, hosted.slot.message = FAILED, f"{type(exc).__name__}: {exc}"
            log.warning("serving: %s could not be loaded: %s", record.name, hosted.slot.message)

    async def beat(self, deployment_id: str, hosted: Hosted) -> None:
        if hosted.slot.state == SERVING and hosted.record.name in self.replica.deployments:
            hosted.slot.figures = figures_of(self.replica.deployments[hosted.record.name])
        revision = await self.slots.beat(deployment_id, hosted.index, hosted.revision, hosted.slot)
        if revision is None:  # the slot went to another replica (ours looked dead): stop serving it
            await self.let_go(deployment_id, release=False)
        else:
            hosted.revision = revision

    async def let_go(self, deployment_id: str, release: bool) -> None:
        hosted = self.hosted.pop(deployment_id)
        if hosted.loading is not None and not hosted.loading.done():
            hosted.loading.cancel()
        self.replica.forget(hosted.record.name)
        if hosted.record.name in self.replica.deployments:
            self.replica.remove(hosted.record.name)
        if release:
            await self.slots.release(deployment_id, hosted.index)

    async def stop(self) -> None:
        for deployment_id in list(self.hosted):
            await self.let_go(deployment_id, release=True)


async def register(server: grpc.aio.Server, runtime: ServiceRuntime) -> list[str]:
    replica = Replica(starting=True)
    name = oip_grpc.register(server, replica)
    settings = runtime.settings
    host = settings.advertise_host or settings.listen.rpartition(":")[0]
    http_host, _, http_port = settings.http_listen.rpartition(":")
    tokens = auth.TokenTable(settings.auth_tokens) if settings.auth_tokens else None
    http = await start_http(replica, http_host, int(http_port), tokens)
    endpoints = {"oip-grpc": f"{host}:{settings.listen.rpartition(':')[2]}",
                 "http": f"{settings.advertise_host or http_host}:{http.port}"}
    worker = MeshWorker(runtime, replica, endpoints)
    task = asyncio.create_task(worker.run(), name="serving-deployments")

    async def stop() -> None:
        task.cancel()
        await worker.stop()
        await http.runner.cleanup()
        replica.close()

    runtime.on_shutdown.append(stop)
    return [name]

