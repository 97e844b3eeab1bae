"""Deployments: the gateway's records of what the serving replicas serve, and their live status.

A record (common_pb2.Deployment, key = its id, tenant-scoped like jobs) says what to serve and how
(artifact, replicas, DeploymentConfig); its model name is claimed mesh-wide with an atomic create of
`name.<name>`, so two deployments never answer to one name. Serving replicas watch the records and
take replica slots (services/common/store/serving_slots.py); the state, endpoints and figures a
caller sees are read from those slots when asked, never stored twice.
"""

from __future__ import annotations

import re
import uuid

from google.protobuf import json_format, struct_pb2
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError

from modelpress.structs import from_struct
from modelpress.v1 import common_pb2
from services.common.contract.chain import InvalidArgument
from services.common.contract.config import validated
from services.common.contract.deployment_config import DeploymentConfig
from services.common.runtime.auth import Principal
from services.common.store.kv_records import RecordBucket
from services.common.store.serving_slots import DEPLOYMENTS_BUCKET, FAILED, SERVING, ServingSlots

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
NAME_PREFIX = "name."
MAX_REPLICAS = 64
# Formats a serving replica loads (services/serving/deployment.py): engine graphs, safetensors and GGUF
# (the latter where the replica has the llamacpp extra; one without it reports the deployment FAILED naming it).
SERVABLE_FORMATS = (common_pb2.ARTIFACT_FORMAT_ONNX, common_pb2.ARTIFACT_FORMAT_OPENVINO_IR,
                    common_pb2.ARTIFACT_FORMAT_HF_SAFETENSORS, common_pb2.ARTIFACT_FORMAT_COMPRESSED_TENSORS,
                    common_pb2.ARTIFACT_FORMAT_PACKED_SAFETENSORS, common_pb2.ARTIFACT_FORMAT_GGUF)


class DeploymentNotFound(LookupError):
    """No deployment of that id visible to the caller (NOT_FOUND)."""


class NameTaken(RuntimeError):
    """Another deployment answers to that name (ALREADY_EXISTS)."""


def checked_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidArgument(f"name: {name[:80]!r} is not a model name (a letter or digit, then letters, digits, "
                              "'.', '_' or '-', at most 64 characters)")
    return name


def checked_replicas(replicas: int, field: str = "replicas") -> int:
    if not 1 <= replicas <= MAX_REPLICAS:
        raise InvalidArgument(f"{field}: {replicas} is not between 1 and {MAX_REPLICAS}")
    return replicas


def checked_config(values: struct_pb2.Struct | dict, field: str = "config") -> struct_pb2.Struct:
    """The DeploymentConfig fields given, validated by their one declaration; INVALID_ARGUMENT naming
    each bad field. Returned as given (defaults stay implicit, so a later default applies)."""
    _, problems = validated(DeploymentConfig, values)
    if problems:
        raise InvalidArgument("; ".join(f"{field}.{p}" for p in problems))
    struct = struct_pb2.Struct()
    struct.update(from_struct(values) if isinstance(values, struct_pb2.Struct) else values)
    return struct


