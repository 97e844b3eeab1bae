"""The stage runner around an engine function (services/common/runtime/stage_runner.py), over a real
gRPC channel and the session's real nats-server: progress streamed and published in order, the
output stored with its manifest and reused by its key, each failure mapped to a status a user can act
on, a cancel reaching the engine's reporter, and a retried stage resuming from its checkpoint.

The servicer here is the thinnest one: its Run hands the request's stage to `run_stage` with a work
function the test picks by method name (the technique servicer's own checks are tested apart)."""

from __future__ import annotations

import asyncio
import errno
import json
import threading
import time
import uuid
from pathlib import Path

import grpc
import nats.errors
import pytest

from modelpress.structs import from_struct, to_struct
from modelpress.v1 import common_pb2, technique_pb2, technique_pb2_grpc
from services.common.contract.config import ConfigError, WorkBudgetExceeded
from services.common.contract.engine_api import NotPossibleHere, StageCancelled, StageResult
from services.common.measure.machine import this_cpu
from services.common.store.model_source import CacheTooSmall, describe
from services.common.models.bounded_json import JsonTooDeep
from services.common.models.modelio import IncompleteCheckpoint, UnsafeModelError, UnsupportedModelError
from services.common.runtime.server import open_runtime
from services.common.runtime.settings import ServiceSettings
from services.common.runtime.stage_runner import OUTPUT_LAYOUT, run_stage, status_for
from services.common.store import packaging
from services.common.store.artifact_store import ArtifactCorrupt, ArtifactNotFound, StoreFull, StoreUnresponsive
from services.common.datasets import corpus
from services.common.store.lineage import library_versions

TECHNIQUE = "stagetester"
PACKED = common_pb2.ARTIFACT_FORMAT_PACKED_SAFETENSORS
FLOAT = common_pb2.ARTIFACT_FORMAT_HF_SAFETENSORS


class RunnerServicer(technique_pb2_grpc.TechniqueServiceServicer):
    """Run = run_stage(the stage, works[method], the stage's config as the effective config)."""

    def __init__(self, runtime) -> None:
        self.runtime = runtime
        self.works = {}

    async def Run(self, request, context):
        stage = request.stage
        async for update in run_stage(self.runtime, stage, context, self.works[stage.method],
                                      from_struct(stage.config)):
            yield technique_pb2.TechniqueServiceRunResponse(update=update)


@pytest.fixture(scope="module")
async def mesh(nats_url, tmp_path_factory):
    home = tmp_path_factory.mktemp("stage-runner-home")
    runtime = await open_runtime(ServiceSettings(name=TECHNIQUE, listen="127.0.0.1:0", nats_url=nats_url,
                                                 home=home, checkpoint_every_s=0))
    servicer = RunnerServicer(runtime)
    server = grpc.aio.server()
    technique_pb2_grpc.add_TechniqueServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield runtime, servicer, technique_pb2_grpc.TechniqueServiceStub(channel)
    await channel.close()
    await server.stop(None)
    await runtime.nc.close()


