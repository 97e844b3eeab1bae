"""`modelpress up/down/status`: nats-server and the six services as local processes on 127.0.0.1.

State lives in `$MODELPRESS_HOME/run/mesh.json` (pids, ports), logs in `$MODELPRESS_HOME/logs/`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from services.common.healthcheck import health_status
from services.common.nats_server import free_port, start_nats_server
from services.common.settings import DEFAULT_PORTS, TECHNIQUE_SERVICES

SERVICES = [*TECHNIQUE_SERVICES.values(), "gateway"]


@dataclass
class MeshState:
    nats_url: str
    nats_pid: int
    services: dict[str, dict] = field(default_factory=dict)  # name -> {"pid", "listen"}

    @property
    def gateway(self) -> str:
        return self.services["gateway"]["listen"]


def state_path(home: Path) -> Path:
    return home / "run" / "mesh.json"


def read_state(home: Path) -> MeshState | None:
    path = state_path(home)
    if not path.exists():
        return None
    return MeshState(**json.loads(path.read_text()))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def up(home: Path, *, free_ports: bool = False, timeout_s: float = 120.0) -> MeshState:
    existing = read_state(home)
    if existing and _alive(existing.nats_pid):
        raise RuntimeError(f"a mesh is already running from {home} (gateway {existing.gateway}); run `modelpress down`")
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    nats_port = free_port() if free_ports else 4222
    nats_proc, nats_url = start_nats_server(home / "nats", port=nats_port, log_file=logs / "nats.log")
    state = MeshState(nats_url=nats_url, nats_pid=nats_proc.pid)
    ports = {name: (free_port() if free_ports else DEFAULT_PORTS[name]) for name in SERVICES}
    env = dict(os.environ, MODELPRESS_HOME=str(home), PYTHONUNBUFFERED="1")
    for name in TECHNIQUE_SERVICES.values():
        env[f"MODELPRESS_{name.upper()}_TARGET"] = f"127.0.0.1:{ports[name]}"
    state_path(home).parent.mkdir(parents=True, exist_ok=True)
    try:
        for name in SERVICES:
            listen = f"127.0.0.1:{ports[name]}"
            with open(logs / f"{name}.log", "ab") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", f"services.{name}", "--listen", listen, "--nats-url", nats_url,
                     "--home", str(home)],
                    stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            state.services[name] = {"pid": proc.pid, "listen": listen}
        state_path(home).write_text(json.dumps(asdict(state), indent=2))
        _wait_healthy(state, logs, timeout_s)
    except BaseException:
        down(home)
        raise
    return state


def _wait_healthy(state: MeshState, logs: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    pending = dict(state.services)
    while pending:
        for name, info in list(pending.items()):
            if not _alive(info["pid"]):
                tail = (logs / f"{name}.log").read_text(errors="replace").splitlines()[-5:]
                raise RuntimeError(f"{name} exited during start-up:\n" + "\n".join(tail))
            if health_status(info["listen"], timeout_s=0.5) == "SERVING":
                del pending[name]
        if pending and time.monotonic() > deadline:
            raise TimeoutError(f"not healthy after {timeout_s:.0f} s: {', '.join(pending)}")
        time.sleep(0.2)


def down(home: Path, timeout_s: float = 20.0) -> list[str]:
    state = read_state(home)
    if state is None:
        return []
    pids = {name: info["pid"] for name, info in state.services.items()}
    stopped = []
    # Gateway first (it stops jobs so they resume later), NATS last.
    order = ["gateway", *[n for n in pids if n != "gateway"]]
    for name in order:
        if name in pids and _terminate(pids[name], timeout_s):
            stopped.append(name)
    if _terminate(state.nats_pid, timeout_s):
        stopped.append("nats")
    state_path(home).unlink(missing_ok=True)
    return stopped


def _terminate(pid: int, timeout_s: float) -> bool:
    if not _alive(pid):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return True
        except ChildProcessError:  # not our child (started by an earlier `up --detach`)
            if not _alive(pid):
                return True
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    return True


def status(home: Path) -> dict[str, str]:
    state = read_state(home)
    if state is None:
        return {}
    report = {"nats": f"{'running' if _alive(state.nats_pid) else 'stopped'} ({state.nats_url})"}
    for name, info in state.services.items():
        report[name] = f"{health_status(info['listen'])} ({info['listen']}, pid {info['pid']})"
    return report
