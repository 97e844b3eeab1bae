"""A search job's run with its children faked: trials land on the job as they are measured, a resumed
search skips what it measured and waits for what it had submitted, an identical search reuses the
stored measurements, choices read the validation split and the winner is measured on the held-out one."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from modelpress.v1 import common_pb2, gateway_pb2
from services.gateway.search import run
from tests.unit.gateway.test_ranking import AVX2, _described_methods

SPEED = {"onnx-int8": 2.6, "openvino-int8": 2.2, "onnx": 1.4, "openvino": 1.5, "onnx-int4": 1.1}


class _Mesh:
    """Child jobs that succeed at once with figures by candidate; records what was submitted."""

    def __init__(self):
        self.submitted, self.jobs, self.events, self.recipes = [], {}, [], []
        self._ids = itertools.count(1)

    async def submit(self, name, candidate, evaluation):
        job_id = f"child-{next(self._ids)}"
        self.submitted.append((candidate.name, evaluation.quality_split, evaluation.quality_windows))
        job = common_pb2.Job(job_id=job_id, state=common_pb2.JOB_STATE_SUCCEEDED, output=common_pb2.ArtifactRef(
            id=f"a-{job_id}"))
        speed = SPEED.get(candidate.finish, 1.0) * (0.8 if candidate.front else 1.0)
        r = job.result
        r.original_model_size_bytes, r.compressed_model_size_bytes = 1000, 250 if "int8" in candidate.name else 900
        r.prefill_speedup.speedup, r.prefill_speedup.ci95_low, r.prefill_speedup.ci95_high = speed, speed - .05, speed + .05
        for m, ppl in ((r.original, 10.0), (r.compressed, 10.02)):
            m.kind, m.perplexity, m.top1_accuracy = "causal-lm", ppl, 0.5
        self.jobs[job_id] = job
        return job

    async def wait(self, job_id):
        return self.jobs[job_id]

    async def save(self, job):
        self.saved = common_pb2.Job.FromString(job.SerializeToString())

    async def publish(self, message):
        self.events.append(message)

    async def save_recipe(self, recipe):
        self.recipes.append(recipe)
        return gateway_pb2.Recipe(name=recipe.name, version=len(self.recipes), stages=recipe.stages)


class _Trials:
    def __init__(self):
        self.stored = {}

    async def get(self, key):
        return self.stored.get(key)

    async def put(self, key, trial):
        self.stored[key] = trial


def _job(**spec) -> common_pb2.Job:
    job = common_pb2.Job(job_id="search-1", model=common_pb2.ModelRef(builtin="smollm2-135m"), recipe="search",
                         search=common_pb2.SearchSpec(techniques=[common_pb2.TECHNIQUE_OPTIMIZER], no_calibration=True,
                                                      **spec),
                         evaluation=common_pb2.EvaluationSpec(batch_size=1, sequence_length=128, threads=2))
    job.started_at.GetCurrentTime()
    return job


def _search(job, mesh, trials, deploy=None):
    context = run.Context("causal-lm", "avx2", tuple(AVX2), _described_methods())
    asyncio.run(run.run_search(job, context, submit=mesh.submit, wait=mesh.wait, save=mesh.save, publish=mesh.publish,
                               trials=trials, save_recipe=mesh.save_recipe, deploy=deploy))


def test_the_search_picks_the_fastest_on_validation_and_reports_it_on_held_out_text():
    job, mesh, trials = _job(), _Mesh(), _Trials()
    _search(job, mesh, trials)
    found = job.search_result
    assert found.winner == "onnx-int8" and found.recipe == "search-smollm2-135m@1"
    assert mesh.recipes[0].stages[0].method == "onnx-int8"
    # Choices on the validation split; the winner's closing measurement, last, on the held-out one.
    assert {split for _, split, _ in mesh.submitted[:-1]} == {"validation"}
    assert mesh.submitted[-1] == ("onnx-int8", "heldout", 8)
    assert job.output.id == mesh.jobs[f"child-{len(mesh.submitted)}"].output.id and job.result.prefill_speedup.speedup
    fidelities = [(t.candidate, t.fidelity) for t in found.trials]
    assert ("onnx-int8", "screen") in fidelities and ("onnx-int8", "full") in fidelities and fidelities[-1][1] == "heldout"
    assert not any(t.pending for t in found.trials)
    assert 0 < mesh.saved.progress < 1  # counted toward screens, full rounds and the closing one
    # Everything the space left out is said, with why (trains, uses calibration, another technique).
    assert "TECHNIQUE_QUANTIZER" in found.left_out["smoothquant-onnx-int8"]
    assert "calibration" in found.left_out["openvino-int4"]
    assert any(c.dropped for c in found.candidates) and any("screen" in e for e in mesh.events)


def test_a_resumed_search_skips_what_it_measured_and_an_identical_search_reuses_the_store():
    job, mesh, trials = _job(), _Mesh(), _Trials()
    _search(job, mesh, trials)
    first = len(mesh.submitted)
    # Resumed from its saved record (a restarted gateway): nothing is measured twice.
    again = common_pb2.Job.FromString(mesh.saved.SerializeToString())
    again.ClearField("output")
    resumed = _Mesh()
    _search(again, resumed, trials)
    assert [s for s in resumed.submitted if s[1] != "heldout"] == []
    # A new search of the same content: the stored measurements, not new jobs (only the closing one runs).
    fresh = _Mesh()
    other = _job()
    other.job_id = "search-2"
    _search(other, fresh, trials)
    assert len(fresh.submitted) == 1 and fresh.submitted[0][1] == "heldout"
    assert all(t.reused for t in other.search_result.trials if t.fidelity != "heldout") and first > 3


def test_a_pending_child_is_waited_for_not_submitted_again():
    job, mesh, trials = _job(), _Mesh(), _Trials()
    child = asyncio.run(mesh.submit("x", run.search_space("causal-lm", AVX2, _described_methods(),
                                                           run.restrictions_of(job.search)).candidates[0],
                                    run.evaluation_for(job.evaluation, "screen")))
    first = run.search_space("causal-lm", AVX2, _described_methods(), run.restrictions_of(job.search)).candidates[0]
    job.search_result.trials.add(candidate=first.name, fidelity="screen", job_id=child.job_id, pending=True)
    job.search_result.candidates.add(name=first.name)  # the space was recorded before the restart
    submitted_before = len(mesh.submitted)
    _search(job, mesh, trials)
    assert (first.name, "validation", 2) not in mesh.submitted[submitted_before:]
    screen = next(t for t in job.search_result.trials if (t.candidate, t.fidelity) == (first.name, "screen"))
    assert screen.job_id == child.job_id and not screen.pending


def test_nothing_within_the_constraints_fails_naming_why():
    job, mesh, trials = _job(min_speedup=5.0), _Mesh(), _Trials()
    with pytest.raises(run.SearchFailed, match="no candidate met the constraints"):
        _search(job, mesh, trials)
    dropped = {c.name: c.dropped for c in job.search_result.candidates}
    assert "speed-up" in dropped["onnx-int8"]


def test_a_search_that_deploys_measures_only_what_the_replicas_serve_and_deploys_the_winner():
    job, mesh, trials = _job(deploy_as="smol"), _Mesh(), _Trials()
    deployed = []

    async def deploy(searched):
        deployed.append((searched.search.deploy_as, searched.output.id))
        return common_pb2.Deployment(deployment_id="dep-1", name=searched.search.deploy_as)

    _search(job, mesh, trials, deploy)
    found = job.search_result
    # A causal LM's OpenVINO IR is not served (its KV cache lives in the request): never a candidate here.
    assert not any(c.name.startswith("openvino") for c in found.candidates)
    assert "serving replicas do not serve a causal-lm through openvino" in found.left_out["openvino-int8"]
    assert deployed == [("smol", job.output.id)] and found.deployment_id == "dep-1" and not found.deploy_error
    assert mesh.saved.search_result.deployment_id == "dep-1"


def test_a_winner_that_cannot_be_deployed_keeps_the_search_and_says_why():
    job, mesh, trials = _job(deploy_as="smol"), _Mesh(), _Trials()

    async def deploy(searched):
        raise run.NotDeployed("name: another deployment answers to 'smol'")

    _search(job, mesh, trials, deploy)
    found = job.search_result
    assert found.winner and found.recipe and not found.deployment_id
    assert "another deployment answers to 'smol'" in found.deploy_error
    assert any("not deployed" in e for e in mesh.events)


def test_a_cancelled_search_keeps_what_it_measured_for_the_next_identical_one():
    job, trials = _job(), _Trials()

    class _Cancelled(_Mesh):
        async def wait(self, job_id):
            if len(self.submitted) > 2:  # cancelled while its third candidate runs
                raise asyncio.CancelledError
            return self.jobs[job_id]

    first = _Cancelled()
    with pytest.raises(asyncio.CancelledError):
        _search(job, first, trials)
    assert len(trials.stored) == 2
    again, repeat = _job(), _Mesh()
    again.job_id = "search-2"
    _search(again, repeat, trials)
    reused = {t.candidate for t in again.search_result.trials if t.reused}
    assert reused == {name for name, _, _ in first.submitted[:2]}
    assert not {(name, "validation", 2) for name, _, _ in first.submitted[:2]} & set(repeat.submitted)


def test_an_identical_search_is_charged_what_the_stored_measurements_took_and_makes_the_same_choices(monkeypatch):
    clock = [1_000_000.0]
    monkeypatch.setattr(run.time, "time", lambda: clock[0])

    class _Timed(_Mesh):
        async def submit(self, name, candidate, evaluation):
            job = await super().submit(name, candidate, evaluation)
            job.created_at.FromNanoseconds(int(clock[0] * 1e9))
            clock[0] += 60.0  # every measurement takes a minute
            job.finished_at.FromNanoseconds(int(clock[0] * 1e9))
            return job

    def timed_job(job_id):
        job = _job(budget_minutes=5)
        job.job_id = job_id
        job.started_at.FromNanoseconds(int(clock[0] * 1e9))
        return job

    trials = _Trials()
    first, mesh = timed_job("search-1"), _Timed()
    _search(first, mesh, trials)
    unmeasured = {c.name for c in first.search_result.candidates if "budget ran out" in c.dropped}
    assert unmeasured and all(t.seconds == 60.0 for t in first.search_result.trials)
    second, repeat = timed_job("search-2"), _Timed()
    _search(second, repeat, trials)
    # Only the closing measurement ran; the budget ran out where it did the first time.
    assert [split for _, split, _ in repeat.submitted] == ["heldout"]
    assert {c.name for c in second.search_result.candidates if "budget ran out" in c.dropped} == unmeasured
    assert second.search_result.winner == first.search_result.winner


def test_a_search_asked_to_recompute_measures_again_instead_of_reusing():
    trials = _Trials()
    _search(_job(), _Mesh(), trials)
    again, mesh = _job(), _Mesh()
    again.job_id, again.recompute = "search-2", True
    _search(again, mesh, trials)
    assert not any(t.reused for t in again.search_result.trials)
    assert len(mesh.submitted) > 1
