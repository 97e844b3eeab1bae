"""A JetStream KV bucket of protobuf records: one key per record, the serialized message as value."""

from __future__ import annotations

from typing import Generic, TypeVar

from nats.js import JetStreamContext, api
from nats.js.errors import (BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError,
                            NotFoundError)
from nats.js.kv import KeyValue

M = TypeVar("M")


async def key_value_bucket(js: JetStreamContext, bucket: str) -> KeyValue:
    """The bucket, created (one value per key, on disk) the first time a process asks for it."""
    try:
        return await js.key_value(bucket)
    except (BucketNotFoundError, NotFoundError):
        return await js.create_key_value(api.KeyValueConfig(bucket=bucket, history=1, storage=api.StorageType.FILE))


class RecordBucket(Generic[M]):
    def __init__(self, js: JetStreamContext, bucket: str, message_cls: type[M]) -> None:
        self._js = js
        self._bucket = bucket
        self._cls = message_cls
        self._kv: KeyValue | None = None

    async def ensure(self) -> "RecordBucket[M]":
        self._kv = await key_value_bucket(self._js, self._bucket)
        return self

    @property
    def kv(self) -> KeyValue:
        assert self._kv is not None, "call ensure() first"
        return self._kv

    async def put(self, key: str, record: M) -> None:
        await self.kv.put(key, record.SerializeToString())

    async def create(self, key: str, record: M) -> bool:
        """Puts `record` only where `key` holds nothing (or was deleted); False when it holds a record."""
        try:
            await self.kv.create(key, record.SerializeToString())
        except KeyWrongLastSequenceError:
            return False
        return True

    async def get(self, key: str) -> M | None:
        try:
            entry = await self.kv.get(key)
        except (KeyNotFoundError, NotFoundError):
            return None
        return self._cls.FromString(entry.value) if entry.value else None

    async def keys(self) -> list[str]:
        # nats-py's listing ends at its watcher's first "nothing pending" and raises NoKeysError when
        # it saw no key by then; on a loaded machine a bucket holding records was listed empty (0 of
        # 46 jobs). Asked again while the stream holds messages (tombstones count too, hence the
        # bound), [] at once when it holds none.
        for _ in range(3):
            try:
                return await self.kv.keys()
            except NoKeysError:
                if not (await self.kv.status()).values:
                    return []
        return []

    async def values(self) -> list[M]:
        """Every record; one deleted between listing and reading is skipped."""
        found = []
        for key in await self.keys():
            record = await self.get(key)
            if record is not None:
                found.append(record)
        return found

    async def purge(self, key: str) -> None:
        await self.kv.purge(key)
