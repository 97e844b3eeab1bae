"""The distiller through the gateway: its methods and inputs in Describe, refusals of a missing or
incompatible teacher, prune -> distill-self as one job healing against the job's original, and a
distiller killed mid-stage whose retried stage resumes from its last checkpoint."""

from __future__ import annotations

import asyncio
import json
import time

import grpc
import pytest

from modelpress import Client
from modelpress.v1 import common_pb2
from services.common.store.nats_server import free_port
from tests.integration.processes import ServiceProcess, gateway_to

NO_EVAL = common_pb2.EvaluationSpec(skip=True)
DISTILLER_METHODS = {"distill-response", "distill-feature", "distill-attention", "distill-self"}
SHORT = {"max_steps": 6, "calibration_samples": 24, "calibration_sequence_length": 32, "batch_size": 4,
         "validate_every": 3, "warmup_steps": 1}
# Long enough that the kill lands mid-training after a checkpoint; few checkpoints, as each one
# (weights, optimizer, teacher cache) goes to the object store.
LONG = {**SHORT, "max_steps": 60, "checkpoint_every": 10, "validate_every": 1000}
KILL_AFTER_STEP = 12
REPLICA_WAIT_S = 60.0


def call(fn, *args, **kwargs):
    return asyncio.to_thread(fn, *args, **kwargs)


async def run_to_end(client: Client, job: common_pb2.Job) -> tuple[common_pb2.Job, list[common_pb2.JobEvent]]:
    events = await call(lambda: list(client.watch(job.job_id)))
    return await call(client.get_job, job.job_id), events


async def test_describe_lists_the_four_families_with_teacher_and_student_inputs(gateway):
    response = await call(Client(gateway).list_methods)
    distiller = {m.name: m for m in response.methods if m.technique == common_pb2.TECHNIQUE_DISTILLER}
    assert set(distiller) == DISTILLER_METHODS
    for method in distiller.values():
        assert {i.field for i in method.inputs} >= {"teacher", "student"}
        assert {m.name for m in method.progress_metrics} >= {"loss", "response", "validation_loss"}
    assert {"feature"} <= {m.name for m in distiller["distill-feature"].progress_metrics}
    assert {"attention"} <= {m.name for m in distiller["distill-attention"].progress_metrics}


async def test_a_missing_teacher_is_not_found_and_a_bad_override_is_invalid_before_any_job(gateway, model_dir):
    client = Client(gateway)
    before = len(await call(client.list_jobs))
    with pytest.raises(grpc.RpcError) as info:
        await call(client.create_job, f"path:{model_dir}", "distill-response", overrides={"teacher": "no-such-model"},
                   evaluation=NO_EVAL)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and "teacher" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        await call(client.create_job, f"path:{model_dir}", "distill-feature", overrides={"feature_layers": "1-2"},
                   evaluation=NO_EVAL)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "feature_layers" in info.value.details()
    assert len(await call(client.list_jobs)) == before


async def test_a_teacher_of_another_kind_fails_the_stage_naming_both_kinds(gateway, model_dir, bert_dir):
    client = Client(gateway)
    teacher = await call(client.upload, bert_dir)
    job = await call(client.create_job, f"path:{model_dir}", "distill-response",
                     overrides={**SHORT, "teacher": teacher.id}, evaluation=NO_EVAL, recompute=True)
    job, _ = await run_to_end(client, job)
    assert job.state == common_pb2.JOB_STATE_FAILED
    assert job.error.startswith("FAILED_PRECONDITION") and "differ in kind" in job.error, job.error


