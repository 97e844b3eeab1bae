"""Through the real mesh: a recipe whose method does not take the job's model kind, or whose engine
no optimizer worker has, is refused at CreateJob, naming the stage, the method and why, and no job
is left behind (ListJobs shows none)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from modelpress import Client
from modelpress.v1 import common_pb2

NO_EVAL = common_pb2.EvaluationSpec(skip=True)


def call(fn, *args, **kwargs):
    return asyncio.to_thread(fn, *args, **kwargs)


async def refused(client: Client, model: str, recipe: str) -> grpc.RpcError:
    before = [j.job_id for j in await call(client.list_jobs)]
    with pytest.raises(grpc.RpcError) as info:
        await call(client.create_job, model, recipe, evaluation=NO_EVAL)
    assert [j.job_id for j in await call(client.list_jobs)] == before  # no job exists
    return info.value


@pytest.mark.parametrize("recipe,expected", [
    # GGUF holds decoder LLMs for llama.cpp.
    ("gguf-q8_0", "stages[0] (gguf-q8_0): gguf-q8_0 takes causal-lm models; the job's model is an encoder"),
    # BERT derives the head size from hidden_size / num_attention_heads: fewer heads do not reload.
    ("prune-heads", "stages[0] (prune): heads takes causal-lm models; the job's model is an encoder"),
])
async def test_a_method_that_does_not_take_minilm_is_refused_before_a_job_exists(gateway, recipe, expected):
    error = await refused(Client(gateway), "builtin:minilm-l6", recipe)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == expected


async def test_the_kind_of_a_path_or_an_uploaded_model_is_read_from_its_config(gateway, bert_dir):
    client = Client(gateway)
    error = await refused(client, f"path:{bert_dir}", "awq-gguf-q4")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "stages[1] (export): gguf-q4 takes causal-lm models; the job's model is an encoder"
    uploaded = await call(client.upload, bert_dir)
    error = await refused(client, f"artifact:{uploaded.id}", "prune-heads")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "heads takes causal-lm models; the job's model is an encoder" in error.details()


async def test_tensorrt_on_a_mesh_whose_engines_lack_it_is_refused_before_a_job_exists(gateway):
    client = Client(gateway)
    tensorrt = next(e for e in await call(client.list_engines) if e.name == "tensorrt")
    if tensorrt.available:
        pytest.skip("this mesh's optimizer can build TensorRT engines")
    error = await refused(client, "builtin:minilm-l6", "tensorrt-fp16")
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == ("stages[0] (tensorrt-fp16): tensorrt-fp16 needs the tensorrt engine, which no "
                               f"optimizer worker can run: {tensorrt.reason}")
