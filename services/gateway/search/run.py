"""A search job, run by the gateway's JobRunner: the space for the model on the evaluator's CPU, each
candidate made and measured as a job of its own (watchable, reusing stored stages by content key),
successive halving over their figures, then the winner measured again on the held-out split, stored
as a user recipe, and its output and figures made the search job's.

Decisions read the validation split (corpus.py): neither calibrated on nor the held-out text the
closing figures are reported on. Every trial is written to the search job as it lands, so a search
resumed after a gateway restart skips what it measured; and to a store keyed by content (model,
stages, effort, CPU class, tenant), so an identical search later reuses the measurements.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass

from modelpress.quality_kept import measured_retention
from modelpress.v1 import common_pb2, gateway_pb2
from services.common.contract.chain import Methods
from services.common.contract.recipes import RECIPES
from services.common.store.kv_records import RecordBucket
from services.common.store.lineage import canonical
from services.common.store.model_source import describe
from services.gateway.search.space import Candidate, Restrictions, search_space
from services.gateway.search.strategy import FULL, SCREEN, Goal, Trial, successive_halving
from services.gateway.validation import resolve_evaluation

TRIALS_BUCKET = "modelpress_search_trials"
HELDOUT = "heldout"
# Effort per fidelity (the shape is the request's): the screen is cheap, the full round is a job's default.
_FULL_EFFORT = {"latency_iterations": 20, "quality_windows": 8, "decode_tokens": 16, "quality_sentences": 200}
EFFORT = {
    SCREEN: {"latency_iterations": 5, "quality_windows": 2, "decode_tokens": 4, "quality_sentences": 60},
    FULL: _FULL_EFFORT,
    HELDOUT: _FULL_EFFORT,  # the winner's closing figures: the full effort, on the held-out split
}
DEFAULT_BUDGET_MINUTES = 30.0
DEFAULT_QUALITY = 0.99


class NotDeployed(RuntimeError):
    """The winner could not be deployed (the message says why); the search itself succeeded."""


class SearchFailed(RuntimeError):
    """The search ended without a winner (FAILED_PRECONDITION on the job): the message says why."""


def goal_of(spec: common_pb2.SearchSpec) -> Goal:
    """ValueError naming the field when a constraint is out of range."""
    return Goal(min_quality_kept=spec.min_quality_kept or DEFAULT_QUALITY, min_speedup=spec.min_speedup,
                max_size_ratio=spec.max_size_ratio, max_memory_ratio=spec.max_memory_ratio,
                objective=spec.objective or "fastest")


def restrictions_of(spec: common_pb2.SearchSpec) -> Restrictions:
    return Restrictions(techniques=frozenset(spec.techniques), training=not spec.no_training,
                        calibration=not spec.no_calibration, finishes=tuple(spec.finishes),
                        served=bool(spec.deploy_as))


def evaluation_for(shape: common_pb2.EvaluationSpec, fidelity: str) -> common_pb2.EvaluationSpec:
    spec = common_pb2.EvaluationSpec(batch_size=shape.batch_size, sequence_length=shape.sequence_length,
                                     threads=shape.threads, quality_split=HELDOUT if fidelity == HELDOUT else "validation",
                                     **EFFORT[fidelity])
    return resolve_evaluation(spec)


def trial_of(job: common_pb2.Job, candidate: str, fidelity: str, phase: str) -> Trial:
    if job.state != common_pb2.JOB_STATE_SUCCEEDED:
        return Trial(candidate, fidelity, job_id=job.job_id, error=job.error or common_pb2.JobState.Name(job.state))
    result = job.result
    kept, _, _ = measured_retention(result.compressed, result.original)
    ratio = result.decode_speedup if phase == "decode" else result.prefill_speedup
    size = (result.compressed_model_size_bytes / result.original_model_size_bytes
            if result.original_model_size_bytes else 0.0)
    memory = (result.compressed_memory_mb / result.original_memory_mb
              if result.HasField("original_memory_mb") and result.original_memory_mb else None)
    return Trial(candidate, fidelity, job_id=job.job_id, quality_kept=kept, speedup=ratio.speedup,
                 speedup_low=ratio.ci95_low or ratio.speedup, speedup_high=ratio.ci95_high or ratio.speedup,
                 size_ratio=size, memory_ratio=memory, seconds=_took(job))


def _took(job: common_pb2.Job) -> float:
    if not (job.HasField("created_at") and job.HasField("finished_at")):
        return 0.0
    return max(0.0, job.finished_at.ToNanoseconds() / 1e9 - job.created_at.ToNanoseconds() / 1e9)


def trial_message(trial: Trial) -> common_pb2.SearchTrial:
    message = common_pb2.SearchTrial(
        candidate=trial.candidate, fidelity=trial.fidelity, job_id=trial.job_id, size_ratio=trial.size_ratio,
        error=trial.error, reused=trial.reused, seconds=trial.seconds,
        speedup=common_pb2.SpeedRatio(speedup=trial.speedup, ci95_low=trial.speedup_low, ci95_high=trial.speedup_high))
    if trial.quality_kept is not None:
        message.quality_kept = trial.quality_kept
    if trial.memory_ratio is not None:
        message.memory_ratio = trial.memory_ratio
    return message


def trial_from(message: common_pb2.SearchTrial, reused: bool = False) -> Trial:
    return Trial(message.candidate, message.fidelity, job_id=message.job_id,
                 quality_kept=message.quality_kept if message.HasField("quality_kept") else None,
                 speedup=message.speedup.speedup, speedup_low=message.speedup.ci95_low,
                 speedup_high=message.speedup.ci95_high, size_ratio=message.size_ratio,
                 memory_ratio=message.memory_ratio if message.HasField("memory_ratio") else None,
                 error=message.error, reused=reused or message.reused, seconds=message.seconds)


def trial_key(job: common_pb2.Job, candidate: Candidate, evaluation: common_pb2.EvaluationSpec, isa: str,
              phase: str) -> str:
    """What a measurement depends on: the model, the stages, the effort and split, the CPU class, the tenant."""
    payload = {"model": describe(job.model), "stages": [s.data() for s in candidate.stages],
               "evaluation": evaluation.SerializeToString(deterministic=True).hex(), "isa": isa, "phase": phase,
               "tenant": job.tenant}
    return hashlib.sha256(canonical(payload).encode()).hexdigest()[:40]


class TrialStore:
    def __init__(self, js) -> None:
        self._bucket = RecordBucket(js, TRIALS_BUCKET, common_pb2.SearchTrial)

    async def ensure(self) -> TrialStore:
        await self._bucket.ensure()
        return self

    async def get(self, key: str) -> common_pb2.SearchTrial | None:
        return await self._bucket.get(key)

    async def put(self, key: str, trial: common_pb2.SearchTrial) -> None:
        await self._bucket.put(key, trial)


@dataclass
class Context:
    """What a search needs from the mesh, read when it (re)starts."""

    model_kind: str | None
    isa_class: str
    features: tuple[str, ...]
    methods: Methods


def recipe_name(job: common_pb2.Job) -> str:
    base = describe(job.model).split(":", 1)[-1].rsplit("/", 1)[-1].lower()
    cleaned = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in base).strip("-_") or "model"
    return f"search-{cleaned}"[:64]


async def run_search(job: common_pb2.Job, context: Context, *, submit, wait, save, publish, trials: TrialStore,
                     save_recipe, deploy=None) -> None:
    """Runs the search `job` to its winner (job.result / job.output set) or raises SearchFailed naming
    why none was found. `submit(name, stages, evaluation) -> Job`, `wait(job_id) -> Job` run child jobs;
    `save(job)` persists the search job; `publish(message)` sends a log event; `save_recipe(recipe) ->
    Recipe` stores the winner as the tenant's user recipe; `deploy(job) -> Deployment` (with
    spec.deploy_as) deploys its output, raising with the reason where it cannot."""
    spec = job.search
    goal = goal_of(spec)
    phase = spec.phase or "prefill"
    space = search_space(context.model_kind, context.features, context.methods, restrictions_of(spec))
    found = job.search_result
    found.isa_class = context.isa_class
    if not found.candidates:
        found.candidates.extend(common_pb2.SearchCandidate(name=c.name, stages=c.messages()) for c in space.candidates)
        for name, why in space.left_out.items():
            found.left_out[name] = why
        await save(job)
        await publish(f"search space on an {context.isa_class} CPU: {len(space.candidates)} candidates "
                      f"({len(space.left_out)} left out); objective {goal.objective}, quality kept ≥ "
                      f"{goal.min_quality_kept:.2%}, budget {spec.budget_minutes or DEFAULT_BUDGET_MINUTES:g} min")
    if not space.candidates:
        raise SearchFailed("the search space is empty: " + "; ".join(f"{k}: {v}" for k, v in space.left_out.items()))
    measured = {(t.candidate, t.fidelity): t for t in found.trials}
    by_name = {c.name: c for c in space.candidates}
    # A stored measurement reused costs no time now, but the budget is charged what it took when it was
    # made: an identical search then makes the first's choices (no more, no fewer), only sooner.
    charged = [sum(t.seconds for t in found.trials if t.reused and t.fidelity != HELDOUT)]

    async def measure(candidate: Candidate, fidelity: str) -> Trial:
        earlier = measured.get((candidate.name, fidelity))
        if earlier is not None and not earlier.pending:  # this search measured it before a restart
            return trial_from(earlier)
        evaluation = evaluation_for(job.evaluation, fidelity)
        key = trial_key(job, candidate, evaluation, context.isa_class, phase)
        stored = None if job.recompute else await trials.get(key)  # recompute: measured again, then stored
        if earlier is not None:  # submitted before a restart: its job goes on, and is waited for
            child_id = earlier.job_id
        elif stored is not None and not stored.error:
            child_id = ""
        else:
            child_id = (await submit(f"{job.name or 'search'}: {candidate.name} ({fidelity})", candidate,
                                     evaluation)).job_id
            found.trials.append(common_pb2.SearchTrial(candidate=candidate.name, fidelity=fidelity, job_id=child_id,
                                                       pending=True))
            await save(job)
        if child_id:
            trial = trial_of(await wait(child_id), candidate.name, fidelity, phase)
            if not trial.error:
                await trials.put(key, trial_message(trial))
        else:
            trial = trial_from(stored, reused=True)
            charged[0] += trial.seconds
        _replace_trial(found, trial_message(trial))
        # Screens, about half again at full effort, and the closing one: what GetJob's progress counts toward.
        planned = len(found.candidates) + math.ceil(len(found.candidates) / 2) + 1
        job.progress = min(0.99, sum(not t.pending for t in found.trials) / planned)
        await save(job)
        await publish(_trial_text(trial))
        return trial

    started = job.started_at.ToSeconds() if job.HasField("started_at") else time.time()
    deadline = started + 60 * (spec.budget_minutes or DEFAULT_BUDGET_MINUTES)
    outcome = await successive_halving(space.candidates, measure, goal, deadline=deadline,
                                       now=lambda: time.time() + charged[0])
    for candidate in found.candidates:
        candidate.dropped = outcome.dropped.get(candidate.name, "")
    found.stopped_early = outcome.stopped_early
    builtins = [t for t in outcome.finalists if t.candidate in RECIPES]
    found.best_builtin = builtins[0].candidate if builtins else ""
    winner = outcome.winner
    if winner is None:
        await save(job)
        raise SearchFailed(f"no candidate met the constraints within the budget ({len(outcome.trials)} measurements; "
                           "see search_result for why each was dropped)")
    found.winner = winner.candidate
    chosen = by_name[winner.candidate]
    await publish(f"winner {winner.candidate}: measuring it on the held-out split")
    closing = await wait((await submit(f"{job.name or 'search'}: {winner.candidate} (held-out)", chosen,
                                       evaluation_for(job.evaluation, HELDOUT))).job_id)
    found.trials.append(trial_message(trial_of(closing, winner.candidate, HELDOUT, phase)))
    if closing.state != common_pb2.JOB_STATE_SUCCEEDED:
        await save(job)
        raise SearchFailed(f"the winner {winner.candidate} failed its held-out measurement: {closing.error}")
    recipe = await save_recipe(gateway_pb2.Recipe(
        name=recipe_name(job), stages=chosen.messages(),
        summary=f"found by search {job.job_id}: {winner.candidate}, {goal.objective} with quality kept ≥ "
                f"{goal.min_quality_kept:.2%} on an {context.isa_class} CPU"))
    found.recipe = f"{recipe.name}@{recipe.version}"
    job.output.CopyFrom(closing.output)
    job.result.CopyFrom(closing.result)
    job.artifact_ids.extend(a for a in closing.artifact_ids if a not in job.artifact_ids)
    await save(job)
    if spec.deploy_as and not found.deployment_id:
        await _deploy(job, deploy, save, publish)


async def _deploy(job: common_pb2.Job, deploy, save, publish) -> None:
    """The winner deployed; a deployment that cannot be made is said on the result (the search stands)."""
    found = job.search_result
    try:
        if deploy is None:
            raise NotDeployed("this gateway has no deployment store")
        deployment = await deploy(job)
    except NotDeployed as exc:  # the name taken meanwhile, ...: the search's figures stand
        found.deploy_error = str(exc)
        await publish(f"the winner was not deployed as {job.search.deploy_as!r}: {exc}")
    else:
        found.deployment_id = deployment.deployment_id
        await publish(f"the winner is deployed as {deployment.name!r} ({deployment.deployment_id}); "
                      "it answers once a serving replica has loaded it")
    await save(job)


def _replace_trial(found: common_pb2.SearchResult, trial: common_pb2.SearchTrial) -> None:
    """The trial in place of its pending entry (or appended)."""
    for index, entry in enumerate(found.trials):
        if (entry.candidate, entry.fidelity) == (trial.candidate, trial.fidelity):
            found.trials[index].CopyFrom(trial)
            return
    found.trials.append(trial)


def _trial_text(trial: Trial) -> str:
    if trial.error:
        return f"{trial.fidelity} {trial.candidate}: failed: {trial.error}"
    kept = "quality unmeasured" if trial.quality_kept is None else f"quality kept {trial.quality_kept:.2%}"
    reused = " (stored measurement reused)" if trial.reused else ""
    return (f"{trial.fidelity} {trial.candidate}: {trial.speedup:.2f}× [{trial.speedup_low:.2f}–"
            f"{trial.speedup_high:.2f}], {kept}, size {trial.size_ratio:.2f}×{reused}")
