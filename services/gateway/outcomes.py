"""Measured outcomes of finished jobs (JetStream KV), so recommendations and strategy templates
rest on measurements: one entry per (model, recipe, overrides, device, evaluation shape, tenant),
the latest job wins."""

from __future__ import annotations

import hashlib
import json

from google.protobuf import json_format
from nats.js import JetStreamContext

from modelpress.v1 import common_pb2
from services.common.contract.recipes import RECIPES
from services.common.store.kv_records import RecordBucket
from services.common.store.model_source import describe

BUCKET = "modelpress_outcomes"


def outcome_key(job: common_pb2.Job) -> str:
    # protobuf's canonical JSON, not the codec: the key must stay what outcomes were stored under.
    configs = [json_format.MessageToDict(s.spec.config) for s in job.stages]
    shape = (job.evaluation.batch_size, job.evaluation.sequence_length, job.evaluation.threads)
    parts = [describe(job.model), job.recipe, configs, job.result.compressed.device, shape]
    # One entry per tenant too (each sees only its own outcomes: another's latest job must not
    # replace them); the open mesh's tenant "" keeps the keys outcomes were stored under before.
    text = json.dumps([*parts, job.tenant] if job.tenant else parts, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class OutcomeStore:
    def __init__(self, js: JetStreamContext, bucket: str = BUCKET) -> None:
        self._records = RecordBucket(js, bucket, common_pb2.Job)

    async def ensure(self) -> "OutcomeStore":
        await self._records.ensure()
        return self

    async def record(self, job: common_pb2.Job) -> None:
        """Keeps a succeeded, measured job; anything else is not evidence."""
        if job.state != common_pb2.JOB_STATE_SUCCEEDED or not job.result.original.size_on_disk_bytes:
            return
        if job.recipe not in RECIPES:  # a user pipeline: strategies and recommendations are per built-in recipe
            return
        if job.evaluation.quality_split == "validation":
            return  # a search's candidate, scored on its validation split: not a reported figure
        await self._records.put(outcome_key(job), job)

    async def list(self) -> list[common_pb2.Job]:
        return await self._records.values()

    async def for_model(self, model: common_pb2.ModelRef, device: str = "") -> list[common_pb2.Job]:
        wanted = describe(model)
        return [j for j in await self.list()
                if describe(j.model) == wanted and (not device or device.lower() in j.result.compressed.device.lower())]
