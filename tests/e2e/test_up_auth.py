"""`modelpress up --auth` as processes: the gateway's job runs on workers that ask for mutual TLS and
tickets, a caller on the same machine reaching a worker's port directly is refused, workers reach
NATS as their own user, and what the mesh writes under its home is its owner's alone. One mesh, every check on it (six processes take
tens of seconds to start)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from modelpress import Client
from modelpress.v1 import common_pb2, technique_pb2
from services.cli import launcher
from services.cli.local_pki import CLIENT_ROLE, MeshTls

pytestmark = pytest.mark.e2e

MODELPRESS = [sys.executable, "-m", "services.cli.main"]
RUN = "/modelpress.v1.TechniqueService/Run"


def _refusal(target: str, credentials: grpc.ChannelCredentials | None, request) -> grpc.StatusCode:
    with (grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)) as channel:
        run = channel.unary_stream(RUN, request_serializer=type(request).SerializeToString,
                                   response_deserializer=technique_pb2.TechniqueServiceRunResponse.FromString)
        with pytest.raises(grpc.RpcError) as info:
            list(run(request, timeout=10))
    return info.value.code()


def _loose(folder: Path) -> list[str]:
    """Paths under `folder` that anyone but their owner may read, write or enter."""
    return [f"{path} {stat.filemode(path.stat().st_mode)}" for path in [folder, *folder.rglob("*")]
            if not path.is_symlink() and path.stat().st_mode & 0o077]


@pytest.mark.timeout(300)
def test_up_auth_workers_answer_the_gateway_alone_and_the_home_is_private(tmp_path, tiny_llama_dir):
    home, models = tmp_path / "home", tmp_path / "models"
    shutil.copytree(tiny_llama_dir, models / "tiny")
    env = {k: v for k, v in os.environ.items() if k not in ("MODELPRESS_GATEWAY", "MODELPRESS_TOKEN",
                                                             "MODELPRESS_CACHE")}
    env.update(MODELPRESS_HOME=str(home), MODELPRESS_ALLOWED_ROOTS=str(models))
    up = subprocess.run([*MODELPRESS, "up", "--detach", "--free-ports", "--auth"], env=env, capture_output=True,
                        text=True, timeout=240)
    assert up.returncode == 0, up.stderr
    try:
        state = launcher.read_state(home)
        client = Client(state.gateway, token=launcher.operator_token_path(home).read_text().strip(), timeout_s=60)
        job = client.create_job(f"path:{models / 'tiny'}", "fp16", evaluation=common_pb2.EvaluationSpec(skip=True))
        list(client.watch(job.job_id))
        job = client.get_job(job.job_id)
        assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error

        # A local user who reaches the quantizer's port: plaintext, or TLS without the gateway's
        # certificate, fails the handshake; with it (stolen) but no ticket, UNAUTHENTICATED.
        tls = MeshTls(launcher.mesh_tls_dir(home))
        target = state.services["quantizer"]["listen"]
        request = technique_pb2.TechniqueServiceRunRequest(stage=common_pb2.StageRequest(
            job_id=job.job_id, stage_index=0, input=job.model, method="fp16", recompute=True))
        trusting = grpc.ssl_channel_credentials(tls.ca.read_bytes())
        gateway_identity = grpc.ssl_channel_credentials(tls.ca.read_bytes(), tls.key(CLIENT_ROLE).read_bytes(),
                                                        tls.cert(CLIENT_ROLE).read_bytes())
        assert _refusal(target, None, request) == grpc.StatusCode.UNAVAILABLE
        assert _refusal(target, trusting, request) == grpc.StatusCode.UNAVAILABLE
        assert _refusal(target, gateway_identity, request) == grpc.StatusCode.UNAUTHENTICATED

        # The worker connects to NATS as its own user, without the gateway's password.
        environ = Path(f"/proc/{state.services['quantizer']['pid']}/environ").read_bytes().split(b"\0")
        nats_url = next(item for item in environ if item.startswith(b"MODELPRESS_NATS_URL="))
        assert f"{launcher.WORKER_NATS_USER}:".encode() in nats_url
        assert (home / "auth" / "nats.password").read_bytes().strip() not in nats_url

        status = subprocess.run([*MODELPRESS, "status"], env=env, capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stdout + status.stderr  # the launcher probes workers over mTLS
    finally:
        subprocess.run([*MODELPRESS, "down"], env=env, capture_output=True, timeout=120)
    assert not _loose(home / "auth") and not _loose(home / "logs") and not _loose(home / "run")
    assert not _loose(home / "cache") and not _loose(home / "work") and not _loose(home / "nats")
