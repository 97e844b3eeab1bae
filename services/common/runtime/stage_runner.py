"""Runs one engine stage behind a technique service's streaming `Run`.

The engine is a plain function executed in a worker thread; this module does the
plumbing around it: fetch the input, relay progress (gRPC stream + NATS events),
honour a cancel from the caller, package and store the output, and map failures onto
gRPC status codes with a message a user can act on.
"""

from __future__ import annotations

import asyncio
import errno
import os
import logging
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import nats.errors
from pydantic import ValidationError

from modelpress.v1 import common_pb2
from modelpress.structs import to_struct
from services.common.datasets import corpus
from services.common.store import events as ev
from services.common.store import packaging
from services.common.store.load_guide import write_load_guide
from services.common.store.artifact_store import ArtifactCorrupt, ArtifactNotFound, StoreFull, StoreUnresponsive
from services.common.contract.config import ConfigError, WorkBudgetExceeded
from services.common.store.model_source import CacheTooSmall, PathNotAllowed, describe
from services.common.store.path_models import MAX_PATH_CHARACTERS, NAME_MAX_BYTES
from services.common.store.nats_conn import NATS_AWAY
from services.common.models import custom_code
from services.common.models.bounded_json import JsonTooDeep, JsonTooLarge
from services.common.models.model_errors import UnsafeModelError, UnsupportedModelError
from services.common.contract.engine_api import NotPossibleHere, Progress, ProgressReporter, StageCancelled, StageResult
from services.common.store.lineage import library_versions, ref_digest, stage_key
from services.common.measure.machine import this_cpu
from services.common.models.builtin_models import UnknownBuiltin
from services.common.runtime.cite import shown
from services.common.runtime.server import ServiceRuntime, to_jsonable
from services.common.store.stage_checkpoints import StoredCheckpoints, checkpoint_id

log = logging.getLogger(__name__)


# (input folder, output folder, reporter) -> result; runs in a worker thread.
StageWork = Callable[[Path, Path, ProgressReporter], StageResult]

