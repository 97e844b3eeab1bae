"""The whole mesh in one process for each test module: five technique services and the gateway as
real grpc.aio servers on free ports, over the session's real nats-server."""

from __future__ import annotations

import shutil

import pytest

from services.common.runtime.server import start_service
from services.common.runtime.settings import ServiceSettings

SERVICES = ["quantizer", "pruner", "distiller", "evaluator", "optimizer"]


def _registrar(name: str):
    module = __import__(f"services.{name}.servicer", fromlist=["register"])
    return module.register


@pytest.fixture(scope="module")
async def workers(nats_url, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    running = {}
    for name in SERVICES:
        settings = ServiceSettings(name=name, listen="127.0.0.1:0", nats_url=nats_url, home=home, grace_s=1)
        running[name] = await start_service(settings, _registrar(name))
    targets = {name: f"127.0.0.1:{svc.port}" for name, svc in running.items()}
    yield ServiceSettings(name="gateway", listen="127.0.0.1:0", nats_url=nats_url, home=home, grace_s=1,
                          targets=targets)
    for svc in running.values():
        await svc.stop(grace_s=1)


@pytest.fixture(scope="module")
async def gateway(workers):
    service = await start_service(workers, _registrar("gateway"))
    yield f"127.0.0.1:{service.port}"
    await service.stop(grace_s=1)


@pytest.fixture
def model_dir(tiny_llama_dir, allowed_root):
    folder = allowed_root / "tiny"
    shutil.copytree(tiny_llama_dir, folder)
    return folder


@pytest.fixture
def bert_dir(tiny_bert_dir, allowed_root):
    folder = allowed_root / "bert"
    shutil.copytree(tiny_bert_dir, folder)
    return folder


@pytest.fixture
def start_gateway(workers):
    """Starts one more gateway on the same mesh (the caller stops it)."""

    async def start():
        return await start_service(workers, _registrar("gateway"))

    return start
