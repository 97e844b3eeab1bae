"""Through the real mesh (gateway and workers as grpc.aio servers over a real nats-server): a path
model hands nothing outside its root to a job (a hard link, a file swapped for a symlink once the
stage started), a FIFO in it is refused at once without stalling anyone else's RPCs, a root named
for a tenant is refused to the others, and the workers' cache of what they read is their user's
alone."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modelpress import Client
from modelpress.v1 import common_pb2, technique_pb2, technique_pb2_grpc
from services.common.runtime import auth
from services.common.runtime.server import start_service
from services.common.runtime.settings import ServiceSettings
from tests.integration.conftest import SERVICES, _registrar

SKIP_EVAL = common_pb2.EvaluationSpec(skip=True)
TWO_STAGES = [{"name": "fp16", "technique": "quantizer", "method": "fp16"},
              {"name": "int8", "technique": "quantizer", "method": "int8-weight-only"}]
NOBODY = 65534


def call(fn, *args, **kwargs):
    return asyncio.to_thread(fn, *args, **kwargs)


@pytest.fixture(scope="module")
async def workers(nats_url):
    """This module's mesh, its home and cache in a folder every local user may pass through (as
    /srv or /var/lib would be): only the cache's own modes keep another user out of it."""
    home = Path(tempfile.mkdtemp(prefix="mp-path-models-", dir="/tmp"))
    home.chmod(0o755)
    previous_cache, previous_umask = os.environ.get("MODELPRESS_CACHE"), os.umask(0o022)
    os.environ["MODELPRESS_CACHE"] = str(home / "cache")  # read once, as each service starts
    running = {}
    try:
        for name in SERVICES:
            settings = ServiceSettings(name=name, listen="127.0.0.1:0", nats_url=nats_url, home=home, grace_s=1)
            running[name] = await start_service(settings, _registrar(name))
    finally:
        if previous_cache is None:
            os.environ.pop("MODELPRESS_CACHE")
        else:
            os.environ["MODELPRESS_CACHE"] = previous_cache
    targets = {name: f"127.0.0.1:{svc.port}" for name, svc in running.items()}
    try:
        yield ServiceSettings(name="gateway", listen="127.0.0.1:0", nats_url=nats_url, home=home, grace_s=1,
                              targets=targets)
    finally:
        for svc in running.values():
            await svc.stop(grace_s=1)
        os.umask(previous_umask)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
async def secured(workers, tmp_path_factory):
    """A gateway that checks tokens: (target, {tenant: its client})."""
    path = tmp_path_factory.mktemp("auth") / "tokens.json"
    keys = {name: auth.add_token(path, name=name, tenant=name) for name in ("acme", "globex")}
    service = await start_service(workers.model_copy(update={"auth_tokens": path}), _registrar("gateway"))
    target = f"127.0.0.1:{service.port}"
    yield target, {name: Client(target, token=key, timeout_s=30) for name, key in keys.items()}
    await service.stop(grace_s=1)


@pytest.fixture
def layout(tiny_llama_dir, tmp_path, monkeypatch):
    """root/m (the tiny Llama), acme/m (root named for acme), outside/secret (0600, under no root)."""
    for name in ("root", "acme"):
        shutil.copytree(tiny_llama_dir, tmp_path / name / "m")
    (tmp_path / "outside").mkdir()
    secret = tmp_path / "outside" / "secret"
    secret.write_bytes(b"SECRET-" + os.urandom(16).hex().encode())
    secret.chmod(0o600)
    monkeypatch.setenv("MODELPRESS_ALLOWED_ROOTS", f"{tmp_path / 'root'}{os.pathsep}acme={tmp_path / 'acme'}")
    return tmp_path


async def _refused(fn) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        await call(fn)
    return info.value


async def _worker_refusal(workers, model: Path) -> grpc.aio.AioRpcError:
    """What the quantizer answers a stage on `model` asked of it directly (as after admission)."""
    stage = common_pb2.StageRequest(method="fp16", input=common_pb2.ModelRef(path=str(model)), recompute=True)
    async with grpc.aio.insecure_channel(workers.targets["quantizer"]) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in technique_pb2_grpc.TechniqueServiceStub(channel).Run(
                    technique_pb2.TechniqueServiceRunRequest(stage=stage), timeout=10):
                pass
    return info.value


async def test_a_hard_link_out_of_the_root_is_refused_at_admission_and_by_the_worker(gateway, workers, layout):
    model = layout / "root" / "m"
    (model / "vocab.txt").unlink()
    os.link(layout / "outside" / "secret", model / "vocab.txt")
    client = Client(gateway)
    artifacts = {a.artifact.id for a in await call(client.list_artifacts)}
    error = await _refused(lambda: client.create_job(f"path:{model}", "fp16", evaluation=SKIP_EVAL))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "'vocab.txt' has 2 hard links" in error.details() and "copy the file" in error.details()
    # A worker asked directly (a link made after admission) refuses it too, before its engine runs.
    error = await _worker_refusal(workers, model)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED and "'vocab.txt' has 2 hard links" in error.details()
    assert {a.artifact.id for a in await call(client.list_artifacts)} == artifacts  # nothing was stored