class Deployments:
    def __init__(self, js: JetStreamContext) -> None:
        self._records = RecordBucket(js, DEPLOYMENTS_BUCKET, common_pb2.Deployment)
        self._slots = ServingSlots(js)

    async def ensure(self) -> Deployments:
        await self._records.ensure()
        await self._slots.ensure()
        return self

    async def create(self, principal: Principal, name: str, artifact: common_pb2.ArtifactRef, job_id: str,
                     replicas: int, config: struct_pb2.Struct, kind: str | None,
                     shadow: common_pb2.ModelRef | None = None, shadow_share: float = 0.0) -> common_pb2.Deployment:
        if artifact.format not in SERVABLE_FORMATS:
            raise InvalidArgument(f"artifact {artifact.id} is {common_pb2.ArtifactFormat.Name(artifact.format)}, "
                                  "which the serving replicas do not load (they serve ONNX, OpenVINO IR, "
                                  "safetensors and GGUF artifacts)")
        deployment_id = f"dep-{uuid.uuid4().hex[:16]}"
        try:
            await self._records.kv.create(NAME_PREFIX + name, deployment_id.encode())
        except KeyWrongLastSequenceError:
            raise NameTaken(f"name: another deployment answers to {name!r}; choose another name or delete "
                            "that deployment") from None
        record = common_pb2.Deployment(deployment_id=deployment_id, name=name, tenant=principal.tenant,
                                       artifact_id=artifact.id, job_id=job_id, replicas=replicas, config=config,
                                       state=common_pb2.DEPLOYMENT_STATE_PENDING, model_kind=kind or "",
                                       format=artifact.format)
        if shadow is not None:
            record.shadow.CopyFrom(shadow)
            record.shadow_share = shadow_share
        record.created_at.GetCurrentTime()
        await self._records.put(deployment_id, record)
        return record

    async def deploy_winner(self, job: common_pb2.Job, kind: str | None) -> common_pb2.Deployment:
        """A search's output deployed under its spec's deploy_as, one replica; the deployment an earlier run of
        the same search made (a gateway restarted before it saved the id) is returned again. NameTaken when
        another deployment answers to the name."""
        name = checked_name(job.search.deploy_as)
        try:
            return await self.create(Principal(tenant=job.tenant, operator=False), name, job.output, job.job_id, 1,
                                     struct_pb2.Struct(), kind)
        except NameTaken:
            existing = await self.named(name)
            if existing is not None and existing.job_id == job.job_id:
                return existing
            raise

    async def taken(self, name: str) -> bool:
        """Whether a deployment (of any tenant) answers to `name`."""
        return await self.named(name) is not None

    async def named(self, name: str) -> common_pb2.Deployment | None:
        """The deployment (of any tenant) that answers to `name`, if one does."""
        try:
            entry = await self._records.kv.get(NAME_PREFIX + name)
        except (KeyNotFoundError, NotFoundError):
            return None
        return await self._records.get(entry.value.decode()) if entry.value else None

    async def _record(self, principal: Principal, deployment_id: str) -> common_pb2.Deployment:
        record = await self._records.get(deployment_id) if not deployment_id.startswith(NAME_PREFIX) else None
        # Another tenant's deployment is not found, as if it did not exist (its name says nothing either).
        if record is None or (not principal.operator and record.tenant != principal.tenant):
            raise DeploymentNotFound(f"deployment_id: deployment {deployment_id!r} not found")
        return record

    async def get(self, principal: Principal, deployment_id: str) -> common_pb2.Deployment:
        return await self.live(await self._record(principal, deployment_id))

    async def list(self, principal: Principal) -> list[common_pb2.Deployment]:
        found = []
        for key in await self._records.keys():
            if key.startswith(NAME_PREFIX):
                continue
            record = await self._records.get(key)
            if record is not None and (principal.operator or record.tenant == principal.tenant):
                found.append(await self.live(record))
        return sorted(found, key=lambda d: (d.created_at.seconds, d.deployment_id))

    async def update(self, principal: Principal, deployment_id: str, replicas: int,
                     config: struct_pb2.Struct | None) -> common_pb2.Deployment:
        record = await self._record(principal, deployment_id)
        if replicas:
            record.replicas = checked_replicas(replicas)
        if config is not None and config.fields:
            merged = {**from_struct(record.config), **from_struct(config)}
            record.config.CopyFrom(checked_config(merged))
        await self._records.put(deployment_id, record)
        return await self.live(record)

    async def delete(self, principal: Principal, deployment_id: str) -> None:
        record = await self._record(principal, deployment_id)
        await self._records.kv.delete(deployment_id)
        try:
            await self._records.kv.delete(NAME_PREFIX + record.name)
        except (KeyNotFoundError, NotFoundError):
            pass
        # Replicas see the record gone at their next look and let go; slots left behind expire.
        await self._slots.release_all(deployment_id, MAX_REPLICAS)

    async def live(self, record: common_pb2.Deployment) -> common_pb2.Deployment:
        """The record with what its replicas' slots say now: state, ready replicas, endpoints, figures."""
        shown = common_pb2.Deployment()
        shown.CopyFrom(record)
        slots = [slot for slot, _ in (await self._slots.read(record.deployment_id, record.replicas)).values()
                 if slot.fresh]
        serving = [s for s in slots if s.state == SERVING]
        failed = [s for s in slots if s.state == FAILED]
        shown.ready_replicas = len(serving)
        if serving:
            shown.state = common_pb2.DEPLOYMENT_STATE_SERVING
        elif failed and len(failed) == len(slots):
            shown.state, shown.message = common_pb2.DEPLOYMENT_STATE_FAILED, failed[0].message
        else:
            shown.state = common_pb2.DEPLOYMENT_STATE_PENDING
            shown.message = "waiting for a serving replica to load it" if slots else \
                "no serving replica has taken it yet (is the serving service running?)"
        for slot in serving:
            for protocol, address in sorted(slot.endpoints.items()):
                shown.endpoints.add(protocol=protocol, address=address, replica=slot.replica)
        if serving:
            json_format.ParseDict(_summed([s.figures for s in serving]), shown.status)
        return shown


def _summed(figures: list[dict]) -> dict:
    """Request counts and batch histograms added over replicas; latency percentiles and KV figures
    per replica (percentiles do not add)."""
    total: dict = {"requests": {}, "batch_sizes": {}, "replicas": []}
    for one in figures:
        for key in ("requests", "batch_sizes"):
            for k, v in (one.get(key) or {}).items():
                total[key][k] = total[key].get(k, 0) + v
        total["replicas"].append({k: v for k, v in one.items() if k not in ("requests", "batch_sizes")})
    return total
