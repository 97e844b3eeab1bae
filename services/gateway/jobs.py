"""Job lifecycle: records in KV, stages dispatched over gRPC, events on JetStream.

A job runs as one asyncio task in the gateway. Each stage goes to the owning service's
round-robin channel; a stage whose replica dies (UNAVAILABLE) is retried on another.
The record is saved after every transition, so a restarted gateway resumes unfinished
jobs from their last finished stage. When no replica of a stage's service answers, the
job waits visibly (an event every few seconds naming the service and since when) and
fails with UNAVAILABLE once the operator's bound (`replica_wait_s`) has passed. Cancelling the task cancels the in-flight RPC,
which the service turns into a cancel of its engine at the next progress point.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

import grpc
from nats.js import JetStreamContext

from modelpress.results import compression_result, ended_without_result, result_headline, unevaluated_result
from modelpress.structs import to_struct
from modelpress.v1 import common_pb2, evaluator_pb2, technique_pb2
from services.common.contract.chain import InvalidArgument, label_of
from services.common.contract.gates import failed_checks, gate_figures, gate_not_measured, stage_gate
from services.common.contract.techniques import TECHNIQUE_SERVICES
from services.common.store import events as ev
from services.common.store.artifact_store import ArtifactStore
from services.common.store.events import EventLog
from services.common.store.model_source import describe
from services.common.store.stage_checkpoints import delete_job_checkpoints
from services.gateway.access import Grants
from services.gateway.artifacts import recipe_record, tag_artifact
from services.gateway.catalog import Mesh, ServiceUnavailable
from services.gateway.job_store import JobStore
from services.gateway.leases import JobLeases
from services.gateway.outcomes import OutcomeStore
from services.gateway.search import fastest
from services.gateway.search import run as search_run
from services.gateway.validation import resolve_evaluation

log = logging.getLogger(__name__)

STAGE_ATTEMPTS = 3
# Share of a job's progress bar given to the before/after evaluation.
EVALUATION_WEIGHT = 0.3
SAVE_EVERY_S = 0.5
# While no replica answers: how often the job says it is still waiting, and how often it looks.
WAIT_EVENT_EVERY_S = 5.0
WAIT_POLL_S = 1.0
# Why a job's before/after figures are missing when its evaluation was skipped.
EVALUATION_SKIPPED = "the job ran with its evaluation skipped (EvaluationSpec.skip, `--no-eval`)"


class GateFailed(RuntimeError):
    """An evaluate stage's figures missed its gate; the message holds each figure and bound."""


def new_job_id() -> str:
    return "j-" + uuid.uuid4().hex[:16]


def _now(ts) -> None:
    ts.GetCurrentTime()


