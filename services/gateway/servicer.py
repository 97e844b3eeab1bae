"""The public GatewayService: validates, records and dispatches; never does model work itself."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import logging
import tarfile
import tempfile
import uuid
from pathlib import Path

import grpc
from google.protobuf import struct_pb2
from nats.errors import MaxPayloadError

from modelpress.v1 import common_pb2, evaluator_pb2, gateway_pb2, gateway_pb2_grpc, optimizer_pb2
from services.common.store.artifact_store import ArtifactCorrupt, ArtifactNotFound, StoreFull, StoreUnresponsive
from services.common.contract.config import WorkBudgetExceeded
from services.common.store.events import TERMINAL_STATES
from services.common.measure.isa import CLASS_NAMES
from services.gateway.job_store import JobNotFound
from services.common.store.kv_records import RecordBucket
from services.common.contract.chain import (InvalidArgument, MethodUnavailable, Resolved, check_chain,
                                            label_of, model_kinds_of, validate_recipe)
from services.common.contract.recipes import RECIPES, UnknownRecipe
from services.common.runtime.server import ServiceRuntime, targets_credentials
from services.common.contract.techniques import TECHNIQUE_SERVICES
from services.common.runtime import auth
from services.gateway import artifacts
from services.gateway.admission import Admission, AdmissionBusy, QuotaExceeded
from services.gateway.access import Grants, PermissionDenied, check_artifact, check_job
from services.gateway.catalog import Mesh, ServiceUnavailable
from services.gateway.deployments import (DeploymentNotFound, Deployments, NameTaken, checked_config, checked_name,
                                          checked_replicas)
from services.gateway.jobs import JobRunner
from services.gateway.leases import JobLeases
from services.gateway.recommender import NoCandidateMeasured, NothingStored, recommend
from services.gateway.search.run import NotDeployed, goal_of
from services.gateway.strategies import all_strategies
from services.gateway.user_recipes import RecipeNotFound, RecipeStore
from services.gateway.retention import Retention, RetentionPolicy
from services.common.store.path_models import FolderChanged
from services.gateway.model_head import (ModelFilesTimeout, ModelHead, check_path_model, check_positions,
                                         read_model_head)
from services.gateway.upload_check import BadUpload, UnpackedTooLarge, check_upload
from services.common.runtime.cite import shown
from services.gateway.pages import page
from services.gateway.validation import (GRID_BOUNDS, check_engines_available, check_measurement_work,
                                         check_model_ref, check_request_text, checked_id, checked_job_state,
                                         resolve_evaluation)

log = logging.getLogger(__name__)

DOWNLOAD_CHUNK = 1024 * 1024
UPLOAD_FORMATS = (common_pb2.ARTIFACT_FORMAT_HF_SAFETENSORS, common_pb2.ARTIFACT_FORMAT_PACKED_SAFETENSORS,
                  common_pb2.ARTIFACT_FORMAT_COMPRESSED_TENSORS, common_pb2.ARTIFACT_FORMAT_DATASET_JSONL)

COMPARISONS_BUCKET = "modelpress_comparisons"
REPORT_FORMATS = {"": ("report.json", "application/json"), "json": ("report.json", "application/json"),
                  "html": ("report.html", "text/html; charset=utf-8")}
MAX_BENCHMARK_SHAPES = 8
# ListEngines calls per request over the round-robin channel: every replica of a mesh of up to this many.
ENGINE_WORKER_CALLS = 4
# A search longer than a working day is a mistake in the request, not a search.
MAX_SEARCH_MINUTES = 24 * 60


class NoOutput(RuntimeError):
    """The job exists but has no artifact to download (yet, or ever: it failed)."""


class FailedPrecondition(RuntimeError):
    """The request is valid but the state of what it names forbids it now."""


_ERRORS = [
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (JobNotFound, grpc.StatusCode.NOT_FOUND),
    (DeploymentNotFound, grpc.StatusCode.NOT_FOUND),
    (NameTaken, grpc.StatusCode.ALREADY_EXISTS),
    (ArtifactNotFound, grpc.StatusCode.NOT_FOUND),
    (ArtifactCorrupt, grpc.StatusCode.DATA_LOSS),
    (ServiceUnavailable, grpc.StatusCode.UNAVAILABLE),
    (NoOutput, grpc.StatusCode.FAILED_PRECONDITION),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (MethodUnavailable, grpc.StatusCode.FAILED_PRECONDITION),
    (RecipeNotFound, grpc.StatusCode.NOT_FOUND),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (WorkBudgetExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (QuotaExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (StoreFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (StoreUnresponsive, grpc.StatusCode.UNAVAILABLE),
    (AdmissionBusy, grpc.StatusCode.UNAVAILABLE),
    # A record past the message bus's payload (1 MB): the request's bounds should have caught it.
    (MaxPayloadError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    # JSON a request names (a model's config.json) nested past Python's stack: malformed, not a bug here.
    (RecursionError, grpc.StatusCode.INVALID_ARGUMENT),
]


def _code_for(exc: BaseException) -> grpc.StatusCode:
    return next(code for kind, code in _ERRORS if isinstance(exc, kind))


def _message_for(exc: BaseException) -> str:
    if isinstance(exc, MaxPayloadError):
        return ("request: what it asks the mesh to store is over the message bus's maximum payload "
                f"({exc}); shorten its free text or its configs")
    if isinstance(exc, RecursionError):
        return f"request: a file it names is nested too deeply to read ({exc})"
    return str(exc.args[0] if exc.args else exc)


def _maps_errors(handler):
    """Checks the request's free text against the one table of limits (validation.TEXT_LIMITS),
    then turns the domain errors above into their status codes with the error's own message."""

    @functools.wraps(handler)
    async def wrapper(self, request, context):
        try:
            check_request_text(request)
            return await handler(self, request, context)
        except grpc.aio.AioRpcError as exc:  # a downstream service's status passes through
            await context.abort(exc.code(), exc.details())
        except tuple(kind for kind, _ in _ERRORS) as exc:
            await context.abort(_code_for(exc), _message_for(exc))

    return wrapper


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(self, runtime: ServiceRuntime, runner: JobRunner, mesh: Mesh,
                 comparisons: RecordBucket[common_pb2.Comparison], recipes: RecipeStore, grants: Grants,
                 retention: Retention, admission: Admission, deployments: Deployments | None = None) -> None:
        self._runtime = runtime
        self._deployment_records = deployments
        # The one door of every new job and every measurement: per-tenant bounds held across replicas.
        self._admission = admission
        self._retention = retention
        self._grants = grants
        self._runner = runner
        self._mesh = mesh
        self._comparisons = comparisons
        self._recipes = recipes

    async def _resolve(self, recipe: str, pipeline: common_pb2.Pipeline | None, overrides):
        """(recipe, resolved stages, methods) of a request: a built-in name, a stored user recipe
        (NAME or NAME@V, run as its pipeline) or an explicit pipeline; validate_recipe refuses both."""
        explicit = pipeline if pipeline is not None and pipeline.stages else None
        name = recipe
        if explicit is None and recipe and recipe not in RECIPES:
            try:
                stored = await self._recipes.get(recipe, auth.current().tenant)
            except RecipeNotFound as exc:  # in a job request the name is an argument like any other
                raise InvalidArgument(str(exc)) from None
            explicit = common_pb2.Pipeline(name=f"{stored.name}@{stored.version}", summary=stored.summary,
                                           stages=stored.stages)
            name = ""
        methods = await self._methods(explicit)
        resolved = validate_recipe(name, overrides, methods, explicit)
        await self._check_configs(resolved)
        return resolved.recipe, resolved.stages, methods

    async def _check_configs(self, resolved: Resolved) -> None:
        """Each engine stage's config validated by its service (CheckConfig: the method's typed
        declaration, rules across fields included), so a bad value or a contradiction never becomes
        a job; each problem named where the user wrote it (an override, or the stage's config)."""
        engine = [(i, s) for i, s in enumerate(resolved.stages)
                  if s.technique != common_pb2.TECHNIQUE_EVALUATOR]
        found = await asyncio.gather(*(self._mesh.check_config(s.technique, s) for _, s in engine))
        resolved.refuse({i: problems for (i, _), (problems, _) in zip(engine, found)})
        over = [f"stages[{i}] ({label_of(s)}).config: {problem}" for (i, s), (_, budgets) in zip(engine, found)
                for problem in budgets]
        if over:
            raise WorkBudgetExceeded("; ".join(over))

    async def _methods(self, pipeline: common_pb2.Pipeline | None = None
                       ) -> dict[tuple[int, str], common_pb2.MethodDescription]:
        """Methods of every engine service a recipe or the given pipeline uses (not the evaluator:
        its stage is the gateway's comparison, not a described method)."""
        techniques = {s.technique for r in RECIPES.values() for s in r.stages}
        techniques |= {s.technique for s in (pipeline.stages if pipeline else ()) if s.technique in TECHNIQUE_SERVICES}
        techniques.discard(common_pb2.TECHNIQUE_EVALUATOR)
        found = {}
        for technique in techniques:
            for method in (await self._mesh.describe(technique)).methods:
                found[(technique, method.name)] = method
        return found

    async def _check_model(self, model: common_pb2.ModelRef, field: str = "model") -> int | None:
        """Checks the reference; returns the model's format where known up front (None: a path)."""
        check_model_ref(model, field)
        source = model.WhichOneof("source")
        if source == "artifact_id":
            artifact_id = checked_id(model.artifact_id, f"{field}.artifact_id", "artifact")
            try:
                stored = await self._runtime.store.stat(artifact_id)
            except ArtifactNotFound:
                raise ArtifactNotFound(f"{field}.artifact_id: artifact {artifact_id!r} not found") from None
            await check_artifact(self._grants, auth.current(), artifact_id, f"{field}.artifact_id")
            return stored.ref.format
        if source == "path":  # the caller's roots, every entry one a worker copies; off the event loop
            try:
                await check_path_model(model.path, auth.current(), field)
            except (ModelFilesTimeout, FolderChanged) as exc:
                raise FailedPrecondition(str(exc)) from None
        return common_pb2.ARTIFACT_FORMAT_HF_SAFETENSORS if source == "builtin" else None

    async def _submit(self, **job) -> common_pb2.Job:
        """Admits and records a new job of the caller's tenant: RESOURCE_EXHAUSTED when the tenant
        has its most unfinished jobs or the store is full (checked and taken atomically, across
        gateway replicas: services/gateway/admission.py)."""
        principal = auth.current()
        async with self._admission.job(principal) as job_id:
            return await self._runner.submit(job_id=job_id, tenant=principal.tenant, **job)

    async def _check_positions(self, model: common_pb2.ModelRef, spec: common_pb2.EvaluationSpec, field: str,
                               head: ModelHead | None = None) -> None:
        """Measured shapes within the model's positions (an 8192-token window on a 512-position
        encoder is refused now, not an internal error minutes later)."""
        if spec.skip:
            return
        head = head or await read_model_head(model, self._runtime.store)
        check_positions(spec, head.positions, field)

    async def _check_inputs(self, stages: list[common_pb2.StageSpec],
                            methods: dict[tuple[int, str], common_pb2.MethodDescription]) -> None:
        """Each artifact a stage's method declares as an input (a dataset, a teacher) must exist and
        have one of its formats."""
        for spec in stages:
            described = methods.get((spec.technique, spec.method))
            for declared in (described.inputs if described else ()):
                value = spec.config[declared.field] if declared.field in spec.config else ""
                if not value:
                    continue
                value = checked_id(str(value), f"overrides.{declared.field}", "artifact")
                try:
                    stored = await self._runtime.store.stat(value)
                except ArtifactNotFound:
                    raise ArtifactNotFound(f"overrides.{declared.field}: artifact {value!r} not found") from None
                await check_artifact(self._grants, auth.current(), value, f"overrides.{declared.field}")
                if declared.formats and stored.ref.format not in declared.formats:
                    raise InvalidArgument(f"overrides.{declared.field}: artifact {value!r} is "
                                          f"{common_pb2.ArtifactFormat.Name(stored.ref.format)}, not "
                                          f"{' or '.join(map(common_pb2.ArtifactFormat.Name, declared.formats))}")

    # ---- jobs ----------------------------------------------------------------

    @_maps_errors
    async def CreateJob(self, request, context):
        model_format = await self._check_model(request.model)
        evaluation = resolve_evaluation(request.evaluation)
        if evaluation.HasField("reference"):  # read by the job like its input: the same grants and roots
            await self._check_model(evaluation.reference, "evaluation.reference")
        head = await read_model_head(request.model, self._runtime.store)
        await self._check_positions(request.model, evaluation, "evaluation", head)
        recipe, stages, methods = await self._resolve(
            request.recipe, request.pipeline if request.HasField("pipeline") else None, request.overrides)
        check_chain(stages, methods, model_format, head.kind)
        await self._check_inputs(stages, methods)
        # Described methods are cached for a while: whether a replica is alive is asked now.
        needed = {s.technique for s in stages} | ({common_pb2.TECHNIQUE_EVALUATOR} if not evaluation.skip else set())
        await self._mesh.require_live(needed)
        await check_engines_available(stages, self._list_engines, ENGINE_WORKER_CALLS)
        job = await self._submit(
            name=request.name or f"{recipe.name} of {request.model.WhichOneof('source')}", model=request.model,
            recipe=recipe.name, stages=stages, evaluation=evaluation, recompute=request.recompute)
        return gateway_pb2.CreateJobResponse(job=job)

    @_maps_errors
    async def ListJobs(self, request, context):
        state = checked_job_state(request.state)
        principal = auth.current()
        if request.tenant and not principal.operator:
            raise PermissionDenied(f"tenant: only operators list other tenants' jobs; {principal.label} sees its own")
        everyone = principal.operator and not request.tenant
        tenant = request.tenant if principal.operator else principal.tenant
        jobs = [j for j in await self._runner.jobs.list()
                if (not state or j.state == state) and (everyone or j.tenant == tenant)]
        # Newest first, as JobStore.list orders them; the id breaks ties of one nanosecond.
        jobs.sort(key=_job_order)
        shown_jobs, next_token = page("ListJobs", jobs, _job_order, _bytes, request.page_size,
                                      request.page_token)
        return gateway_pb2.ListJobsResponse(jobs=shown_jobs, next_page_token=next_token)

    @_maps_errors
    async def GetJob(self, request, context):
        return gateway_pb2.GetJobResponse(job=await self._job(request.job_id))

    @_maps_errors
    async def CancelJob(self, request, context):
        job = await self._job(request.job_id)
        if job.state in TERMINAL_STATES:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"job {job.job_id} already ended ({common_pb2.JobState.Name(job.state)})")
        return gateway_pb2.CancelJobResponse(job=await self._runner.cancel(job.job_id))

    @_maps_errors
    async def DeleteJob(self, request, context):
        job = await self._job(request.job_id)
        deleted = await self._retention.delete_job(job)
        await self._admission.release_job(job.tenant, job.job_id)  # its place at once, not at the next pruning
        return gateway_pb2.DeleteJobResponse(deleted_artifacts=deleted)

    async def WatchJob(self, request, context):
        try:
            job_id = (await self._job(request.job_id)).job_id
        except (InvalidArgument, JobNotFound, PermissionDenied) as exc:
            await context.abort(_code_for(exc), str(exc.args[0]))
            return

        async def finished() -> bool:
            try:
                return (await self._runner.jobs.get(job_id)).state in TERMINAL_STATES
            except JobNotFound:
                return True

        async for event in self._runtime.events.replay(job_id, follow=True, is_finished=finished):
            yield gateway_pb2.WatchJobResponse(event=event)

    # ---- methods and recipes -----------------------------------------------------

    # ---- artifacts: lineage, tags, listing --------------------------------------

    @_maps_errors
    async def GetLineage(self, request, context):
        stored = await self._stat(request.artifact_id)
        viewer, held = auth.current(), await self._held()
        stages = await artifacts.private_lineage(artifacts.lineage(stored), viewer, held, self._tenant_of_job)
        return gateway_pb2.GetLineageResponse(artifact=artifacts.summary(stored, viewer, held), stages=stages)

    async def _tenant_of_job(self, job_id: str) -> str | None:
        """The job's tenant; None once the job is gone."""
        try:
            return (await self._runner.jobs.get(job_id)).tenant
        except JobNotFound:
            return None

    @_maps_errors
    async def TagArtifact(self, request, context):
        await self._stat(request.artifact_id)
        viewer = auth.current()
        stored, tag = await artifacts.tag_artifact(self._runtime.store, request.artifact_id, request.tag, viewer.tenant)
        return gateway_pb2.TagArtifactResponse(artifact=artifacts.summary(stored, viewer, await self._held()), tag=tag)

    @_maps_errors
    async def ListArtifacts(self, request, context):
        if request.tag:
            artifacts.parse_tag(request.tag)
        viewer, held = auth.current(), await self._held()
        summaries = [artifacts.summary(stored, viewer, held) for stored in await self._runtime.store.list_stored()
                     if held is None or stored.ref.id in held]
        found = sorted((visible for visible in summaries
                        if artifacts.matches(visible, request.tag, request.model, request.recipe)), key=_artifact_order)
        shown_artifacts, next_token = page("ListArtifacts", found, _artifact_order, _bytes, request.page_size,
                                           request.page_token)
        return gateway_pb2.ListArtifactsResponse(artifacts=shown_artifacts, next_page_token=next_token)

    async def _stat(self, artifact_id: str):
        artifact_id = checked_id(artifact_id, "artifact_id", "artifact")
        try:
            stored = await self._runtime.store.stat(artifact_id)
        except ArtifactNotFound:
            raise ArtifactNotFound(f"artifact_id: artifact {artifact_id!r} not found") from None
        await check_artifact(self._grants, auth.current(), artifact_id, "artifact_id")
        return stored

    async def _held(self) -> set[str] | None:
        """Ids the caller may see; None for an operator, who sees every one."""
        principal = auth.current()
        return None if principal.operator else await self._grants.held_by(principal.tenant)

    async def _job(self, job_id: str) -> common_pb2.Job:
        """The caller's job by id: INVALID_ARGUMENT, NOT_FOUND or PERMISSION_DENIED otherwise."""
        return check_job(auth.current(), await self._runner.jobs.get(_job_id(job_id)))

    @_maps_errors
    async def DeleteArtifact(self, request, context):
        """Drops the caller's hold (every hold, for an operator); the bytes go once nobody holds the
        artifact and no job lists it. A job of the caller's that lists it must be deleted first."""
        artifact_id = (await self._stat(request.artifact_id)).ref.id
        principal = auth.current()
        jobs = await self._runner.jobs.list()
        users = [job for job in jobs if artifact_id in job.artifact_ids or job.model.artifact_id == artifact_id]
        for job in users:
            if principal.operator or job.tenant == principal.tenant:
                raise FailedPrecondition(f"artifact_id: {artifact_id} is used by job {job.job_id}; "
                                         "delete the job (DeleteJob) first")
        holders = await self._grants.holders(artifact_id)
        for tenant in holders if principal.operator else {principal.tenant} & holders:
            await self._grants.revoke(tenant, artifact_id)
        if users or await self._grants.holders(artifact_id):
            return gateway_pb2.DeleteArtifactResponse(deleted=False)
        return gateway_pb2.DeleteArtifactResponse(deleted=await self._runtime.store.delete(artifact_id))

    @_maps_errors
    async def ListMethods(self, request, context):
        methods, unavailable = await self._mesh.describe_all()
        return gateway_pb2.ListMethodsResponse(methods=methods, unavailable=unavailable)

    async def ListRecipes(self, request, context):
        builtins = []
        for recipe in RECIPES.values():
            message = recipe.message()
            message.builtin = True
            builtins.append(message)
        recipes = builtins + await self._recipes.list(auth.current().tenant)
        try:
            methods = await self._methods()
        except ServiceUnavailable:
            methods = None  # the listing still stands; which kinds fit needs the services' Describe
        for recipe in recipes if methods is not None else ():
            recipe.model_kinds.extend(model_kinds_of(list(recipe.stages), methods) or ())
        return gateway_pb2.ListRecipesResponse(recipes=recipes)

    @_maps_errors
    async def CreateRecipe(self, request, context):
        if not request.pipeline.stages:
            raise InvalidArgument("pipeline.stages: a non-empty list of stages is required")
        if not request.pipeline.name:
            raise InvalidArgument("pipeline.name: required (the recipe's name)")
        methods = await self._methods(request.pipeline)
        resolved = validate_recipe("", struct_pb2.Struct(), methods, request.pipeline)
        await self._check_configs(resolved)
        check_chain(resolved.stages, methods, None)
        return gateway_pb2.CreateRecipeResponse(recipe=await self._recipes.create(resolved.recipe.message(),
                                                                                  auth.current().tenant))

    @_maps_errors
    async def GetRecipe(self, request, context):
        if request.name in RECIPES:
            message = RECIPES[request.name].message()
            message.builtin = True
            return gateway_pb2.GetRecipeResponse(recipe=message)
        return gateway_pb2.GetRecipeResponse(recipe=await self._recipes.get(request.name, auth.current().tenant))

    @_maps_errors
    async def DeleteRecipe(self, request, context):
        return gateway_pb2.DeleteRecipeResponse(deleted_versions=await self._recipes.delete(request.name,
                                                                                         auth.current().tenant))

    @_maps_errors
    async def ValidateConfig(self, request, context):
        try:
            _, stages, _ = await self._resolve(request.recipe, None, request.overrides)
        except (InvalidArgument, RecipeNotFound) as exc:
            return gateway_pb2.ValidateConfigResponse(valid=False, errors=str(exc).split("; "))
        return gateway_pb2.ValidateConfigResponse(valid=True, resolved_stages=stages)

    @_maps_errors
    async def ListStrategies(self, request, context):
        isa = request.isa_class
        if isa and isa not in CLASS_NAMES:
            raise InvalidArgument(f"isa_class: {isa!r} is not one of {', '.join(CLASS_NAMES)}")
        if not isa:
            try:
                isa = (await self._mesh.describe(common_pb2.TECHNIQUE_EVALUATOR)).hardware.isa_class
            except ServiceUnavailable:
                isa = ""  # templates are still worth listing: figures from every class, unpreferred
        # A tenant's expected figures rest on its own jobs only: another tenant's job ids and figures
        # are its own business. An operator's on every tenant's.
        viewer = auth.current()
        outcomes = [job for job in await self._runner.outcomes.list() if viewer.operator or job.tenant == viewer.tenant]
        return gateway_pb2.ListStrategiesResponse(strategies=all_strategies(outcomes, isa))

    @_maps_errors
    async def RecommendStrategy(self, request, context):
        await self._check_model(request.model)
        head = await read_model_head(request.model, self._runtime.store)
        methods = await self._methods()

        async def stages_of(recipe: str) -> list[common_pb2.StageSpec]:
            return validate_recipe(recipe, struct_pb2.Struct(), methods).stages

        evaluator = await self._mesh.describe(common_pb2.TECHNIQUE_EVALUATOR)
        viewer = auth.current()
        try:
            # Its measuring jobs pass the same admission as CreateJob's (quota and store bound).
            return await recommend(request, self._runner, stages_of, evaluator.hardware, viewer=viewer,
                                   admit=lambda: self._admission.job(viewer), model_kind=head.kind, methods=methods)
        except UnknownRecipe as exc:
            raise InvalidArgument(f"candidate_recipes: {exc.args[0].removeprefix('recipe: ')}") from None
        except (NothingStored, NoCandidateMeasured) as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))

    @_maps_errors
    async def Search(self, request, context):
        await self._check_model(request.model)
        spec = request.spec
        try:
            goal_of(spec)
        except ValueError as exc:
            raise InvalidArgument(f"spec.{exc}") from None
        if spec.phase not in ("", "prefill", "decode"):
            raise InvalidArgument(f"spec.phase: {spec.phase!r} is not one of prefill, decode")
        if not 0 <= spec.budget_minutes <= MAX_SEARCH_MINUTES or spec.budget_minutes != spec.budget_minutes:
            raise InvalidArgument(f"spec.budget_minutes: {spec.budget_minutes:g} is outside [0, {MAX_SEARCH_MINUTES}] "
                                  "(0: the default, 30)")
        unknown = [t for t in spec.techniques if t not in TECHNIQUE_SERVICES or t == common_pb2.TECHNIQUE_EVALUATOR]
        if unknown:
            raise InvalidArgument(f"spec.techniques: {unknown[0]} is not an engine technique (quantizer, pruner, "
                                  "distiller, optimizer)")
        unknown = [name for name in spec.finishes if name not in RECIPES]
        if unknown:
            raise InvalidArgument(f"spec.finishes: {unknown[0]!r} is not a built-in recipe (see ListRecipes)")
        if spec.deploy_as:
            checked_name(spec.deploy_as)
            if await (await self._deployments()).taken(spec.deploy_as):
                raise NameTaken(f"spec.deploy_as: another deployment answers to {spec.deploy_as!r}; choose another "
                                "name or delete that deployment")
        head = await read_model_head(request.model, self._runtime.store)
        if spec.phase == "decode" and head.kind != "causal-lm":
            raise InvalidArgument(f"spec.phase: decode is a causal LM's; this model is {head.kind or 'unknown'}")
        shape = resolve_evaluation(common_pb2.EvaluationSpec(
            batch_size=request.evaluation.batch_size, sequence_length=request.evaluation.sequence_length,
            threads=request.evaluation.threads))
        await self._check_positions(request.model, shape, "evaluation", head)
        await self._mesh.require_live({common_pb2.TECHNIQUE_EVALUATOR})
        job = await self._submit(name=request.name or f"search of {request.model.WhichOneof('source')}",
                                 model=request.model, recipe="search", stages=[], evaluation=shape, search=spec)
        return gateway_pb2.SearchResponse(job=job)

    # ---- evaluation ------------------------------------------------------------

    async def _live_evaluator(self):
        """The evaluator's stub once a replica answers its health check (UNAVAILABLE at once if none)."""
        await self._mesh.require_live({common_pb2.TECHNIQUE_EVALUATOR})
        return self._mesh.evaluator

    @_maps_errors
    async def Evaluate(self, request, context):
        await self._check_model(request.model)
        if request.spec.HasField("reference"):
            await self._check_model(request.spec.reference, "spec.reference")
        spec = resolve_evaluation(request.spec)
        await self._check_positions(request.model, spec, "spec")
        evaluator = await self._live_evaluator()
        async with self._admission.measurement(auth.current(), "Evaluate"):
            response = await evaluator.Evaluate(
                evaluator_pb2.EvaluatorServiceEvaluateRequest(model=request.model, spec=spec), wait_for_ready=False)
        return gateway_pb2.EvaluateResponse(metrics=response.metrics)

    @_maps_errors
    async def Compare(self, request, context):
        if len(request.models) < 2:
            raise InvalidArgument(f"models: give at least 2 models to compare, got {len(request.models)}")
        if not 0 <= request.baseline_index < len(request.models):
            raise InvalidArgument(f"baseline_index: {request.baseline_index} is not an index of the "
                                  f"{len(request.models)} models")
        spec = resolve_evaluation(request.spec)
        for i, model in enumerate(request.models):
            await self._check_model(model, f"models[{i}]")
            await self._check_positions(model, spec, "spec")
        evaluator = await self._live_evaluator()
        async with self._admission.measurement(auth.current(), "Compare"):
            response = await evaluator.Compare(
                evaluator_pb2.EvaluatorServiceCompareRequest(models=request.models,
                                                             baseline_index=request.baseline_index, spec=spec,
                                                             threshold_set=request.threshold_set),
                wait_for_ready=False)
        comparison = response.comparison
        tenant = auth.current().tenant
        await self._grants.grant(tenant, comparison.report.id)
        await self._grants.grant(tenant, comparison.comparison_id)
        await self._comparisons.put(comparison.comparison_id, comparison)
        return gateway_pb2.CompareResponse(metrics=[row.metrics for row in comparison.rows], comparison=comparison)

    @_maps_errors
    async def ListThresholdSets(self, request, context):
        response = await (await self._live_evaluator()).ListThresholdSets(
            evaluator_pb2.EvaluatorServiceListThresholdSetsRequest(), wait_for_ready=False)
        return gateway_pb2.ListThresholdSetsResponse(threshold_sets=response.threshold_sets)

    @_maps_errors
    async def RunBenchmark(self, request, context):
        await self._check_model(request.model)
        for name, (lo, hi) in GRID_BOUNDS.items():
            values = list(getattr(request, name))
            if len(values) > MAX_BENCHMARK_SHAPES:
                raise InvalidArgument(f"{name}: at most {MAX_BENCHMARK_SHAPES} values, got {len(values)}")
            if any(not lo <= v <= hi for v in values):
                raise InvalidArgument(f"{name}: every value must be in [{lo}, {hi}], got {values}")
        if not 0 <= request.iterations <= 1000:
            raise InvalidArgument(f"iterations: {request.iterations} is outside [1, 1000] (0: default 10)")
        if not 0 <= request.threads <= 256:
            raise InvalidArgument(f"threads: {request.threads} is outside [1, 256] (0: default 2)")
        await self._check_positions(request.model, common_pb2.EvaluationSpec(
            sequence_lengths=request.sequence_lengths), "")
        check_measurement_work(list(request.batch_sizes) or [1], list(request.sequence_lengths) or [128],
                               request.iterations or 10, "")
        evaluator = await self._live_evaluator()
        async with self._admission.measurement(auth.current(), "RunBenchmark"):
            response = await evaluator.Benchmark(
                evaluator_pb2.EvaluatorServiceBenchmarkRequest(
                    model=request.model, batch_sizes=request.batch_sizes, sequence_lengths=request.sequence_lengths,
                    iterations=request.iterations, threads=request.threads), wait_for_ready=False)
        return gateway_pb2.RunBenchmarkResponse(benchmarks=response.benchmarks)

    @_maps_errors
    async def ListBenchmarks(self, request, context):
        response = await (await self._live_evaluator()).ListBenchmarks(
            evaluator_pb2.EvaluatorServiceListBenchmarksRequest(model=request.model, device=request.device),
            wait_for_ready=False)
        # Rows of an artifact the caller does not hold (another tenant's upload or output) are not
        # shown: its id and figures are that tenant's. Built-ins and allowed paths are everyone's.
        held = await self._held()
        rows = sorted((row for row in response.benchmarks
                       if held is None or not row.model.startswith("artifact:")
                       or row.model.removeprefix("artifact:") in held), key=_benchmark_order)
        shown_rows, next_token = page("ListBenchmarks", rows, _benchmark_order, _bytes, request.page_size,
                                      request.page_token)
        return gateway_pb2.ListBenchmarksResponse(benchmarks=shown_rows, next_page_token=next_token)

    # ---- results -----------------------------------------------------------------

    @_maps_errors
    async def GetResult(self, request, context):
        job = await self._job(request.job_id)
        if job.state != common_pb2.JOB_STATE_SUCCEEDED:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"job {job.job_id} has no result: it is {common_pb2.JobState.Name(job.state)}")
        return gateway_pb2.GetResultResponse(result=job.result, artifact=job.output)

    async def DownloadArtifact(self, request, context):
        try:
            artifact_id = await self._artifact_of(request)
            stored = await self._runtime.store.stat(artifact_id)
            if request.WhichOneof("target") == "artifact_id":
                await check_artifact(self._grants, auth.current(), artifact_id, "artifact_id")
        except (InvalidArgument, JobNotFound, ArtifactNotFound, NoOutput, PermissionDenied) as exc:
            await context.abort(_code_for(exc), str(exc.args[0]))
            return
        yield gateway_pb2.DownloadArtifactResponse(artifact=stored.ref)
        try:
            async for data in self._runtime.store.iter_chunks(artifact_id):
                for start in range(0, len(data), DOWNLOAD_CHUNK):
                    yield gateway_pb2.DownloadArtifactResponse(chunk=data[start:start + DOWNLOAD_CHUNK])
        except ArtifactCorrupt as exc:
            await context.abort(grpc.StatusCode.DATA_LOSS, str(exc))

    async def _artifact_of(self, request) -> str:
        target = request.WhichOneof("target")
        if target == "artifact_id" and request.artifact_id:
            return checked_id(request.artifact_id, "artifact_id", "artifact")
        if target == "job_id":
            job = await self._job(request.job_id)
            if not job.output.id:
                state = common_pb2.JobState.Name(job.state)
                if job.state in TERMINAL_STATES:
                    raise NoOutput(f"job_id: job {job.job_id} ended {state} without an output artifact: {job.error}")
                raise NoOutput(f"job_id: job {job.job_id} has no output artifact yet ({state})")
            return job.output.id
        raise InvalidArgument("target: set artifact_id or job_id")

    async def _deployments(self) -> Deployments:
        if self._deployment_records is None:
            self._deployment_records = await Deployments(self._runtime.js).ensure()
        return self._deployment_records

    @_maps_errors
    async def DeployResult(self, request, context):
        if request.target not in ("", "modelpress"):
            raise FailedPrecondition(f"target: {request.target!r} bundles are written by `modelpress bundle` from a "
                                     "downloaded artifact; DeployResult serves on the mesh's own serving replicas "
                                     "(leave target empty)")
        if request.job_id and request.artifact_id:
            raise InvalidArgument("job_id, artifact_id: set one, not both")
        job_id, shadow = "", None
        if not 0.0 <= request.shadow_share <= 1.0:
            raise InvalidArgument(f"shadow_share: {request.shadow_share} is not between 0 and 1")
        if request.job_id:
            job = await self._job(request.job_id)
            if not job.output.id:
                raise NoOutput(f"job_id: job {job.job_id} has no output artifact "
                               f"({common_pb2.JobState.Name(job.state)})")
            artifact_id, job_id = job.output.id, job.job_id
            shadow = job.model if request.shadow_share > 0 else None
        else:
            if request.shadow_share > 0:
                raise InvalidArgument("shadow_share: a shadow is the job's original model; deploy a job_id")
            artifact_id = checked_id(request.artifact_id, "artifact_id", "artifact")
        stored = await self._stat(artifact_id)
        name = checked_name(request.name or job_id or artifact_id)
        replicas = checked_replicas(request.replicas or 1)
        config = checked_config(request.config)
        head = await read_model_head(common_pb2.ModelRef(artifact_id=artifact_id), self._runtime.store)
        deployment = await (await self._deployments()).create(auth.current(), name, stored.ref, job_id, replicas,
                                                              config, head.kind, shadow, request.shadow_share)
        return gateway_pb2.DeployResultResponse(deployment=deployment)

    @_maps_errors
    async def ListDeployments(self, request, context):
        return gateway_pb2.ListDeploymentsResponse(deployments=await (await self._deployments()).list(auth.current()))

    @_maps_errors
    async def GetDeployment(self, request, context):
        deployment_id = checked_id(request.deployment_id, "deployment_id", "deployment")
        return gateway_pb2.GetDeploymentResponse(
            deployment=await (await self._deployments()).get(auth.current(), deployment_id))

    @_maps_errors
    async def UpdateDeployment(self, request, context):
        deployment_id = checked_id(request.deployment_id, "deployment_id", "deployment")
        if request.replicas < 0:
            raise InvalidArgument(f"replicas: {request.replicas} is negative")
        config = checked_config(request.config) if request.config.fields else None
        return gateway_pb2.UpdateDeploymentResponse(deployment=await (await self._deployments()).update(
            auth.current(), deployment_id, request.replicas, config))

    @_maps_errors
    async def DeleteDeployment(self, request, context):
        deployment_id = checked_id(request.deployment_id, "deployment_id", "deployment")
        await (await self._deployments()).delete(auth.current(), deployment_id)
        return gateway_pb2.DeleteDeploymentResponse()

    @_maps_errors
    async def GetReport(self, request, context):
        if request.format not in REPORT_FORMATS:
            raise InvalidArgument(f"format: {request.format!r} is not json or html")
        if request.job_id and request.comparison_id:
            raise InvalidArgument("job_id, comparison_id: set one, not both")
        if request.comparison_id:
            comparison = await self._comparisons.get(checked_id(request.comparison_id, "comparison_id", "comparison"))
            if comparison is None:
                raise ArtifactNotFound(f"comparison_id: comparison {request.comparison_id!r} not found")
            await check_artifact(self._grants, auth.current(), comparison.comparison_id, "comparison_id", "comparison")
            report_id = comparison.report.id
        else:
            job = await self._job(request.job_id)
            report_id = job.result.evaluation_report_path
            if not report_id:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                    f"job {job.job_id} has no report: it is {common_pb2.JobState.Name(job.state)} "
                                    "(reports are made when a job succeeds)")
        name, content_type = REPORT_FORMATS[request.format]
        tar_bytes = b"".join([chunk async for chunk in self._runtime.store.iter_chunks(report_id)])
        with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
            content = tar.extractfile(name).read()
        return gateway_pb2.GetReportResponse(content_type=content_type, content=content)

    # ---- engines -----------------------------------------------------------------

    async def _list_engines(self) -> optimizer_pb2.OptimizerServiceListEnginesResponse:
        return await self._mesh.optimizer.ListEngines(optimizer_pb2.OptimizerServiceListEnginesRequest(),
                                                      wait_for_ready=True, timeout=30)

    async def _engines(self) -> dict[str, common_pb2.EngineInfo]:
        return {e.name: e for e in (await self._list_engines()).engines}

    @_maps_errors
    async def ListEngines(self, request, context):
        first = await self._list_engines()
        workers = {first.hardware.worker: first.hardware}
        # The channel sends each call to the next replica: a few more calls reach the others.
        for _ in range(ENGINE_WORKER_CALLS - 1):
            answer = await self._list_engines()
            workers.setdefault(answer.hardware.worker, answer.hardware)
        return gateway_pb2.ListEnginesResponse(engines=first.engines, workers=list(workers.values()))

    @_maps_errors
    async def OptimizeModel(self, request, context):
        """A job whose one stage converts the model for the engine (recipe of that method)."""
        model_format = await self._check_model(request.model)
        engines = await self._engines()
        engine = engines.get(request.engine)
        if engine is None:
            raise InvalidArgument(f"engine: unknown engine {request.engine!r}; known: {', '.join(engines)}")
        precision = request.precision or engine.precisions[0]
        if precision not in engine.precisions:
            raise InvalidArgument(f"precision: {precision!r} is not one of {engine.name}'s: "
                                  f"{', '.join(engine.precisions)}")
        if not engine.available:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"engine {engine.name} is not available: {engine.reason}")
        methods = await self._methods()
        resolved = validate_recipe(engine.methods[precision], request.options, methods)
        recipe, stages = resolved.recipe, resolved.stages
        await self._check_configs(resolved)
        head = await read_model_head(request.model, self._runtime.store)
        check_chain(stages, methods, model_format, head.kind)
        evaluation = resolve_evaluation(request.evaluation)
        if evaluation.HasField("reference"):  # read by the job like its input: the same grants and roots
            await self._check_model(evaluation.reference, "evaluation.reference")
        await self._check_positions(request.model, evaluation, "evaluation", head)
        job = await self._submit(
            name=request.name or f"{engine.name} {precision} of {request.model.WhichOneof('source')}",
            model=request.model, recipe=recipe.name, stages=stages, evaluation=evaluation)
        return gateway_pb2.OptimizeModelResponse(job=job)

    # ---- uploads -----------------------------------------------------------------

    async def UploadModel(self, request_iterator, context):
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("part") != "header":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "header: the first message must be the upload header")
        header = first.header
        if header.format not in UPLOAD_FORMATS:
            allowed = ", ".join(common_pb2.ArtifactFormat.Name(f) for f in UPLOAD_FORMATS)
            given = (common_pb2.ArtifactFormat.Name(header.format) if header.format in common_pb2.ArtifactFormat.values()
                     else header.format)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"header.format: {given} cannot be uploaded; allowed: {allowed}")

        try:
            await self._retention.check_room()
        except StoreFull as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        limit = self._runtime.settings.max_upload_bytes
        # Spooled to disk and checked whole before anything is stored: a hostile file is refused
        # now, with nothing left behind, instead of failing the first job that reads it.
        with tempfile.TemporaryDirectory(prefix="upload-", dir=self._runtime.settings.work_dir) as scratch:
            spool = Path(scratch) / "upload.tar"
            digest = hashlib.sha256()
            size = 0
            with open(spool, "wb") as out:
                async for message in request_iterator:
                    if message.WhichOneof("part") != "chunk":
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                            "chunk: only byte chunks may follow the header")
                    size += len(message.chunk)
                    if size > limit:
                        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                            f"upload: over the {limit} bytes an upload may take "
                                            "(the operator's max_upload_bytes)")
                    digest.update(message.chunk)
                    out.write(message.chunk)
            if header.sha256 and header.sha256.lower() != digest.hexdigest():
                await context.abort(grpc.StatusCode.DATA_LOSS, f"sha256 mismatch: the header said "
                                    f"{shown(header.sha256)}, received {digest.hexdigest()}")
            try:
                await asyncio.to_thread(check_upload, spool, header.format, limit)
            except UnpackedTooLarge as exc:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                    f"upload ({common_pb2.ArtifactFormat.Name(header.format)}): {exc}")
            except BadUpload as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"upload ({common_pb2.ArtifactFormat.Name(header.format)}): {exc}")
            try:
                ref = await self._runtime.store.put_file(spool, fmt=header.format)
            except StoreFull as exc:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        await self._grants.grant(auth.current().tenant, ref.id)
        return gateway_pb2.UploadModelResponse(artifact=ref)


