"""Hostile files are refused at upload with INVALID_ARGUMENT (never stored, never INTERNAL at
use); an upload past the operator's bound is RESOURCE_EXHAUSTED. What passes cannot lie: a checkpoint
short of tensors fails its job by name, an uploaded modelpress.json is never lineage, and outputs
carry no pointers at custom code."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil

import grpc
import pytest

from modelpress import Client
from modelpress.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from services.common.runtime.server import start_service
from services.common.store import packaging
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


def _upload_folder(tmp_path, tiny_llama_dir, name: str):
    folder = tmp_path / name
    shutil.copytree(tiny_llama_dir, folder)
    return folder


async def _finished(client: Client, job_id: str) -> common_pb2.Job:
    await asyncio.to_thread(lambda: list(client.watch(job_id)))
    return await asyncio.to_thread(client.get_job, job_id)


async def _fp16_of_upload(client: Client, folder):
    """(the upload's ref, its finished fp16 job without evaluation)."""
    ref = await asyncio.to_thread(client.upload, folder)
    job = await asyncio.to_thread(client.create_job, f"artifact:{ref.id}", "fp16",
                                  evaluation=common_pb2.EvaluationSpec(skip=True))
    return ref, await _finished(client, job.job_id)


async def test_a_model_missing_a_tensor_fails_its_job_naming_it(gateway, tiny_llama_dir, tmp_path):
    """Never a job that SUCCEEDS on weights transformers invented: the missing tensors are named."""
    from safetensors.torch import load_file, save_file

    folder = _upload_folder(tmp_path, tiny_llama_dir, "one-short")
    state = load_file(str(folder / "model.safetensors"))
    del state["model.layers.0.self_attn.q_proj.weight"]
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    client = Client(gateway)
    ref, job = await _fp16_of_upload(client, folder)
    assert job.state == common_pb2.JOB_STATE_FAILED, job.error
    assert job.error.startswith("FAILED_PRECONDITION")
    assert "lacks 1 of the model's tensors (model.layers.0.self_attn.q_proj.weight)" in job.error


async def test_an_uploaded_manifest_is_never_lineage_and_outputs_keep_no_auto_map(gateway, tiny_llama_dir, tmp_path):
    """B uploads a folder whose modelpress.json claims A's base model, job and worker, and whose config points
    at custom code: the output's lineage starts at B's upload, and its config.json has no auto_map."""
    folder = _upload_folder(tmp_path, tiny_llama_dir, "forged")
    forged = packaging.StageRecord(technique="quantizer", method="gptq", job_id="j-of-tenant-a",
                                   worker="trusted-prod-node")
    packaging.write_manifest(folder, packaging.Manifest(
        format="ARTIFACT_FORMAT_HF_SAFETENSORS", base_model="builtin:smollm2-135m", stage=forged, chain=[forged]))
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config))

    client = Client(gateway)
    ref, job = await _fp16_of_upload(client, folder)
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error

    lineage = await asyncio.to_thread(client.lineage, job.output.id)
    assert lineage.artifact.base_model == f"artifact:{ref.id}"
    assert [(s.method, s.job_id) for s in lineage.stages] == [("fp16", job.job_id)]
    assert "trusted-prod-node" not in {s.worker for s in lineage.stages}
    out = tmp_path / "out"
    await asyncio.to_thread(client.download, out, job_id=job.job_id)
    manifest = packaging.read_manifest(out)
    assert manifest.base_model == f"artifact:{ref.id}" and [s.job_id for s in manifest.chain] == [job.job_id]
    assert "auto_map" not in json.loads((out / "config.json").read_text())


async def test_a_path_component_past_the_file_name_limit_is_invalid_argument(gateway, allowed_root):
    client = Client(gateway)
    with pytest.raises(grpc.RpcError) as info:
        await asyncio.to_thread(client.create_job, f"path:{allowed_root / ('x' * 300)}", "fp16",
                                evaluation=common_pb2.EvaluationSpec(skip=True))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()


async def test_a_deeply_nested_config_on_a_path_is_invalid_argument(gateway, allowed_root, tiny_llama_dir):
    """A path is not checked like an upload: the gateway may refuse it up front, else the worker that
    loads it does, with INVALID_ARGUMENT naming the file either way (never UNKNOWN)."""
    folder = allowed_root / "deep"
    shutil.copytree(tiny_llama_dir, folder)
    (folder / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    client = Client(gateway)
    try:
        job = await asyncio.to_thread(client.create_job, f"path:{folder}", "fp16",
                                      evaluation=common_pb2.EvaluationSpec(skip=True))
    except grpc.RpcError as refused:
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT and "nested" in refused.details()
        return
    job = await _finished(client, job.job_id)
    assert job.state == common_pb2.JOB_STATE_FAILED
    assert job.error.startswith("INVALID_ARGUMENT") and "config.json: JSON nested past" in job.error, job.error