def _no_reader(fifo: Path) -> bool:
    """True when nobody holds the FIFO open for reading (a blocked reader is released here)."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError as exc:
        return exc.errno == errno.ENXIO
    return False


async def test_a_fifo_config_is_refused_at_once_and_every_tenant_is_still_served(secured, workers, layout):
    target, clients = secured
    fifo = layout / "root" / "m" / "config.json"
    fifo.unlink()
    os.mkfifo(fifo)

    async def timed(fn):
        started = time.monotonic()
        try:
            return await call(fn), time.monotonic() - started
        except grpc.RpcError as exc:
            return exc, time.monotonic() - started

    def health():
        with grpc.insecure_channel(target) as channel:
            return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)

    path = f"path:{layout / 'root' / 'm'}"
    try:
        # More FIFO jobs at once than the gateway has threads for model files.
        answers = await asyncio.gather(
            *(timed(lambda: clients["acme"].create_job(path, "fp16", evaluation=SKIP_EVAL)) for _ in range(6)),
            timed(clients["globex"].list_jobs), timed(health))
        for answer, took in answers:
            assert took < 2, (answer, took)
        for error, _ in answers[:6]:
            assert isinstance(error, grpc.RpcError), error
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "'config.json' is a FIFO, not a regular file" in error.details()
        assert isinstance(answers[6][0], list) and answers[7][0].status == health_pb2.HealthCheckResponse.SERVING
        # A worker given the folder (evaluation skipped: no gateway read first) refuses it at once too.
        started = time.monotonic()
        error = await _worker_refusal(workers, layout / "root" / "m")
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED and "'config.json' is a FIFO" in error.details()
        assert time.monotonic() - started < 2
    finally:
        assert _no_reader(fifo)  # no thread anywhere was left blocked on it


async def test_a_root_named_for_a_tenant_is_refused_to_the_others(secured, layout):
    _, clients = secured
    path = f"path:{layout / 'acme' / 'm'}"
    error = await _refused(lambda: clients["globex"].create_job(path, "fp16", evaluation=SKIP_EVAL))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "lies under a root the operator opened to other tenants" in error.details()
    assert error.details().endswith(f"the roots open to tenant 'globex': {layout / 'root'}")
    job = await call(clients["acme"].create_job, path, "fp16", evaluation=SKIP_EVAL, recompute=True)
    await call(lambda: list(clients["acme"].watch(job.job_id)))
    assert (await call(clients["acme"].get_job, job.job_id)).state == common_pb2.JOB_STATE_SUCCEEDED


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


async def test_a_swap_after_the_copy_is_not_read_and_the_cache_is_the_workers_alone(gateway, workers, layout,
                                                                                    tmp_path):
    model = layout / "root" / "m"
    secret = (layout / "outside" / "secret").read_bytes()
    vocab = (model / "vocab.txt").read_bytes()
    client = Client(gateway)
    job = await call(client.create_job, f"path:{model}", TWO_STAGES, evaluation=SKIP_EVAL, recompute=True)

    def watch_and_swap() -> bool:
        swapped = False
        for event in client.watch(job.job_id):
            if (not swapped and event.kind == common_pb2.EVENT_KIND_STAGE_PROGRESS
                    and event.message.startswith("fp16 running on")):
                # The worker copied the folder before it said it runs: now a file leads out.
                (model / "vocab.txt").unlink()
                (model / "vocab.txt").symlink_to(layout / "outside" / "secret")
                swapped = True
        return swapped

    assert await call(watch_and_swap)
    done = await call(client.get_job, job.job_id)
    assert done.state == common_pb2.JOB_STATE_SUCCEEDED, done.error
    out = tmp_path / "download"
    await call(client.download, out, job_id=job.job_id)
    assert (out / "vocab.txt").read_bytes() == vocab
    assert not [p for p in out.rglob("*") if p.is_file() and secret in p.read_bytes()]

    # The copies the workers read (the path model's, the first stage's output fetched for the
    # second) are 0700 folders of 0600 files, whatever the umask (022 in this module).
    cache = workers.home / "cache" / "artifacts"
    copies = [p for p in cache.iterdir() if p.is_dir()]
    assert {p.name[:2] for p in copies} >= {"p-", "a-"}, copies
    assert _mode(cache) == 0o700
    for path in [p for copy in copies for p in (copy, *copy.rglob("*"))]:
        assert _mode(path) == (0o700 if path.is_dir() else 0o600), (path, oct(_mode(path)))
    if os.geteuid() != 0:
        return
    weights = next(p for p in copies[0].rglob("*") if p.is_file())
    for command in (["cat", str(weights)], ["ls", str(cache)]):
        as_nobody = await call(_as_nobody, command)
        assert as_nobody.returncode != 0 and b"Permission denied" in as_nobody.stderr, as_nobody


def _as_nobody(command: list[str]) -> subprocess.CompletedProcess:
    """`command` run as another local user (nobody), as root may."""
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *command],
                          capture_output=True, timeout=10, check=False)