class JobRunner:
    def __init__(self, js: JetStreamContext, jobs: JobStore, store: ArtifactStore, events: EventLog,
                 mesh: Mesh, grants: Grants, leases: JobLeases, replica_wait_s: float = 120.0,
                 running_per_tenant: int = 0) -> None:
        self._js = js
        # Jobs of one tenant this gateway runs at once (0: no limit); the rest wait their turn.
        self.running_per_tenant = running_per_tenant
        self._turns: dict[str, asyncio.Semaphore] = {}
        self.grants = grants
        self.leases = leases
        # Jobs whose lease another gateway took over: stopped here without a state change.
        self._lost: set[str] = set()
        self.jobs = jobs
        self.store = store
        self.events = events
        self.mesh = mesh
        self.replica_wait_s = replica_wait_s
        self.outcomes = OutcomeStore(js)
        self.search_trials = search_run.TrialStore(js)
        self.fastest_choices = fastest.ChoiceStore(js)
        # Stores a search's winner as its tenant's user recipe, and deploys it (with deploy_as): set by the
        # servicer, whose the recipe and deployment stores are.
        self.save_recipe = None
        self.deploy = None
        self._tasks: dict[str, asyncio.Task] = {}
        # Set on gateway shutdown: interrupted jobs stay RUNNING so the next gateway resumes them.
        self._stopping = False

    async def ensure(self) -> JobRunner:
        await self.outcomes.ensure()
        await self.search_trials.ensure()
        await self.fastest_choices.ensure()
        return self

    # ---- lifecycle ---------------------------------------------------------

    async def submit(self, *, name: str, model: common_pb2.ModelRef, recipe: str,
                     stages: list[common_pb2.StageSpec], evaluation: common_pb2.EvaluationSpec,
                     recompute: bool = False, tenant: str = "", job_id: str = "",
                     search: common_pb2.SearchSpec | None = None) -> common_pb2.Job:
        """Records a new job of `tenant` (stages already validated) and starts it; `job_id`: the id
        its admission gave it (services/gateway/admission.py), a new one otherwise. With `search`
        (and no stages), a search job (services/gateway/search/run.py)."""
        job = common_pb2.Job(
            job_id=job_id or new_job_id(), name=name, model=model, recipe=recipe, state=common_pb2.JOB_STATE_PENDING,
            evaluation=evaluation, recompute=recompute, tenant=tenant, search=search,
            stages=[common_pb2.StageStatus(index=i, spec=spec, state=common_pb2.JOB_STATE_PENDING)
                    for i, spec in enumerate(stages)])
        job.created_at.GetCurrentTime()
        await self.jobs.put(job)
        self.start(job.job_id)
        return job

    async def wait(self, job_id: str, poll_s: float = 0.5) -> common_pb2.Job:
        """The job's record once it ended (run by this gateway)."""
        task = self._tasks.get(job_id)
        if task is not None:
            await asyncio.wait({task})
        while (job := await self.jobs.get(job_id)).state not in ev.TERMINAL_STATES:
            await asyncio.sleep(poll_s)
        return job

    def start(self, job_id: str) -> None:
        task = asyncio.create_task(self._run(job_id), name=f"job-{job_id}")
        self._tasks[job_id] = task
        task.add_done_callback(lambda _t: self._tasks.pop(job_id, None))

    def is_running_here(self, job_id: str) -> bool:
        return job_id in self._tasks

    async def resume_unfinished(self) -> list[str]:
        """Starts every unfinished job not running here; each runs only if its lease is free (no
        other gateway runs it, or that gateway's lease expired)."""
        resumed = []
        for job in await self.jobs.list():
            if job.state in (common_pb2.JOB_STATE_PENDING, common_pb2.JOB_STATE_RUNNING) \
                    and not self.is_running_here(job.job_id):
                self.start(job.job_id)
                resumed.append(job.job_id)
        return resumed

    async def take_over_orphans(self) -> None:
        """Runs until cancelled: every third of a lease, jobs whose gateway died are resumed here."""
        while not self._stopping:
            await asyncio.sleep(self.leases.lease_s / 3)
            try:
                await self.resume_unfinished()
            except Exception as exc:  # noqa: BLE001 - NATS away for a moment: look again next time
                log.warning("looking for orphaned jobs failed: %s", exc)

    async def _keep_lease(self, job_id: str, task: asyncio.Task) -> None:
        """Renews the job's lease while it runs here; stops the job when the lease is lost, or when
        another gateway recorded a cancel."""
        while True:
            await asyncio.sleep(self.leases.lease_s / 3)
            if not await self.leases.renew(job_id):
                log.warning("job %s: lease lost to another gateway; stopping here", job_id)
                self._lost.add(job_id)
                task.cancel()
                return
            if await self.leases.cancel_requested(job_id):
                task.cancel()
                return

    async def cancel(self, job_id: str) -> common_pb2.Job:
        task = self._tasks.get(job_id)
        if task is not None:
            task.cancel()
            await asyncio.wait({task}, timeout=90)
            return await self.jobs.get(job_id)
        job = await self.jobs.get(job_id)
        if job.state in ev.TERMINAL_STATES:
            return job
        if await self.leases.live_holder(job_id) is not None:
            # Another gateway runs it: ask it to stop, and wait (a renewal and the stop) for its record.
            await self.leases.request_cancel(job_id)
            deadline = time.monotonic() + self.leases.lease_s * 2
            while time.monotonic() < deadline:
                job = await self.jobs.get(job_id)
                if job.state in ev.TERMINAL_STATES:
                    return job
                await asyncio.sleep(0.2)
            if await self.leases.live_holder(job_id) is not None:
                return job  # still stopping; the request stays and the holder ends it
        await self._finish(job, common_pb2.JOB_STATE_CANCELLED, "cancelled")
        return job

    async def shutdown(self) -> None:
        """Stops running jobs without marking them cancelled, so the next gateway resumes them."""
        self._stopping = True
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    # ---- one job -------------------------------------------------------------

    async def _run(self, job_id: str) -> None:
        holder = await self.leases.acquire(job_id)
        if holder is not None:
            return  # another gateway runs it
        keeper = asyncio.create_task(self._keep_lease(job_id, asyncio.current_task()))
        try:
            # A search only coordinates: its candidates are jobs that take the tenant's turns themselves, so
            # it holding one while it waits on them could leave none for them.
            job = await self.jobs.get(job_id)
            coordinating = job.HasField("search")
            # Before its turn, for the same reason: the search that measures fastest-cpu is such jobs.
            if not coordinating and fastest.unresolved(job) and not await self._resolve_fastest(job):
                return
            async with contextlib.nullcontext() if coordinating else self._turn(job_id):
                await self._run_leased(job_id)
        finally:
            keeper.cancel()
            if job_id not in self._lost:
                await asyncio.shield(self.leases.release(job_id))
            self._lost.discard(job_id)

    @contextlib.asynccontextmanager
    async def _turn(self, job_id: str):
        """Holds one of the tenant's running slots on this gateway while the job runs; a job that
        has to wait says so, and a cancel while it waits ends it CANCELLED."""
        if not self.running_per_tenant:
            yield
            return
        job = await self.jobs.get(job_id)
        turn = self._turns.setdefault(job.tenant, asyncio.Semaphore(self.running_per_tenant))
        if turn.locked() and job.state not in ev.TERMINAL_STATES:
            await self._publish(job, common_pb2.EVENT_KIND_LOG,
                                message=f"queued: {self.running_per_tenant} job(s) of this tenant are running on "
                                        f"this gateway (max_running_jobs_per_tenant); it starts when one ends")
        try:
            await turn.acquire()
        except asyncio.CancelledError:
            if not self._stopping and job_id not in self._lost:
                await asyncio.shield(self._finish(await self.jobs.get(job_id), common_pb2.JOB_STATE_CANCELLED,
                                                  "cancelled by request while queued"))
            raise
        try:
            yield
        finally:
            turn.release()

    async def _run_leased(self, job_id: str) -> None:
        job = await self.jobs.get(job_id)
        if job.state in ev.TERMINAL_STATES:
            return  # it ended while this gateway waited for the lease
        if await self.leases.cancel_requested(job_id):  # asked while its last gateway died
            await self._finish(job, common_pb2.JOB_STATE_CANCELLED, "cancelled by request")
            return
        try:
            if job.state != common_pb2.JOB_STATE_RUNNING:
                job.state = common_pb2.JOB_STATE_RUNNING
                _now(job.started_at)
                await self.jobs.put(job)
                await self._publish(job, common_pb2.EVENT_KIND_JOB_STATE, job_state=job.state,
                                    message=f"running on gateway {self.leases.holder}")
            else:
                done = sum(stage.state == common_pb2.JOB_STATE_SUCCEEDED for stage in job.stages)
                await self._publish(job, common_pb2.EVENT_KIND_LOG,
                                    message=f"resumed by gateway {self.leases.holder} after {done} finished stage(s)")
            if job.HasField("search"):
                await self._search(job)
                await self._tag_winner(job)
                job.state = common_pb2.JOB_STATE_SUCCEEDED
                await self._report(job)
                await self._finish(job, common_pb2.JOB_STATE_SUCCEEDED,
                                   f"succeeded: {job.search_result.winner}, stored as {job.search_result.recipe}")
                return
            input_ref = job.model
            for stage in job.stages:
                if stage.state == common_pb2.JOB_STATE_SUCCEEDED:  # resumed job: skip finished stages
                    input_ref = common_pb2.ModelRef(artifact_id=stage.output.id)
                    continue
                if stage.spec.technique == common_pb2.TECHNIQUE_EVALUATOR:
                    output = await self._evaluate_stage(job, stage, input_ref)
                else:
                    output = await self._run_stage(job, stage, input_ref)
                input_ref = common_pb2.ModelRef(artifact_id=output.id)
            job.output.CopyFrom(job.stages[-1].output)
            if job.stages[-1].spec.technique == common_pb2.TECHNIQUE_EVALUATOR:
                pass  # the pipeline's own last stage measured the output
            elif not job.evaluation.skip:
                await self._evaluate(job)
            else:
                job.result.CopyFrom(unevaluated_result(job.job_id, job.output.id, EVALUATION_SKIPPED,
                                                       compressed_size_bytes=job.output.size_bytes))
            job.state = common_pb2.JOB_STATE_SUCCEEDED
            recipes = (await self.store.stat(job.output.id)).meta.get("recipes", [])
            # What ListArtifacts(recipe=) finds it by; a user recipe's name as its tenant's own.
            recorded = recipe_record(job.tenant, job.recipe)
            if recorded not in recipes:
                await self.store.update_meta(job.output.id, recipes=[*recipes, recorded])
            await self._report(job)
            await self._finish(job, common_pb2.JOB_STATE_SUCCEEDED, "succeeded")
            await self.outcomes.record(job)
        except asyncio.CancelledError:
            if self._stopping or job_id in self._lost:
                raise
            await asyncio.shield(self._finish(job, common_pb2.JOB_STATE_CANCELLED, "cancelled by request"))
        except (GateFailed, search_run.SearchFailed) as exc:
            await self._finish(job, common_pb2.JOB_STATE_FAILED, f"FAILED_PRECONDITION: {exc}")
        except grpc.aio.AioRpcError as exc:
            await self._finish(job, common_pb2.JOB_STATE_FAILED, f"{exc.code().name}: {exc.details()}")
        except ServiceUnavailable as exc:
            await self._finish(job, common_pb2.JOB_STATE_FAILED, f"UNAVAILABLE: {exc}")
        except Exception as exc:
            log.exception("job %s failed", job_id)
            await self._finish(job, common_pb2.JOB_STATE_FAILED, f"{type(exc).__name__}: {exc}")

    async def _run_stage(self, job: common_pb2.Job, stage: common_pb2.StageStatus,
                         input_ref: common_pb2.ModelRef) -> common_pb2.ArtifactRef:
        technique = stage.spec.technique
        stage.state = common_pb2.JOB_STATE_RUNNING
        _now(stage.started_at)
        await self.jobs.put(job)
        await self._publish(job, common_pb2.EVENT_KIND_STAGE_STARTED, stage_index=stage.index,
                            stage_name=label_of(stage.spec),
                            message=f"{TECHNIQUE_SERVICES[technique]}: {stage.spec.method} on {describe(input_ref)}")
        # One request message for every technique: the stub's channel says which service runs it.
        request = technique_pb2.TechniqueServiceRunRequest(stage=common_pb2.StageRequest(
            job_id=job.job_id, stage_index=stage.index, input=input_ref, method=stage.spec.method,
            config=stage.spec.config, recompute=job.recompute, original=job.model))
        last_save = 0.0
        attempt = 0
        while True:
            await self.wait_for_replica(job, technique, stage.index, stage.spec.method)
            try:
                # Not wait_for_ready: with every replica gone the call fails at once and the wait
                # above, which the watcher sees, takes over.
                call = self.mesh.stub(technique).Run(request, wait_for_ready=False)
                async for response in call:
                    update = response.update
                    if update.HasField("progress"):
                        job.progress = self._overall(job, stage.index, update.progress.progress)
                        if time.monotonic() - last_save > SAVE_EVERY_S:
                            last_save = time.monotonic()
                            await self.jobs.put(job)
                    elif update.HasField("output"):
                        stage.output.CopyFrom(update.output.artifact)
                        stage.metrics.CopyFrom(update.output.metrics)
                        stage.worker = update.output.worker
                        stage.notes[:] = update.output.notes
                        stage.reused = update.output.reused
                        stage.key = update.output.key
                break
            except grpc.aio.AioRpcError as exc:
                attempt += 1
                # A dead replica (the round-robin channel sends the retry to a live one, or the
                # wait above holds it until one comes back), or a worker whose store did not answer.
                if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == STAGE_ATTEMPTS:
                    stage.state = common_pb2.JOB_STATE_FAILED
                    stage.error = f"{exc.code().name}: {exc.details()}"
                    _now(stage.finished_at)
                    raise
                log.warning("stage %s of %s: %s; retrying", stage.index, job.job_id, exc.details())
                await self._publish(job, common_pb2.EVENT_KIND_LOG, stage_index=stage.index,
                                    stage_name=label_of(stage.spec),
                                    message=f"{TECHNIQUE_SERVICES[technique]} unavailable ({exc.details()}); "
                                            f"retrying the stage (attempt {attempt + 1} of {STAGE_ATTEMPTS})")
        if not stage.output.id:
            raise RuntimeError(f"{TECHNIQUE_SERVICES[technique]} ended stage {stage.index} without an output")
        stage.state = common_pb2.JOB_STATE_SUCCEEDED
        _now(stage.finished_at)
        await self._record_artifact(job, stage.output.id)
        job.progress = self._overall(job, stage.index, 1.0)
        await self.jobs.put(job)
        for note in stage.notes:
            await self._publish(job, common_pb2.EVENT_KIND_LOG, stage_index=stage.index,
                                stage_name=label_of(stage.spec), message=f"{stage.worker}: {note}")
        made = "reused, not recomputed" if stage.reused else f"by {stage.worker}"
        await self._publish(job, common_pb2.EVENT_KIND_STAGE_FINISHED, stage_index=stage.index,
                            stage_name=label_of(stage.spec), stage_progress=1.0,
                            message=f"artifact {stage.output.id} ({stage.output.size_bytes} bytes) {made}",
                            metrics={"reused": stage.reused, "key": stage.key})
        return stage.output

    async def wait_for_replica(self, job: common_pb2.Job, technique: int, stage_index: int, stage_name: str) -> None:
        """Returns once some replica of the service answers; meanwhile says every few seconds that
        the job waits and for what; raises ServiceUnavailable when `replica_wait_s` has passed."""
        if await self.mesh.is_live(technique):
            return
        service = TECHNIQUE_SERVICES[technique]
        since, since_wall = time.monotonic(), time.strftime("%H:%M:%S")
        last_event = -WAIT_EVENT_EVERY_S
        while not await self.mesh.is_live(technique):
            waited = time.monotonic() - since
            if waited >= self.replica_wait_s:
                raise ServiceUnavailable(f"no live replica of {service} for {waited:.0f} s "
                                         f"(since {since_wall}; the bound is {self.replica_wait_s:.0f} s)")
            if waited - last_event >= WAIT_EVENT_EVERY_S:
                last_event = waited
                await self._publish(job, common_pb2.EVENT_KIND_LOG, stage_index=stage_index, stage_name=stage_name,
                                    message=f"waiting for a live {service} replica since {since_wall} "
                                            f"({waited:.0f} s of {self.replica_wait_s:.0f} s)",
                                    metrics={"waiting_for": service, "waited_s": round(waited, 1),
                                             "replica_wait_s": self.replica_wait_s})
            await asyncio.sleep(WAIT_POLL_S)
        await self._publish(job, common_pb2.EVENT_KIND_LOG, stage_index=stage_index, stage_name=stage_name,
                            message=f"{service} is back after {time.monotonic() - since:.0f} s")

    async def _evaluate(self, job: common_pb2.Job) -> None:
        """The job's final before/after measurement (a pipeline without its own evaluate stage)."""
        await self._compare(job, job.output.id, len(job.stages), "evaluate")

    async def _compare(self, job: common_pb2.Job, artifact_id: str, index: int, label: str
                       ) -> common_pb2.ComparisonRow:
        """The job's model and `artifact_id` measured by one evaluator call, as `Compare` does: size,
        quality and memory each in its own probe, latency (prefill or forward, and decode) in one
        process in interleaved rounds on the same inputs. A speed ratio never comes from two
        separate probes. Sets the job's result; returns the artifact's row."""
        await self._publish(job, common_pb2.EVENT_KIND_STAGE_STARTED, stage_index=index, stage_name=label,
                            message="measuring the original and the compressed model (latency interleaved)",
                            step=0, total_steps=1)
        await self.wait_for_replica(job, common_pb2.TECHNIQUE_EVALUATOR, index, label)
        request = evaluator_pb2.EvaluatorServiceCompareRequest(
            models=[job.model, common_pb2.ModelRef(artifact_id=artifact_id)], baseline_index=0,
            spec=job.evaluation, skip_report=True)
        comparison = (await self.mesh.evaluator.Compare(request, wait_for_ready=False)).comparison
        original, compressed = comparison.rows
        job.result.CopyFrom(compression_result(job.job_id, original.metrics, compressed.metrics, artifact_id,
                                               speed=list(compressed.speed), load=comparison.load))
        await self._publish(job, common_pb2.EVENT_KIND_STAGE_FINISHED, stage_index=index, stage_name=label,
                            message=f"measured both models in {comparison.interleaved_rounds} interleaved rounds",
                            stage_progress=1.0, step=1, total_steps=1)
        return compressed

    async def _evaluate_stage(self, job: common_pb2.Job, stage: common_pb2.StageStatus,
                              input_ref: common_pb2.ModelRef) -> common_pb2.ArtifactRef:
        """A pipeline's evaluate stage: measures its input against the job's model, checks its gate
        on those figures and passes the input on. A failed gate raises GateFailed with the figures."""
        label = label_of(stage.spec)
        stage.state = common_pb2.JOB_STATE_RUNNING
        _now(stage.started_at)
        await self.jobs.put(job)
        row = await self._compare(job, input_ref.artifact_id, stage.index, label)
        figures = gate_figures(row, job.result)
        not_measured = gate_not_measured(row, job.result)
        shown = {**figures, "not_measured": not_measured} if not_measured else figures
        stage.metrics.CopyFrom(to_struct(shown))
        stage.output.CopyFrom((await self.store.stat(input_ref.artifact_id)).ref)
        gate = stage_gate(stage.spec)  # as the gateway parsed it when it resolved the stage
        # A bound on a figure that was not measured fails, naming why: never passed by omission.
        failures = failed_checks(gate, figures, not_measured) if gate else []
        _now(stage.finished_at)
        if failures:
            stage.state = common_pb2.JOB_STATE_FAILED
            stage.error = f"gate {gate.text!r} failed: " + "; ".join(failures)
            await self.jobs.put(job)
            raise GateFailed(f"stages[{stage.index}] ({label}): {stage.error}")
        stage.state = common_pb2.JOB_STATE_SUCCEEDED
        job.progress = self._overall(job, stage.index, 1.0)
        await self.jobs.put(job)
        if gate:
            await self._publish(job, common_pb2.EVENT_KIND_LOG, stage_index=stage.index, stage_name=label,
                                message=f"gate {gate.text!r} passed: " + ", ".join(
                                    f"{c.metric} = {figures[c.metric]:.4g} ({c.comparison} {c.threshold:g})"
                                    for c in gate.checks), metrics=figures)
        return stage.output

    async def _report(self, job: common_pb2.Job) -> None:
        """Renders the job's JSON and HTML report beside its artifact; a report that cannot be made
        is logged on the job's stream and never costs the user the compressed model."""
        try:
            events = [e async for e in self.events.replay(job.job_id, follow=False, poll_s=0.2)]
            response = await self.mesh.evaluator.RenderReport(
                evaluator_pb2.EvaluatorServiceRenderReportRequest(job=job, events=events,
                                                                  methods=await self._methods_of(job)),
                wait_for_ready=True, timeout=120)
        except grpc.aio.AioRpcError as exc:
            await self._publish(job, common_pb2.EVENT_KIND_LOG,
                                message=f"report not rendered: {exc.code().name}: {exc.details()}")
            return
        job.result.evaluation_report_path = response.report.id
        await self._record_artifact(job, response.report.id)

    async def _record_artifact(self, job: common_pb2.Job, artifact_id: str) -> None:
        """Lists the artifact on the job, held by the job's tenant (the grant first: a job record
        never names an artifact its tenant cannot fetch)."""
        await self.grants.grant(job.tenant, artifact_id)
        job.artifact_ids.append(artifact_id)

    async def _methods_of(self, job: common_pb2.Job) -> list[common_pb2.MethodDescription]:
        """The descriptions of the job's engine methods (what the report plots comes from them)."""
        found = []
        for technique in {s.spec.technique for s in job.stages} - {common_pb2.TECHNIQUE_EVALUATOR}:
            try:
                described = (await self.mesh.describe(technique)).methods
            except ServiceUnavailable:
                continue
            wanted = {s.spec.method for s in job.stages if s.spec.technique == technique}
            found += [m for m in described if m.name in wanted]
        return found

    def _overall(self, job: common_pb2.Job, stage_index: int, fraction: float) -> float:
        evaluation = 0.0 if job.evaluation.skip else EVALUATION_WEIGHT
        stages_share = (1 - evaluation) / max(len(job.stages), 1)
        if stage_index >= len(job.stages):
            return (1 - evaluation) + evaluation * fraction
        return stages_share * (stage_index + fraction)

    async def _finish(self, job: common_pb2.Job, state: int, message: str) -> None:
        fresh = await self.jobs.get(job.job_id)
        if fresh.state in ev.TERMINAL_STATES:  # already finished (e.g. cancelled twice)
            return
        job.state = state
        if not job.HasField("result"):
            job.result.CopyFrom(ended_without_result(job))
        # The outcome in one sentence on the record itself, so every reader of the result has it.
        succeeded = state == common_pb2.JOB_STATE_SUCCEEDED
        job.result.headline.CopyFrom(result_headline(job.recipe, job.result, succeeded))
        if state == common_pb2.JOB_STATE_SUCCEEDED:
            job.progress = 1.0
        else:
            job.error = message
            for stage in job.stages:
                if stage.state == common_pb2.JOB_STATE_RUNNING:
                    stage.state = state
                    _now(stage.finished_at)
        _now(job.finished_at)
        await self.jobs.put(job)
        await self._publish(job, common_pb2.EVENT_KIND_JOB_STATE, job_state=state, message=message)
        await delete_job_checkpoints(self.store, job.job_id)

    async def _tag_winner(self, job: common_pb2.Job) -> None:
        """The winner's artifact tagged with its recipe's name, so ListArtifacts(tag=) finds each search's."""
        found = job.search_result
        if not job.output.id or not found.recipe or found.tag:
            return
        try:
            _, found.tag = await tag_artifact(self.store, job.output.id, found.recipe.partition("@")[0], job.tenant)
        except (InvalidArgument, LookupError) as exc:
            await self._publish(job, common_pb2.EVENT_KIND_LOG, message=f"the winner's artifact was not tagged: {exc}")
            return
        await self.jobs.put(job)

    async def _resolve_fastest(self, job: common_pb2.Job) -> bool:
        """Gives the job's fastest-cpu stages the choice measured on the evaluator's CPU class, running the
        search that measures it the first time (search/fastest.py); False when the job ended instead."""
        from services.gateway.model_head import read_model_head

        if job.state in ev.TERMINAL_STATES:
            return True  # _run_leased returns at once
        try:
            here = (await self.mesh.describe(common_pb2.TECHNIQUE_EVALUATOR)).hardware.isa_class
        except ServiceUnavailable:
            here = ""
        kind = (await read_model_head(job.model, self.store)).kind or ""

        async def submit_search(spec, name):
            # The default shape (batch 1 × 128 tokens): the stored choice serves every later job of the tenant.
            return await self.submit(name=name, model=job.model, recipe="search", stages=[],
                                     evaluation=resolve_evaluation(common_pb2.EvaluationSpec()), tenant=job.tenant,
                                     search=spec, recompute=job.recompute)

        async def publish(message: str) -> None:
            await self._publish(job, common_pb2.EVENT_KIND_LOG, message=message)

        try:
            if await fastest.resolve(job, kind, here, self.fastest_choices, submit_search=submit_search,
                                     wait=self.wait, publish=publish):
                await self.jobs.put(job)
            return True
        except asyncio.CancelledError:
            if self._stopping or job.job_id in self._lost:
                raise
            await asyncio.shield(self._finish(job, common_pb2.JOB_STATE_CANCELLED, "cancelled by request"))
        except fastest.NoFastest as exc:
            await self._finish(job, common_pb2.JOB_STATE_FAILED, f"FAILED_PRECONDITION: {exc}")
        except ServiceUnavailable as exc:
            await self._finish(job, common_pb2.JOB_STATE_FAILED, f"UNAVAILABLE: {exc}")
        except Exception as exc:  # as _run_leased: the job ends saying what failed, never hangs
            log.exception("job %s: resolving fastest-cpu failed", job.job_id)
            await self._finish(job, common_pb2.JOB_STATE_FAILED, f"{type(exc).__name__}: {exc}")
        return False

    async def _search(self, job: common_pb2.Job) -> None:
        """Runs a search job (services/gateway/search/run.py): its candidates are this runner's jobs."""
        from services.gateway.model_head import read_model_head

        evaluator = (await self.mesh.describe(common_pb2.TECHNIQUE_EVALUATOR)).hardware
        methods = {}
        for technique in TECHNIQUE_SERVICES:
            if technique == common_pb2.TECHNIQUE_EVALUATOR:
                continue
            try:
                described = await self.mesh.describe(technique)
            except ServiceUnavailable:
                continue  # its candidates are left out, saying no live replica offers them
            methods.update({(technique, m.name): m for m in described.methods})
        head = await read_model_head(job.model, self.store)
        context = search_run.Context(head.kind, evaluator.isa_class, tuple(evaluator.machine.isa_features), methods)

        async def submit(name, candidate, evaluation):
            return await self.submit(name=name, model=job.model, recipe=candidate.name, stages=candidate.messages(),
                                     evaluation=evaluation, tenant=job.tenant, recompute=job.recompute)

        async def wait(child_id: str) -> common_pb2.Job:
            try:
                return await self.wait(child_id)
            except asyncio.CancelledError:  # the search was cancelled: so is the candidate it waits on
                await asyncio.shield(self.cancel(child_id))
                raise

        async def publish(message: str) -> None:
            await self._publish(job, common_pb2.EVENT_KIND_LOG, message=message)

        async def save_recipe(recipe):
            return await self.save_recipe(recipe, job.tenant)

        await search_run.run_search(job, context, submit=submit, wait=wait, save=self.jobs.put, publish=publish,
                                    trials=self.search_trials, save_recipe=save_recipe, deploy=self.deploy)

    async def _publish(self, job: common_pb2.Job, kind: int, **fields) -> None:
        await self.events.publish(ev.make_event(job.job_id, kind, **fields))
