"""`fastest-cpu` measured on the worker. The first job that asks for it for a (model kind, CPU class)
runs a short search on the evaluator of that class — the data-free engine recipes of one optimizer stage
(ENGINE_CHOICES), quality kept ≥ 99 % on the validation split, fastest at the speed that counts for the
kind (decode for causal LMs, the forward pass for encoders), not significantly slower than the original —
and stores the winner; later jobs read it. The bench table (services/common/contract/fastest_prior.py) is
only the prior: screened first, and what the optimizer runs when nothing was measured (no evaluator of the
class is live). A job with `recompute` measures again, nothing reused, and stores the new winner.

While the search runs its id is stored, so a second job (or a gateway resuming one) waits for the same
search instead of starting another; a search that finds nothing clears the record and fails the job
saying why, and the next job tries again.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable

from modelpress.structs import from_struct, to_struct
from modelpress.v1 import common_pb2
from services.common.contract import fastest_prior
from services.common.contract.engine_api import CAUSAL_LM, MODEL_KINDS
from services.common.contract.recipes import ENGINE_CHOICES
from services.common.measure.isa import CLASS_NAMES
from services.common.store.kv_records import RecordBucket
from services.gateway.search.run import HELDOUT

BUCKET = "modelpress_fastest_cpu"
METHOD = (common_pb2.TECHNIQUE_OPTIMIZER, "fastest-cpu")
BUDGET_MINUTES = 10.0
MIN_QUALITY_KEPT = 0.99
# Not significantly slower than the original: a choice whose whole interval is below 1× is no "fastest".
MIN_SPEEDUP = 1.0


def _a(word: str) -> str:
    return f"an {word}" if word[:1] in "aeiou" else f"a {word}"


def phase_for(kind: str | None) -> str:
    return "decode" if kind == CAUSAL_LM else "prefill"


def search_spec(kind: str | None, isa: str) -> common_pb2.SearchSpec:
    """The engine recipes, the bench prior's choice for the class screened first, so a budget that runs out
    leaves the least likely winners unmeasured rather than the likeliest."""
    prior = ""
    if kind in MODEL_KINDS and isa in CLASS_NAMES:
        prior = fastest_prior.resolve(isa, kind)[0].recipe
    finishes = sorted(ENGINE_CHOICES, key=lambda name: name != prior)
    return common_pb2.SearchSpec(
        min_quality_kept=MIN_QUALITY_KEPT, min_speedup=MIN_SPEEDUP, objective="fastest", phase=phase_for(kind),
        budget_minutes=BUDGET_MINUTES, techniques=[common_pb2.TECHNIQUE_OPTIMIZER], no_training=True,
        no_calibration=True, finishes=finishes)


def unresolved(job: common_pb2.Job) -> list[common_pb2.StageStatus]:
    """The job's fastest-cpu stages still to run that carry no choice."""
    return [s for s in job.stages if (s.spec.technique, s.spec.method) == METHOD
            and s.state != common_pb2.JOB_STATE_SUCCEEDED and not from_struct(s.spec.config).get("choice")]


def asked_class(stage: common_pb2.StageStatus, here: str) -> str:
    """The CPU class the stage is for: its isa_class, or (auto) the class of the evaluator that measures."""
    isa = from_struct(stage.spec.config).get("isa_class", "auto")
    return here if isa == "auto" else isa


def describe(choice: common_pb2.FastestCpuChoice) -> str:
    measured = choice.measured
    figures = f"{choice.phase} {measured.speedup.speedup:.2f}× [{measured.speedup.ci95_low:.2f}–" \
              f"{measured.speedup.ci95_high:.2f}]"
    if measured.HasField("quality_kept"):
        figures += f", quality kept {measured.quality_kept:.2%}"
    return (f"fastest-cpu: {choice.recipe} for {_a(choice.model_kind)} on {_a(choice.isa_class)} CPU, measured by "
            f"search {choice.search_job_id} ({figures} on the held-out split)")


class NoFastest(RuntimeError):
    """The search found no engine recipe that keeps the quality and is not slower (FAILED_PRECONDITION)."""


class ChoiceStore:
    """Choices per tenant (a tenant's search runs on its own model, and only it may cancel it), kind and class."""

    def __init__(self, js) -> None:
        self._bucket = RecordBucket(js, BUCKET, common_pb2.FastestCpuChoice)
        # One search per key from this gateway at a time; create() claims the key across gateways.
        self.locks: dict[str, asyncio.Lock] = {}

    async def ensure(self) -> ChoiceStore:
        await self._bucket.ensure()
        return self

    @staticmethod
    def key(tenant: str, kind: str, isa: str) -> str:
        # A tenant name may hold characters a KV key may not: its digest stands for it.
        return f"{hashlib.sha256(tenant.encode()).hexdigest()[:16]}.{kind}.{isa}"

    async def get(self, tenant: str, kind: str, isa: str) -> common_pb2.FastestCpuChoice | None:
        return await self._bucket.get(self.key(tenant, kind, isa))

    async def put(self, tenant: str, choice: common_pb2.FastestCpuChoice) -> None:
        await self._bucket.put(self.key(tenant, choice.model_kind, choice.isa_class), choice)

    async def create(self, tenant: str, choice: common_pb2.FastestCpuChoice) -> bool:
        """Stores `choice` only where the key holds nothing; False when another gateway was first."""
        return await self._bucket.create(self.key(tenant, choice.model_kind, choice.isa_class), choice)

    async def clear(self, tenant: str, kind: str, isa: str) -> None:
        await self._bucket.purge(self.key(tenant, kind, isa))


