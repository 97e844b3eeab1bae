"""fastest-cpu resolved on the gateway: the first job for a (kind, CPU class) runs one search over the engine
recipes and stores its winner, later jobs (and jobs waiting meanwhile) read it, a search that finds nothing
fails the job saying why and is tried again, and a class no live evaluator has is left to the prior."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from modelpress.structs import from_struct, to_struct
from modelpress.v1 import common_pb2
from services.common.contract import fastest_prior
from services.common.contract.recipes import ENGINE_CHOICES
from services.gateway.search import fastest

O = common_pb2.TECHNIQUE_OPTIMIZER


class _Store:
    def __init__(self):
        self.records, self.locks = {}, {}

    key = staticmethod(fastest.ChoiceStore.key)

    async def get(self, tenant, kind, isa):
        record = self.records.get(self.key(tenant, kind, isa))
        return None if record is None else common_pb2.FastestCpuChoice.FromString(record.SerializeToString())

    async def put(self, tenant, choice):
        self.records[self.key(tenant, choice.model_kind, choice.isa_class)] = choice

    async def create(self, tenant, choice):
        if self.key(tenant, choice.model_kind, choice.isa_class) in self.records:
            return False
        await self.put(tenant, choice)
        return True

    async def clear(self, tenant, kind, isa):
        self.records.pop(self.key(tenant, kind, isa), None)


class _Searches:
    """Search jobs that end with `winner` (or fail when it is empty) once `release` is set."""

    def __init__(self, winner="openvino-int8"):
        self.winner, self.specs, self.jobs, self.events = winner, [], {}, []
        self.release = asyncio.Event()
        self.release.set()
        self._ids = itertools.count(1)

    async def submit(self, spec, name):
        job = common_pb2.Job(job_id=f"search-{next(self._ids)}", name=name, search=spec)
        self.specs.append(spec)
        self.jobs[job.job_id] = job
        return job

    async def wait(self, job_id):
        await self.release.wait()
        if job_id not in self.jobs:
            raise LookupError(f"job {job_id!r} not found")  # as JobStore.get: deleted, or expired
        job = self.jobs[job_id]
        if not self.winner:
            job.state, job.error = common_pb2.JOB_STATE_FAILED, "FAILED_PRECONDITION: no candidate met the constraints"
            return job
        job.state = common_pb2.JOB_STATE_SUCCEEDED
        found = job.search_result
        found.winner = self.winner
        for fidelity in ("screen", "full", "heldout"):
            found.trials.add(candidate=self.winner, fidelity=fidelity, quality_kept=0.995,
                             speedup=common_pb2.SpeedRatio(speedup=2.1, ci95_low=2.0, ci95_high=2.2))
        return job

    async def publish(self, message):
        self.events.append(message)


def _job(config=None, tenant=""):
    job = common_pb2.Job(job_id="j-1", tenant=tenant)
    job.stages.add(index=0, spec=common_pb2.StageSpec(technique=O, method="fastest-cpu", config=to_struct(config or {})))
    return job


async def _resolve(job, store, searches, kind="causal-lm", here="avx2"):
    return await fastest.resolve(job, kind, here, store, submit_search=searches.submit, wait=searches.wait,
                                 publish=searches.publish)


def _choice(job):
    return from_struct(job.stages[0].spec.config).get("choice")


async def test_the_first_job_searches_the_engine_recipes_and_later_ones_reuse_the_stored_winner():
    store, searches = _Store(), _Searches()
    job = _job()
    assert await _resolve(job, store, searches)
    assert _choice(job) == "openvino-int8"
    spec, = searches.specs
    assert (spec.phase, spec.objective, list(spec.techniques)) == ("decode", "fastest", [O])
    assert spec.no_calibration and spec.no_training and set(spec.finishes) == set(ENGINE_CHOICES)
    assert spec.min_quality_kept == fastest.MIN_QUALITY_KEPT and spec.min_speedup == 1.0
    # The bench prior's choice for the class is screened first.
    assert spec.finishes[0] == fastest_prior.resolve("avx2", "causal-lm")[0].recipe
    stored = await store.get("", "causal-lm", "avx2")
    assert (stored.recipe, stored.search_job_id, stored.measured.fidelity) == ("openvino-int8", "search-1", "heldout")
    # The stage is given the class it was measured for too.
    assert from_struct(job.stages[0].spec.config)["isa_class"] == "avx2"
    assert any("search-1" in e and "decode 2.10×" in e and "held-out" in e for e in searches.events)

    later = _job()
    assert await _resolve(later, store, searches)
    assert _choice(later) == "openvino-int8" and len(searches.specs) == 1
    # Another kind on the same CPU is measured on its own, at its own speed (the forward pass).
    encoder = _job()
    await _resolve(encoder, store, searches, kind="encoder")
    assert [s.phase for s in searches.specs] == ["decode", "prefill"]


async def test_jobs_asking_while_the_search_runs_wait_for_that_one_search():
    store, searches = _Store(), _Searches()
    searches.release.clear()
    first, second = _job(), _job()
    tasks = [asyncio.create_task(_resolve(j, store, searches)) for j in (first, second)]
    await asyncio.sleep(0.05)
    pending = await store.get("", "causal-lm", "avx2")
    assert pending.search_job_id == "search-1" and not pending.recipe
    searches.release.set()
    await asyncio.gather(*tasks)
    assert len(searches.specs) == 1 and _choice(first) == _choice(second) == "openvino-int8"


async def test_a_gateway_resuming_waits_for_the_stored_running_search_instead_of_starting_another():
    store, searches = _Store(), _Searches()
    running = await searches.submit(fastest.search_spec("causal-lm", "avx2"), "earlier")
    await store.put("", common_pb2.FastestCpuChoice(model_kind="causal-lm", isa_class="avx2",
                                                    search_job_id=running.job_id))
    job = _job()
    await _resolve(job, store, searches)
    assert len(searches.specs) == 1 and _choice(job) == "openvino-int8"
    assert any(f"waiting for search {running.job_id}" in e for e in searches.events)


async def test_a_search_that_finds_nothing_fails_the_job_saying_why_and_the_next_job_searches_again():
    store, searches = _Store(), _Searches(winner="")
    with pytest.raises(fastest.NoFastest, match="search search-1 for a causal-lm on an avx2 CPU ended without a winner"):
        await _resolve(_job(), store, searches)
    assert await store.get("", "causal-lm", "avx2") is None
    searches.winner = "onnx-int8"
    job = _job()
    await _resolve(job, store, searches)
    assert _choice(job) == "onnx-int8" and len(searches.specs) == 2


async def test_a_class_without_a_live_evaluator_is_left_to_the_prior_unless_it_was_measured():
    store, searches = _Store(), _Searches()
    other = _job({"isa_class": "amx"})
    assert not await _resolve(other, store, searches)
    assert _choice(other) is None and not searches.specs
    assert "no live evaluator of that class" in searches.events[-1]
    nobody = _job()
    assert not await _resolve(nobody, store, searches, here="")
    assert _choice(nobody) is None and not searches.specs
    await store.put("", common_pb2.FastestCpuChoice(model_kind="causal-lm", isa_class="amx", recipe="openvino-bf16",
                                                    search_job_id="search-9"))
    assert await _resolve(other, store, searches)
    assert _choice(other) == "openvino-bf16" and not searches.specs


async def test_stages_already_run_or_already_given_a_choice_are_left_as_they_are():
    store, searches = _Store(), _Searches()
    given = _job({"choice": "onnx"})
    done = _job()
    done.stages[0].state = common_pb2.JOB_STATE_SUCCEEDED
    assert not fastest.unresolved(given) and not fastest.unresolved(done)
    assert not await _resolve(given, store, searches) and not await _resolve(done, store, searches)
    assert _choice(given) == "onnx" and not searches.specs


async def test_a_job_asked_to_recompute_measures_again_and_stores_the_new_winner_only_once_it_has_one():
    store, searches = _Store(), _Searches()
    await _resolve(_job(), store, searches)
    searches.winner = ""  # the new search finds nothing: the measured choice stays
    again = _job()
    again.recompute = True
    with pytest.raises(fastest.NoFastest):
        await _resolve(again, store, searches)
    assert (await store.get("", "causal-lm", "avx2")).recipe == "openvino-int8"
    searches.winner = "onnx-int8"
    await _resolve(again, store, searches)
    assert len(searches.specs) == 3 and _choice(again) == "onnx-int8"
    assert (await store.get("", "causal-lm", "avx2")).recipe == "onnx-int8"


async def test_each_tenant_measures_its_own_and_a_vanished_search_is_replaced_not_waited_for_forever():
    store, searches = _Store(), _Searches()
    await _resolve(_job(tenant="acme"), store, searches)
    other = _job(tenant="globex")
    await _resolve(other, store, searches)
    assert len(searches.specs) == 2 and _choice(other) == "openvino-int8"
    # A claimed search that was deleted (or expired) before it wrote its winner: searched again.
    await store.put("initech", common_pb2.FastestCpuChoice(model_kind="causal-lm", isa_class="avx2",
                                                           search_job_id="j-deleted"))
    job = _job(tenant="initech")
    await _resolve(job, store, searches)
    assert len(searches.specs) == 3 and _choice(job) == "openvino-int8"
    assert (await store.get("initech", "causal-lm", "avx2")).search_job_id == "search-3"
