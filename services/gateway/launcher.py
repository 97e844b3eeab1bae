"""`modelpress up/down/status`: nats-server and the six services as local processes on 127.0.0.1.

State lives in `$MODELPRESS_HOME/run/mesh.json` (pids, ports), logs in `$MODELPRESS_HOME/logs/`.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from services.common import auth
from services.common.healthcheck import health_status
from services.common.nats_conn import without_secret
from services.common.nats_server import free_port, start_nats_server
from services.common.settings import DEFAULT_PORTS, TECHNIQUE_SERVICES

SERVICES = [*TECHNIQUE_SERVICES.values(), "gateway"]


@dataclass
class MeshState:
    nats_url: str  # without credentials: the services get those from the environment
    nats_pid: int
    services: dict[str, dict] = field(default_factory=dict)  # name -> {"pid", "listen"}
    # Started with --auth: the gateway checks tokens (operator token in `operator_token_path`),
    # NATS asks for a password only the services know.
    auth: bool = False

    @property
    def gateway(self) -> str:
        return self.services["gateway"]["listen"]


def state_path(home: Path) -> Path:
    return home / "run" / "mesh.json"


def auth_dir(home: Path) -> Path:
    return home / "auth"


def tokens_path(home: Path) -> Path:
    return auth_dir(home) / "tokens.json"


def operator_token_path(home: Path) -> Path:
    return auth_dir(home) / "operator.token"


def ensure_auth(home: Path) -> tuple[str, str]:
    """The local mesh's secrets, made once under `home/auth` (0600): a tokens file holding an
    operator token, and the NATS password. Returns (NATS user, password)."""
    folder = auth_dir(home)
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    if not operator_token_path(home).exists():
        token = auth.add_token(tokens_path(home), name="local-operator", tenant="operator", role="operator")
        _write_secret(operator_token_path(home), token)
    nats_secret = folder / "nats.password"
    if not nats_secret.exists():
        _write_secret(nats_secret, secrets.token_urlsafe(24))
    return "modelpress", nats_secret.read_text().strip()


def _write_secret(path: Path, value: str) -> None:
    path.touch(mode=0o600)
    path.write_text(value + "\n")


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


def up(home: Path, *, free_ports: bool = False, timeout_s: float = 120.0, with_auth: bool = False) -> MeshState:
    """Starts NATS and every service on 127.0.0.1. `with_auth`: tokens at the gateway and a NATS
    password (ensure_auth); otherwise the mesh is open to every local user."""
    existing = read_state(home)
    if existing and _alive(existing.nats_pid):
        raise RuntimeError(f"a mesh is already running from {home} (gateway {existing.gateway}); run `modelpress down`")
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    nats_port = free_port() if free_ports else 4222
    credentials = ensure_auth(home) if with_auth else None
    nats_proc, nats_url = start_nats_server(home / "nats", port=nats_port, log_file=logs / "nats.log",
                                            credentials=credentials)
    state = MeshState(nats_url=without_secret(nats_url), nats_pid=nats_proc.pid, auth=with_auth)
    ports = {name: (free_port() if free_ports else DEFAULT_PORTS[name]) for name in SERVICES}
    # The NATS URL (with its password) reaches the services by environment, never argv.
    env = dict(os.environ, MODELPRESS_HOME=str(home), PYTHONUNBUFFERED="1", MODELPRESS_NATS_URL=nats_url)
    for name in ("MODELPRESS_AUTH_TOKENS", "MODELPRESS_REQUIRE_NATS_AUTH"):
        env.pop(name, None)
    if with_auth:
        env["MODELPRESS_REQUIRE_NATS_AUTH"] = "1"
    for name in TECHNIQUE_SERVICES.values():
        env[f"MODELPRESS_{name.upper()}_TARGET"] = f"127.0.0.1:{ports[name]}"
    state_path(home).parent.mkdir(parents=True, exist_ok=True)
    try:
        for name in SERVICES:
            listen = f"127.0.0.1:{ports[name]}"
            service_env = dict(env, MODELPRESS_AUTH_TOKENS=str(tokens_path(home))) if (
                with_auth and name == "gateway") else env
            with open(logs / f"{name}.log", "ab") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", f"services.{name}", "--listen", listen, "--home", str(home)],
                    stdout=log, stderr=subprocess.STDOUT, env=service_env, start_new_session=True)
            state.services[name] = {"pid": proc.pid, "listen": listen}
        state_path(home).touch(mode=0o600)
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
    # Gateway first (it stops jobs so they resume later), then the workers together, NATS last.
    if "gateway" in pids and _terminate(pids.pop("gateway"), timeout_s):
        stopped.append("gateway")
    signalled = set()
    for name, pid in pids.items():
        if _alive(pid):
            os.kill(pid, signal.SIGTERM)
            signalled.add(name)
    stopped += [name for name, pid in pids.items() if _terminate(pid, timeout_s) or name in signalled]
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
