"""The artifact store against a real nats-server."""

import asyncio
import hashlib
import os

import pytest

from modelpress.v1 import common_pb2
from services.common.store.artifact_store import CHUNK_SIZE, ArtifactCorrupt, ArtifactNotFound, ArtifactStore, StoreFull

FMT = common_pb2.ARTIFACT_FORMAT_HF_SAFETENSORS


@pytest.fixture
async def store(js):
    return await ArtifactStore(js, bucket="test_artifacts").ensure()


@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE, 3 * CHUNK_SIZE + 12345])
async def test_file_round_trip_is_byte_exact(store, tmp_path, size):
    data = os.urandom(size)
    (tmp_path / "in.bin").write_bytes(data)
    ref = await store.put_file(tmp_path / "in.bin", fmt=FMT)
    assert ref.sha256 == hashlib.sha256(data).hexdigest() and ref.size_bytes == size
    got = await store.get_file(ref.id, tmp_path / "out.bin")
    assert got == ref
    assert (tmp_path / "out.bin").read_bytes() == data
    assert (await store.stat(ref.id)).ref.format == FMT


async def test_stock_nats_client_reads_our_objects(store, js, tmp_path):
    data = os.urandom(2 * CHUNK_SIZE + 7)
    (tmp_path / "in.bin").write_bytes(data)
    ref = await store.put_file(tmp_path / "in.bin", fmt=FMT)
    stock = await js.object_store("test_artifacts")
    assert (await stock.get(ref.id)).data == data


async def test_folder_round_trip(store, tiny_llama_dir, tmp_path):
    ref = await store.put_dir(tiny_llama_dir, fmt=FMT)
    await store.get_dir(ref.id, tmp_path / "copy")
    for path in tiny_llama_dir.iterdir():
        assert (tmp_path / "copy" / path.name).read_bytes() == path.read_bytes()


async def test_stream_upload_checks_the_client_digest(store):
    async def chunks():
        yield b"hello "
        yield b"world"

    with pytest.raises(ArtifactCorrupt, match="sha256 mismatch"):
        await store.put_stream(chunks(), fmt=FMT, expected_sha256="0" * 64)
    ref = await store.put_stream(chunks(), fmt=FMT, expected_sha256=hashlib.sha256(b"hello world").hexdigest())
    assert b"".join([c async for c in store.iter_chunks(ref.id)]) == b"hello world"


async def test_a_tampered_chunk_is_detected_and_leaves_no_file(store, js, tmp_path):
    (tmp_path / "in.bin").write_bytes(os.urandom(2 * CHUNK_SIZE))
    ref = await store.put_file(tmp_path / "in.bin", fmt=FMT)
    stored = await store.stat(ref.id)
    # Rewrite the object's chunks with other bytes of the same length behind the store's back.
    subject = f"$O.test_artifacts.C.{stored.nuid}"
    await js.purge_stream("OBJ_test_artifacts", subject=subject)
    for _ in range(stored.chunks):
        await js.publish(subject, os.urandom(CHUNK_SIZE))
    with pytest.raises(ArtifactCorrupt):
        await store.get_file(ref.id, tmp_path / "out.bin")
    assert not (tmp_path / "out.bin").exists()


async def test_delete_and_missing(store, tmp_path):
    (tmp_path / "in.bin").write_bytes(b"x" * 100)
    ref = await store.put_file(tmp_path / "in.bin", fmt=FMT)
    assert await store.delete(ref.id) is True
    with pytest.raises(ArtifactNotFound):
        await store.stat(ref.id)
    assert await store.delete(ref.id) is False
    with pytest.raises(ArtifactNotFound):
        await store.get_file("a-does-not-exist", tmp_path / "x")