def _job_id(job_id: str) -> str:
    return checked_id(job_id, "job_id", "job")


def _job_order(job: common_pb2.Job) -> tuple[int, str]:
    return -job.created_at.ToNanoseconds(), job.job_id


def _benchmark_order(row: common_pb2.HardwareBenchmark) -> tuple[int, int, int, str]:
    """Newest first, as the evaluator lists them; the id makes each row's place unique."""
    return -row.recorded_at.ToNanoseconds(), -row.batch_size, -row.sequence_length, row.benchmark_id


def _artifact_order(summary: common_pb2.ArtifactSummary) -> tuple[str]:
    return (summary.artifact.id,)


def _bytes(message) -> int:
    return message.ByteSize()


async def register(server: grpc.aio.Server, runtime: ServiceRuntime) -> list[str]:
    from services.gateway.job_store import JobStore

    mesh = Mesh(runtime.settings.targets, credentials=targets_credentials(runtime.settings))
    jobs = await JobStore(runtime.js).ensure()
    grants = await Grants(runtime.js).ensure()
    leases = await JobLeases(runtime.js, holder=f"{runtime.worker_id}/{uuid.uuid4().hex[:8]}",
                             lease_s=runtime.settings.job_lease_s).ensure()
    runner = await JobRunner(runtime.js, jobs, runtime.store, runtime.events, mesh, grants, leases,
                             replica_wait_s=runtime.settings.replica_wait_s,
                             running_per_tenant=runtime.settings.max_running_jobs_per_tenant).ensure()
    recipes = await RecipeStore(runtime.js).ensure()
    deployments = await Deployments(runtime.js).ensure()
    # A search's winner becomes its tenant's recipe, and its deployment (before any search resumes).
    runner.save_recipe = recipes.create

    async def deploy_winner(job: common_pb2.Job) -> common_pb2.Deployment:
        try:
            head = await read_model_head(common_pb2.ModelRef(artifact_id=job.output.id), runtime.store)
            return await deployments.deploy_winner(job, head.kind)
        except (NameTaken, InvalidArgument, LookupError) as exc:  # the name taken, an unservable format, ...
            raise NotDeployed(str(exc)) from None

    runner.deploy = deploy_winner
    resumed = await runner.resume_unfinished()
    if resumed:
        log.info("resumed %d unfinished job(s): %s", len(resumed), ", ".join(resumed))
    comparisons = await RecordBucket(runtime.js, COMPARISONS_BUCKET, common_pb2.Comparison).ensure()
    settings = runtime.settings
    await runtime.store.ensure(max_bytes=settings.store_max_bytes)  # the gateway owns the store's bound
    retention = Retention(runner, grants, runtime.store, runtime.events, RetentionPolicy(
        job_ttl_s=settings.job_ttl_s, artifact_ttl_s=settings.artifact_ttl_s, store_max_bytes=settings.store_max_bytes))
    admission = await Admission(
        runtime.js, jobs, retention.check_room, max_jobs=settings.max_jobs_per_tenant,
        max_measurements=settings.max_measurements_per_tenant).ensure()
    gateway_pb2_grpc.add_GatewayServiceServicer_to_server(
        GatewayServicer(runtime, runner, mesh, comparisons, recipes, grants, retention, admission, deployments), server)
    orphans = asyncio.create_task(runner.take_over_orphans(), name="take-over-orphans")
    sweeper = asyncio.create_task(retention.run(settings.retention_sweep_s), name="retention")

    async def stop() -> None:
        orphans.cancel()
        sweeper.cancel()
        await runner.shutdown()

    runtime.on_shutdown.append(stop)
    return [gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name]
