"""The pruner through the gateway: its methods in Describe, a prune stage with per-layer progress,
prune -> quantize and prune -> export pipelines as one job each, refusals, and a cancel inside recovery."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
import torch

from modelpress import Client
from modelpress.v1 import common_pb2

NO_EVAL = common_pb2.EvaluationSpec(skip=True)
SMALL = {"calibration_samples": 2, "calibration_sequence_length": 32}
PRUNER_METHODS = {"magnitude", "wanda", "sparsegpt", "mlp-neurons", "layers", "heads", "structured"}


def call(fn, *args, **kwargs):
    return asyncio.to_thread(fn, *args, **kwargs)


async def run_to_end(client: Client, job: common_pb2.Job) -> tuple[common_pb2.Job, list[common_pb2.JobEvent]]:
    events = await call(lambda: list(client.watch(job.job_id)))
    return await call(client.get_job, job.job_id), events


@pytest.fixture
def odd_llama_dir(allowed_root, tiny_llama_dir):
    """A Llama whose hidden width (30) is not a multiple of 4: 2:4 cannot group its inputs."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from services.common.models.tokenizer_files import copy_tokenizer

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=30522, hidden_size=30, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=3, num_key_value_heads=1, head_dim=10, tie_word_embeddings=True)
    folder = allowed_root / "odd"
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    copy_tokenizer(tiny_llama_dir, folder)
    return folder


async def test_describe_lists_every_pruner_method_and_overrides_are_validated(gateway):
    client = Client(gateway)
    response = await call(client.list_methods)
    pruner = {m.name for m in response.methods if m.technique == common_pb2.TECHNIQUE_PRUNER}
    assert pruner == PRUNER_METHODS
    for recipe, overrides, needle in [
        ("prune-2of4", {"sparsity": 0.3}, "contradicts structure 2:4"),
        ("prune-wanda-50", {"structure": "3:4"}, "structure"),
        ("prune-magnitude-50", {"scope": "global", "structure": "2:4"}, "scope"),
        ("prune-structured-50", {"target_flops": 1.5}, "target_flops"),
        ("prune-layers", {"recovery_minutes": -1}, "recovery_minutes"),
    ]:
        validation = await call(client.validate, recipe, overrides)
        assert not validation.valid and needle in " ".join(validation.errors), (recipe, validation.errors)
    assert (await call(client.validate, "prune-wanda-50", {"sparsity": 0.6, "owl": True})).valid


async def test_a_wanda_stage_prunes_every_block_linear_and_reports_each_layer(gateway, model_dir, allowed_root):
    client = Client(gateway)
    job = await call(client.create_job, f"path:{model_dir}", "prune-wanda-50", overrides=SMALL, evaluation=NO_EVAL,
                     recompute=True)
    job, events = await run_to_end(client, job)
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    (stage,) = job.stages
    assert stage.spec.technique == common_pb2.TECHNIQUE_PRUNER and stage.spec.method == "wanda"
    metrics = stage.metrics
    # 2 blocks x 7 Linears, each exactly half zero.
    assert metrics["pruned_linears"] == 14 and metrics["sparsity"] == pytest.approx(0.5)
    assert len(metrics["layer_sparsity"]) == 14 and set(metrics["layer_sparsity"].values()) == {0.5}
    assert metrics["pruned_linear_bytes_bitmask"] < metrics["pruned_linear_bytes_dense"]
    per_layer = [e for e in events if e.metrics and "layer" in e.metrics and "sparsity" in e.metrics]
    assert len(per_layer) == 14 and all(e.metrics["loss"] >= 0 for e in per_layer)
    out = await call(client.download, allowed_root / "dl", job_id=job.job_id)
    assert out.id == job.output.id
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(allowed_root / "dl")
    weight = model.model.layers[1].mlp.down_proj.weight
    assert (weight == 0).float().mean().item() == pytest.approx(0.5)


