"""The compatibility matrix through the mesh (issue 29): every declared family's tiny model uploaded
once through the gateway with modelpress.Client, then one calibrated recipe (w4a16-gptq) and one
export (onnx-int8; gguf-q8_0 too for decoders, the exports submitted together) run on that upload
as jobs, followed to their end, each output downloaded and checked as the in-process matrix checks it
(matrix.check_output). A job succeeds, or fails (or is refused when submitted) with
FAILED_PRECONDITION naming the family; no call answers UNKNOWN or INTERNAL. A GGUF that transformers'
GGUF loader does not rebuild is given to the evaluator too, which refuses it naming its architecture.

One mesh for the module: the five technique services and the gateway as real gRPC servers over the
session's real nats-server (as tests/integration runs it). `make test-compat` runs every family
(marker `compat`); `make test` runs QUICK, a decoder and an encoder.
"""

from __future__ import annotations

import asyncio
import json
import time

import grpc
import pytest

from modelpress import Client
from modelpress.v1 import common_pb2
from services.common.contract import model_kinds
from services.common.engines import gguf_transformers
from services.common.models.families import FAMILIES
from services.common.runtime.server import start_service
from services.common.runtime.settings import ServiceSettings
from tests.compat import matrix
from tests.integration.conftest import SERVICES, _registrar

CALIBRATED = "w4a16-gptq"
EXPORTS = ("onnx-int8", "gguf-q8_0")  # gguf-q8_0 takes decoders only (n/a for encoders, not submitted)
QUICK = ("qwen2", "bert")
FULL = [f for f in FAMILIES if f not in QUICK]
NO_EVALUATION = common_pb2.EvaluationSpec(skip=True)


@pytest.fixture(scope="module")
async def mesh(nats_url, tmp_path_factory):
    """The gateway's target, in front of every technique service."""
    home = tmp_path_factory.mktemp("mesh-home")
    running = {}
    try:
        for name in SERVICES:
            settings = ServiceSettings(name=name, listen="127.0.0.1:0", nats_url=nats_url, home=home, grace_s=1)
            running[name] = await start_service(settings, _registrar(name))
        targets = {name: f"127.0.0.1:{svc.port}" for name, svc in running.items()}
        gateway = await start_service(ServiceSettings(name="gateway", listen="127.0.0.1:0", nats_url=nats_url,
                                                      home=home, grace_s=1, targets=targets), _registrar("gateway"))
        running["gateway"] = gateway
        yield f"127.0.0.1:{gateway.port}"
    finally:
        for svc in reversed(list(running.values())):
            await svc.stop(grace_s=1)


def call(fn, *args, **kwargs):
    return asyncio.to_thread(fn, *args, **kwargs)


def _refusal_or_error(family: str, recipe: str, code_name: str, message: str, seconds: float) -> matrix.Cell:
    """A FAILED_PRECONDITION naming the family is a refusal; any other failure (UNKNOWN and INTERNAL
    among them) is an error."""
    if code_name == "FAILED_PRECONDITION" and family in message:
        return matrix.Cell(family, recipe, matrix.REFUSED, message[:500], seconds)
    return matrix.Cell(family, recipe, matrix.ERROR, f"{code_name}: {message}"[:500], seconds)


async def _run_job(client: Client, family: str, artifact_id: str, recipe: str):
    """One recipe on the upload through the gateway, submitted and followed to its end: (the succeeded
    job, its seconds), or the cell of its refusal or failure."""
    start = time.perf_counter()
    elapsed = lambda: round(time.perf_counter() - start, 1)
    try:
        job = await call(client.create_job, f"artifact:{artifact_id}", recipe,
                         overrides=matrix.overrides_for(recipe) or None, evaluation=NO_EVALUATION,
                         name=f"compat-{family}-{recipe}")
    except grpc.RpcError as refused:  # refused when submitted
        return _refusal_or_error(family, recipe, refused.code().name, refused.details() or "", elapsed())
    await call(lambda: list(client.watch(job.job_id)))
    job = await call(client.get_job, job.job_id)
    if job.state != common_pb2.JOB_STATE_SUCCEEDED:
        code_name, _, message = job.error.partition(": ")
        return _refusal_or_error(family, recipe, code_name or common_pb2.JobState.Name(job.state), message, elapsed())
    return job, elapsed()


