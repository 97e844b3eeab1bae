"""A technique service as its own OS process, so a test can kill it for real (SIGKILL) and start it again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from modelpress import Client
from services.common.runtime.healthcheck import health_status
from services.common.runtime.server import start_service
from services.common.runtime.settings import ServiceSettings


class ServiceProcess:
    def __init__(self, service: str, nats_url: str, home, port: int, *flags: str) -> None:
        self.service = service
        self.listen = f"127.0.0.1:{port}"
        self._cmd = [sys.executable, "-m", f"services.{service}", "--listen", self.listen, "--nats-url", nats_url,
                     "--home", str(home), *flags]
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 60) -> None:
        self.proc = subprocess.Popen(self._cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while health_status(self.listen, timeout_s=0.5) != "SERVING":
            assert self.proc.poll() is None, f"the {self.service} exited during start-up"
            assert time.monotonic() < deadline, f"the {self.service} did not become healthy"
            time.sleep(0.2)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.running():
            self.proc.terminate()
            self.proc.wait(timeout=20)


async def gateway_to(workers: ServiceSettings, process: ServiceProcess, replica_wait_s: float):
    """A gateway on the module's mesh whose `process.service` target is the process, waiting up to
    `replica_wait_s` for it to come back; returns (the running service, a Client of it)."""
    from tests.integration.conftest import _registrar

    settings = workers.model_copy(update={"targets": {**workers.targets, process.service: process.listen},
                                          "replica_wait_s": replica_wait_s})
    service = await start_service(settings, _registrar("gateway"))
    return service, Client(f"127.0.0.1:{service.port}")
