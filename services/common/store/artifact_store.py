"""Model artifacts in a JetStream object store, streamed from and to disk.

Objects use the standard NATS object-store layout (chunks on `$O.<bucket>.C.<nuid>`,
meta on `$O.<bucket>.M.<name>`) so the `nats` CLI and other clients can read them.
The transfer loops are our own: nats-py's stock `put` waits for one ack per chunk and
its `get` throttles its flow control, which capped them at ~160 / ~60 MB/s here.
Writes pipeline chunks with `publish_async`; reads ask for one chunk at a time by direct get
(any replica answers, no consumer to lose), every read on a connection drawing from one
budget of chunks in flight, so any number of concurrent reads stays under the server's
per-connection pending limit. Both hash while streaming; a read whose sha256 differs from the one
recorded at write time fails and leaves no file behind.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import tempfile
import time
import uuid
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from modelpress.v1 import common_pb2
from services.common.store import packaging
from services.common.store.disk_bounds import make_owner_only
from services.common.store.nats_conn import FAILOVER_S, is_stream_full

BUCKET = "modelpress_artifacts"
# Under the server's default 1 MiB max_payload, with room for headers.
CHUNK_SIZE = 1024 * 1024 - 16 * 1024
# Chunks in flight before a writer waits for acks (bounds memory to ~64 MiB).
WRITE_WINDOW = 64
# Chunks handed on together (written to disk off the event loop as one batch).
READ_BATCH = 16
# Chunks asked for and not yet answered over one connection, summed over its concurrent reads
# (each read asks for one at a time). nats-server drops a client whose unread bytes pass
# max_pending (64 MiB by default) as a slow consumer, and with it every transfer on that
# connection. Measured when reads pulled batches, 8 concurrent 46 MB reads on a loaded 2-core
# machine: 48 chunks in flight tripped it, 32 and 24 did not.
CONNECTION_READ_CHUNKS = 24


class ArtifactNotFound(LookupError):
    pass


class ArtifactCorrupt(IOError):
    pass


class StoreFull(RuntimeError):
    """The object store is at its size bound (RESOURCE_EXHAUSTED); what was being written is gone."""


class StoreUnresponsive(IOError):
    """JetStream took no chunk of an artifact being written (its server busy, away or out of disk):
    UNAVAILABLE, so the stage is tried again; what was being written is gone."""


# Core NATS subject on which every deletion is announced (the artifact id as payload), so each
# service drops its cached copy at once instead of waiting for its LRU bound.
DELETED_SUBJECT = "modelpress.artifacts.deleted"


@dataclass(frozen=True)
class StoredArtifact:
    ref: common_pb2.ArtifactRef
    nuid: str
    chunks: int
    # What the writer recorded beside the bytes (a stage's lineage chain, tags): readable
    # without fetching the artifact.
    meta: dict = field(default_factory=dict)
    created: datetime | None = None


_budgets: "weakref.WeakKeyDictionary[object, asyncio.Semaphore]" = weakref.WeakKeyDictionary()


def read_budget(connection: object) -> asyncio.Semaphore:
    """The one budget of chunks in flight of a NATS connection, shared by every store and read on it."""
    if connection not in _budgets:
        _budgets[connection] = asyncio.Semaphore(CONNECTION_READ_CHUNKS)
    return _budgets[connection]


def new_artifact_id() -> str:
    return "a-" + uuid.uuid4().hex[:20]


def _meta_subject(bucket: str, name: str) -> str:
    return f"$O.{bucket}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"


def _chunk_subject(bucket: str, nuid: str) -> str:
    return f"$O.{bucket}.C.{nuid}"


class ArtifactStore:
    def __init__(self, js: JetStreamContext, bucket: str = BUCKET) -> None:
        self._js = js
        self._bucket = bucket
        self._stream = f"OBJ_{bucket}"
        self._store: ObjectStore | None = None

    async def ensure(self, max_bytes: int | None = None) -> "ArtifactStore":
        """`max_bytes` (the owner of retention passes it; 0 = unbounded): the store's hard size
        bound, set on a store that exists too. Past it a write fails whole (StoreFull): the stream
        discards new chunks, never old ones."""
        try:
            self._store = await self._js.object_store(self._bucket)
        except NotFoundError:
            self._store = await self._js.create_object_store(
                self._bucket, config=api.ObjectStoreConfig(storage=api.StorageType.FILE, max_bytes=max_bytes or -1)
            )
        if max_bytes is not None:
            info = await self._js.stream_info(self._stream)
            if (info.config.max_bytes or -1) != (max_bytes or -1):
                info.config.max_bytes = max_bytes or -1
                await self._js.update_stream(info.config)
        return self

    async def used_bytes(self) -> int:
        """Bytes the store holds now (chunks and records)."""
        return (await self._js.stream_info(self._stream)).state.bytes

    # ---- writes ---------------------------------------------------------

    async def put_stream(
        self,
        chunks: AsyncIterator[bytes],
        *,
        fmt: int,
        artifact_id: str | None = None,
        expected_sha256: str | None = None,
        meta: dict | None = None,
    ) -> common_pb2.ArtifactRef:
        """Stores the bytes yielded by `chunks` (any sizes) as one artifact; `meta` (JSON) is kept in
        its meta record."""
        artifact_id = artifact_id or new_artifact_id()
        nuid = self._js._nc._nuid.next().decode()
        subject = _chunk_subject(self._bucket, nuid)
        digest = hashlib.sha256()
        pending: list[asyncio.Future] = []
        total = sent = 0
        buffer = bytearray()

        async def flush(payload: bytes) -> None:
            nonlocal sent
            pending.append(await self._js.publish_async(subject, payload))
            sent += 1
            if len(pending) >= WRITE_WINDOW:
                await _await_acks(pending[: WRITE_WINDOW // 2])
                del pending[: WRITE_WINDOW // 2]

        try:
            async for piece in chunks:
                digest.update(piece)
                total += len(piece)
                buffer += piece
                while len(buffer) >= CHUNK_SIZE:
                    await flush(bytes(buffer[:CHUNK_SIZE]))
                    del buffer[:CHUNK_SIZE]
            if buffer:
                await flush(bytes(buffer))
            await _await_acks(pending)
            hex_digest = digest.hexdigest()
            if expected_sha256 and expected_sha256.lower() != hex_digest:
                raise ArtifactCorrupt(f"sha256 mismatch: client said {expected_sha256}, received {hex_digest}")
            info = {
                "name": artifact_id,
                "bucket": self._bucket,
                "nuid": nuid,
                "size": total,
                "chunks": sent,
                "mtime": datetime.now(timezone.utc).isoformat(),
                "digest": "SHA-256=" + base64.urlsafe_b64encode(digest.digest()).decode(),
                "description": json.dumps({**(meta or {}), "format": common_pb2.ArtifactFormat.Name(fmt)}),
                "options": {"max_chunk_size": CHUNK_SIZE},
            }
            await self._js.publish(
                _meta_subject(self._bucket, artifact_id),
                json.dumps(info).encode(),
                headers={"Nats-Rollup": "sub"},
            )
        except BaseException as exc:
            await asyncio.shield(self._purge(subject))
            if is_stream_full(exc):
                raise StoreFull(f"the artifact store is full (its size bound was reached while writing "
                                f"{total:,} bytes, which were discarded): delete jobs or artifacts, or raise "
                                "the bound (store_max_bytes)") from exc
            raise
        return common_pb2.ArtifactRef(id=artifact_id, sha256=hex_digest, size_bytes=total, format=fmt)

    async def put_file(self, path: Path, *, fmt: int, artifact_id: str | None = None,
                       meta: dict | None = None) -> common_pb2.ArtifactRef:
        return await self.put_stream(_read_file_chunks(path), fmt=fmt, artifact_id=artifact_id, meta=meta)

    async def put_dir(self, folder: Path, *, fmt: int, artifact_id: str | None = None,
                      meta: dict | None = None) -> common_pb2.ArtifactRef:
        """Stores a model folder as a tar (the artifact's wire and storage form)."""
        with tempfile.TemporaryDirectory(prefix="mp-put-") as tmp:
            tar_path = Path(tmp) / "artifact.tar"
            await asyncio.to_thread(packaging.tar_folder, folder, tar_path)
            return await self.put_file(tar_path, fmt=fmt, artifact_id=artifact_id, meta=meta)

    async def replace_dir(self, folder: Path, *, fmt: int, artifact_id: str,
                          meta: dict | None = None) -> common_pb2.ArtifactRef:
        """Stores the folder under a fixed id, then frees the bytes the id held before (a reader of
        the id sees the old or the new folder, never a mix)."""
        try:
            old_nuid = (await self.stat(artifact_id)).nuid
        except ArtifactNotFound:
            old_nuid = None
        ref = await self.put_dir(folder, fmt=fmt, artifact_id=artifact_id, meta=meta)
        if old_nuid is not None:
            await self._purge(_chunk_subject(self._bucket, old_nuid))
        return ref

    # ---- reads ----------------------------------------------------------

    async def stat(self, artifact_id: str) -> StoredArtifact:
        try:
            msg = await self._js.get_last_msg(self._stream, _meta_subject(self._bucket, artifact_id))
        except NotFoundError as exc:
            raise ArtifactNotFound(f"artifact {artifact_id!r} not found") from exc
        info = json.loads(msg.data)
        if info.get("deleted"):
            raise ArtifactNotFound(f"artifact {artifact_id!r} was deleted")
        description = json.loads(info.get("description") or "{}")
        fmt = common_pb2.ArtifactFormat.Value(description.get("format", "ARTIFACT_FORMAT_UNSPECIFIED"))
        sha = base64.urlsafe_b64decode(info["digest"].removeprefix("SHA-256=")).hex()
        ref = common_pb2.ArtifactRef(id=artifact_id, sha256=sha, size_bytes=info["size"], format=fmt)
        meta = {k: v for k, v in description.items() if k != "format"}
        created = datetime.fromisoformat(info["mtime"]) if info.get("mtime") else None
        return StoredArtifact(ref=ref, nuid=info["nuid"], chunks=info["chunks"], meta=meta, created=created)

    async def update_meta(self, artifact_id: str, **fields) -> StoredArtifact:
        """Sets fields of the artifact's meta record (its bytes never change)."""
        try:
            msg = await self._js.get_last_msg(self._stream, _meta_subject(self._bucket, artifact_id))
        except NotFoundError as exc:
            raise ArtifactNotFound(f"artifact {artifact_id!r} not found") from exc
        info = json.loads(msg.data)
        if info.get("deleted"):
            raise ArtifactNotFound(f"artifact {artifact_id!r} was deleted")
        description = {**json.loads(info.get("description") or "{}"), **fields}
        info["description"] = json.dumps(description)
        await self._js.publish(_meta_subject(self._bucket, artifact_id), json.dumps(info).encode(),
                               headers={"Nats-Rollup": "sub"})
        return await self.stat(artifact_id)

    async def ids(self) -> list[str]:
        """The id of every artifact with a record (deleted ones included), from one request."""
        prefix = f"$O.{self._bucket}.M."
        info = await self._js.stream_info(self._stream, subjects_filter=prefix + ">")
        return sorted(base64.urlsafe_b64decode(subject.removeprefix(prefix)).decode()
                      for subject in info.state.subjects or {})

    async def list_stored(self) -> list[StoredArtifact]:
        """Every stored artifact's record (deleted ones left out), by id."""
        found = []
        for artifact_id in await self.ids():
            try:
                found.append(await self.stat(artifact_id))
            except ArtifactNotFound:
                continue
        return found

    async def _fetch_batches(self, stored: StoredArtifact) -> AsyncIterator[list[bytes]]:
        """Yields the object's chunks in order, a batch at a time, by direct gets (each chunk the
        next message of the object's subject after the last one read). Any replica of the stream
        answers a direct get and no consumer is made: none to lose when a server of a cluster
        dies or a read waits long for its turn (reads through ephemeral consumers failed both
        ways in `make chaos`)."""
        if not stored.chunks:
            return
        subject = _chunk_subject(self._bucket, stored.nuid)
        budget = read_budget(self._js._nc)
        received = last_sequence = 0
        while received < stored.chunks:
            batch = []
            for _ in range(min(READ_BATCH, stored.chunks - received)):
                async with budget:
                    msg = await self._next_chunk(stored, subject, last_sequence)
                batch.append(msg.data)
                last_sequence = msg.seq
            received += len(batch)
            yield batch

    async def _next_chunk(self, stored: StoredArtifact, subject: str, after: int) -> api.RawStreamMsg:
        """The object's first chunk past stream sequence `after`. A replica that has not caught up
        yet may not hold it: asked again (another replica may answer) for up to the failover time."""
        deadline = time.monotonic() + FAILOVER_S
        while True:
            try:
                return await self._js.get_msg(self._stream, seq=after + 1, subject=subject, next=True, direct=True)
            except NotFoundError:
                if time.monotonic() > deadline:
                    raise ArtifactCorrupt(f"artifact {stored.ref.id}: chunk after stream sequence {after} is missing "
                                          f"({stored.chunks} expected)") from None
                await asyncio.sleep(0.2)

    async def iter_chunks(self, artifact_id: str) -> AsyncIterator[bytes]:
        """Yields the artifact's bytes; raises ArtifactCorrupt at the end if the hash differs."""
        stored = await self.stat(artifact_id)
        digest = hashlib.sha256()
        async for batch in self._fetch_batches(stored):
            for data in batch:
                digest.update(data)
                yield data
        _check_digest(stored, digest)

    async def get_file(self, artifact_id: str, dest: Path) -> common_pb2.ArtifactRef:
        stored = await self.stat(artifact_id)
        partial = dest.with_name(dest.name + ".partial")
        dest.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()

        def write_batch(out, batch: list[bytes]) -> None:
            # Hashing and writing off the event loop: both release the GIL on large buffers.
            for data in batch:
                digest.update(data)
            out.writelines(batch)

        try:
            # Owner-only whatever the umask: a tenant's model passes through here.
            with open(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600), "wb") as out:
                os.fchmod(out.fileno(), 0o600)
                writing: asyncio.Future | None = None
                async for batch in self._fetch_batches(stored):
                    if writing is not None:
                        await writing
                    writing = asyncio.ensure_future(asyncio.to_thread(write_batch, out, batch))
                if writing is not None:
                    await writing
            _check_digest(stored, digest)
            os.replace(partial, dest)
        finally:
            partial.unlink(missing_ok=True)
        return stored.ref

    async def get_dir(self, artifact_id: str, dest: Path) -> common_pb2.ArtifactRef:
        """Fetches and unpacks an artifact folder into `dest` (which must not exist), owner-only:
        unpacked within a 0700 scratch folder beside it, narrowed, then renamed into place."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="mp-get-", dir=dest.parent) as tmp:
            tar_path = Path(tmp) / "artifact.tar"
            ref = await self.get_file(artifact_id, tar_path)
            await asyncio.to_thread(_unpack_owner_only, tar_path, Path(tmp) / "model")
            os.replace(Path(tmp) / "model", dest)
        return ref

    # ---- housekeeping -----------------------------------------------------

    async def delete(self, artifact_id: str) -> bool:
        try:
            stored = await self.stat(artifact_id)
        except ArtifactNotFound:
            return False
        assert self._store is not None
        try:
            await self._store.delete(artifact_id)
        except ObjectNotFoundError:
            return False
        except Exception as exc:
            if not is_stream_full(exc):
                raise
            # A full store has no room for the delete marker: free the bytes first, then mark.
            await self._purge(_chunk_subject(self._bucket, stored.nuid))
            await self._store.delete(artifact_id)
        await self._purge(_chunk_subject(self._bucket, stored.nuid))
        try:
            await self._js._nc.publish(DELETED_SUBJECT, artifact_id.encode())
        except Exception:  # noqa: BLE001 - caches still drop it at their LRU bound
            pass
        return True

    async def _purge(self, subject: str) -> None:
        try:
            await self._js.purge_stream(self._stream, subject=subject)
        except Exception:  # best effort: a failed purge only leaks space
            pass


def _unpack_owner_only(tar_path: Path, dest: Path) -> None:
    packaging.untar_folder(tar_path, dest)
    make_owner_only(dest)


def _check_digest(stored: StoredArtifact, digest: "hashlib._Hash") -> None:
    if digest.hexdigest() != stored.ref.sha256:
        raise ArtifactCorrupt(
            f"artifact {stored.ref.id}: sha256 {digest.hexdigest()} != recorded {stored.ref.sha256}"
        )


async def _await_acks(futures: list[asyncio.Future], timeout_s: float = 120.0) -> None:
    try:
        acks = await asyncio.wait_for(asyncio.gather(*futures), timeout_s)
    except asyncio.TimeoutError:
        raise StoreUnresponsive(f"JetStream acknowledged no artifact chunk for {timeout_s:.0f} s (is the NATS "
                                "server's disk full?)") from None
    for ack in acks:
        if ack.stream is None:
            raise StoreUnresponsive("JetStream did not store an artifact chunk")


async def _read_file_chunks(path: Path, size: int = 8 * CHUNK_SIZE) -> AsyncIterator[bytes]:
    with open(path, "rb") as src:
        while True:
            data = await asyncio.to_thread(src.read, size)
            if not data:
                return
            yield data