_STATUS_OF: list[tuple[type[BaseException] | tuple[type[BaseException], ...], grpc.StatusCode]] = [
    (ConfigError, grpc.StatusCode.INVALID_ARGUMENT),
    # A model file nested past what any real one does (checked), or past Python's stack (not checked).
    ((JsonTooDeep, JsonTooLarge), grpc.StatusCode.INVALID_ARGUMENT),
    (RecursionError, grpc.StatusCode.INVALID_ARGUMENT),
    # An artifact, record or event past the NATS server's max_payload.
    (nats.errors.MaxPayloadError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (WorkBudgetExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (StoreFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (CacheTooSmall, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (UnknownBuiltin, grpc.StatusCode.INVALID_ARGUMENT),
    (ArtifactNotFound, grpc.StatusCode.NOT_FOUND),
    (FileNotFoundError, grpc.StatusCode.NOT_FOUND),
    (PathNotAllowed, grpc.StatusCode.PERMISSION_DENIED),
    (UnsafeModelError, grpc.StatusCode.FAILED_PRECONDITION),
    (UnsupportedModelError, grpc.StatusCode.FAILED_PRECONDITION),
    (ArtifactCorrupt, grpc.StatusCode.DATA_LOSS),
    (StageCancelled, grpc.StatusCode.CANCELLED),
    (NotPossibleHere, grpc.StatusCode.FAILED_PRECONDITION),
    (NotImplementedError, grpc.StatusCode.UNIMPLEMENTED),
    (ValueError, grpc.StatusCode.FAILED_PRECONDITION),
    # The store did not answer (past its retries), or took no chunk of an output: the gateway tries the stage again.
    ((*NATS_AWAY, StoreUnresponsive), grpc.StatusCode.UNAVAILABLE),
]


# The longest file name (one path component) and path Linux takes, in bytes.


# What an output folder holds beside the weights; a change makes stored outputs miss the reuse key
# (2: the input's non-weight files carried, HOW_TO_LOAD.md).
OUTPUT_LAYOUT = "2"


def name_too_long(exc: BaseException) -> bool:
    """An OSError for a path with a component past NAME_MAX (a caller's path, or a name inside a model)."""
    return isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG


def disk_full(exc: BaseException) -> bool:
    """This worker's disk (or quota) ran out: RESOURCE_EXHAUSTED, not a bug of the stage."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def status_for(exc: BaseException) -> grpc.StatusCode:
    if name_too_long(exc):
        return grpc.StatusCode.INVALID_ARGUMENT
    if disk_full(exc):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    for kind, code in _STATUS_OF:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


def message_for(exc: BaseException) -> str:
    """The failure in a user's words: what the errors without a message of their own mean."""
    if name_too_long(exc):
        path = str(exc.filename or "")
        component = max(path.split("/"), key=lambda part: len(part.encode()))
        if len(component.encode()) <= NAME_MAX_BYTES:
            return f"path {shown(path)} is {len(path.encode())} bytes, past the {MAX_PATH_CHARACTERS} a path may take"
        return (f"path component {shown(component)} is {len(component.encode())} bytes, past the {NAME_MAX_BYTES} a "
                "file name may take")
    if disk_full(exc):
        return f"the worker's disk is full ({os.strerror(exc.errno)}): free space or raise its cache bound"
    if isinstance(exc, RecursionError):
        return f"nested too deeply to read ({exc})"
    if isinstance(exc, nats.errors.MaxPayloadError):
        return "a message past the NATS server's max_payload (a record or event too large to store)"
    return str(exc)


async def abort_with(context: grpc.aio.ServicerContext, exc: BaseException, what: str) -> None:
    code = status_for(exc)
    if code == grpc.StatusCode.INTERNAL:
        log.exception("%s failed", what)
    await context.abort(code, f"{what}: {message_for(exc)}")


async def run_stage(
    runtime: ServiceRuntime,
    stage: common_pb2.StageRequest,
    context: grpc.aio.ServicerContext,
    work: StageWork,
    effective_config: dict,
    service_version: str = "1",
    extra_key: dict[str, str] | None = None,
) -> AsyncIterator[common_pb2.StageUpdate]:
    """`effective_config` is the parsed config with defaults, recorded in the manifest and keyed
    for reuse: a stored output with the same key is handed back without running the engine.
    `extra_key`: what else the output depends on (the model an empty teacher field stood for),
    recorded with the versions."""
    what = f"{stage.method} on {describe(stage.input)}"
    config = to_jsonable(effective_config)
    try:
        input_dir = await runtime.models.local_folder(stage.input)
        input_digest = await _input_digest(runtime, stage.input, input_dir)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a status
        await abort_with(context, exc, what)
        return
    # The worker's ISA class is part of the key: a method may resolve per CPU (fastest-cpu).
    # The corpus split too: an output calibrated on another calibration split is not this one.
    versions = {**library_versions(), "isa_class": this_cpu().isa_class, "output_layout": OUTPUT_LAYOUT,
                "corpus_split": corpus.SPLIT_VERSION,
                **(extra_key or {})}
    key = stage_key(runtime.settings.name, stage.method, config, input_digest, service_version, versions)
    if not stage.recompute and (reused := await _stored_output(runtime, key)) is not None:
        yield common_pb2.StageUpdate(output=reused)
        return

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Progress] = asyncio.Queue()
    reporter = ProgressReporter(sink=lambda p: loop.call_soon_threadsafe(queue.put_nowait, p))
    checkpoint = checkpoint_id(stage.job_id, stage.stage_index, key) if stage.job_id else ""
    if checkpoint:
        reporter.checkpoints = StoredCheckpoints(runtime.store, loop, checkpoint, runtime.settings.checkpoint_every_s)
    # The first event says which replica took the stage (a watcher, or an operator killing one, knows).
    queue.put_nowait(Progress(0, 0, f"{stage.method} running on {runtime.worker_id}", {"worker": runtime.worker_id}))
    scratch = Path(tempfile.mkdtemp(prefix=f"{stage.method}-", dir=runtime.settings.work_dir))
    output_dir = scratch / "model"
    task = asyncio.ensure_future(asyncio.to_thread(work, input_dir, output_dir, reporter))
    try:
        while not task.done() or not queue.empty():
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                continue
            progress = getter.result()
            update = _progress_message(progress)
            await _publish_progress(runtime, stage, progress)
            yield common_pb2.StageUpdate(progress=update)
        result: StageResult = task.result()
        record = packaging.StageRecord(
            technique=runtime.settings.name, method=stage.method, config=config, job_id=stage.job_id,
            stage_index=stage.stage_index, input=describe(stage.input), input_digest=input_digest,
            service_version=service_version, versions=versions, key=key, worker=runtime.worker_id,
            format=common_pb2.ArtifactFormat.Name(result.format), metrics=to_jsonable(result.metrics))
        base_model, parent_chain = await _parent_lineage(runtime, stage.input)
        manifest = packaging.Manifest(
            format=common_pb2.ArtifactFormat.Name(result.format),
            architecture=result.architecture,
            base_model=base_model,
            parent_artifact=stage.input.artifact_id,
            stage=record,
            chain=[*parent_chain, record],
            compression=to_jsonable(result.compression),
            metrics=to_jsonable(result.metrics),
        )
        notes = [*result.notes, *(f"{name}: removed {', '.join(keys)} (modelpress never runs a model's own code)"
                                  for name, keys in custom_code.strip_custom_code(output_dir).items())]
        packaging.write_manifest(output_dir, manifest)
        write_load_guide(output_dir, result.format)
        ref = await runtime.store.put_dir(output_dir, fmt=result.format, meta={
            "base_model": manifest.base_model, "chain": [link.model_dump() for link in manifest.chain]})
        output = common_pb2.StageOutput(artifact=ref, worker=runtime.worker_id, notes=notes, key=key)
        output.metrics.CopyFrom(to_struct(to_jsonable(result.metrics)))
        await runtime.stage_cache.put(key, output)
        if checkpoint:  # the output exists: a retry would reuse it, not resume
            await runtime.store.delete(checkpoint)
        yield common_pb2.StageUpdate(output=output)
    except asyncio.CancelledError:
        # The caller went away or cancelled: stop the engine at its next progress point.
        reporter.cancelled.set()
        await asyncio.shield(asyncio.wait({task}, timeout=60))
        raise
    except Exception as exc:  # noqa: BLE001
        reporter.cancelled.set()
        await abort_with(context, exc, what)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


async def _input_digest(runtime: ServiceRuntime, ref: common_pb2.ModelRef, folder: Path) -> str:
    stored = (await runtime.store.stat(ref.artifact_id)).ref.sha256 if ref.WhichOneof("source") == "artifact_id" else ""
    if ref.WhichOneof("source") == "path":
        return await asyncio.to_thread(ref_digest, ref, stored, folder)
    return ref_digest(ref, stored, folder)


async def _stored_output(runtime: ServiceRuntime, key: str) -> common_pb2.StageOutput | None:
    """The output an earlier stage stored under `key`, if its artifact still exists."""
    cached = await runtime.stage_cache.get(key)
    if cached is None:
        return None
    try:
        await runtime.store.stat(cached.artifact.id)
    except ArtifactNotFound:  # deleted with its job since: compute it again
        return None
    reused = common_pb2.StageOutput()
    reused.CopyFrom(cached)
    reused.reused = True
    reused.notes.append(f"reused artifact {cached.artifact.id} made by {cached.worker} (same method, config, "
                        f"input digest and versions; key {key[:12]})")
    return reused


async def _parent_lineage(runtime: ServiceRuntime, ref: common_pb2.ModelRef
                          ) -> tuple[str, list[packaging.StageRecord]]:
    """The model the input's lineage started from and the stages that made it, from the store's record of
    an artifact this runner stored (put_dir's meta). A folder's own modelpress.json is never read: an
    upload or a path can hold any file, so an input the mesh did not make starts a lineage of its own."""
    if ref.WhichOneof("source") != "artifact_id":
        return describe(ref), []
    meta = (await runtime.store.stat(ref.artifact_id)).meta or {}
    try:
        chain = [packaging.StageRecord.model_validate(link) for link in meta.get("chain", [])]
    except (ValidationError, TypeError) as exc:  # a record from an older layout: start afresh, say so
        log.warning("artifact %s: its stored lineage is unreadable (%s); its output's lineage starts at it",
                    ref.artifact_id, exc)
        return describe(ref), []
    return (meta.get("base_model") or describe(ref)) if chain else describe(ref), chain


def _progress_message(progress: Progress) -> common_pb2.StageProgress:
    message = common_pb2.StageProgress(
        message=progress.message, progress=progress.fraction, step=progress.step, total_steps=progress.total_steps
    )
    if progress.metrics:
        message.metrics.CopyFrom(to_struct(to_jsonable(progress.metrics)))
    return message


async def _publish_progress(runtime: ServiceRuntime, stage: common_pb2.StageRequest, progress: Progress) -> None:
    if not stage.job_id:
        return
    event = ev.make_event(
        stage.job_id,
        common_pb2.EVENT_KIND_STAGE_PROGRESS,
        stage_index=stage.stage_index,
        stage_name=stage.method,
        message=progress.message,
        stage_progress=progress.fraction,
        step=progress.step,
        total_steps=progress.total_steps,
        metrics=to_jsonable(progress.metrics),
    )
    try:
        await runtime.events.publish(event)
    except Exception as exc:  # noqa: BLE001 - progress is best effort; the stage goes on
        log.warning("could not publish progress for %s: %s", stage.job_id, exc)
