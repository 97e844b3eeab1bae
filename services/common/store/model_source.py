"""Turns a ModelRef (builtin, stored artifact, or allowed local path) into a local folder."""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
from pathlib import Path

from modelpress.v1 import common_pb2
from services.common.models import builtin_models
from services.common.store.artifact_store import ArtifactStore
from services.common.runtime.cite import shown
from services.common.store.disk_bounds import evict_least_recent, touch


class PathNotAllowed(PermissionError):
    pass


def allowed_roots() -> list[Path]:
    raw = os.environ.get("MODELPRESS_ALLOWED_ROOTS", "")
    return [Path(p).resolve() for p in raw.split(os.pathsep) if p]


MAX_PATH_CHARACTERS = 4096
MAX_FOLDER_ENTRIES = 10_000


def check_allowed_path(path: str) -> Path:
    """The resolved folder if it and everything in it lie under one operator-allowed root (a
    symlink inside that points out is refused, not followed); otherwise PathNotAllowed."""
    roots = allowed_roots()
    if not roots:
        raise PathNotAllowed("model.path: local paths are disabled (the operator sets MODELPRESS_ALLOWED_ROOTS)")
    if "\x00" in path or len(path) > MAX_PATH_CHARACTERS:
        raise PathNotAllowed(f"model.path: {shown(path)} is not a usable path (NUL byte, or over "
                             f"{MAX_PATH_CHARACTERS} characters)")
    try:
        resolved = Path(path).resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop, a name the OS refuses
        raise PathNotAllowed(f"model.path: {shown(path)} cannot be resolved: {exc.__class__.__name__}") from None
    root = next((root for root in roots if resolved.is_relative_to(root)), None)
    if root is None:
        raise PathNotAllowed(f"model.path: {shown(path)} is outside the allowed roots {', '.join(map(str, roots))}")
    if not resolved.is_dir():
        raise FileNotFoundError(f"model.path: {shown(path)} is not a folder")
    _check_entries_stay_under(resolved, root, path)
    return resolved


def _check_entries_stay_under(folder: Path, root: Path, given: str) -> None:
    count = 0
    for current, dirs, files in os.walk(folder, followlinks=False):
        for name in [*dirs, *files]:
            count += 1
            if count > MAX_FOLDER_ENTRIES:
                raise PathNotAllowed(f"model.path: {shown(given)} holds over {MAX_FOLDER_ENTRIES} entries")
            entry = Path(current) / name
            if entry.is_symlink() and not entry.resolve().is_relative_to(root):
                raise PathNotAllowed(f"model.path: {shown(given)} holds a symlink leaving the allowed root {root}: "
                                     f"{entry.relative_to(folder)}")


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
            return check_allowed_path(ref.path)
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

    async def _fetch(self, artifact_id: str) -> Path:
        """Artifacts are immutable, so a fetched copy is reused until the cache is cleared."""
        dest = self._cache_root / "artifacts" / artifact_id
        lock = self._locks.setdefault(artifact_id, asyncio.Lock())
        async with lock:
            dest.parent.mkdir(parents=True, exist_ok=True)
            # Replicas on one machine share the cache: one process fetches, the others wait for it
            # (two unpacking into one folder at once left a half-written model behind).
            with open(dest.parent / f".{artifact_id}.lock", "w") as held:
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
