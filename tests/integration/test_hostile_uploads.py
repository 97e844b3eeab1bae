"""Hostile files are refused at upload with INVALID_ARGUMENT (never stored, never INTERNAL at
use); an upload past the operator's bound is RESOURCE_EXHAUSTED."""

from __future__ import annotations

import asyncio
import hashlib

import grpc
import pytest

from modelpress import Client
from modelpress.v1 import gateway_pb2, gateway_pb2_grpc
from services.common.runtime.server import start_service
from tests.integration.conftest import _registrar
from tests.upload_corpus import HF, corpus


def _send(target: str, data: bytes, fmt: int, chunk: int = 1 << 20):
    def messages():
        yield gateway_pb2.UploadModelRequest(header=gateway_pb2.UploadHeader(
            name="hostile", format=fmt, sha256=hashlib.sha256(data).hexdigest()))
        for start in range(0, len(data), chunk):
            yield gateway_pb2.UploadModelRequest(chunk=data[start:start + chunk])

    with grpc.insecure_channel(target) as channel:
        return gateway_pb2_grpc.GatewayServiceStub(channel).UploadModel(messages(), timeout=60).artifact


async def _refusal(target: str, data: bytes, fmt: int) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        await asyncio.to_thread(_send, target, data, fmt)
    return info.value


async def test_every_hostile_upload_is_invalid_argument_and_nothing_is_stored(gateway, tiny_llama_dir):
    before = {a.artifact.id for a in await asyncio.to_thread(Client(gateway).list_artifacts)}
    for name, (data, fmt, phrase) in corpus(tiny_llama_dir).items():
        error = await _refusal(gateway, data, fmt)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, error.code(), error.details())
        assert phrase in error.details() and error.details().startswith("upload ("), (name, error.details())
    assert {a.artifact.id for a in await asyncio.to_thread(Client(gateway).list_artifacts)} == before


async def test_an_upload_past_the_bound_is_resource_exhausted(workers, tiny_llama_dir):
    service = await start_service(workers.model_copy(update={"max_upload_bytes": 1 << 20}), _registrar("gateway"))
    try:
        data, _, _ = corpus(tiny_llama_dir)["not-a-tar"]
        error = await _refusal(f"127.0.0.1:{service.port}", data * 600, HF)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "1048576 bytes" in error.details()
    finally:
        await service.stop(grace_s=1)