async def test_concurrent_fetches_on_one_connection_all_succeed(store, tmp_path):
    """Eight fetches of ~46 MB at once on one connection: together they must stay under the server's
    per-connection pending limit (64 MiB), or it drops the connection as a slow consumer."""
    import asyncio

    datas, refs = [], []
    for i in range(8):
        data = os.urandom(46 * 2**20)
        (tmp_path / f"in{i}.bin").write_bytes(data)
        refs.append(await store.put_file(tmp_path / f"in{i}.bin", fmt=FMT))
        datas.append(hashlib.sha256(data).hexdigest())
    got = await asyncio.gather(*(store.get_file(ref.id, tmp_path / f"out{i}.bin") for i, ref in enumerate(refs)))
    assert [g.sha256 for g in got] == datas
    for i in range(8):
        assert hashlib.sha256((tmp_path / f"out{i}.bin").read_bytes()).hexdigest() == datas[i]


async def test_a_full_store_refuses_a_write_whole_and_keeps_every_stored_artifact(js, tmp_path):
    store = await ArtifactStore(js, bucket="test_full_store").ensure()
    (tmp_path / "kept.bin").write_bytes(kept := os.urandom(CHUNK_SIZE + 5))
    first = await store.put_file(tmp_path / "kept.bin", fmt=FMT)
    # Room for about one more chunk: a three-chunk write cannot fit.
    await store.ensure(max_bytes=await store.used_bytes() + CHUNK_SIZE + 64 * 1024)
    before = await store.used_bytes()
    (tmp_path / "big.bin").write_bytes(os.urandom(3 * CHUNK_SIZE))
    with pytest.raises(StoreFull, match="store is full"):
        await store.put_file(tmp_path / "big.bin", fmt=FMT)
    assert await store.used_bytes() <= before  # the chunks that fitted were taken back
    assert await store.get_file(first.id, tmp_path / "back.bin") == first
    assert (tmp_path / "back.bin").read_bytes() == kept
    # Deleting frees room for the write that did not fit before (the bound raised by its size).
    assert await store.delete(first.id)
    await store.ensure(max_bytes=await store.used_bytes() + 3 * CHUNK_SIZE + 64 * 1024)
    assert (await store.put_file(tmp_path / "big.bin", fmt=FMT)).size_bytes == 3 * CHUNK_SIZE
    await store.ensure(max_bytes=0)
    assert (await js.stream_info("OBJ_test_full_store")).config.max_bytes == -1


async def test_a_deletion_is_announced_for_caches(store, js, tmp_path):
    from services.common.store.artifact_store import DELETED_SUBJECT

    heard: list[str] = []

    async def hear(msg) -> None:
        heard.append(msg.data.decode())

    subscription = await js._nc.subscribe(DELETED_SUBJECT, cb=hear)
    (tmp_path / "x.bin").write_bytes(b"x")
    ref = await store.put_file(tmp_path / "x.bin", fmt=FMT)
    assert await store.delete(ref.id)
    await js._nc.flush()
    for _ in range(50):
        if heard:
            break
        await asyncio.sleep(0.05)
    await subscription.unsubscribe()
    assert heard == [ref.id]


async def test_reads_of_interleaved_writes_take_no_consumer_and_get_their_own_bytes(store, js, tmp_path):
    """Chunks are read by direct gets, which any replica answers: no consumer is made (reads
    through ephemeral consumers failed in a cluster losing a server), and two objects written at
    once, their chunks interleaved in the stream, each read back whole."""
    datas = [os.urandom(4 * CHUNK_SIZE + n) for n in (1, 2)]
    for n, data in enumerate(datas):
        (tmp_path / f"in{n}.bin").write_bytes(data)
    refs = await asyncio.gather(*[store.put_file(tmp_path / f"in{n}.bin", fmt=FMT) for n in range(2)])
    # Other tests' stock object-store reads leave consumers of their own on this bucket.
    before = {info.name for info in await js.consumers_info("OBJ_test_artifacts")}
    for ref, data in zip(refs, datas):
        received = b""
        async for chunk in store.iter_chunks(ref.id):
            received += chunk
            assert {info.name for info in await js.consumers_info("OBJ_test_artifacts")} <= before
        assert received == data