async def resolve(job: common_pb2.Job, kind: str, here: str, store: ChoiceStore, *,
                  submit_search: Callable[[common_pb2.SearchSpec, str], Awaitable[common_pb2.Job]],
                  wait: Callable[[str], Awaitable[common_pb2.Job]],
                  publish: Callable[[str], Awaitable[None]]) -> bool:
    """Sets the choice (and the class it was measured for) of each of `job`'s unresolved fastest-cpu stages,
    searching first where the job's tenant has nothing stored for the kind on the evaluator's class `here`
    ("" when no evaluator is live); True when a stage changed. A stage for another class with nothing
    stored, or with no evaluator to measure on, is left to the prior. NoFastest when the search ended
    without a winner."""
    changed = False
    for stage in unresolved(job):
        isa = asked_class(stage, here)
        stored = await store.get(job.tenant, kind, isa) if isa else None
        measured = stored if stored is not None and stored.recipe else None
        # A job asked to recompute measures again where it can (a changed worker, a new engine version).
        if measured is None or (job.recompute and isa == here):
            if not isa or isa != here:
                where = f"{_a(isa)} CPU" if isa else "this mesh's CPU"
                await publish(f"fastest-cpu: nothing measured for {_a(kind)} on {where} and no live evaluator of that "
                              "class to measure it: the optimizer runs its bench prior")
                continue
            async with store.locks.setdefault(store.key(job.tenant, kind, isa), asyncio.Lock()):
                measured = await _measured(job, kind, isa, store, submit_search, wait, publish)
        config = from_struct(stage.spec.config)
        config.update(choice=measured.recipe, isa_class=isa)
        stage.spec.config.CopyFrom(to_struct(config))
        await publish(describe(measured))
        changed = True
    return changed


async def _measured(job, kind, isa, store, submit_search, wait, publish) -> common_pb2.FastestCpuChoice:
    """The winner of the search for (the job's tenant, kind, isa): one already stored while this job waited,
    the one a running search finds, or a new search's. A recompute searches anew and replaces the stored
    choice only once it has a winner."""
    tenant = job.tenant
    for _ in range(3):  # a claimed search that vanished (deleted, expired) is claimed again
        stored = await store.get(tenant, kind, isa)
        if stored is not None and stored.recipe and not job.recompute:
            return stored  # measured while this job waited for the lock
        search_id = ""
        if stored is not None and stored.search_job_id and not stored.recipe:
            search_id = stored.search_job_id
            await publish(f"fastest-cpu: waiting for search {search_id}, which measures the engine recipes for "
                          f"{_a(kind)} on {_a(isa)} CPU")
        else:
            search = await submit_search(search_spec(kind, isa), f"fastest-cpu: {_a(kind)} on {_a(isa)} CPU")
            pending = common_pb2.FastestCpuChoice(model_kind=kind, isa_class=isa, search_job_id=search.job_id)
            if job.recompute or await store.create(tenant, pending):
                search_id = search.job_id
                await publish(f"fastest-cpu: measuring the engine recipes for {_a(kind)} on {_a(isa)} CPU: search "
                              f"{search_id} on the evaluator ({BUDGET_MINUTES:g}-minute budget)")
            else:  # another gateway claimed it first: its search is the one, this one is not waited for
                continue
        try:
            ended = await wait(search_id)
        except LookupError:  # the search job is gone: nobody will write its winner
            current = await store.get(tenant, kind, isa)
            if current is not None and current.search_job_id == search_id and not current.recipe:
                await store.clear(tenant, kind, isa)
            continue
        return await _record(ended, tenant, kind, isa, store)
    raise NoFastest(f"fastest-cpu: no search for {_a(kind)} on {_a(isa)} CPU could be started and waited for")


async def _record(ended: common_pb2.Job, tenant: str, kind: str, isa: str,
                  store: ChoiceStore) -> common_pb2.FastestCpuChoice:
    found = ended.search_result
    closing = [t for t in found.trials if t.fidelity == HELDOUT and t.candidate == found.winner]
    if ended.state != common_pb2.JOB_STATE_SUCCEEDED or not closing:
        current = await store.get(tenant, kind, isa)
        if current is not None and current.search_job_id == ended.job_id and not current.recipe:
            await store.clear(tenant, kind, isa)  # the next job searches again
        raise NoFastest(f"fastest-cpu: search {ended.job_id} for {_a(kind)} on {_a(isa)} CPU ended without a winner "
                        f"(quality kept ≥ {MIN_QUALITY_KEPT:.0%}, not slower than the original): "
                        f"{ended.error or common_pb2.JobState.Name(ended.state)}")
    choice = common_pb2.FastestCpuChoice(model_kind=kind, isa_class=isa, recipe=found.winner,
                                         search_job_id=ended.job_id, measured=closing[-1], phase=ended.search.phase)
    choice.measured_at.GetCurrentTime()
    await store.put(tenant, choice)
    return choice
