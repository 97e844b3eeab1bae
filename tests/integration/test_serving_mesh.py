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
import threading
import time
from collections import Counter

import grpc
import numpy as np
import pytest

from modelpress import Client
from modelpress.v1 import common_pb2
from services.common.runtime.healthcheck import health_status
from tests.protocol_clients import tritonclient_grpc_apart

LOAD_THREADS = 8
CALL_TIMEOUT_S = 10  # each load call's client_timeout: a call still running then would end DEADLINE_EXCEEDED
HANG_S = 15  # a call not ended this long after it began hung
UNAVAILABLE = "StatusCode.UNAVAILABLE"


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


class _Load:
    """LOAD_THREADS client threads, each with its own tritonclient.grpc client, calling one encoder
    in a loop (a 1-text request, `client_timeout` CALL_TIMEOUT_S) until stopped; every call is
    recorded with its begin, its end and how it ended ("ok" or the exception's gRPC status)."""

    def __init__(self, grpcclient, address: str, model: str) -> None:
        from tritonclient.utils import InferenceServerException

        self.grpcclient, self.address, self.model = grpcclient, address, model
        self.exception = InferenceServerException
        self.calls: list[tuple[int, float, float, str]] = []  # (thread, begin, end, outcome)
        self.busy: dict[int, float] = {}  # thread → when its call in progress began
        self.lock, self.stopping = threading.Lock(), threading.Event()
        self.threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(LOAD_THREADS)]

    def _loop(self, thread: int) -> None:
        client = self.grpcclient.InferenceServerClient(self.address)
        text = self.grpcclient.InferInput("text", [1], "BYTES")
        text.set_data_from_numpy(np.array([f"request from thread {thread}".encode()], dtype=object))
        try:
            while not self.stopping.is_set():
                begin = time.monotonic()
                with self.lock:
                    self.busy[thread] = begin
                try:
                    result = client.infer(self.model, [text], client_timeout=CALL_TIMEOUT_S)
                    outcome = "ok" if result.as_numpy("embedding").shape == (1, 32) else "wrong answer"
                except self.exception as exc:
                    outcome = exc.status()
                except Exception as exc:  # noqa: BLE001 - recorded: the test names what else came out
                    outcome = f"{type(exc).__name__}: {exc}"
                with self.lock:
                    del self.busy[thread]
                    self.calls.append((thread, begin, time.monotonic(), outcome))
                if outcome != "ok":
                    self.stopping.wait(0.05)  # a refused connection fails at once: no busy loop meanwhile
        finally:
            client.close()

    def snapshot(self) -> tuple[list[tuple[int, float, float, str]], dict[int, float]]:
        with self.lock:
            return list(self.calls), dict(self.busy)

    async def until(self, done, timeout_s: float, what: str) -> None:
        """Waits (without blocking the event loop, which runs the gateway) until `done(calls)`."""
        deadline = time.monotonic() + timeout_s
        while not done(self.snapshot()[0]):
            calls, busy = self.snapshot()
            now = time.monotonic()
            assert now < deadline, (f"{what} within {timeout_s:g} s: {Counter(c[3] for c in calls)}; calls in "
                                    f"progress for {sorted(round(now - b, 1) for b in busy.values())} s")
            await asyncio.sleep(0.1)

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> list[int]:
        """Stops the threads; those still in a call after HANG_S (hung)."""
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=HANG_S)
        return [i for i, thread in enumerate(self.threads) if thread.is_alive()]


