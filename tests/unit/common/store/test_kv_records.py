"""RecordBucket over a real JetStream KV bucket, with nats-py's empty-listing race injected."""

from __future__ import annotations

from nats.js.errors import NoKeysError

from modelpress.v1 import common_pb2
from services.common.store.kv_records import RecordBucket


async def test_a_listing_that_came_back_empty_is_asked_again_while_the_bucket_holds_records(js):
    bucket = await RecordBucket(js, "test-kv-listing", common_pb2.Job).ensure()
    for name in ("j-1", "j-2"):
        await bucket.put(name, common_pb2.Job(job_id=name))
    real_keys, calls = bucket.kv.keys, []

    async def empty_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise NoKeysError()
        return await real_keys(*args, **kwargs)

    bucket.kv.keys = empty_once
    assert sorted(j.job_id for j in await bucket.values()) == ["j-1", "j-2"] and len(calls) == 2


async def test_an_empty_bucket_lists_nothing_without_asking_again(js):
    bucket = await RecordBucket(js, "test-kv-empty", common_pb2.Job).ensure()
    real_keys, calls = bucket.kv.keys, []

    async def counted(*args, **kwargs):
        calls.append(1)
        return await real_keys(*args, **kwargs)

    bucket.kv.keys = counted
    assert await bucket.keys() == [] and len(calls) == 1


async def test_create_stores_only_where_the_key_holds_nothing_and_again_once_it_was_purged(js):
    bucket = await RecordBucket(js, "test-kv-create", common_pb2.Job).ensure()
    assert await bucket.create("claim", common_pb2.Job(job_id="first"))
    assert not await bucket.create("claim", common_pb2.Job(job_id="second"))
    assert (await bucket.get("claim")).job_id == "first"
    await bucket.purge("claim")
    assert await bucket.create("claim", common_pb2.Job(job_id="third"))
    assert (await bucket.get("claim")).job_id == "third"
