"""RecommendStrategy: stored outcomes for this model and shape where they exist, otherwise real jobs
run now (one after another, so no measurement shares the CPU with another job), then a ranking
under the client's constraints."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from modelpress.v1 import common_pb2, gateway_pb2
from services.common.quality_kept import quality_retention
from services.common.recommend import Candidate, Constraints, rank
from services.gateway.jobs import JobRunner
from services.gateway.recipes import get_recipe
from services.gateway.strategies import strategy
from services.gateway.validation import InvalidArgument, resolve_evaluation

# Cheap enough to measure while a client waits (minutes on 2 CPU cores for a 135M model).
QUICK_CANDIDATES = ("fp16", "int8-weight-only", "w4a16-rtn", "w4a16-gptq")
QUICK_EVALUATION = common_pb2.EvaluationSpec(batch_size=1, sequence_length=128, latency_iterations=10,
                                             quality_windows=4, decode_tokens=8, quality_sentences=120)
MB = 1e6


class NothingStored(RuntimeError):
    """stored_only was asked and some candidates have no stored measurement."""


class NoCandidateMeasured(RuntimeError):
    """Every measuring job failed (the model cannot be compressed by any candidate)."""


def constraints_of(request: gateway_pb2.RecommendStrategyRequest) -> Constraints:
    try:
        return Constraints(target=request.target or "cloud", max_size_mb=request.max_size_mb,
                           max_latency_ms=request.max_latency_ms,
                           min_quality_retention=request.min_quality_retention)
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None


def candidate_recipes(request: gateway_pb2.RecommendStrategyRequest) -> list[str]:
    names = list(dict.fromkeys(request.candidate_recipes)) or list(QUICK_CANDIDATES)
    for name in names:
        get_recipe(name)  # UnknownRecipe names the allowed ones
    return names


def _same_shape(job: common_pb2.Job, spec: common_pb2.EvaluationSpec) -> bool:
    e = job.evaluation
    return (e.batch_size, e.sequence_length, e.threads) == (spec.batch_size, spec.sequence_length, spec.threads)


def candidate_of(job: common_pb2.Job, measured_now: bool) -> Candidate:
    result = job.result
    retention, metric = quality_retention(result.compressed, result.original)
    return Candidate(recipe=job.recipe, size_mb=result.compressed_model_size_bytes / MB,
                     latency_p50_ms=result.compressed_latency_ms, quality_retention=retention,
                     quality_metric=metric, compression_ratio=result.compression_ratio,
                     speedup=result.latency_improvement, job_id=job.job_id, measured_now=measured_now)


StagesOf = Callable[[str], Awaitable[list[common_pb2.StageSpec]]]


async def recommend(request: gateway_pb2.RecommendStrategyRequest, runner: JobRunner, stages_of: StagesOf
                    ) -> gateway_pb2.RecommendStrategyResponse:
    """`stages_of(recipe)` gives the recipe's validated stages, as CreateJob would run them."""
    constraints = constraints_of(request)
    names = candidate_recipes(request)
    spec = resolve_evaluation(request.evaluation if request.HasField("evaluation") else QUICK_EVALUATION)
    stored = [j for j in await runner.outcomes.for_model(request.model, request.hardware) if _same_shape(j, spec)]
    latest: dict[str, common_pb2.Job] = {}
    for job in sorted(stored, key=lambda j: j.finished_at.ToNanoseconds()):
        latest[job.recipe] = job
    missing = [n for n in names if n not in latest]
    if missing and request.stored_only:
        raise NothingStored(f"stored_only: no stored measurement of {', '.join(missing)} for this model at "
                            f"batch {spec.batch_size} x {spec.sequence_length} tokens; run without stored_only "
                            "to measure them now")
    measured: list[tuple[common_pb2.Job, bool]] = [(latest[n], False) for n in names if n in latest]
    # Stored outcomes of recipes the client did not list still inform the ranking.
    measured += [(job, False) for recipe, job in latest.items() if recipe not in names]
    failed = {}
    for name in missing:
        submitted = await runner.submit(name=f"recommend: {name}", model=request.model, recipe=name,
                                        stages=await stages_of(name), evaluation=spec)
        job = await runner.wait(submitted.job_id)
        if job.state == common_pb2.JOB_STATE_SUCCEEDED:
            measured.append((job, True))
        else:
            failed[name] = job.error
    if not measured:
        raise NoCandidateMeasured("no candidate could be measured: " + "; ".join(f"{k}: {v}" for k, v in failed.items()))
    ranked = rank([candidate_of(job, now) for job, now in measured], constraints)
    outcomes = [job for job, _ in measured]
    response = gateway_pb2.RecommendStrategyResponse(
        baseline_size_mb=outcomes[0].result.original_model_size_bytes / MB,
        baseline_latency_p50_ms=outcomes[0].result.original_latency_ms,
        device_name=outcomes[0].result.compressed.device)
    for r in ranked:
        c = r.candidate
        message = response.recommendations.add(
            rank=r.rank, feasible=r.feasible, pareto_optimal=r.pareto_optimal, reason=r.reason,
            violated_constraints=r.violated, size_mb=c.size_mb, latency_p50_ms=c.latency_p50_ms,
            quality_retention=c.quality_retention, quality_metric=c.quality_metric,
            compression_ratio=c.compression_ratio, speedup=c.speedup, job_id=c.job_id, measured_now=c.measured_now)
        message.strategy.CopyFrom(strategy(c.recipe, [j for j in outcomes if j.job_id == c.job_id]))
        if r.feasible:
            response.strategies.append(message.strategy)
    for name, error in failed.items():
        response.recommendations.add(rank=len(response.recommendations) + 1, feasible=False,
                                     reason=f"{name}: the measuring job failed: {error}",
                                     strategy=strategy(name, []))
    return response
