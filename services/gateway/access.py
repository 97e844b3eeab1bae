"""Which tenant may see which job, artifact and comparison.

A job carries its tenant. Artifacts are content-addressed and shared (a stage reused by two jobs
has one output), so they are held rather than owned: one KV key `<tenant>.<id>` per hold, written
when a tenant uploads an artifact, a job of its records one, or it makes a comparison. Operators
hold everything; the open mesh's caller is an operator.
"""

from __future__ import annotations

from google.protobuf import timestamp_pb2
from nats.js import JetStreamContext

from modelpress.v1 import common_pb2
from services.common.store.kv_records import RecordBucket
from services.common.runtime.auth import Principal
from services.common.runtime.cite import shown

GRANTS_BUCKET = "modelpress_grants"
# The key segment of the open mesh's tenant (""); tenant names start with a letter or digit.
OPEN_SEGMENT = "_open"


def scoped(tenant: str, name: str) -> str:
    """A name of a tenant's own namespace (recipes, tags): `<tenant>/<name>`; the open mesh's
    tenant "" keeps the bare name."""
    return f"{tenant}/{name}" if tenant else name


def tenant_of(scoped_name: str) -> str:
    return scoped_name.partition("/")[0] if "/" in scoped_name else ""


class PermissionDenied(PermissionError):
    """The caller's tenant does not hold what it asked for."""


def _segment(tenant: str) -> str:
    return tenant or OPEN_SEGMENT


class Grants:
    def __init__(self, js: JetStreamContext) -> None:
        self._records = RecordBucket(js, GRANTS_BUCKET, timestamp_pb2.Timestamp)

    async def ensure(self) -> "Grants":
        await self._records.ensure()
        return self

    async def grant(self, tenant: str, item_id: str) -> None:
        stamp = timestamp_pb2.Timestamp()
        stamp.GetCurrentTime()
        await self._records.put(f"{_segment(tenant)}.{item_id}", stamp)

    async def holds(self, tenant: str, item_id: str) -> bool:
        return await self._records.get(f"{_segment(tenant)}.{item_id}") is not None

    async def revoke(self, tenant: str, item_id: str) -> None:
        await self._records.purge(f"{_segment(tenant)}.{item_id}")

    async def _pairs(self) -> list[tuple[str, str]]:
        return [tuple(key.split(".", 1)) for key in await self._records.keys()]

    async def held_by(self, tenant: str) -> set[str]:
        segment = _segment(tenant)
        return {item for holder, item in await self._pairs() if holder == segment}

    async def holders(self, item_id: str) -> set[str]:
        return {"" if holder == OPEN_SEGMENT else holder for holder, item in await self._pairs() if item == item_id}


def check_job(principal: Principal, job: common_pb2.Job) -> common_pb2.Job:
    """The job, or PermissionDenied when the caller is neither its tenant nor an operator."""
    if not principal.operator and job.tenant != principal.tenant:
        raise PermissionDenied(f"job {job.job_id} belongs to another tenant; {principal.label} cannot use it")
    return job


async def check_artifact(grants: Grants, principal: Principal, artifact_id: str, field: str, kind: str = "artifact"
                         ) -> None:
    """PermissionDenied naming `field` unless the caller holds the (existing) artifact or comparison."""
    if principal.operator or await grants.holds(principal.tenant, artifact_id):
        return
    raise PermissionDenied(f"{field}: {kind} {shown(artifact_id)} is not held by {principal.label}")
