"""The optimizer through the gateway: engines and their availability, an ONNX job measured by the evaluator."""

from __future__ import annotations

import asyncio
import shutil

import grpc
import pytest

from modelpress.v1 import common_pb2
from modelpress import Client
from services.common.measure.isa import isa_class, openvino_precision, support

FAST = common_pb2.EvaluationSpec(batch_size=2, sequence_length=16, latency_iterations=3, quality_sentences=60,
                                 quality_windows=1)


def call(fn, *args, **kwargs):
    return asyncio.to_thread(fn, *args, **kwargs)


async def optimize_and_wait(client, model: str, engine: str, precision: str, recipe: str,
                            evaluation: common_pb2.EvaluationSpec):
    """Submits OptimizeModel, checks the recipe it maps to, follows it to the end; the finished job."""
    job = await call(client.optimize, model, engine, precision=precision, evaluation=evaluation)
    assert job.recipe == recipe
    await call(lambda: list(client.watch(job.job_id)))
    job = await call(client.get_job, job.job_id)
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    return job


async def test_engines_say_what_works_here_and_what_this_cpu_accelerates(gateway):
    response = await call(Client(gateway).engines)
    engines = {e.name: e for e in response.engines}
    assert set(engines) >= {"onnxruntime", "openvino", "gguf", "tensorrt"}
    onnx = engines["onnxruntime"]
    assert onnx.available and not onnx.reason and onnx.methods["int8"] == "onnx-int8"
    assert not engines["tensorrt"].available and engines["tensorrt"].reason
    openvino = engines["openvino"]
    assert openvino.available and openvino.methods["int4"] == "openvino-int4"
    assert openvino.methods["int8-bf16"] == "openvino-int8-bf16" and openvino.compute["int8-bf16"] == "bf16"
    (worker,) = response.workers  # one optimizer replica in this mesh
    flags = list(worker.machine.isa_features)
    assert worker.isa_class == isa_class(flags) == worker.machine.isa_class and worker.worker
    by_precision = {s.precision: s for s in worker.compute}
    assert set(by_precision) == {"fp32", "bf16", "f16", "int8"}
    assert by_precision["bf16"].accelerated == support("bf16", flags).accelerated
    assert ("bf16" in openvino.emulated) == by_precision["bf16"].emulated
    assert "fp32" not in openvino.emulated and not engines["tensorrt"].emulated


async def test_an_onnx_int8_job_is_measured_against_its_pytorch_original(gateway, bert_dir):
    client = Client(gateway)
    job = await optimize_and_wait(client, f"path:{bert_dir}", "onnxruntime", "int8", "onnx-int8", FAST)
    assert job.stages[0].spec.technique == common_pb2.TECHNIQUE_OPTIMIZER
    assert job.output.format == common_pb2.ARTIFACT_FORMAT_ONNX
    assert job.stages[0].metrics["int8_ops"]["QAttention"] == 2
    compressed = job.result.compressed
    assert compressed.kind == "encoder" and compressed.latency.p50_ms > 0
    assert compressed.encoder.has_reference and compressed.encoder.mean_reference_cosine > 0.95


async def test_unavailable_or_unknown_engines_are_refused_up_front(gateway, model_dir):
    client = Client(gateway)
    before = len(await call(client.list_jobs))
    cases = [(dict(engine="tensorrt"), grpc.StatusCode.FAILED_PRECONDITION, "tensorrt is not available"),
             (dict(engine="tvm"), grpc.StatusCode.INVALID_ARGUMENT, "engine: unknown engine 'tvm'"),
             (dict(engine="onnxruntime", precision="int3"), grpc.StatusCode.INVALID_ARGUMENT, "precision"),
             (dict(engine="onnxruntime", options={"group_size": 7}), grpc.StatusCode.INVALID_ARGUMENT, "group_size")]
    for kwargs, code, needle in cases:
        with pytest.raises(grpc.RpcError) as info:
            await call(client.optimize, f"path:{model_dir}", **kwargs)
        assert info.value.code() == code and needle in info.value.details(), info.value.details()
    assert len(await call(client.list_jobs)) == before


async def test_concurrent_causal_lm_exports_in_one_worker_both_succeed(gateway, model_dir):
    client = Client(gateway)
    skip = common_pb2.EvaluationSpec(skip=True)
    jobs = [await call(client.create_job, f"path:{model_dir}", recipe, evaluation=skip)
            for recipe in ("onnx", "onnx-int4")]
    for job in jobs:
        await call(lambda j=job: list(client.watch(j.job_id)))
    done = [await call(client.get_job, j.job_id) for j in jobs]
    assert [j.state for j in done] == [common_pb2.JOB_STATE_SUCCEEDED] * 2, [j.error for j in done]
    assert done[1].stages[0].metrics["matmul_nbits"] >= 14
    assert done[0].stages[0].metrics["kv_cache"] is True


