"""A search through the mesh: a job like any other whose candidates are jobs of their own, choosing on
the validation split and reporting the winner on the held-out one; the winner stored as a recipe that
compress runs; an identical search reusing every stored measurement."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from modelpress import Client
from modelpress.v1 import common_pb2


async def call(fn, *args, **kwargs):
    return await asyncio.to_thread(fn, *args, **kwargs)


# Two finishes keep it short in the suite; the space and the halving over a full one are unit-tested
# (tests/unit/gateway/search) and measured in bench/search.py.
SPEC = {"finishes": ["onnx", "onnx-int8"], "techniques": [common_pb2.TECHNIQUE_OPTIMIZER], "min_quality_kept": 0.5,
        "budget_minutes": 20}


async def test_a_search_finds_measures_and_stores_its_winner_and_a_second_one_reuses_it(gateway, bert_dir):
    client = Client(gateway, timeout_s=60)
    model = f"path:{bert_dir}"
    started = time.monotonic()
    job = await call(client.search, model, name="bert search", **SPEC)
    assert job.recipe == "search" and job.HasField("search")
    job = await _until_done(client, job.job_id)
    first_s = time.monotonic() - started
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    found = job.search_result
    assert found.winner and found.recipe.startswith("search-bert@") and found.isa_class
    by_fidelity = {}
    for trial in found.trials:
        by_fidelity.setdefault(trial.fidelity, []).append(trial)
    assert {t.candidate for t in by_fidelity["screen"]} == {"onnx", "onnx-int8"}
    assert by_fidelity["heldout"][-1].candidate == found.winner
    children = {t.job_id: await call(client.get_job, t.job_id) for t in found.trials if not t.reused}
    for trial in found.trials:
        if trial.job_id in children:
            split = children[trial.job_id].evaluation.quality_split
            assert split == ("heldout" if trial.fidelity == "heldout" else "validation"), (trial.fidelity, split)
    # Candidates scored on the validation split are not reported figures: no strategy's evidence cites them.
    evidence = " ".join(s.evidence for s in await call(client.list_strategies))
    assert not any(job_id in evidence for job_id, child in children.items()
                   if child.evaluation.quality_split == "validation")
    # The search job carries the winner's output and its held-out figures.
    assert job.output.id == children[by_fidelity["heldout"][-1].job_id].output.id
    assert job.result.compressed_model_size_bytes and job.result.headline.text
    assert found.left_out and all(why for why in found.left_out.values())
    # Its artifact is tagged with the recipe's name: ListArtifacts finds each search's winner by it.
    assert found.tag.startswith("search-bert:")
    assert [a.artifact.id for a in await call(client.list_artifacts, tag=found.tag)] == [job.output.id]
    # The winner is a recipe the tenant runs by name.
    recipe = await call(client.get_recipe, found.recipe)
    assert [s.method for s in recipe.stages] == [s.method for s in next(
        c for c in found.candidates if c.name == found.winner).stages]

    # An identical search: every screen and full measurement is the stored one; only the closing one runs.
    started = time.monotonic()
    again = await _until_done(client, (await call(client.search, model, **SPEC)).job_id)
    second_s = time.monotonic() - started
    assert again.state == common_pb2.JOB_STATE_SUCCEEDED and again.search_result.winner == found.winner
    assert all(t.reused for t in again.search_result.trials if t.fidelity != "heldout")
    assert second_s < first_s / 2, (first_s, second_s)

    with pytest.raises(grpc.RpcError) as bad:
        await call(client.search, model, objective="cheapest")
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "objective" in bad.value.details()
    with pytest.raises(grpc.RpcError) as bad:
        await call(client.search, model, phase="decode")
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "decode" in bad.value.details()
    with pytest.raises(grpc.RpcError) as bad:
        await call(client.search, model, finishes=["onnx-int9"])
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "onnx-int9" in bad.value.details()
    with pytest.raises(grpc.RpcError) as bad:
        await call(client.search, model, deploy_as="no spaces")
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "name" in bad.value.details()
    client.close()


@pytest.mark.slow  # about 150 s on 2 cores: seven engine recipes screened (a stored choice: test_optimizer_mesh.py)
async def test_fastest_cpu_is_measured_by_a_search_on_the_evaluator_the_first_time_and_read_after(gateway, bert_dir):
    from modelpress.structs import from_struct
    from services.common.contract.recipes import ENGINE_CHOICES

    client = Client(gateway, timeout_s=60)
    model = f"path:{bert_dir}"
    first = await _until_done(client, (await call(client.create_job, model, "fastest-cpu")).job_id)
    assert first.state == common_pb2.JOB_STATE_SUCCEEDED, first.error
    stage = first.stages[0]
    choice = from_struct(stage.spec.config)["choice"]
    assert choice in ENGINE_CHOICES and "the gateway's search" in stage.notes[0] and choice in stage.notes[0]
    searches = [j for j in await call(client.list_jobs) if j.recipe == "search"]
    search, = [j for j in searches if j.name.startswith("fastest-cpu: an encoder on")]
    assert search.state == common_pb2.JOB_STATE_SUCCEEDED and search.search_result.winner == choice
    assert search.search.phase == "prefill" and list(search.search.techniques) == [common_pb2.TECHNIQUE_OPTIMIZER]
    assert {c.name for c in search.search_result.candidates} <= set(ENGINE_CHOICES)
    # The next job reads the stored choice: no second search.
    second = await _until_done(client, (await call(client.create_job, model, "fastest-cpu")).job_id)
    assert second.state == common_pb2.JOB_STATE_SUCCEEDED, second.error
    assert from_struct(second.stages[0].spec.config)["choice"] == choice
    assert len([j for j in await call(client.list_jobs) if j.recipe == "search"]) == len(searches)
    client.close()


async def _until_done(client: Client, job_id: str, timeout_s: float = 900) -> common_pb2.Job:
    deadline = time.monotonic() + timeout_s
    while (job := await call(client.get_job, job_id)).state not in (
            common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED, common_pb2.JOB_STATE_CANCELLED):
        assert time.monotonic() < deadline, "the search did not end"
        await asyncio.sleep(1)
    return job
