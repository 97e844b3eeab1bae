"""Turns a ModelRef (builtin, stored artifact, or allowed local path) into a local folder: a
built-in's, or an owner-only copy in the cache (a stored artifact fetched, a path model copied
through path_models' checks), kept until the cache's byte bound evicts it."""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import tempfile
from pathlib import Path

from modelpress.v1 import common_pb2
from services.common.models import builtin_models
from services.common.runtime.cite import shown
from services.common.store import path_models
from services.common.store.artifact_store import ArtifactStore
from services.common.store.disk_bounds import evict_least_recent, private_folder, touch
from services.common.store.path_models import PathNotAllowed

__all__ = ["CacheTooSmall", "ModelSource", "PathNotAllowed", "describe"]


class CacheTooSmall(ValueError):
    """A path model larger than this worker's whole cache (RESOURCE_EXHAUSTED)."""


def _lock_file(path: Path):
    return open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600), "w")


# The scheme a person types for each source (`modelpress compress artifact:ID ...`).
_SCHEMES = {"artifact_id": "artifact", "builtin": "builtin", "path": "path"}


def describe(ref: common_pb2.ModelRef) -> str:
    """The reference as the CLI writes it (builtin:NAME, artifact:ID, path:DIR)."""
    source = ref.WhichOneof("source")
    return f"{_SCHEMES[source]}:{getattr(ref, source)}" if source else "<empty>"


class ModelSource:
    def __init__(self, store: ArtifactStore, cache_root: Path, max_bytes: int | None = None) -> None:
        self._store = store
        self._cache_root = cache_root
        self._max_bytes = max_bytes
        self._locks: dict[str, asyncio.Lock] = {}

    async def local_folder(self, ref: common_pb2.ModelRef) -> Path:
        source = ref.WhichOneof("source")
        if source == "builtin":
            return await asyncio.to_thread(builtin_models.builtin_folder, ref.builtin, self._cache_root)
        if source == "path":
            return await self._copy_path(ref.path)
        if source == "artifact_id":
            return await self._fetch(ref.artifact_id)
        raise ValueError("model: one of artifact_id, builtin or path is required")

    async def forget(self, artifact_id: str) -> bool:
        """Drops the cached copy of a deleted artifact (a copy in use by a running stage stays
        readable: its files are unlinked, not truncated). True when there was one."""
        if not artifact_id or artifact_id.startswith(".") or Path(artifact_id).name != artifact_id:
            return False  # the id arrives over NATS: never a path out of the cache
        dest = self._cache_root / "artifacts" / artifact_id
        async with self._locks.setdefault(artifact_id, asyncio.Lock()):
            if not dest.exists():
                return False
            await asyncio.to_thread(shutil.rmtree, dest, True)
        self._locks.pop(artifact_id, None)
        return True

    def _cached(self) -> Path:
        """The cache's folder of copies (artifacts and path models share its byte bound), owner-only."""
        return private_folder(self._cache_root / "artifacts")

    async def _fetch(self, artifact_id: str) -> Path:
        """Artifacts are immutable, so a fetched copy is reused until the cache is cleared."""
        dest = self._cache_root / "artifacts" / artifact_id
        lock = self._locks.setdefault(artifact_id, asyncio.Lock())
        async with lock:
            await asyncio.to_thread(self._cached)
            # Replicas on one machine share the cache: one process fetches, the others wait for it
            # (two unpacking into one folder at once left a half-written model behind).
            with await asyncio.to_thread(_lock_file, dest.parent / f".{artifact_id}.lock") as held:
                await asyncio.to_thread(fcntl.flock, held, fcntl.LOCK_EX)
                try:
                    if not dest.exists():
                        await self._store.get_dir(artifact_id, dest)
                        if self._max_bytes is not None:
                            await asyncio.to_thread(evict_least_recent, dest.parent, self._max_bytes, dest)
                    touch(dest)
                finally:
                    fcntl.flock(held, fcntl.LOCK_UN)
        return dest

    async def _copy_path(self, path: str) -> Path:
        """The path model's files as a copy of this process's own (`p-KEY` in the cache), made
        through path_models' checks: the engine reads what was checked, whatever the folder holds
        later. The key changes whenever a file does, so an unchanged folder is copied once."""
        cached = await asyncio.to_thread(self._cached)
        checked = await asyncio.to_thread(path_models.check_folder, path)
        if self._max_bytes is not None and checked.bytes > self._max_bytes:
            # The copy would evict every other model and still not fit: refused before a byte is copied.
            raise CacheTooSmall(f"model.path: {shown(path)} holds {checked.bytes:,} bytes, past this worker's "
                                f"cache bound of {self._max_bytes:,} (--cache-max-bytes)")
        dest = cached / f"p-{checked.key}"
        if not dest.is_dir():
            # Made aside (the LRU passes over `.unpacking`), then renamed whole: never seen half-copied.
            work = Path(await asyncio.to_thread(tempfile.mkdtemp, ".unpacking", ".p-", cached))
            try:
                copied = await asyncio.to_thread(path_models.copy_folder, path, work / "model")
                dest = cached / f"p-{copied.key}"
                try:
                    os.rename(work / "model", dest)
                except OSError:
                    if not dest.is_dir():  # else another replica copied the same files first
                        raise
            finally:
                await asyncio.to_thread(shutil.rmtree, work, True)
            if self._max_bytes is not None:
                await asyncio.to_thread(evict_least_recent, cached, self._max_bytes, dest)
        touch(dest)
        return dest