async def test_prune_then_gptq_runs_as_one_job_and_the_quantizer_keeps_the_zeros(gateway, model_dir):
    client = Client(gateway)
    pipeline = {"name": "sparse-w4", "stages": [
        {"name": "prune", "technique": "pruner", "method": "sparsegpt", "config": {"sparsity": 0.5}},
        {"name": "quantize", "technique": "quantizer", "method": "gptq", "config": {"bits": 4, "group_size": 32}}]}
    overrides = {f"{stage}.{key}": value for stage in ("prune", "quantize") for key, value in SMALL.items()}
    job = await call(client.create_job, f"path:{model_dir}", pipeline, overrides=overrides, evaluation=NO_EVAL,
                     recompute=True)
    job, events = await run_to_end(client, job)
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    prune, quantize = job.stages
    assert prune.worker != quantize.worker
    assert prune.output.format == common_pb2.ARTIFACT_FORMAT_HF_SAFETENSORS
    assert quantize.output.format == common_pb2.ARTIFACT_FORMAT_COMPRESSED_TENSORS
    started = [e.message for e in events if e.kind == common_pb2.EVENT_KIND_STAGE_STARTED]
    assert any(f"gptq on artifact:{prune.output.id}" in m for m in started), started
    lineage = await call(client.lineage, job.output.id)
    assert [s.method for s in lineage.stages] == ["sparsegpt", "gptq"]


async def test_prune_then_onnx_int8_runs_as_one_job_on_an_encoder(gateway, bert_dir):
    client = Client(gateway)
    pipeline = {"name": "narrow-onnx-int8", "stages": [
        {"name": "prune", "technique": "pruner", "method": "mlp-neurons", "config": {"mlp_keep": 0.5}},
        {"name": "export", "technique": "optimizer", "method": "onnx-int8"}]}
    evaluation = common_pb2.EvaluationSpec(batch_size=1, sequence_length=16, latency_iterations=3,
                                           quality_sentences=60, quality_windows=1)
    job = await call(client.create_job, f"path:{bert_dir}", pipeline,
                     overrides={f"prune.{k}": v for k, v in SMALL.items()}, evaluation=evaluation, recompute=True)
    job, _ = await run_to_end(client, job)
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    prune, export = job.stages
    assert prune.metrics["shape_before"]["mlp_width"] == 64
    assert prune.metrics["shape_after"]["mlp_width"] == 32
    assert prune.metrics["flops_ratio"] < 1.0 and prune.metrics["parameters_ratio"] < 1.0
    assert export.output.format == common_pb2.ARTIFACT_FORMAT_ONNX == job.output.format
    assert job.result.compressed.kind == "encoder" and job.result.compressed.latency.p50_ms > 0


async def test_what_the_architecture_forbids_fails_the_stage_naming_why(gateway, bert_dir, odd_llama_dir):
    client = Client(gateway)
    # What only the weights tell (an input width 2:4 cannot split) fails the stage; what the model's kind
    # tells (BERT cannot reload fewer heads) never becomes a job (below).
    cases = [(f"path:{odd_llama_dir}", "prune-2of4", SMALL, "2:4 needs input widths that are multiples of 4")]
    for model, recipe, overrides, needle in cases:
        job = await call(client.create_job, model, recipe, overrides=overrides, evaluation=NO_EVAL, recompute=True)
        job, _ = await run_to_end(client, job)
        assert job.state == common_pb2.JOB_STATE_FAILED
        assert job.error.startswith("FAILED_PRECONDITION: ") and needle in job.error, job.error
    # A contradiction in the config never becomes a job.
    before = len(await call(client.list_jobs))
    with pytest.raises(grpc.RpcError) as info:
        await call(client.create_job, f"path:{bert_dir}", "prune-2of4", overrides={"sparsity": 0.3},
                   evaluation=NO_EVAL)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "sparsity" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        await call(client.create_job, f"path:{bert_dir}", "prune-heads", evaluation=NO_EVAL)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "heads takes causal-lm models; the job's model is an encoder" in info.value.details()
    assert len(await call(client.list_jobs)) == before


async def test_a_cancel_lands_inside_the_recovery_fine_tune(gateway, model_dir):
    client = Client(gateway)
    job = await call(client.create_job, f"path:{model_dir}", "prune-mlp",
                     overrides={**SMALL, "recovery_minutes": 5.0, "recovery_steps": 50000}, evaluation=NO_EVAL,
                     recompute=True)

    def cancel_at_first_recovery_step() -> float:
        for event in client.watch(job.job_id):
            if event.metrics and "recovery_loss" in event.metrics:
                client.cancel_job(job.job_id)
                return time.monotonic()
        pytest.fail("the recovery never reported a step")

    started = await call(cancel_at_first_recovery_step)
    job, _ = await run_to_end(client, job)
    assert job.state == common_pb2.JOB_STATE_CANCELLED
    assert time.monotonic() - started < 30  # not the 5 minutes the recovery had