@pytest.fixture(scope="module")
async def input_model(mesh, tmp_path_factory):
    """A model the mesh stored with its lineage: made from MiniLM by one fp16 stage."""
    runtime, _, _ = mesh
    folder = tmp_path_factory.mktemp("input-model")
    (folder / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    (folder / "model.safetensors").write_bytes(b"\1" * 2048)
    parent = packaging.StageRecord(technique="quantizer", method="fp16", input="builtin:minilm-l6")
    manifest = packaging.Manifest(format="ARTIFACT_FORMAT_HF_SAFETENSORS", base_model="builtin:minilm-l6",
                                  stage=parent, chain=[parent])
    packaging.write_manifest(folder, manifest)
    return await runtime.store.put_dir(folder, fmt=FLOAT, meta={"base_model": manifest.base_model,
                                                                "chain": [parent.model_dump()]})


@pytest.fixture(scope="module")
async def forged_upload(mesh, tmp_path_factory):
    """An upload (stored without lineage) whose modelpress.json claims a base model, job and worker."""
    runtime, _, _ = mesh
    folder = tmp_path_factory.mktemp("forged")
    (folder / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    forged = packaging.StageRecord(technique="quantizer", method="gptq", job_id="j-victim",
                                   worker="trusted-prod-node")
    packaging.write_manifest(folder, packaging.Manifest(format="ARTIFACT_FORMAT_HF_SAFETENSORS",
                                                        base_model="builtin:smollm2-135m", stage=forged,
                                                        chain=[forged]))
    return await runtime.store.put_dir(folder, fmt=FLOAT)


def _stage(method: str, model: common_pb2.ArtifactRef | common_pb2.ModelRef, job_id: str = "", index: int = 0,
           recompute: bool = False, **config) -> technique_pb2.TechniqueServiceRunRequest:
    ref = model if isinstance(model, common_pb2.ModelRef) else common_pb2.ModelRef(artifact_id=model.id)
    return technique_pb2.TechniqueServiceRunRequest(stage=common_pb2.StageRequest(
        job_id=job_id, stage_index=index, input=ref, method=method, recompute=recompute,
        config=to_struct({"nonce": uuid.uuid4().hex, **config})))


async def _updates(stub, request) -> list[common_pb2.StageUpdate]:
    return [response.update async for response in stub.Run(request)]


def _writes(name: str, content: bytes = b"weights", fmt: int = PACKED, **metrics):
    """An engine that reports three steps, writes one file and returns `metrics`."""
    ran = []

    def work(src: Path, dst: Path, reporter) -> StageResult:
        ran.append(src)
        for step in (1, 2, 3):
            reporter.report(step, 3, f"{name} step {step}", layer=step, error=step / 10)
        dst.mkdir(parents=True)
        (dst / "model.bin").write_bytes(content)
        return StageResult(format=fmt, architecture="BertModel", compression={"bits": 4},
                           metrics=metrics, notes=[f"{name} ran emulated"])
    work.ran = ran
    return work


async def test_progress_is_streamed_and_published_in_order_then_the_output_is_stored_with_its_lineage(
        mesh, input_model, tmp_path):
    runtime, servicer, stub = mesh
    servicer.works["pack"] = work = _writes("pack", size_ratio=0.25, where=Path("/somewhere"))
    job_id = "j-" + uuid.uuid4().hex[:16]
    request = _stage("pack", input_model, job_id=job_id, index=2, group_size=64)
    updates = await _updates(stub, request)

    assert [u.WhichOneof("update") for u in updates] == ["progress"] * 4 + ["output"]
    first, *steps = [u.progress for u in updates[:-1]]
    # The first event names the replica that took the stage.
    assert first.message == f"pack running on {runtime.worker_id}"
    assert from_struct(first.metrics) == {"worker": runtime.worker_id}
    assert [(p.step, p.total_steps, p.message) for p in steps] == [(s, 3, f"pack step {s}")
                                                                   for s in (1, 2, 3)]
    assert [p.progress for p in steps] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert [from_struct(p.metrics) for p in steps] == [{"layer": s, "error": s / 10} for s in (1, 2, 3)]
    # The same steps reached the job's event stream, in order, under the stage's index and method.
    events = [e async for e in runtime.events.replay(job_id, follow=False, poll_s=0.3)]
    assert [(e.kind, e.stage_index, e.stage_name, e.step) for e in events] == [
        (common_pb2.EVENT_KIND_STAGE_PROGRESS, 2, "pack", step) for step in (0, 1, 2, 3)]
    assert [e.message for e in events] == [first.message, *(p.message for p in steps)]
    assert events[2].stage_progress == pytest.approx(2 / 3) and from_struct(events[3].metrics)["layer"] == 3

    output = updates[-1].output
    assert len(work.ran) == 1 and work.ran[0].name == input_model.id  # the fetched input folder
    assert (output.artifact.format, output.worker, list(output.notes), output.reused) == (
        PACKED, runtime.worker_id, ["pack ran emulated"], False)
    assert len(output.key) == 64
    # Metrics as plain values: a Path becomes its string, numbers stay numbers.
    assert from_struct(output.metrics) == {"size_ratio": 0.25, "where": "/somewhere"}
    stored = await runtime.store.stat(output.artifact.id)
    assert stored.ref == output.artifact
    assert stored.meta["base_model"] == "builtin:minilm-l6"  # inherited from the input's stored lineage
    assert [link["method"] for link in stored.meta["chain"]] == ["fp16", "pack"]

    await runtime.store.get_dir(output.artifact.id, tmp_path / "out")
    assert (tmp_path / "out" / "model.bin").read_bytes() == b"weights"
    manifest = packaging.read_manifest(tmp_path / "out")
    assert (manifest.format, manifest.architecture, manifest.parent_artifact, manifest.compression) == (
        "ARTIFACT_FORMAT_PACKED_SAFETENSORS", "BertModel", input_model.id, {"bits": 4})
    record = manifest.stage
    assert (record.technique, record.method, record.job_id, record.stage_index) == (TECHNIQUE, "pack",
                                                                                     job_id, 2)
    assert (record.key, record.worker) == (output.key, runtime.worker_id)
    assert record.config == from_struct(request.stage.config)
    assert record.input == f"artifact:{input_model.id}"
    assert record.input_digest == f"sha256:{input_model.sha256}"
    # The key holds the versions, the worker's ISA class (a method may resolve per CPU) and the corpus split
    # (an output calibrated on another calibration split is another output).
    assert record.versions == {**library_versions(), "isa_class": this_cpu().isa_class, "output_layout": OUTPUT_LAYOUT,
                               "corpus_split": corpus.SPLIT_VERSION}
    assert [link.method for link in manifest.chain] == ["fp16", "pack"] and manifest.chain[-1] == record
    # The scratch folder went with the stage.
    assert list(runtime.settings.work_dir.glob("pack-*")) == []


async def test_the_same_stage_again_is_reused_without_running_its_engine_until_recompute_or_deletion(
        mesh, input_model):
    runtime, servicer, stub = mesh
    servicer.works["reuse"] = work = _writes("reuse")
    request = _stage("reuse", input_model, bits=4)
    made = (await _updates(stub, request))[-1].output

    again = await _updates(stub, request)
    assert len(again) == 1 and len(work.ran) == 1  # no progress, no engine: the stored output
    reused = again[0].output
    assert reused.reused
    assert (reused.artifact, reused.key, reused.worker) == (made.artifact, made.key, made.worker)
    assert reused.notes[-1].startswith(f"reused artifact {made.artifact.id} made by {made.worker}")

    other = _stage("reuse", input_model, bits=8)
    other.stage.config["nonce"] = request.stage.config["nonce"]
    changed = (await _updates(stub, other))[-1].output  # another config: another key
    assert not changed.reused and changed.key != made.key and len(work.ran) == 2

    request.stage.recompute = True
    recomputed = (await _updates(stub, request))[-1].output
    assert not recomputed.reused and recomputed.key == made.key and len(work.ran) == 3
    assert recomputed.artifact.id != made.artifact.id

    # The cached key now points at the recomputed artifact; once it is deleted the stage runs again.
    request.stage.recompute = False
    await runtime.store.delete(recomputed.artifact.id)
    after_delete = (await _updates(stub, request))[-1].output
    assert not after_delete.reused and len(work.ran) == 4


async def test_an_uploaded_manifest_is_never_lineage_and_outputs_keep_no_custom_code(mesh, forged_upload, tmp_path):
    runtime, servicer, stub = mesh

    def writes_auto_map(src, dst, reporter):
        dst.mkdir()
        (dst / "config.json").write_text(json.dumps({"model_type": "bert", "auto_map": {"AutoModel": "m.Evil"}}))
        return StageResult(format=FLOAT)

    servicer.works["carry"] = writes_auto_map
    output = (await _updates(stub, _stage("carry", forged_upload)))[-1].output
    stored = await runtime.store.stat(output.artifact.id)
    assert stored.meta["base_model"] == f"artifact:{forged_upload.id}"  # a fresh lineage, starting at the upload
    assert [link["method"] for link in stored.meta["chain"]] == ["carry"]
    await runtime.store.get_dir(output.artifact.id, tmp_path / "out")
    manifest = packaging.read_manifest(tmp_path / "out")
    assert manifest.base_model == f"artifact:{forged_upload.id}" and [s.method for s in manifest.chain] == ["carry"]
    assert "trusted-prod-node" not in (tmp_path / "out" / "modelpress.json").read_text()
    assert json.loads((tmp_path / "out" / "config.json").read_text()) == {"model_type": "bert"}
    assert any("config.json: removed auto_map" in note for note in output.notes)


def _raises(exc: BaseException):
    def work(src, dst, reporter):
        reporter.report(1, 2, "about to fail")
        raise exc
    return work


@pytest.mark.parametrize(("exc", "code"), [
    (ConfigError("group_size: 100 is not a power of two"), grpc.StatusCode.INVALID_ARGUMENT),
    (NotPossibleHere("TensorRT is not installed on this worker"), grpc.StatusCode.FAILED_PRECONDITION),
    (UnsupportedModelError("T5ForConditionalGeneration is not a supported architecture"),
     grpc.StatusCode.FAILED_PRECONDITION),
    (UnsafeModelError("pytorch_model.bin holds pickled weights"), grpc.StatusCode.FAILED_PRECONDITION),
    (ValueError("the model has no attention heads to prune"), grpc.StatusCode.FAILED_PRECONDITION),
    (WorkBudgetExceeded("calibration: 10,000,000 tokens is past the budget"),
     grpc.StatusCode.RESOURCE_EXHAUSTED),
    (StoreFull("the artifact store is full"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ArtifactNotFound("artifact 'a-teacher' not found"), grpc.StatusCode.NOT_FOUND),
    (FileNotFoundError("tokenizer.json is missing"), grpc.StatusCode.NOT_FOUND),
    (ArtifactCorrupt("artifact 'a-x': sha256 mismatch"), grpc.StatusCode.DATA_LOSS),
    (NotImplementedError("int3 is not built yet"), grpc.StatusCode.UNIMPLEMENTED),
    (StageCancelled("stage cancelled"), grpc.StatusCode.CANCELLED),
    (nats.errors.TimeoutError(), grpc.StatusCode.UNAVAILABLE),  # the store did not answer: retried
    (StoreUnresponsive("JetStream acknowledged no artifact chunk for 120 s"), grpc.StatusCode.UNAVAILABLE),
    (JsonTooDeep("config.json: JSON nested 40 levels deep"), grpc.StatusCode.INVALID_ARGUMENT),
    (IncompleteCheckpoint("m: the checkpoint lacks 1 of the model's tensors (lm_head.weight)"),
     grpc.StatusCode.FAILED_PRECONDITION),
    (CacheTooSmall("model.path: '/m' holds 30 GB, past this worker's cache bound"),
     grpc.StatusCode.RESOURCE_EXHAUSTED),
])
async def test_an_engine_failure_becomes_the_status_that_says_what_to_do(mesh, input_model, exc, code):
    runtime, servicer, stub = mesh
    servicer.works["fails"] = _raises(exc)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _updates(stub, _stage("fails", input_model))
    assert info.value.code() == code == status_for(exc)
    # The message names the method and its input, then the engine's own words.
    assert info.value.details() == f"fails on artifact:{input_model.id}: {exc}"
    assert list(runtime.settings.work_dir.glob("fails-*")) == []


@pytest.mark.parametrize(("exc", "code", "message"), [
    (RecursionError("maximum recursion depth exceeded"), grpc.StatusCode.INVALID_ARGUMENT,
     "nested too deeply to read (maximum recursion depth exceeded)"),
    (OSError(errno.ENAMETOOLONG, "File name too long", "/models/" + "x" * 300 + "/config.json"),
     grpc.StatusCode.INVALID_ARGUMENT, f"path component {'x' * 48!r}… (300 characters) is 300 bytes, past the 255"),
    (nats.errors.MaxPayloadError(), grpc.StatusCode.RESOURCE_EXHAUSTED, "past the NATS server's max_payload"),
    (OSError(errno.ENOSPC, "No space left on device"), grpc.StatusCode.RESOURCE_EXHAUSTED,
     "the worker's disk is full (No space left on device)"),
])
async def test_errors_without_a_domain_type_are_typed_with_words_of_their_own(mesh, input_model, exc, code, message):
    _, servicer, stub = mesh
    servicer.works["untyped"] = _raises(exc)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _updates(stub, _stage("untyped", input_model))
    assert info.value.code() == code == status_for(exc)
    assert info.value.details().startswith(f"untyped on artifact:{input_model.id}: ")
    assert message in info.value.details()


async def test_only_an_unforeseen_error_is_internal_and_a_failed_stage_is_never_reused(mesh, input_model,
                                                                                       caplog):
    _, servicer, stub = mesh
    servicer.works["buggy"] = _raises(KeyError("model.layers.0"))
    request = _stage("buggy", input_model)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _updates(stub, request)
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert info.value.details() == f"buggy on artifact:{input_model.id}: 'model.layers.0'"
    # Logged with its traceback: the one status that means a bug to fix.
    assert any(r.exc_info and "buggy on artifact" in r.getMessage() for r in caplog.records)
    servicer.works["buggy"] = work = _writes("buggy")
    assert (await _updates(stub, request))[-1].output.reused is False and len(work.ran) == 1


@pytest.mark.parametrize(("model", "code", "names"), [
    (common_pb2.ModelRef(artifact_id="a-gone0000000000000000"), grpc.StatusCode.NOT_FOUND,
     "fetch on artifact:a-gone0000000000000000: artifact 'a-gone0000000000000000' not found"),
    (common_pb2.ModelRef(builtin="no-such-model"), grpc.StatusCode.INVALID_ARGUMENT,
     "unknown builtin model 'no-such-model'; allowed: "),
    (common_pb2.ModelRef(path="/etc"), grpc.StatusCode.PERMISSION_DENIED,
     "fetch on path:/etc: model.path: '/etc' is outside the allowed roots"),
])
async def test_an_input_that_cannot_be_fetched_is_refused_before_the_engine(mesh, tmp_path, monkeypatch,
                                                                          model, code, names):
    _, servicer, stub = mesh
    monkeypatch.setenv("MODELPRESS_ALLOWED_ROOTS", str(tmp_path))
    servicer.works["fetch"] = work = _writes("fetch")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _updates(stub, _stage("fetch", model))
    assert info.value.code() == code and names in info.value.details()
    assert info.value.details().startswith(f"fetch on {describe(model)}: ")
    assert work.ran == []


async def test_a_cancelled_call_reaches_the_engine_at_its_next_progress_point(mesh, input_model):
    runtime, servicer, stub = mesh
    stopped, seen = threading.Event(), []

    def endless(src, dst, reporter):
        try:
            for step in range(1, 100_000):
                reporter.report(step, 100_000, f"step {step}")
                time.sleep(0.01)
        except StageCancelled:
            seen.append(reporter.cancelled.is_set())
            raise
        finally:
            stopped.set()

    servicer.works["endless"] = endless
    call = stub.Run(_stage("endless", input_model))
    async for response in call:
        if response.update.progress.step >= 2:
            break
    call.cancel()
    assert await asyncio.to_thread(stopped.wait, 10), "the engine did not stop after the cancel"
    assert seen == [True]  # stopped by the runner's cancel, through report()
    for _ in range(50):  # the runner removes the scratch folder once the engine has stopped
        if not list(runtime.settings.work_dir.glob("endless-*")):
            break
        await asyncio.sleep(0.05)
    assert list(runtime.settings.work_dir.glob("endless-*")) == []


async def test_a_retried_stage_resumes_from_its_checkpoint_which_goes_once_the_output_exists(
        mesh, input_model, tmp_path):
    runtime, servicer, stub = mesh
    job_id = "j-" + uuid.uuid4().hex[:16]
    request = _stage("train", input_model, job_id=job_id, index=1)
    checkpoints, resumed = [], []

    def save_then_lose_the_store(src, dst, reporter):
        state = Path(dst).parent / "state"
        state.mkdir()
        (state / "step.txt").write_text("5")
        reporter.checkpoints.save(state, 5)
        checkpoints.append(reporter.checkpoints.artifact_id)
        raise nats.errors.TimeoutError()

    servicer.works["train"] = save_then_lose_the_store
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _updates(stub, request)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    (checkpoint,) = checkpoints
    assert checkpoint.startswith(f"ckpt-{job_id}-1-")
    assert (await runtime.store.stat(checkpoint)).meta == {"checkpoint_step": 5}

    def resume(src, dst, reporter):
        into = reporter.checkpoints.latest(Path(dst).parent / "resumed")
        resumed.append((into / "step.txt").read_text())
        dst.mkdir()
        (dst / "model.bin").write_bytes(b"trained")
        return StageResult(format=FLOAT)

    servicer.works["train"] = resume
    output = (await _updates(stub, request))[-1].output
    assert resumed == ["5"] and output.artifact.id
    with pytest.raises(ArtifactNotFound):
        await runtime.store.stat(checkpoint)


async def test_a_metric_that_is_not_a_finite_number_is_recorded_as_not_measured(mesh, input_model):
    """A diverged loss (NaN) or an infinite perplexity must not make the stage's record unreadable: every
    surface renders stage metrics through from_struct, which refuses NaN and infinities."""
    runtime, servicer, stub = mesh
    job_id = "j-" + uuid.uuid4().hex[:16]

    def diverged(src, dst, reporter):
        reporter.report(1, 1, "diverged", loss=float("nan"))
        dst.mkdir()
        (dst / "model.bin").write_bytes(b"x")
        return StageResult(format=FLOAT,
                           metrics={"loss": float("nan"), "perplexity": float("inf"), "kept": 0.5})

    servicer.works["diverged"] = diverged
    updates = await _updates(stub, _stage("diverged", input_model, job_id=job_id))
    assert from_struct(updates[-1].output.metrics) == {"loss": None, "perplexity": None, "kept": 0.5}
    events = [e async for e in runtime.events.replay(job_id, follow=False, poll_s=0.3)]
    assert from_struct(events[-1].metrics) == {"loss": None}