async def test_an_openvino_int8_bf16_job_on_a_causal_lm_is_measured_with_its_kv_cache(gateway, model_dir):
    """INT8 weights composed with bf16 compute; the stage says how this CPU runs bf16."""
    client = Client(gateway)
    spec = common_pb2.EvaluationSpec(batch_size=1, sequence_length=16, latency_iterations=3, quality_windows=1,
                                     decode_tokens=4)
    job = await optimize_and_wait(client, f"path:{model_dir}", "openvino", "int8-bf16", "openvino-int8-bf16", spec)
    assert job.output.format == common_pb2.ARTIFACT_FORMAT_OPENVINO_IR
    stage = job.stages[0]
    assert stage.metrics["kv_cache"] == "stateful"
    flags = job.result.compressed.machine.isa_features
    bf16 = support("bf16", flags)
    # The plugin runs bf16 on every AVX-512 CPU (emulated without AVX512-BF16) and f32 below that;
    # the stage records what it read back, and an emulated request is said.
    assert stage.metrics["inference_precision"] == openvino_precision("bf16", flags)
    assert stage.metrics["compute_precision"]["requested"] == "bf16"
    assert bool(stage.notes) == (not bf16.accelerated), list(stage.notes)
    original, compressed = job.result.original, job.result.compressed
    assert compressed.decode.p50_ms > 0 and compressed.perplexity > 0
    assert abs(compressed.perplexity / original.perplexity - 1) < 0.05
    assert compressed.size_on_disk_bytes < 0.5 * original.size_on_disk_bytes


async def test_gguf_job_through_the_mesh_and_tensorrt_recipe_refused_on_a_cpu_worker(gateway, tiny_bpe_llama_dir,
                                                                                      allowed_root, model_dir):
    folder = allowed_root / "bpe"
    shutil.copytree(tiny_bpe_llama_dir, folder)
    client = Client(gateway)
    spec = common_pb2.EvaluationSpec(batch_size=1, sequence_length=16, latency_iterations=2, quality_windows=1,
                                     decode_tokens=2)
    job = await optimize_and_wait(client, f"path:{folder}", "gguf", "q4", "gguf-q4", spec)
    assert job.output.format == common_pb2.ARTIFACT_FORMAT_GGUF
    assert job.stages[0].metrics["read_back"]["types"]["Q4_1"] == 2 * 7 + 2  # projections, embedding, head
    assert job.result.compressed.perplexity > 0
    # No worker here has TensorRT (ListEngines says so): refused before a job exists, naming the engine.
    before = len(await call(client.list_jobs))
    with pytest.raises(grpc.RpcError) as info:
        await call(client.create_job, f"path:{model_dir}", "tensorrt-fp16",
                   evaluation=common_pb2.EvaluationSpec(skip=True))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "needs the tensorrt engine, which no optimizer worker can run" in info.value.details()
    assert len(await call(client.list_jobs)) == before


async def test_fastest_cpu_runs_the_choice_measured_for_the_evaluators_class_without_searching_again(
        gateway, tiny_bert_dir, allowed_root, js):
    # The search that measures a choice the first time runs in tests/integration/test_search_mesh.py (slow);
    # here a choice stored for this CPU class is what the job runs, and no search starts.
    from modelpress.structs import from_struct
    from services.gateway.search.fastest import ChoiceStore

    folder = allowed_root / "bert-fastest"
    shutil.copytree(tiny_bert_dir, folder)
    client = Client(gateway)
    (worker,) = (await call(client.engines)).workers
    searches_before = len([j for j in await call(client.list_jobs) if j.recipe == "search"])
    store = await ChoiceStore(js).ensure()
    await store.put("", common_pb2.FastestCpuChoice(model_kind="encoder", isa_class=worker.isa_class,
                                                    recipe="onnx-int8", search_job_id="j-earlier", phase="prefill"))
    try:
        job = await call(client.create_job, f"path:{folder}", "fastest-cpu",
                         evaluation=common_pb2.EvaluationSpec(skip=True))
        await call(lambda: list(client.watch(job.job_id)))
        job = await call(client.get_job, job.job_id)
    finally:
        await store.clear("", "encoder", worker.isa_class)
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    stage = job.stages[0]
    assert from_struct(stage.spec.config)["choice"] == "onnx-int8" and stage.worker == worker.worker
    assert "ran onnx-int8" in stage.notes[0] and "the gateway's search" in stage.notes[0]
    assert stage.metrics["int8_ops"]["QAttention"] == 2  # ONNX Runtime's integer operators
    assert len([j for j in await call(client.list_jobs) if j.recipe == "search"]) == searches_before


async def test_a_quantized_artifact_is_refused_by_an_engine_before_a_job_exists(gateway, model_dir):
    client = Client(gateway)
    skip = common_pb2.EvaluationSpec(skip=True)
    job = await call(client.create_job, f"path:{model_dir}", "w4a16-rtn", evaluation=skip)
    await call(lambda: list(client.watch(job.job_id)))
    job = await call(client.get_job, job.job_id)
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    before = len(await call(client.list_jobs))
    for call_it in (lambda: client.create_job(f"artifact:{job.output.id}", "onnx-int8", evaluation=skip),
                    lambda: client.optimize(f"artifact:{job.output.id}", "openvino", precision="bf16")):
        with pytest.raises(grpc.RpcError) as info:
            await call(call_it)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "stages[0]" in info.value.details() and "does not accept compressed-tensors" in info.value.details()
    assert len(await call(client.list_jobs)) == before
