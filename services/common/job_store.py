"""Job records in a JetStream KV bucket (one key per job, the Job message as value)."""

from __future__ import annotations

from nats.js import JetStreamContext, api
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NoKeysError, NotFoundError
from nats.js.kv import KeyValue

from modelpress.v1 import common_pb2

BUCKET = "modelpress_jobs"


class JobNotFound(LookupError):
    pass


class JobStore:
    def __init__(self, js: JetStreamContext, bucket: str = BUCKET) -> None:
        self._js = js
        self._bucket = bucket
        self._kv: KeyValue | None = None

    async def ensure(self) -> "JobStore":
        try:
            self._kv = await self._js.key_value(self._bucket)
        except (BucketNotFoundError, NotFoundError):
            self._kv = await self._js.create_key_value(
                api.KeyValueConfig(bucket=self._bucket, history=1, storage=api.StorageType.FILE)
            )
        return self

    @property
    def kv(self) -> KeyValue:
        assert self._kv is not None, "call ensure() first"
        return self._kv

    async def put(self, job: common_pb2.Job) -> None:
        await self.kv.put(job.job_id, job.SerializeToString())

    async def get(self, job_id: str) -> common_pb2.Job:
        try:
            entry = await self.kv.get(job_id)
        except (KeyNotFoundError, NotFoundError) as exc:
            raise JobNotFound(f"job {job_id!r} not found") from exc
        if entry.value is None:
            raise JobNotFound(f"job {job_id!r} not found")
        return common_pb2.Job.FromString(entry.value)

    async def list(self) -> list[common_pb2.Job]:
        try:
            keys = await self.kv.keys()
        except NoKeysError:
            return []
        jobs = []
        for key in keys:
            try:
                jobs.append(await self.get(key))
            except JobNotFound:  # deleted between keys() and get()
                continue
        return sorted(jobs, key=lambda j: j.created_at.ToNanoseconds(), reverse=True)

    async def delete(self, job_id: str) -> None:
        await self.get(job_id)
        await self.kv.purge(job_id)
