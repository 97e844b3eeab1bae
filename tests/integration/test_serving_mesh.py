"""Deploying through the gateway: a result served by the mesh's serving service (its own process,
so it can be killed), reached at the endpoints GetDeployment lists by the real clients, scaled,
reconfigured and deleted; refusals named."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest

from modelpress import Client
from modelpress.v1 import common_pb2
from services.common.runtime.healthcheck import health_status
from tests.protocol_clients import tritonclient_grpc_apart


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServingProcess:
    def __init__(self, nats_url: str, home) -> None:
        self.listen, self.http = f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"
        self.cmd = [sys.executable, "-m", "services.serving", "--listen", self.listen, "--http-listen", self.http,
                    "--nats-url", nats_url, "--home", str(home)]
        self.proc = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while health_status(self.listen, timeout_s=0.5) != "SERVING":
            assert self.proc.poll() is None and time.monotonic() < deadline, "the serving service did not start"
            time.sleep(0.2)

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def serving(nats_url, tmp_path_factory):
    process = ServingProcess(nats_url, tmp_path_factory.mktemp("serving-home"))
    process.start()
    yield process
    process.stop()


async def _call(fn, *args, **kwargs):
    return await asyncio.to_thread(fn, *args, **kwargs)


async def test_an_uploaded_encoder_is_deployed_served_scaled_and_deleted(gateway, serving, bert_dir, start_gateway):
    client = Client(gateway, timeout_s=60)
    try:
        ref = await _call(client.upload, bert_dir)
        deployment = await _call(client.deploy, artifact_id=ref.id, name="bert-tiny",
                                 config={"max_batch_size": 4, "max_wait_ms": 2})
        assert deployment.state == common_pb2.DEPLOYMENT_STATE_PENDING and deployment.model_kind == "encoder"
        served = await _call(client.wait_deployment, deployment.deployment_id, timeout_s=120)
        assert served.state == common_pb2.DEPLOYMENT_STATE_SERVING and served.ready_replicas == 1
        grpc_address = next(e.address for e in served.endpoints if e.protocol == "oip-grpc")
        assert grpc_address == serving.listen

        grpcclient = tritonclient_grpc_apart()
        triton = grpcclient.InferenceServerClient(grpc_address)
        text = grpcclient.InferInput("text", [2], "BYTES")
        text.set_data_from_numpy(np.array([b"a tuple is immutable", b"modules are objects"], dtype=object))
        embedding = (await _call(triton.infer, "bert-tiny", [text])).as_numpy("embedding")
        assert embedding.shape == (2, 32) and np.isfinite(embedding).all()

        await asyncio.sleep(4)  # one heartbeat carries the request into the figures
        counted = await _call(client.get_deployment, deployment.deployment_id)
        assert counted.status["requests"]["ok"] >= 1
        # The record lives in the mesh's KV, not in a gateway: another gateway (a restarted one) knows it.
        other = await start_gateway()
        try:
            seen = await _call(Client(f"127.0.0.1:{other.port}").get_deployment, deployment.deployment_id)
            assert seen.state == common_pb2.DEPLOYMENT_STATE_SERVING and seen.name == "bert-tiny"
        finally:
            await other.stop(grace_s=1)

        # The name is the model's on every protocol: a second deployment may not take it.
        with pytest.raises(grpc.RpcError) as taken:
            await _call(client.deploy, artifact_id=ref.id, name="bert-tiny")
        assert taken.value.code() == grpc.StatusCode.ALREADY_EXISTS
        with pytest.raises(grpc.RpcError) as bad:
            await _call(client.deploy, artifact_id=ref.id, name="other", config={"max_batch_size": 0})
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_batch_size" in bad.value.details()

        # Two replicas asked, one serving process: one serves, the other slot waits for a process.
        scaled = await _call(client.update_deployment, deployment.deployment_id, replicas=2)
        assert scaled.replicas == 2 and scaled.ready_replicas <= 1

        await _call(client.delete_deployment, deployment.deployment_id)
        with pytest.raises(grpc.RpcError) as gone:
            await _call(client.get_deployment, deployment.deployment_id)
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND
        deadline = time.monotonic() + 30
        while await _call(triton.is_model_ready, "bert-tiny"):
            assert time.monotonic() < deadline, "the serving replica kept a deleted deployment"
            await asyncio.sleep(0.5)
    finally:
        client.close()


async def test_a_killed_serving_process_is_replaced_and_its_deployment_served_again(gateway, serving, bert_dir):
    client = Client(gateway, timeout_s=60)
    try:
        ref = await _call(client.upload, bert_dir)
        deployment = await _call(client.deploy, artifact_id=ref.id, name="bert-restarted")
        await _call(client.wait_deployment, deployment.deployment_id, timeout_s=120)
        serving.kill()
        grpcclient = tritonclient_grpc_apart()
        from tritonclient.utils import InferenceServerException

        text = grpcclient.InferInput("text", [1], "BYTES")
        text.set_data_from_numpy(np.array([b"hello"], dtype=object))
        with pytest.raises(InferenceServerException) as down:
            await _call(grpcclient.InferenceServerClient(serving.listen).infer, "bert-restarted", [text],
                        client_timeout=10)
        assert "UNAVAILABLE" in down.value.status()
        serving.start()  # what the orchestrator does; the new process takes the dead one's slot
        served = await _call(client.wait_deployment, deployment.deployment_id, timeout_s=120)
        address = next(e.address for e in served.endpoints if e.protocol == "oip-grpc")
        result = await _call(grpcclient.InferenceServerClient(address).infer, "bert-restarted", [text])
        assert result.as_numpy("embedding").shape == (1, 32)
        await _call(client.delete_deployment, deployment.deployment_id)
    finally:
        client.close()
