"""A stage's training checkpoint kept in the artifact store under an id made of the job, the stage
index and the stage's content key, so a retry of that stage on any replica finds it and a different
stage (another config or input) never does."""

from __future__ import annotations

import asyncio
from pathlib import Path

from modelpress.v1 import common_pb2
from services.common.store.artifact_store import ArtifactNotFound, ArtifactStore
from services.common.contract.engine_api import Checkpoints

CHECKPOINT = common_pb2.ARTIFACT_FORMAT_TRAINING_CHECKPOINT


def checkpoint_id(job_id: str, stage_index: int, stage_key: str) -> str:
    return f"{_job_prefix(job_id)}{stage_index}-{stage_key[:16]}"


def _job_prefix(job_id: str) -> str:
    return f"ckpt-{job_id}-"


def checkpoint_job(artifact_id: str) -> str | None:
    """The job a checkpoint id belongs to; None for an artifact that is not a checkpoint."""
    if not artifact_id.startswith("ckpt-"):
        return None
    return artifact_id.removeprefix("ckpt-").rsplit("-", 2)[0]


async def delete_job_checkpoints(store: ArtifactStore, job_id: str) -> int:
    """Deletes what checkpoints the job's stages left (a job that ended cannot resume); returns
    how many went."""
    return sum([await store.delete(artifact_id) for artifact_id in await store.ids()
                if checkpoint_job(artifact_id) == job_id])


class StoredCheckpoints(Checkpoints):
    """Called from the engine's worker thread; each call runs on the service's event loop."""

    def __init__(self, store: ArtifactStore, loop: asyncio.AbstractEventLoop, artifact_id: str,
                 every_s: float) -> None:
        self.every_s = every_s
        self._store = store
        self._loop = loop
        self.artifact_id = artifact_id

    def _wait(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def latest(self, into: Path) -> Path | None:
        try:
            self._wait(self._store.get_dir(self.artifact_id, into))
        except ArtifactNotFound:
            return None
        return into

    def save(self, folder: Path, step: int) -> None:
        self._wait(self._store.replace_dir(folder, fmt=CHECKPOINT, artifact_id=self.artifact_id,
                                           meta={"checkpoint_step": step}))