async def _checked(client: Client, family: str, recipe: str, job: common_pb2.Job, seconds: float, model_dir,
                   out_root) -> matrix.Cell:
    """The job's output downloaded and loaded by what its users load it with, its outputs compared
    with the float model's where it is a transformers folder (matrix.check_output)."""
    start = time.perf_counter()
    elapsed = lambda: round(seconds + time.perf_counter() - start, 1)
    out = out_root / recipe
    try:
        await call(client.download, out, job_id=job.job_id)
        fmt = common_pb2.ArtifactFormat.Name(job.output.format)
        agreement = await call(matrix.check_output, model_dir, out, fmt, model_kinds.kind_of_type(family))
    except Exception as exc:  # noqa: BLE001 -- a failed download or check is the cell's outcome
        return matrix.Cell(family, recipe, matrix.ERROR, f"output check: {type(exc).__name__}: {exc}"[:500],
                           elapsed())
    least = matrix.MIN_AGREEMENT.get(recipe, matrix.DEFAULT_MIN_AGREEMENT)
    if agreement is not None and not agreement >= least:
        return matrix.Cell(family, recipe, matrix.ERROR, f"output disagrees with the float model (cosine "
                           f"{agreement:.3f} < {least})", elapsed(), agreement)
    return matrix.Cell(family, recipe, matrix.WORKS, "", elapsed(), agreement)


async def _evaluation_refused(client: Client, family: str, job: common_pb2.Job) -> matrix.Cell:
    """A GGUF whose architecture transformers' GGUF loader does not rebuild, given to the evaluator:
    refused up front with FAILED_PRECONDITION naming the architecture and the family, never measured."""
    start = time.perf_counter()
    try:
        await call(client.evaluate, f"artifact:{job.output.id}")
    except grpc.RpcError as refused:
        cell = _refusal_or_error(family, "evaluate gguf-q8_0", refused.code().name, refused.details() or "",
                                 round(time.perf_counter() - start, 1))
        arch = f"llama.cpp architecture {FAMILIES[family].gguf!r}"
        return cell if arch in cell.detail or cell.outcome != matrix.REFUSED else matrix.Cell(
            family, cell.recipe, matrix.ERROR, f"refused without naming the {arch}: {cell.detail}", cell.seconds)
    return matrix.Cell(family, "evaluate gguf-q8_0", matrix.ERROR, "measured a GGUF transformers does not rebuild",
                       round(time.perf_counter() - start, 1))


async def _family_through_the_mesh(family, mesh, family_model, mesh_cells, tmp_path):
    kind = model_kinds.kind_of_type(family)
    model_dir = await call(family_model, family)
    client = Client(mesh, timeout_s=120)
    try:
        try:
            ref = await call(client.upload, model_dir)
        except grpc.RpcError as refused:
            cell = _refusal_or_error(family, "upload", refused.code().name, refused.details() or "", 0.0)
            mesh_cells.append(cell)
            pytest.fail(f"{family}: the upload was refused: {cell.detail}")
        # The calibrated recipe first, then the exports together (the optimizer runs them side by side).
        # Not all at once: this mesh runs every service in this one process, and torch.export's
        # process-wide state breaks a routed-experts forward in another thread (KeyError 'custom'); a
        # mesh's services are processes of their own, and the optimizer serialises its own (EXPORT_LOCK).
        calibrated = [CALIBRATED] if matrix.applies(CALIBRATED, kind) else []
        exports = [r for r in EXPORTS if matrix.applies(r, kind)]
        ran = [await _run_job(client, family, ref.id, r) for r in calibrated]
        ran += await asyncio.gather(*(_run_job(client, family, ref.id, r) for r in exports))
        recipes = calibrated + exports
        # Checked one by one once every job has ended (the checks load models in this process too).
        cells = [outcome if isinstance(outcome, matrix.Cell)
                 else await _checked(client, family, recipe, *outcome, model_dir, tmp_path)
                 for recipe, outcome in zip(recipes, ran)]
        gguf = next((o for r, o in zip(recipes, ran) if r == "gguf-q8_0" and not isinstance(o, matrix.Cell)), None)
        if gguf is not None and not gguf_transformers.reads(FAMILIES[family].gguf, json.loads(
                (model_dir / "config.json").read_text())):
            cells.append(await _evaluation_refused(client, family, gguf[0]))
    finally:
        client.close()
    mesh_cells.extend(cells)
    wrong = [f"{c.recipe}: {c.detail}" for c in cells if c.outcome not in (matrix.WORKS, matrix.REFUSED)]
    assert not wrong, f"{family} through the mesh: " + "; ".join(wrong)
    # ONNX works wherever the family's declaration says the engines reach it.
    if "ONNX" in FAMILIES[family].exports:
        assert next(c for c in cells if c.recipe == "onnx-int8").outcome == matrix.WORKS


@pytest.mark.parametrize("family", QUICK)
async def test_quick_families_through_the_mesh(family, mesh, family_model, mesh_cells, tmp_path):
    await _family_through_the_mesh(family, mesh, family_model, mesh_cells, tmp_path)


@pytest.mark.compat
@pytest.mark.parametrize("family", FULL)
async def test_family_through_the_mesh(family, mesh, family_model, mesh_cells, tmp_path):
    await _family_through_the_mesh(family, mesh, family_model, mesh_cells, tmp_path)
