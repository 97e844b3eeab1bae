"""Hardware benchmark rows in a JetStream KV bucket: one key per row, the message as value."""

from __future__ import annotations

from nats.js import JetStreamContext, api
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NoKeysError, NotFoundError

from modelpress.v1 import common_pb2

BUCKET = "modelpress_benchmarks"


class BenchmarkStore:
    def __init__(self, js: JetStreamContext, bucket: str = BUCKET) -> None:
        self._js = js
        self._bucket = bucket
        self._kv = None

    async def ensure(self) -> "BenchmarkStore":
        try:
            self._kv = await self._js.key_value(self._bucket)
        except (BucketNotFoundError, NotFoundError):
            self._kv = await self._js.create_key_value(
                api.KeyValueConfig(bucket=self._bucket, history=1, storage=api.StorageType.FILE))
        return self

    async def put(self, row: common_pb2.HardwareBenchmark) -> None:
        await self._kv.put(row.benchmark_id, row.SerializeToString())

    async def list(self, model: str = "", device: str = "") -> list[common_pb2.HardwareBenchmark]:
        """Rows whose model and device name contain the given text (case-insensitive), newest first."""
        try:
            keys = await self._kv.keys()
        except NoKeysError:
            return []
        rows = []
        for key in keys:
            try:
                entry = await self._kv.get(key)
            except (KeyNotFoundError, NotFoundError):
                continue
            if not entry.value:
                continue
            row = common_pb2.HardwareBenchmark.FromString(entry.value)
            if model.lower() in row.model.lower() and device.lower() in row.device_name.lower():
                rows.append(row)
        return sorted(rows, key=lambda r: (r.recorded_at.ToNanoseconds(), r.batch_size, r.sequence_length),
                      reverse=True)
