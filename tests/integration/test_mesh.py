"""The whole mesh in one process: six real grpc.aio servers, a real nats-server, a tiny model.

Drives the gateway through the same typed client the CLI uses (sync gRPC, run in a thread
so the servers keep serving on this loop).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil

import grpc
import pytest

from modelpress.v1 import common_pb2
from modelpress.headline import job_headline
from modelpress import Client

FAST_EVAL = common_pb2.EvaluationSpec(batch_size=1, sequence_length=16, latency_iterations=2, quality_windows=1)


def call(fn, *args, **kwargs):
    return asyncio.to_thread(fn, *args, **kwargs)


async def wait_for_end(client: Client, job_id: str) -> list[common_pb2.JobEvent]:
    return await call(lambda: list(client.watch(job_id)))


async def test_int8_job_runs_through_the_mesh(gateway, model_dir, tmp_path):
    client = Client(gateway)
    # recompute: another test's artifact of this stage would be reused (no layer progress to check).
    job = await call(client.create_job, f"path:{model_dir}", "int8-compact", evaluation=FAST_EVAL, recompute=True)
    assert job.state == common_pb2.JOB_STATE_PENDING and len(job.stages) == 1
    live = await wait_for_end(client, job.job_id)
    job = await call(client.get_job, job.job_id)
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    assert job.progress == 1.0 and job.stages[0].worker.startswith("quantizer@")

    result = (await call(client.get_result, job.job_id)).result
    assert result.compressed_model_size_bytes < 0.5 * result.original_model_size_bytes
    assert result.compression_ratio == pytest.approx(result.original_model_size_bytes
                                                     / result.compressed_model_size_bytes)
    assert result.original_params == result.compressed_params > 0
    assert result.original_perplexity > 1 and result.compressed_perplexity > 1
    assert result.original_latency_ms > 0 and result.compressed_memory_mb > 0
    assert result.original.latency.sequence_length == 16

    # Per-layer progress came from the quantizer, in order, before the job's terminal event.
    progress = [e for e in live if e.kind == common_pb2.EVENT_KIND_STAGE_PROGRESS and e.stage_index == 0]
    assert len(progress) >= 16 and [e.step for e in progress] == sorted(e.step for e in progress)
    assert live[-1].job_state == common_pb2.JOB_STATE_SUCCEEDED
    # A watcher arriving after the end replays the same history.
    assert await wait_for_end(client, job.job_id) == live

    ref = await call(client.download, tmp_path / "dl", job_id=job.job_id)
    assert ref.id == job.output.id
    config = json.loads((tmp_path / "dl" / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"
    assert (tmp_path / "dl" / "modelpress.json").exists()
    # The tar keeps no times; a download gets the artifact's creation time, not 1970.
    made = (tmp_path / "dl" / "config.json").stat().st_mtime
    assert abs(made - job.finished_at.seconds) < 600

    # The report sits beside the artifact: JSON with the figures, HTML with the plots embedded.
    assert job.result.evaluation_report_path in job.artifact_ids
    report = json.loads(await call(client.report, job_id=job.job_id, fmt="json"))
    told = job_headline(job.recipe, result)
    # A tiny model timed twice is often too noisy to read: the banner then says so instead of passing.
    assert report["kind"] == "job" and report["headline"] == told.text
    assert report["verdict"] == {"green": "pass", "amber": "warn", "red": "fail"}[told.colour]
    assert (report["verdict"] == "warn") == bool(told.regressions or told.unreliable)
    assert report["job"]["result"]["compressed_perplexity"] == pytest.approx(result.compressed_perplexity)
    assert len(report["layers"]) >= 14 and {"size against quality", "per-layer relative_weight_error"} <= set(
        report["plots"])
    page = (await call(client.report, job_id=job.job_id, fmt="html")).decode()
    assert page.count('src="data:image/png;base64,') == len(report["plots"]) >= 3
    assert f"{result.compressed_perplexity:.3f}" in page and "int8-compact" in page

    assert await call(client.delete_job, job.job_id) == 2  # the model and its report
    with pytest.raises(grpc.RpcError) as info:
        await call(client.get_job, job.job_id)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as info:
        await call(client.download, tmp_path / "dl2", artifact_id=ref.id)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_upload_then_compress_the_uploaded_model(gateway, tiny_llama_dir):
    client = Client(gateway)
    ref = await call(client.upload, tiny_llama_dir)
    assert len(ref.sha256) == 64 and ref.size_bytes > 0
    job = await call(client.create_job, f"artifact:{ref.id}", "fp16",
                     evaluation=common_pb2.EvaluationSpec(skip=True))
    await wait_for_end(client, job.job_id)
    job = await call(client.get_job, job.job_id)
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    assert job.result.compressed_model_size_bytes == job.output.size_bytes


async def test_bad_requests_are_refused_up_front(gateway, model_dir):
    client = Client(gateway)
    cases = [
        (dict(model=f"path:{model_dir}", recipe="int9"), grpc.StatusCode.INVALID_ARGUMENT, "recipe: unknown recipe 'int9'"),
        (dict(model=f"path:{model_dir}", recipe="int8-weight-only", overrides={"bits": 3}),
         grpc.StatusCode.INVALID_ARGUMENT, "overrides.bits"),
        (dict(model="builtin:gpt5", recipe="fp16"), grpc.StatusCode.INVALID_ARGUMENT, "model.builtin"),
        (dict(model="artifact:a-missing", recipe="fp16"), grpc.StatusCode.NOT_FOUND, "a-missing"),
        (dict(model="path:/etc", recipe="fp16"), grpc.StatusCode.INVALID_ARGUMENT, "outside the allowed roots"),
    ]
    before = len(await call(client.list_jobs))
    for kwargs, code, needle in cases:
        with pytest.raises(grpc.RpcError) as info:
            await call(client.create_job, **kwargs)
        assert info.value.code() == code and needle in info.value.details()
    assert len(await call(client.list_jobs)) == before, "a refused request must not create a job"


async def test_a_pickled_model_fails_the_job_with_a_clear_reason(gateway, allowed_root, tiny_llama_dir):
    folder = allowed_root / "pickled"
    shutil.copytree(tiny_llama_dir, folder)
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04")
    client = Client(gateway)
    job = await call(client.create_job, f"path:{folder}", "int8-weight-only", evaluation=FAST_EVAL)
    await wait_for_end(client, job.job_id)
    job = await call(client.get_job, job.job_id)
    assert job.state == common_pb2.JOB_STATE_FAILED
    assert job.error.startswith("FAILED_PRECONDITION") and "pytorch_model.bin" in job.error


async def test_methods_come_from_the_services_and_a_deploy_of_an_unknown_job_is_not_found(gateway):
    client = Client(gateway)
    response = await call(client.list_methods)
    names = {(m.technique, m.name) for m in response.methods}
    assert (common_pb2.TECHNIQUE_QUANTIZER, "int8-weight-only") in names
    assert (common_pb2.TECHNIQUE_EVALUATOR, "evaluate") in names
    assert not response.unavailable
    validation = await call(client.validate, "int8-weight-only", {"embedding_bits": 3})
    assert not validation.valid and "embedding_bits" in validation.errors[0]
    from modelpress.v1 import gateway_pb2

    with pytest.raises(grpc.RpcError) as info:
        await call(client._stub.DeployResult, gateway_pb2.DeployResultRequest(job_id="j-0123456789abcdef"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and "j-0123456789abcdef" in info.value.details()


async def test_upload_with_a_wrong_digest_is_refused(gateway, tiny_llama_dir):
    from modelpress.v1 import gateway_pb2

    client = Client(gateway)

    def send():
        messages = [gateway_pb2.UploadModelRequest(header=gateway_pb2.UploadHeader(
                        format=common_pb2.ARTIFACT_FORMAT_HF_SAFETENSORS, sha256=hashlib.sha256(b"x").hexdigest())),
                    gateway_pb2.UploadModelRequest(chunk=b"not x")]
        return client._stub.UploadModel(iter(messages))

    with pytest.raises(grpc.RpcError) as info:
        await call(send)
    assert info.value.code() == grpc.StatusCode.DATA_LOSS


async def test_a_restarted_gateway_resumes_unfinished_jobs(start_gateway, gateway, model_dir):
    first = await start_gateway()
    client = Client(f"127.0.0.1:{first.port}")
    # Still running 0.5 s in: each probe process alone takes seconds to start (torch import).
    slow_eval = common_pb2.EvaluationSpec(sequence_length=16, latency_iterations=30, quality_windows=1)
    job = await call(client.create_job, f"path:{model_dir}", "int8-weight-only", evaluation=slow_eval)
    await asyncio.sleep(0.5)
    await first.stop(grace_s=0)
    other = Client(gateway)
    interrupted = await call(other.get_job, job.job_id)
    assert interrupted.state in (common_pb2.JOB_STATE_PENDING, common_pb2.JOB_STATE_RUNNING)

    second = await start_gateway()
    try:
        resumed = Client(f"127.0.0.1:{second.port}")
        await wait_for_end(resumed, job.job_id)
        done = await call(resumed.get_job, job.job_id)
        assert done.state == common_pb2.JOB_STATE_SUCCEEDED, done.error
        assert done.result.compressed_perplexity > 0
    finally:
        await second.stop(grace_s=1)


@pytest.mark.parametrize("recipe,overrides", [
    # The tiny model is mostly embedding: INT8 embeddings (compact) make its size fall.
    ("w4a16-rtn", {"group_size": 32, "embedding_bits": 8}),
    ("w4a16-gptq-compact", {"calibration_samples": 4, "calibration_sequence_length": 64, "group_size": 128}),
])
async def test_int4_recipes_write_compressed_tensors(gateway, model_dir, tmp_path, recipe, overrides):
    client = Client(gateway)
    job = await call(client.create_job, f"path:{model_dir}", recipe, overrides=overrides, evaluation=FAST_EVAL,
                     recompute=True)  # its progress events are checked: run it even if stored
    events = await wait_for_end(client, job.job_id)
    job = await call(client.get_job, job.job_id)
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    assert job.output.format == common_pb2.ARTIFACT_FORMAT_COMPRESSED_TENSORS
    assert job.result.compression_ratio > 2
    assert job.result.compressed_perplexity > 1
    progress = [e for e in events if e.kind == common_pb2.EVENT_KIND_STAGE_PROGRESS and e.stage_index == 0]
    assert any("layer" in e.metrics for e in progress)
    await call(client.download, tmp_path / "m", job_id=job.job_id)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"
    manifest = json.loads((tmp_path / "m" / "modelpress.json").read_text())
    assert manifest["stage"]["config"]["group_size"] == overrides["group_size"]
    if overrides["group_size"] == 128:  # hidden 64 cannot take groups of 128: reported, not skipped
        assert manifest["compression"]["group_fallbacks"]


async def test_calibration_larger_than_the_text_is_a_clear_failure(gateway, model_dir, tmp_path):
    client = Client(gateway)
    job = await call(client.create_job, f"path:{model_dir}", "w4a16-gptq",
                     overrides={"calibration_samples": 512, "calibration_sequence_length": 4096},
                     evaluation=FAST_EVAL)
    await wait_for_end(client, job.job_id)
    job = await call(client.get_job, job.job_id)
    assert job.state == common_pb2.JOB_STATE_FAILED
    assert job.error.startswith("FAILED_PRECONDITION") and "calibration_samples" in job.error
    # Asking for its model repeats why there is none.
    with pytest.raises(grpc.RpcError) as info:
        await call(client.download, tmp_path / "none", job_id=job.job_id)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and job.error in info.value.details()


CALIBRATED_RECIPES = {"w8a8-dynamic", "w8a8-static", "w8a8-smoothquant", "w4a16-gptq", "w4a16-awq", "w4a16-qat",
                      "w4a16-mixed", "w8a16-gptq", "w4a16-autoround"}


async def test_every_quantizer_recipe_runs_through_the_gateway(gateway, model_dir):
    from services.common.contract.recipes import RECIPES

    client = Client(gateway)
    jobs = {}
    quantizer_recipes = [n for n, r in RECIPES.items()
                         if all(s.technique == common_pb2.TECHNIQUE_QUANTIZER for s in r.stages)]
    for name in quantizer_recipes:
        overrides = {"calibration_samples": 2, "calibration_sequence_length": 32} if name in CALIBRATED_RECIPES else {}
        if name in ("w4a16-qat", "w4a16-autoround"):
            overrides["steps_per_block"] = 2
        if name.startswith("w4a16-kd-qat"):  # the walk and the end-to-end phase, both short
            overrides.update(calibration_samples=2, calibration_sequence_length=32, steps_per_block=2,
                             end_to_end_tokens=256, end_to_end_sequence_length=32)
        job = await call(client.create_job, f"path:{model_dir}", name, overrides=overrides,
                         evaluation=common_pb2.EvaluationSpec(skip=True))
        jobs[name] = job.job_id
    for name, job_id in jobs.items():
        await wait_for_end(client, job_id)
        job = await call(client.get_job, job_id)
        assert job.state == common_pb2.JOB_STATE_SUCCEEDED, f"{name}: {job.error}"
        expected = common_pb2.ARTIFACT_FORMAT_HF_SAFETENSORS if name in ("fp16", "bf16") \
            else common_pb2.ARTIFACT_FORMAT_COMPRESSED_TENSORS
        assert job.output.format == expected, name


def _dataset_folder(root, lines):
    folder = root / "dataset"
    folder.mkdir(parents=True)
    (folder / "calibration.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return folder


async def test_calibration_from_an_uploaded_jsonl_dataset(gateway, model_dir, tmp_path):
    client = Client(gateway)
    texts = [{"text": f"Customer ticket {i}: the invoice total does not match the order, please refund. " * 8}
             for i in range(40)]
    dataset = await call(client.upload, _dataset_folder(tmp_path, texts), fmt=common_pb2.ARTIFACT_FORMAT_DATASET_JSONL)
    overrides = {"calibration_dataset": dataset.id, "calibration_samples": 4, "calibration_sequence_length": 64}
    job = await call(client.create_job, f"path:{model_dir}", "w4a16-gptq", overrides=overrides,
                     evaluation=common_pb2.EvaluationSpec(skip=True))
    await wait_for_end(client, job.job_id)
    job = await call(client.get_job, job.job_id)
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    assert job.stages[0].spec.config["calibration_dataset"] == dataset.id

    # A dataset too short for the asked windows fails the job, naming the field.
    short = await call(client.upload, _dataset_folder(tmp_path / "s", [{"text": "too short"}]),
                       fmt=common_pb2.ARTIFACT_FORMAT_DATASET_JSONL)
    job = await call(client.create_job, f"path:{model_dir}", "w4a16-gptq",
                     overrides={**overrides, "calibration_dataset": short.id},
                     evaluation=common_pb2.EvaluationSpec(skip=True))
    await wait_for_end(client, job.job_id)
    job = await call(client.get_job, job.job_id)
    assert job.state == common_pb2.JOB_STATE_FAILED and "calibration_samples" in job.error

    # A missing artifact, or one that is not a dataset, is refused before any job exists.
    model = await call(client.upload, model_dir)
    for artifact_id, code in [("no-such-dataset", grpc.StatusCode.NOT_FOUND),
                              (model.id, grpc.StatusCode.INVALID_ARGUMENT)]:
        with pytest.raises(grpc.RpcError) as info:
            await call(client.create_job, f"path:{model_dir}", "w4a16-gptq",
                       overrides={"calibration_dataset": artifact_id})
        assert info.value.code() == code and "overrides.calibration_dataset" in info.value.details()


async def test_a_student_distils_on_an_uploaded_dataset(gateway, tiny_bert_dir, tmp_path):
    # The user's own text, end to end: the 40 pieces of the upload, not the thousands of pydoc's.
    client = Client(gateway)
    texts = [{"text": f"Ticket {i}: the parcel arrived damaged and the customer asks for a replacement."}
             for i in range(40)]
    dataset = await call(client.upload, _dataset_folder(tmp_path, texts), fmt=common_pb2.ARTIFACT_FORMAT_DATASET_JSONL)
    stage = {"technique": "distiller", "method": "distill-response",
             "config": {"student_layers": 1, "vocabulary": "factorized", "embedding_rank": 8, "max_steps": 2,
                        "batch_size": 4, "calibration_dataset": dataset.id}}
    encoder = await call(client.upload, tiny_bert_dir)
    job = await call(client.create_job, f"artifact:{encoder.id}", [stage],
                     evaluation=common_pb2.EvaluationSpec(skip=True))
    await wait_for_end(client, job.job_id)
    job = await call(client.get_job, job.job_id)
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    metrics = job.stages[0].metrics
    assert metrics["train_items"] + metrics["validation_items"] == 40 and metrics["embedding_rank"] == 8


@pytest.fixture(scope="module")
def wide_llama_dir(tmp_path_factory):
    """A 1-layer Llama whose embedding makes it ~47 MB on disk, the size that once tripped NATS."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.conftest import _copy_tokenizer

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=30522, hidden_size=384, intermediate_size=512, num_hidden_layers=1,
                         num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=True)
    folder = tmp_path_factory.mktemp("wide-llama")
    LlamaForCausalLM(config).eval().save_pretrained(folder)
    _copy_tokenizer(folder)
    return folder


async def test_eight_jobs_on_eight_uploaded_artifacts_all_succeed(gateway, wide_llama_dir):
    """One quantizer fetches eight ~47 MB artifacts at once over its one NATS connection."""
    client = Client(gateway)
    uploads = [await call(client.upload, wide_llama_dir, name=f"wide-{i}") for i in range(8)]
    assert len({u.id for u in uploads}) == 8 and all(u.size_bytes > 40e6 for u in uploads)
    jobs = await asyncio.gather(*(call(client.create_job, f"artifact:{u.id}", "fp16",
                                       evaluation=common_pb2.EvaluationSpec(skip=True)) for u in uploads))
    # Watched one after another: the mesh shares this process's thread pool, which eight blocking
    # watches at once would fill.
    for job in jobs:
        await wait_for_end(client, job.job_id)
    done = [await call(client.get_job, j.job_id) for j in jobs]
    assert [j.state for j in done] == [common_pb2.JOB_STATE_SUCCEEDED] * 8, [j.error for j in done]
    assert all(j.output.size_bytes < 0.6 * u.size_bytes for j, u in zip(done, uploads))