async def test_prune_then_self_distillation_is_one_job_healing_against_the_original(gateway, model_dir, allowed_root):
    client = Client(gateway)
    pipeline = [{"name": "prune", "technique": "pruner", "method": "mlp-neurons",
                 "config": {"mlp_keep": 0.5, "calibration_samples": 4, "calibration_sequence_length": 32}},
                {"name": "heal", "technique": "distiller", "method": "distill-self", "config": SHORT}]
    job = await call(client.create_job, f"path:{model_dir}", pipeline, evaluation=NO_EVAL, recompute=True)
    job, events = await run_to_end(client, job)
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    prune, heal = job.stages
    metrics = heal.metrics
    # The teacher is the job's input (the unpruned model), not the stage's (pruned) input.
    assert metrics["parameters_teacher"] > metrics["parameters"] == prune.metrics["parameters"]
    assert metrics["steps"] == SHORT["max_steps"] and metrics["stopped"] == "max_steps"
    steps = [e for e in events if e.stage_index == 1 and e.metrics and "learning_rate" in e.metrics]
    assert [e.step for e in steps] == list(range(1, SHORT["max_steps"] + 1))
    assert all(e.metrics["loss"] > 0 for e in steps)
    assert [v[0] for v in metrics["validation_curve"]] == [0, 3, 6]  # the input, then every 3 steps
    out = await call(client.download, allowed_root / "dl", job_id=job.job_id)
    from transformers import AutoModelForCausalLM

    config = json.loads((allowed_root / "dl" / "config.json").read_text())
    assert config["intermediate_size"] == prune.metrics["shape_after"]["mlp_width"]
    AutoModelForCausalLM.from_pretrained(allowed_root / "dl")
    assert out.id == job.output.id


async def test_a_cancel_lands_between_training_steps(gateway, model_dir):
    client = Client(gateway)
    job = await call(client.create_job, f"path:{model_dir}", "distill-response",
                     overrides={**SHORT, "max_steps": 0, "max_minutes": 10.0}, evaluation=NO_EVAL, recompute=True)

    def cancel_at_the_second_step() -> float:
        for event in client.watch(job.job_id):
            if "learning_rate" in event.metrics and event.step >= 2:
                client.cancel_job(job.job_id)
                return time.monotonic()
        pytest.fail("the training never reported a step")

    started = await call(cancel_at_the_second_step)
    job, _ = await run_to_end(client, job)
    assert job.state == common_pb2.JOB_STATE_CANCELLED
    assert time.monotonic() - started < 30  # not the 10 minutes of its budget


@pytest.fixture(scope="module")
async def distiller(nats_url, workers):
    process = ServiceProcess("distiller", nats_url, workers.home, free_port())
    await call(process.start)
    yield process
    process.stop()


@pytest.fixture(scope="module")
async def gateway_of_process(workers, distiller):
    service, client = await gateway_to(workers, distiller, REPLICA_WAIT_S)
    yield client
    await service.stop(grace_s=1)


async def test_a_distiller_killed_mid_stage_resumes_from_its_last_checkpoint(gateway_of_process, distiller,
                                                                             tiny_llama_dir):
    client = gateway_of_process
    model = await call(client.upload, tiny_llama_dir)
    job = await call(client.create_job, f"artifact:{model.id}", "distill-response", overrides=LONG,
                     evaluation=NO_EVAL, recompute=True)

    def step_reached() -> int:
        for event in client.watch(job.job_id):
            if (event.kind == common_pb2.EVENT_KIND_STAGE_PROGRESS and "learning_rate" in event.metrics
                    and event.step >= KILL_AFTER_STEP):
                return event.step
        raise AssertionError("the job ended before the kill")

    await call(step_reached)
    distiller.kill()
    await asyncio.sleep(2)
    await call(distiller.start)
    job, events = await run_to_end(client, job)
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    metrics = job.stages[0].metrics
    resumed = int(metrics["resumed_from_step"])
    # The last checkpoint before the kill: at least the one of step 10.
    every = LONG["checkpoint_every"]
    assert resumed >= KILL_AFTER_STEP - KILL_AFTER_STEP % every and resumed % every == 0
    assert metrics["steps"] == LONG["max_steps"]
    assert any(f"resumed from the checkpoint of step {resumed}" in e.message for e in events)