async def test_a_serving_process_killed_under_load_fails_its_calls_unavailable_and_is_replaced(
        gateway, serving, bert_dir):
    """Issue 30's bar: a replica SIGKILLed while clients call it. The calls in flight, and those made
    while it is down, fail UNAVAILABLE (retryable) within seconds, none hangs (a DEADLINE_EXCEEDED
    would be a call that hung until its client's timeout); the orchestrator starts a new process,
    which takes the dead one's slot, and the same clients get answers again at the endpoint
    GetDeployment lists."""
    client = Client(gateway, timeout_s=60)
    load = None
    try:
        ref = await _call(client.upload, bert_dir)
        deployment = await _call(client.deploy, artifact_id=ref.id, name="bert-restarted")
        served = await _call(client.wait_deployment, deployment.deployment_id, timeout_s=120)
        address = next(e.address for e in served.endpoints if e.protocol == "oip-grpc")
        load = _Load(tritonclient_grpc_apart(), address, "bert-restarted")
        load.start()
        await load.until(lambda calls: {c[0] for c in calls if c[3] == "ok"} == set(range(LOAD_THREADS)),
                         30, "every load thread had an answer")
        before, _ = load.snapshot()
        assert Counter(c[3] for c in before) == {"ok": len(before)}

        killed = time.monotonic()
        serving.kill()  # SIGKILL: no drain, no goodbye to the clients
        dead = time.monotonic()
        # Every thread ends the call it was in at the kill, and makes one more against the dead port.
        await load.until(lambda calls: {c[0] for c in calls if c[1] > dead} == set(range(LOAD_THREADS)),
                         HANG_S, "every load thread ended its call in flight at the kill")
        restarting = time.monotonic()
        calls, _ = load.snapshot()
        # In flight at the kill: an answer already on its way arrives, the others fail UNAVAILABLE.
        in_flight = Counter(c[3] for c in calls if c[1] < dead and c[2] >= killed)
        down = Counter(c[3] for c in calls if c[1] >= dead)
        assert in_flight[UNAVAILABLE] >= 1 and set(in_flight) <= {"ok", UNAVAILABLE}, in_flight
        assert set(down) == {UNAVAILABLE}, down  # neither DEADLINE_EXCEEDED (a hang) nor anything else
        assert max(c[2] - c[1] for c in calls if c[2] >= killed) < HANG_S

        await _call(serving.start)  # what the orchestrator does: a new process on the dead one's ports
        # GetDeployment still shows the dead replica's slot (its last heartbeat is seconds old); the new
        # process takes it over: loading (no ready replica, for a heartbeat at least), then serving.
        await _until_not_ready(client, deployment.deployment_id, timeout_s=30)
        served = await _call(client.wait_deployment, deployment.deployment_id, timeout_s=120, poll_s=0.25)
        assert served.ready_replicas == 1
        address = next(e.address for e in served.endpoints if e.protocol == "oip-grpc")
        assert address == load.address  # the clients kept calling the endpoint GetDeployment lists
        resumed = time.monotonic()
        await load.until(lambda calls: {c[0] for c in calls if c[1] > resumed and c[3] == "ok"}
                         == set(range(LOAD_THREADS)), 30, "every load thread had an answer after the restart")
        hung = load.stop()
        assert not hung, f"load threads {hung} still in a call {HANG_S} s after being stopped"
        calls, _ = load.snapshot()
        assert max(c[2] - c[1] for c in calls) < HANG_S
        # Until the new process listens, and while it starts and loads the deployment: UNAVAILABLE (retryable),
        # never NOT_FOUND, which a client takes as final; then answers.
        replacing = Counter(c[3] for c in calls if restarting <= c[1] < resumed)
        assert set(replacing) <= {UNAVAILABLE, "ok"}, replacing
        served_again = Counter(c[3] for c in calls if c[1] >= resumed)
        assert set(served_again) <= {"ok", UNAVAILABLE} and served_again["ok"] >= LOAD_THREADS, served_again
        await _call(client.delete_deployment, deployment.deployment_id)
    finally:
        if load is not None:
            load.stop()
        client.close()


async def _until_not_ready(client: Client, deployment_id: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while (await _call(client.get_deployment, deployment_id)).ready_replicas:
        assert time.monotonic() < deadline, "no new process took the dead replica's slot"
        await asyncio.sleep(0.2)
