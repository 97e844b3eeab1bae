"""What the mesh keeps and for how long: deleting a job with what only it used, the operator's TTLs
for finished jobs and for uploads, the store's size bound, and stage checkpoints no job can resume
from (a worker's last save may land after its job was cancelled).

A tagged artifact is pinned: a job whose output (or any artifact) carries a tag outlives its TTL,
and so does a tagged upload. Deleting announces each removed artifact (ArtifactStore.delete), so
every service drops its cached copy at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from modelpress.v1 import common_pb2
from services.common.store.artifact_store import ArtifactNotFound, ArtifactStore, StoreFull
from services.common.store.events import TERMINAL_STATES, EventLog
from services.common.store.stage_checkpoints import checkpoint_job, delete_job_checkpoints
from services.gateway.access import Grants
from services.gateway.jobs import JobRunner

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetentionPolicy:
    job_ttl_s: float = 0.0  # finished jobs older than this go (0: kept until deleted)
    artifact_ttl_s: float = 0.0  # uploads no job uses older than this go (0: kept until deleted)
    store_max_bytes: int = 0  # new uploads and jobs refused at this many stored bytes (0: unbounded)


class Retention:
    def __init__(self, runner: JobRunner, grants: Grants, store: ArtifactStore, events: EventLog,
                 policy: RetentionPolicy) -> None:
        self._runner = runner
        self._grants = grants
        self._store = store
        self._events = events
        self.policy = policy

    async def delete_job(self, job: common_pb2.Job) -> int:
        """Cancels the job if it runs, then deletes its record, events and every artifact of it no
        other job lists and no tenant holds otherwise; returns how many artifacts went."""
        if job.state not in TERMINAL_STATES:
            job = await self._runner.cancel(job.job_id)
        # A reused artifact belongs to every job that used it: only those no other job uses go.
        in_use = {a for other in await self._runner.jobs.list() if other.job_id != job.job_id
                  for a in other.artifact_ids}
        deleted = 0
        for artifact_id in job.artifact_ids:
            if artifact_id not in in_use:
                await self._grants.revoke(job.tenant, artifact_id)
                if not await self._grants.holders(artifact_id):  # nobody uploaded or compared it
                    deleted += await self._store.delete(artifact_id)
        await delete_job_checkpoints(self._store, job.job_id)
        await self._events.purge(job.job_id)
        await self._runner.jobs.delete(job.job_id)
        return deleted

    async def check_room(self) -> None:
        """StoreFull when the store holds its bound already: nothing new is taken in, so nothing
        half-written is left when it fills up."""
        bound = self.policy.store_max_bytes
        if bound and (used := await self._store.used_bytes()) >= bound:
            raise StoreFull(f"the artifact store holds {used:,} bytes of its {bound:,} (store_max_bytes): delete "
                            "jobs or artifacts (DeleteJob, DeleteArtifact) or ask the operator to raise the bound")

    async def _pinned(self, artifact_id: str) -> bool:
        try:
            return bool((await self._store.stat(artifact_id)).meta.get("tags"))
        except ArtifactNotFound:
            return False

    async def sweep(self, now: float | None = None) -> tuple[int, int, int]:
        """Deletes what outlived its TTL and checkpoints of jobs that ended or are gone; returns
        (jobs, uploads, checkpoints) deleted."""
        now = time.time() if now is None else now
        jobs_deleted = uploads_deleted = 0
        jobs = await self._runner.jobs.list()
        running = {job.job_id for job in jobs if job.state not in TERMINAL_STATES}
        checkpoints_deleted = sum([await self._store.delete(artifact_id) for artifact_id in await self._store.ids()
                                   if (owner := checkpoint_job(artifact_id)) is not None and owner not in running])
        if self.policy.job_ttl_s:
            for job in jobs:
                ended = job.finished_at.seconds
                if job.state not in TERMINAL_STATES or not ended or now - ended < self.policy.job_ttl_s:
                    continue
                if any([await self._pinned(a) for a in job.artifact_ids]):
                    continue
                await self.delete_job(job)
                jobs_deleted += 1
            jobs = await self._runner.jobs.list()
        if self.policy.artifact_ttl_s:
            used = {a for job in jobs for a in (*job.artifact_ids, job.model.artifact_id) if a}
            for stored in await self._store.list_stored():
                if stored.ref.id in used or stored.meta.get("tags") or checkpoint_job(stored.ref.id) is not None:
                    continue
                if stored.meta.get("chain") or stored.created is None:
                    continue  # a stage's output: it goes with its job
                if now - stored.created.timestamp() < self.policy.artifact_ttl_s:
                    continue
                for tenant in await self._grants.holders(stored.ref.id):
                    await self._grants.revoke(tenant, stored.ref.id)
                uploads_deleted += await self._store.delete(stored.ref.id)
        return jobs_deleted, uploads_deleted, checkpoints_deleted

    async def run(self, every_s: float) -> None:
        """Sweeps until cancelled (every gateway may: deleting what is already gone is a no-op)."""
        while True:
            await asyncio.sleep(every_s)
            try:
                jobs, uploads, checkpoints = await self.sweep()
                if jobs or uploads or checkpoints:
                    log.info("retention: deleted %d job(s) and %d upload(s) past their TTL, %d leftover checkpoint(s)",
                             jobs, uploads, checkpoints)
            except Exception as exc:  # noqa: BLE001 - NATS away for a moment: sweep again next time
                log.warning("retention sweep failed: %s", exc)
