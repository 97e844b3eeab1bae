"""RecommendStrategy: stored outcomes for this model and shape where they exist, otherwise real jobs
run now (one after another, so no measurement shares the CPU with another job), then a ranking
under the client's constraints."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from modelpress.v1 import common_pb2, gateway_pb2
from services.common.measure.isa import class_flags
from modelpress.quality_kept import quality_retention
from services.gateway.ranking import Candidate, Constraints, rank
from services.gateway.jobs import JobRunner
from services.common.contract.recipes import RECIPES, get_recipe
from services.gateway.strategies import measured_on, strategy
from services.common.contract.chain import InvalidArgument, Methods, model_kinds_of
from services.common.runtime.auth import Principal
from services.gateway.validation import resolve_evaluation

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


def default_candidates(model_kind: str | None, features, methods: Methods) -> list[str]:
    """The built-ins measured when the client names none: what makes serving on this CPU faster for this
    model kind — CPU engine runtimes (ONNX Runtime, OpenVINO) and casts whose compute the CPU runs natively
    (bf16 where it has bf16 instructions) — data-free, so each is made in seconds, never a compute the CPU
    would emulate. Weight-only quantizers compute in FP32 on a CPU: smaller, not faster; name them to
    measure them."""
    names = []
    for recipe in RECIPES.values():
        if recipe.uses_data != "none" or recipe.compute == "auto":  # fastest-cpu picks among these very candidates
            continue
        if not recipe.faster_on_cpu:
            continue
        if recipe.emulated_on(features):
            continue
        kinds = model_kinds_of([s.message() for s in recipe.stages], methods)
        if kinds is None or (model_kind and kinds and model_kind not in kinds):
            continue
        names.append(recipe.name)
    return names


def candidate_recipes(request: gateway_pb2.RecommendStrategyRequest, defaults: list[str]) -> list[str]:
    names = list(dict.fromkeys(request.candidate_recipes)) or defaults
    for name in names:
        get_recipe(name)  # UnknownRecipe names the allowed ones
    return names


def _same_shape(job: common_pb2.Job, spec: common_pb2.EvaluationSpec) -> bool:
    e = job.evaluation
    return (e.batch_size, e.sequence_length, e.threads) == (spec.batch_size, spec.sequence_length, spec.threads)


def unsupported_on(recipe: str, features) -> str:
    return RECIPES[recipe].emulated_on(features) if recipe in RECIPES else ""


def candidate_of(job: common_pb2.Job, measured_now: bool, features=()) -> Candidate:
    result = job.result
    retention, metric = quality_retention(result.compressed, result.original)
    return Candidate(recipe=job.recipe, size_mb=result.compressed_model_size_bytes / MB,
                     latency_p50_ms=result.compressed_latency_ms, quality_retention=retention,
                     quality_metric=metric, compression_ratio=result.compression_ratio,
                     speedup=result.latency_improvement, job_id=job.job_id, measured_now=measured_now,
                     unsupported=unsupported_on(job.recipe, features))


def target_hardware(request: gateway_pb2.RecommendStrategyRequest, evaluator: common_pb2.WorkerHardware
                    ) -> tuple[str, tuple[str, ...]]:
    """(ISA class, its flags) recommended for: the request's class, else the evaluator's CPU."""
    if not request.isa_class or request.isa_class == evaluator.isa_class:
        return evaluator.isa_class, tuple(evaluator.machine.isa_features)
    try:
        return request.isa_class, class_flags(request.isa_class)
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None


StagesOf = Callable[[str], Awaitable[list[common_pb2.StageSpec]]]
# Admits one measuring job and yields its id (services/gateway/admission.py's Admission.job).
Admit = Callable[[], contextlib.AbstractAsyncContextManager[str]]


def _hardware_note(target: str, evaluator: str, stored: list[common_pb2.Job], same: list[common_pb2.Job],
                   missing: list[str]) -> str:
    others: dict[str, int] = {}
    for job in stored:
        if job not in same:
            others[measured_on(job)] = others.get(measured_on(job), 0) + 1
    parts = [f"ranked from outcomes measured on {target} CPUs" if same
             else f"no stored outcome of this model was measured on an {target} CPU"]
    if others:
        parts.append("outcomes from other machines not used (" + ", ".join(f"{n} on {c}" for c, n in
                                                                         sorted(others.items())) + ")")
    if missing:
        parts.append(f"measured now on this mesh's evaluator ({evaluator}): {', '.join(missing)}" if target == evaluator
                     else f"this mesh's evaluator is {evaluator}, so {', '.join(missing)} could not be measured for "
                          f"{target}")
    return "; ".join(parts)


async def recommend(request: gateway_pb2.RecommendStrategyRequest, runner: JobRunner, stages_of: StagesOf,
                    evaluator: common_pb2.WorkerHardware, *, viewer: Principal, admit: Admit,
                    model_kind: str | None = None, methods: Methods | None = None
                    ) -> gateway_pb2.RecommendStrategyResponse:
    """`stages_of(recipe)` gives the recipe's validated stages, as CreateJob would run them;
    `evaluator` is the hardware of the evaluator replica that measures jobs run now. Stored
    outcomes are `viewer`'s tenant's own (every tenant's for an operator); jobs run now belong to
    its tenant, each admitted by `admit` first (a refusal, QuotaExceeded, ends the request).
    Without named candidates, `default_candidates` for `model_kind` on the target CPU (`methods`:
    the services' described methods, which say the kinds each takes)."""
    constraints = constraints_of(request)
    target, features = target_hardware(request, evaluator)
    names = candidate_recipes(request, default_candidates(model_kind, features, methods or {}))
    spec = resolve_evaluation(request.evaluation if request.HasField("evaluation") else QUICK_EVALUATION)
    stored = [j for j in await runner.outcomes.for_model(request.model, request.hardware)
              if _same_shape(j, spec) and (viewer.operator or j.tenant == viewer.tenant)]
    same = [j for j in stored if measured_on(j) == target]
    latest: dict[str, common_pb2.Job] = {}
    for job in sorted(same, key=lambda j: j.finished_at.ToNanoseconds()):
        latest[job.recipe] = job
    missing = [n for n in names if n not in latest]
    failed = {name: f"not measured: {why}" for name in missing if (why := unsupported_on(name, features))}
    missing = [n for n in missing if n not in failed]
    measured: list[tuple[common_pb2.Job, bool]] = [(latest[n], False) for n in names if n in latest]
    if not request.candidate_recipes:
        # No list named: every stored outcome of this model informs the ranking. A named list is what is ranked.
        measured += [(job, False) for recipe, job in latest.items() if recipe not in names]
    if request.stored_only:
        if not measured:
            raise NothingStored(f"stored_only: no stored measurement of this model at batch {spec.batch_size} x "
                                f"{spec.sequence_length} tokens on an {target} CPU ({', '.join(names)} asked); run "
                                "without stored_only to measure them now")
        failed.update({name: "not measured: stored_only, and no stored outcome" for name in missing})
        missing = []
    note = _hardware_note(target, evaluator.isa_class, stored, same, missing)
    if target != evaluator.isa_class:
        # Measuring here would time this mesh's CPU, not the one asked about.
        failed.update({name: f"not measured on an {target} CPU (this mesh's evaluator is {evaluator.isa_class})"
                       for name in missing})
        missing = []
    for name in missing:
        stages = await stages_of(name)
        async with admit() as job_id:
            submitted = await runner.submit(name=f"recommend: {name}", model=request.model, recipe=name,
                                            stages=stages, evaluation=spec, tenant=viewer.tenant, job_id=job_id)
        try:
            job = await runner.wait(submitted.job_id)
        except asyncio.CancelledError:
            # The caller gave up (deadline, cancel, gone): its measuring job stops with it.
            await asyncio.shield(runner.cancel(submitted.job_id))
            raise
        if job.state == common_pb2.JOB_STATE_SUCCEEDED:
            measured.append((job, True))
        else:
            failed[name] = f"the measuring job failed: {job.error}"
    if not measured:
        raise NoCandidateMeasured("no candidate could be measured: " + "; ".join(f"{k}: {v}" for k, v in failed.items()))
    ranked = rank([candidate_of(job, now, features) for job, now in measured], constraints)
    outcomes = [job for job, _ in measured]
    response = gateway_pb2.RecommendStrategyResponse(
        baseline_size_mb=outcomes[0].result.original_model_size_bytes / MB,
        baseline_latency_p50_ms=outcomes[0].result.original_latency_ms,
        device_name=outcomes[0].result.compressed.device, isa_class=target, note=note)
    jobs_by_id = {job.job_id: job for job in outcomes}
    for r in ranked:
        c = r.candidate
        message = response.recommendations.add(
            rank=r.rank, feasible=r.feasible, pareto_optimal=r.pareto_optimal, reason=r.reason,
            violated_constraints=r.violated, size_mb=c.size_mb, latency_p50_ms=c.latency_p50_ms,
            quality_retention=c.quality_retention, quality_metric=c.quality_metric,
            compression_ratio=c.compression_ratio, speedup=c.speedup, job_id=c.job_id, measured_now=c.measured_now,
            isa_class=measured_on(jobs_by_id[c.job_id]),
            compute_precision=RECIPES[c.recipe].compute if c.recipe in RECIPES else "")
        message.strategy.CopyFrom(strategy(c.recipe, [j for j in outcomes if j.job_id == c.job_id], target))
        if r.feasible:
            response.strategies.append(message.strategy)
    for name, error in failed.items():
        response.recommendations.add(rank=len(response.recommendations) + 1, feasible=False,
                                     reason=f"{name}: {error}",
                                     strategy=strategy(name, []))
    return response
