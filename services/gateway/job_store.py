"""Job records in a JetStream KV bucket (one key per job, the Job message as value)."""

from __future__ import annotations

from nats.js import JetStreamContext

from modelpress.v1 import common_pb2
from services.common.store.kv_records import RecordBucket

BUCKET = "modelpress_jobs"


class JobNotFound(LookupError):
    pass


class JobStore:
    def __init__(self, js: JetStreamContext, bucket: str = BUCKET) -> None:
        self._records = RecordBucket(js, bucket, common_pb2.Job)

    async def ensure(self) -> "JobStore":
        await self._records.ensure()
        return self

    @property
    def kv(self):
        return self._records.kv

    async def put(self, job: common_pb2.Job) -> None:
        await self._records.put(job.job_id, job)

    async def get(self, job_id: str) -> common_pb2.Job:
        job = await self._records.get(job_id)
        if job is None:
            raise JobNotFound(f"job {job_id!r} not found")
        return job

    async def list(self) -> list[common_pb2.Job]:
        jobs = await self._records.values()
        return sorted(jobs, key=lambda j: j.created_at.ToNanoseconds(), reverse=True)

    async def delete(self, job_id: str) -> None:
        await self.get(job_id)
        await self._records.purge(job_id)
