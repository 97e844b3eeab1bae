"""Hardware benchmark rows in a JetStream KV bucket, filterable by model and device."""

from __future__ import annotations

from nats.js import JetStreamContext

from modelpress.v1 import common_pb2
from services.common.store.kv_records import RecordBucket

BUCKET = "modelpress_benchmarks"


class BenchmarkStore:
    def __init__(self, js: JetStreamContext, bucket: str = BUCKET) -> None:
        self._records = RecordBucket(js, bucket, common_pb2.HardwareBenchmark)

    async def ensure(self) -> "BenchmarkStore":
        await self._records.ensure()
        return self

    async def put(self, row: common_pb2.HardwareBenchmark) -> None:
        await self._records.put(row.benchmark_id, row)

    async def list(self, model: str = "", device: str = "") -> list[common_pb2.HardwareBenchmark]:
        """Rows whose model and device name contain the given text (case-insensitive), newest first."""
        rows = [r for r in await self._records.values()
                if model.lower() in r.model.lower() and device.lower() in r.device_name.lower()]
        return sorted(rows, key=lambda r: (r.recorded_at.ToNanoseconds(), r.batch_size, r.sequence_length),
                      reverse=True)
