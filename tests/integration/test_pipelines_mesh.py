"""Pipelines through the mesh: stages on two services chained by artifacts over JetStream, an
evaluate stage with a gate, validation before a job exists, and resume after a gateway restart."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from modelpress import Client
from modelpress.v1 import common_pb2

FAST = common_pb2.EvaluationSpec(batch_size=1, sequence_length=16, latency_iterations=3, quality_windows=1,
                                 decode_tokens=2)
SMALL_CALIBRATION = {"transform.calibration_samples": 2, "transform.calibration_sequence_length": 32}


def call(fn, *args, **kwargs):
    return asyncio.to_thread(fn, *args, **kwargs)


NO_EVAL = common_pb2.EvaluationSpec(skip=True)


def two_stages() -> dict:
    """transform -> export, no evaluation (the tests of keys, lineage and recipes need no figures)."""
    return {"name": "awq-int4", "stages": pipeline("")["stages"][:2]}


def pipeline(gate: str) -> dict:
    return {"name": "awq-int4-checked", "stages": [
        {"name": "transform", "technique": "quantizer", "method": "awq-transform", "config": {"group_size": 32}},
        {"name": "export", "technique": "optimizer", "method": "onnx-int4"},
        {"name": "check", "technique": "evaluator", "gate": gate}]}


async def run_to_end(client: Client, job: common_pb2.Job) -> tuple[common_pb2.Job, list[common_pb2.JobEvent]]:
    events = await call(lambda: list(client.watch(job.job_id)))
    return await call(client.get_job, job.job_id), events


async def test_a_three_stage_pipeline_runs_across_two_services_and_passes_its_gate(gateway, model_dir):
    client = Client(gateway)
    job = await call(client.create_job, f"path:{model_dir}", pipeline("size_ratio<=1.5"), overrides=SMALL_CALIBRATION,
                     evaluation=FAST)
    job, events = await run_to_end(client, job)
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    assert job.recipe == "awq-int4-checked"
    transform, export, check = job.stages
    assert [s.spec.name for s in job.stages] == ["transform", "export", "check"]
    assert transform.output.format == common_pb2.ARTIFACT_FORMAT_HF_SAFETENSORS
    assert export.output.format == common_pb2.ARTIFACT_FORMAT_ONNX
    assert transform.worker != export.worker  # two services
    # The evaluate stage measured the export against the job's model and handed it on.
    assert check.output.id == export.output.id == job.output.id
    assert check.metrics["size_ratio"] == pytest.approx(job.result.compressed_model_size_bytes
                                                        / job.result.original_model_size_bytes)
    assert job.result.compressed_artifact_id == export.output.id and job.result.compressed_perplexity > 0
    assert any("gate 'size_ratio<=1.5' passed: size_ratio = " in e.message for e in events)
    # The input of each stage was the previous stage's artifact.
    started = [e.message for e in events if e.kind == common_pb2.EVENT_KIND_STAGE_STARTED]
    assert any(f"onnx-int4 on artifact:{transform.output.id}" in m for m in started), started


async def test_a_missed_gate_fails_the_job_with_the_figure_and_keeps_what_was_made(gateway, model_dir):
    client = Client(gateway)
    job = await call(client.create_job, f"path:{model_dir}", pipeline("speedup>=1000"), overrides=SMALL_CALIBRATION,
                     evaluation=FAST)
    job, _ = await run_to_end(client, job)
    assert job.state == common_pb2.JOB_STATE_FAILED
    assert job.error.startswith("FAILED_PRECONDITION: stages[2] (check): gate 'speedup>=1000' failed: speedup = ")
    assert "bound >= 1000" in job.error
    assert job.stages[2].state == common_pb2.JOB_STATE_FAILED and job.stages[2].metrics["speedup"] > 0
    for stage in job.stages[:2]:
        assert stage.state == common_pb2.JOB_STATE_SUCCEEDED and stage.output.id in job.artifact_ids


async def test_a_bad_pipeline_is_refused_before_a_job_exists_naming_the_stage(gateway, model_dir):
    client = Client(gateway)
    before = len(await call(client.list_jobs))
    bad_chain = {"name": "x", "stages": [{"name": "quantize", "technique": "quantizer", "method": "gptq"},
                                         {"name": "export", "technique": "optimizer", "method": "onnx-int8"}]}
    cases = [
        (bad_chain, "stages[1] (export): onnx-int8 does not accept compressed-tensors"),
        (pipeline("speed>=2"), "stages[2] (check).gate: 'speed' is not a gate metric"),
        ({"name": "y", "stages": [{"technique": "optimizer", "method": "tflite"}]},
         "stages[0] (tflite): no running optimizer offers method 'tflite'"),
        ({"name": "onnx", "stages": [{"technique": "optimizer", "method": "onnx"}]}, "is a built-in recipe's name"),
    ]
    for data, message in cases:
        with pytest.raises(grpc.RpcError) as info:
            await call(client.create_job, f"path:{model_dir}", data, evaluation=FAST)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in info.value.details(), info.value.details()
    # `symmetric` is a field of both the transform and the export: a bare override is ambiguous.
    with pytest.raises(grpc.RpcError) as info:
        await call(client.create_job, f"path:{model_dir}", pipeline("recovery-99"), overrides={"symmetric": False},
                   evaluation=FAST)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "stages transform, export all take this field; address one: transform.symmetric, export.symmetric" \
        in info.value.details()
    assert len(await call(client.list_jobs)) == before


@pytest.mark.slow  # the same takeover as test_gateway_leases and test_mesh, on a pipeline
async def test_a_restarted_gateway_resumes_a_pipeline_after_its_last_finished_stage(start_gateway, gateway, model_dir):
    first = await start_gateway()
    client = Client(f"127.0.0.1:{first.port}")
    # recompute: stages earlier tests made would otherwise be reused at once.
    job = await call(client.create_job, f"path:{model_dir}", pipeline("size_ratio<=1.5"),
                     overrides=SMALL_CALIBRATION, evaluation=FAST, recompute=True)
    for _ in range(600):  # until the transform has finished and the export runs
        seen = await call(client.get_job, job.job_id)
        if seen.stages[0].state == common_pb2.JOB_STATE_SUCCEEDED and seen.stages[1].state == common_pb2.JOB_STATE_RUNNING:
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail(f"the export never started: {seen}")
    await first.stop(grace_s=0)
    transform = seen.stages[0]
    second = await start_gateway()
    try:
        resumed = Client(f"127.0.0.1:{second.port}")
        done, _ = await run_to_end(resumed, job)
        assert done.state == common_pb2.JOB_STATE_SUCCEEDED, done.error
        # The transform was not run again: the same artifact, the same finish time.
        assert done.stages[0].output.id == transform.output.id
        assert done.stages[0].finished_at == transform.finished_at
        assert done.stages[2].output.id == done.stages[1].output.id
    finally:
        await second.stop(grace_s=1)


async def test_the_same_pipeline_again_reuses_every_stage_by_content_and_records_the_chain(gateway, model_dir):
    import json

    client = Client(gateway)
    first = await call(client.create_job, f"path:{model_dir}", two_stages(),
                       overrides=SMALL_CALIBRATION, evaluation=NO_EVAL)
    first, _ = await run_to_end(client, first)
    assert first.state == common_pb2.JOB_STATE_SUCCEEDED, first.error
    again = await call(client.create_job, f"path:{model_dir}", two_stages(),
                       overrides=SMALL_CALIBRATION, evaluation=NO_EVAL)
    again, events = await run_to_end(client, again)
    assert again.state == common_pb2.JOB_STATE_SUCCEEDED, again.error
    for before, now in zip(first.stages, again.stages):
        assert now.reused and now.output.id == before.output.id and now.key == before.key
    assert sum("reused, not recomputed" in e.message for e in events) == 2
    # recompute: the stages run again and write new artifacts; the transform's key is the same (same
    # input bytes), the export's is not (its input is the new transform artifact).
    fresh = await call(client.create_job, f"path:{model_dir}", two_stages(),
                       overrides=SMALL_CALIBRATION, evaluation=NO_EVAL, recompute=True)
    fresh, _ = await run_to_end(client, fresh)
    assert fresh.state == common_pb2.JOB_STATE_SUCCEEDED, fresh.error
    for before, now in zip(first.stages, fresh.stages):
        assert not now.reused and now.output.id != before.output.id
    assert fresh.stages[0].key == first.stages[0].key and fresh.stages[1].key != first.stages[1].key
    # Deleting a job keeps the artifacts another job still uses.
    await call(client.delete_job, again.job_id)
    out = await call(client.download, model_dir.parent / "dl", artifact_id=first.output.id)
    assert out.id == first.output.id
    # The export's manifest holds the whole chain: the transform, then the export, each keyed by content.
    manifest = json.loads((model_dir.parent / "dl" / "modelpress.json").read_text())
    chain = manifest["chain"]
    assert [link["method"] for link in chain] == ["awq-transform", "onnx-int4"]
    # Keyed by content, not by path: an earlier test's job on a copy of the model in another
    # folder may be the one that made it.
    assert chain[0]["input"].startswith("path:") and chain[0]["input"].endswith("/tiny")
    assert chain[0]["input_digest"].startswith("sha256:")
    assert chain[1]["input"] == f"artifact:{first.stages[0].output.id}"
    assert chain[1]["input_digest"] == "sha256:" + first.stages[0].output.sha256
    assert chain[0]["config"]["calibration_samples"] == 2 and chain[0]["versions"]["torch"]
    assert [link["key"] for link in chain] == [s.key for s in first.stages]
    assert chain[1]["metrics"]["bits"] == 4


async def test_lineage_tags_and_listing_read_the_artifacts_records(gateway, model_dir):
    client = Client(gateway)
    job = await call(client.create_job, f"path:{model_dir}", two_stages() | {"name": "awq-int4-tagged"},
                     overrides=SMALL_CALIBRATION, evaluation=NO_EVAL)
    job, _ = await run_to_end(client, job)
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    lineage = await call(client.lineage, job.output.id)
    assert [s.method for s in lineage.stages] == ["awq-transform", "onnx-int4"]
    assert [s.key for s in lineage.stages] == [s.key for s in job.stages]
    assert lineage.stages[1].input_digest == "sha256:" + job.stages[0].output.sha256
    assert lineage.stages[0].versions["torch"] and lineage.stages[0].config["group_size"] == 32
    assert lineage.artifact.methods == ["awq-transform", "onnx-int4"]
    assert lineage.artifact.base_model.startswith("path:")
    assert (await call(client.lineage, job.stages[0].output.id)).artifact.methods == ["awq-transform"]

    first = await call(client.tag, job.output.id, "smol-int4")
    again = await call(client.tag, job.output.id, "smol-int4")  # the same artifact keeps its version
    second = await call(client.tag, job.stages[0].output.id, "smol-int4")
    assert (first.tag, again.tag, second.tag) == ("smol-int4:1", "smol-int4:1", "smol-int4:2")
    with pytest.raises(grpc.RpcError) as info:
        await call(client.tag, job.stages[0].output.id, "smol-int4:1")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "already names artifact" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        await call(client.tag, job.output.id, "bad tag!")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "NAME:VERSION" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        await call(client.lineage, "a-missing")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND

    tagged = {a.artifact.id for a in await call(client.list_artifacts, tag="smol-int4")}
    assert tagged == {job.output.id, job.stages[0].output.id}
    assert [a.artifact.id for a in await call(client.list_artifacts, tag="smol-int4:2")] == [job.stages[0].output.id]
    by_recipe = await call(client.list_artifacts, recipe="awq-int4-tagged")
    assert job.output.id in {a.artifact.id for a in by_recipe}
    assert all("awq-int4-tagged" in a.recipes for a in by_recipe)


async def test_user_recipes_are_stored_with_immutable_versions_and_run_by_name(gateway, model_dir):
    client = Client(gateway)
    data = two_stages() | {"name": "team-int4"}
    first = await call(client.create_recipe, data)
    second = await call(client.create_recipe, data | {"summary": "v2"})
    assert (first.version, second.version, first.builtin) == (1, 2, False)
    assert (await call(client.get_recipe, "team-int4")).version == 2
    assert (await call(client.get_recipe, "team-int4@1")).summary == ""
    recipes = await call(client.list_recipes)
    listed = {(r.name, r.version, r.builtin) for r in recipes}
    assert {("team-int4", 1, False), ("team-int4", 2, False), ("onnx-int4", 0, True)} <= listed
    # Each recipe says which model kinds its methods take (from the services' Describe) and, for a built-in,
    # what runs its output, what data it uses and its rough cost.
    by_name = {r.name: r for r in recipes if r.builtin}
    assert set(by_name["onnx-int8"].model_kinds) == {"causal-lm", "encoder"}
    assert set(by_name["gguf-q4"].model_kinds) == {"causal-lm"} and list(by_name["gguf-q4"].runtimes) == ["llama.cpp"]
    assert list(by_name["prune-heads"].model_kinds) == ["causal-lm"]
    assert (by_name["onnx-int8"].data, by_name["onnx-int8"].cost, by_name["onnx-int8"].compute) == ("none", "seconds",
                                                                                                    "int8")
    assert by_name["minilm-edge"].data == "training"
    for bad, code, message in [
        (data | {"name": "onnx-int4"}, grpc.StatusCode.INVALID_ARGUMENT, "built-in recipe"),
        (pipeline("speed>=1") | {"name": "x-bad"}, grpc.StatusCode.INVALID_ARGUMENT, "'speed' is not a gate metric"),
        (data | {"name": "Team Int4"}, grpc.StatusCode.INVALID_ARGUMENT, "is not NAME or NAME@VERSION"),
    ]:
        with pytest.raises(grpc.RpcError) as info:
            await call(client.create_recipe, bad)
        assert info.value.code() == code and message in info.value.details(), info.value.details()
    job = await call(client.create_job, f"path:{model_dir}", "team-int4@1", overrides=SMALL_CALIBRATION,
                     evaluation=NO_EVAL)
    assert job.recipe == "team-int4@1" and [s.spec.name for s in job.stages] == ["transform", "export"]
    job, _ = await run_to_end(client, job)
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    assert await call(client.delete_recipe, "team-int4@1") == 1
    with pytest.raises(grpc.RpcError) as info:
        await call(client.get_recipe, "team-int4@1")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and "versions: 2" in info.value.details()
    assert (await call(client.create_recipe, data)).version == 3  # a deleted version is never given again
    with pytest.raises(grpc.RpcError) as info:
        await call(client.delete_recipe, "onnx-int4")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await call(client.delete_recipe, "team-int4") == 2
    with pytest.raises(grpc.RpcError) as info:
        await call(client.create_job, f"path:{model_dir}", "team-int4", evaluation=FAST)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "unknown recipe 'team-int4'" in info.value.details()
