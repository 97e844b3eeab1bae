"""`modelpress up/down/status`: nats-server (one, or a JetStream cluster) and the seven services as
local processes on 127.0.0.1 (the five technique services, the serving service and the gateway), each in
as many replicas as asked.

State lives in `$MODELPRESS_HOME/run/mesh.json` (pids, ports), logs in `$MODELPRESS_HOME/logs/`.

With --auth the technique services answer the gateway alone: mutual TLS with the mesh's own
certificates (local_pki) and a signed ticket on every call (services/common/runtime/mesh_tickets.py).
The serving service answers inference callers, not the gateway (it learns its deployments from NATS):
under --auth its gRPC and HTTP ports ask for the gateway's tokens, plaintext on 127.0.0.1 as the gateway's.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc

from services.cli.local_pki import CLIENT_ROLE, MeshTls, ensure_mesh_tls, issue_mesh_tls
from services.common.runtime import auth, mesh_tickets
from services.common.runtime.healthcheck import health_status
from services.common.store.disk_bounds import private_folder
from services.common.store.nats_conn import without_secret
from services.common.store.nats_server import (NatsUser, free_port, kv_writes, private_log, start_nats_cluster,
                                               start_nats_server, with_credentials)
from services.common.runtime.settings import DEFAULT_PORTS, DEFAULT_SERVING_HTTP_PORT
from services.common.contract.techniques import TECHNIQUE_SERVICES

SERVING = "serving"
SERVICES = [*TECHNIQUE_SERVICES.values(), SERVING, "gateway"]
# Processes whose own port stays plaintext on 127.0.0.1 (tokens under --auth); the technique services'
# ports ask for the gateway's certificate instead.
PLAINTEXT_SERVICES = ("gateway", SERVING)
# KV buckets the gateway alone writes: job records and their leases, tenants' grants on artifacts,
# admission (quotas), recipes, comparisons, outcomes. Under --auth the technique services' NATS user
# may not change them, so a worker that is broken into cannot rewrite who owns a job or grant itself
# an artifact (tests/unit/cli/test_launcher.py finds a bucket a gateway module adds).
GATEWAY_BUCKETS = ("modelpress_jobs", "modelpress_job_leases", "modelpress_grants", "modelpress_admission",
                   "modelpress_recipes", "modelpress_comparisons", "modelpress_outcomes", "modelpress_deployments",
                   "modelpress_search_trials", "modelpress_fastest_cpu")
WORKER_NATS_USER = "modelpress-worker"
MAX_REPLICAS = 8
# Replica i > 1 of a service listens at its default port + REPLICA_PORT_STEP * (i - 1).
REPLICA_PORT_STEP = 100


class LaunchError(ValueError):
    """An `up` option that cannot be honoured; the message names it."""


def parse_replicas(text: str) -> dict[str, int]:
    """`quantizer=2,gateway=2` -> {"quantizer": 2, "gateway": 2}. Technique replicas sit behind one
    target the gateway balances over; gateway replicas share the jobs through leases (the CLI talks
    to the first)."""
    counts: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, count = item.partition("=")
        if not sep or name not in SERVICES:
            raise LaunchError(f"--replicas takes SERVICE=N with SERVICE one of {', '.join(SERVICES)}; got {item!r}")
        if not count.isdigit() or not 1 <= int(count) <= MAX_REPLICAS:
            raise LaunchError(f"--replicas {name}: N must be 1 to {MAX_REPLICAS}, got {count!r}")
        counts[name] = int(count)
    return counts


def replica_target(ports: list[int]) -> str:
    """One gRPC target over every replica: the gateway's round-robin channel balances across them
    and leaves out one that stops answering."""
    if len(ports) == 1:
        return f"127.0.0.1:{ports[0]}"
    return "ipv4:" + ",".join(f"127.0.0.1:{port}" for port in ports)


def process_name(service: str, replica: int) -> str:
    return service if replica == 1 else f"{service}-{replica}"


@dataclass
class MeshState:
    nats_url: str  # without credentials: the services get those from the environment
    nats_pids: list[int]  # one per NATS server (three or more: a JetStream cluster)
    # process name ("quantizer", "quantizer-2") -> {"pid", "listen", "service"}; a serving process
    # has "http" too (host:port of its OIP REST, OpenAI API and /metrics)
    services: dict[str, dict] = field(default_factory=dict)
    # Started with --auth: the gateway checks tokens (operator token in `operator_token_path`),
    # NATS asks for a password only the services know.
    auth: bool = False

    @property
    def gateway(self) -> str:
        return self.services["gateway"]["listen"]

    @property
    def serving(self) -> list[dict]:
        """Each serving process's {"listen" (OIP gRPC), "http"}, first replica first."""
        return [info for info in self.services.values() if info.get("service") == SERVING]


def state_path(home: Path) -> Path:
    return home / "run" / "mesh.json"


def auth_dir(home: Path) -> Path:
    return home / "auth"


def tokens_path(home: Path) -> Path:
    return auth_dir(home) / "tokens.json"


def operator_token_path(home: Path) -> Path:
    return auth_dir(home) / "operator.token"


def mesh_tls_dir(home: Path) -> Path:
    return auth_dir(home) / "tls"


def mesh_secret_path(home: Path) -> Path:
    return auth_dir(home) / "mesh.secret"


def ensure_mesh_credentials(folder: Path, *, renew: bool = False, hostnames: Iterable[str] = ()) -> MeshTls:
    """What the gateway and the technique services prove to each other, under `folder` (0700, files
    0600): `tls/`, the mesh's certificates (local_pki), made once (`renew`: anew), each worker's
    naming it, localhost, 127.0.0.1 and `hostnames`; and `mesh.secret`, which tickets are signed
    with, made once. `up --auth` keeps them in `home/auth`; `modelpress mesh-certs` anywhere."""
    private_folder(folder)
    secret = folder / "mesh.secret"
    if not secret.exists():
        _write_secret(secret, mesh_tickets.new_secret())
    make = issue_mesh_tls if renew else ensure_mesh_tls
    return make(folder / "tls", TECHNIQUE_SERVICES.values(), hostnames)


def ensure_auth(home: Path) -> tuple[str, str]:
    """The local mesh's secrets, made once under `home/auth` (0600): a tokens file holding an
    operator token, and the NATS password. Returns (NATS user, password)."""
    folder = private_folder(auth_dir(home))
    if not operator_token_path(home).exists():
        token = auth.add_token(tokens_path(home), name="local-operator", tenant="operator", role="operator")
        _write_secret(operator_token_path(home), token)
    nats_secret = folder / "nats.password"
    if not nats_secret.exists():
        _write_secret(nats_secret, secrets.token_urlsafe(24))
    return "modelpress", nats_secret.read_text().strip()


def worker_nats_user(home: Path) -> NatsUser:
    """The technique services' NATS user under --auth (its password made once beside the gateway's),
    denied writing GATEWAY_BUCKETS."""
    password = private_folder(auth_dir(home)) / "nats-worker.password"
    if not password.exists():
        _write_secret(password, secrets.token_urlsafe(24))
    return NatsUser(WORKER_NATS_USER, password.read_text().strip(),
                    tuple(subject for bucket in GATEWAY_BUCKETS for subject in kv_writes(bucket)))


def _write_secret(path: Path, value: str) -> None:
    path.touch(mode=0o600)
    path.write_text(value + "\n")


def transport_args(service: str, home: Path) -> list[str]:
    """A process's flags under --auth: a worker asks for mutual TLS with the mesh's CA and for the
    gateway's tickets; the gateway presents its client certificate to the workers and signs its
    calls, while its own listener stays as it was (tokens; plaintext on 127.0.0.1). The serving
    service takes none: the gateway never calls it, its callers bring tokens (service_env)."""
    tls, secret = MeshTls(mesh_tls_dir(home)), str(mesh_secret_path(home))
    if service == SERVING:
        return []
    if service == "gateway":
        return ["--targets-tls-ca", str(tls.ca), "--targets-tls-cert", str(tls.cert(CLIENT_ROLE)),
                "--targets-tls-key", str(tls.key(CLIENT_ROLE)), "--mesh-secret", secret]
    return ["--tls-cert", str(tls.cert(service)), "--tls-key", str(tls.key(service)), "--tls-client-ca", str(tls.ca),
            "--mesh-secret", secret]


def service_environment(service: str, env: dict[str, str], home: Path, nats_url: str,
                        worker_user: NatsUser) -> dict[str, str]:
    """A process's environment under --auth: the gateway checks tokens and has NATS whole; the other
    services reach NATS as the workers' user (no writes to the gateway's buckets), and the serving
    service checks the same tokens as the gateway on its gRPC and HTTP ports (inference callers reach it
    directly)."""
    if service == "gateway":
        return dict(env, MODELPRESS_AUTH_TOKENS=str(tokens_path(home)))
    service_env = dict(env, MODELPRESS_NATS_URL=with_credentials(nats_url, (worker_user.name, worker_user.password)))
    if service == SERVING:
        service_env["MODELPRESS_AUTH_TOKENS"] = str(tokens_path(home))
    return service_env


def _probe_credentials(state: MeshState, home: Path) -> grpc.ChannelCredentials | None:
    """How the launcher asks a worker of an --auth mesh for its health: as the gateway does."""
    tls = MeshTls(mesh_tls_dir(home))
    if not state.auth or not tls.ca.exists():
        return None
    return grpc.ssl_channel_credentials(root_certificates=tls.ca.read_bytes(),
                                        private_key=tls.key(CLIENT_ROLE).read_bytes(),
                                        certificate_chain=tls.cert(CLIENT_ROLE).read_bytes())


def _health(listen: str, service: str, tls: grpc.ChannelCredentials | None, timeout_s: float = 1.0) -> str:
    """health_status, over mutual TLS for a technique service of an --auth mesh (the gateway and the
    serving service stay plaintext)."""
    return health_status(listen, timeout_s=timeout_s, credentials=None if service in PLAINTEXT_SERVICES else tls)


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


def up(home: Path, *, free_ports: bool = False, timeout_s: float = 120.0, with_auth: bool = False,
       replicas: dict[str, int] | None = None, nats_cluster: int = 1) -> MeshState:
    """Starts NATS and every service on 127.0.0.1. `with_auth`: tokens at the gateway, a NATS
    password per role (ensure_auth, worker_nats_user), and workers that answer the gateway alone
    (mutual TLS and mesh tickets: transport_args); otherwise the mesh is open to every local user.
    `replicas`: processes per technique service behind one target. `nats_cluster`: NATS servers (3 or more: a JetStream
    cluster keeping streams, KV and objects on 3 of them, so losing one loses nothing)."""
    replicas = {name: 1 for name in SERVICES} | (replicas or {})
    if nats_cluster not in (1, *range(3, 6)):
        raise LaunchError(f"--nats-cluster takes 1 or 3 to 5 servers (a JetStream cluster of 2 has no majority "
                          f"once one is lost), got {nats_cluster}")
    existing = read_state(home)
    if existing and any(_alive(pid) for pid in existing.nats_pids):
        raise RuntimeError(f"a mesh is already running from {home} (gateway {existing.gateway}); run `modelpress down`")
    logs = private_folder(home / "logs")
    credentials, worker_user = (ensure_auth(home), worker_nats_user(home)) if with_auth else (None, None)
    more_users = [worker_user] if worker_user else []
    if with_auth:
        ensure_mesh_credentials(auth_dir(home))
    if nats_cluster == 1:
        nats_procs, nats_url = start_nats_server(home / "nats", port=None if free_ports else 4222,
                                                 log_file=logs / "nats.log", credentials=credentials,
                                                 more_users=more_users)
        nats_procs = [nats_procs]
    else:
        nats_procs, nats_url = start_nats_cluster(home / "nats-cluster", nats_cluster, log_dir=logs,
                                                  credentials=credentials, more_users=more_users,
                                                  first_port=None if free_ports else 4222)
    state = MeshState(nats_url=without_secret(nats_url), nats_pids=[proc.pid for proc in nats_procs], auth=with_auth)
    ports = {name: [free_port() if free_ports else DEFAULT_PORTS[name] + REPLICA_PORT_STEP * i
                    for i in range(replicas[name])] for name in SERVICES}
    http_ports = [free_port() if free_ports else DEFAULT_SERVING_HTTP_PORT + REPLICA_PORT_STEP * i
                  for i in range(replicas[SERVING])]
    # The NATS URL (with its password) reaches the services by environment, never argv; under --auth
    # the gateway's user has every permission, the workers' user not the gateway's buckets.
    env = dict(os.environ, MODELPRESS_HOME=str(home), PYTHONUNBUFFERED="1", MODELPRESS_NATS_URL=nats_url,
               MODELPRESS_NATS_REPLICAS=str(min(nats_cluster, 3)))
    # `up` decides who checks what and how processes reach each other: nothing inherited overrides it.
    for name in ("MODELPRESS_AUTH_TOKENS", "MODELPRESS_REQUIRE_NATS_AUTH", "MODELPRESS_MESH_SECRET",
                 "MODELPRESS_TLS_CERT", "MODELPRESS_TLS_KEY", "MODELPRESS_TLS_CLIENT_CA", "MODELPRESS_TARGETS_TLS_CA",
                 "MODELPRESS_TARGETS_TLS_CERT", "MODELPRESS_TARGETS_TLS_KEY", "MODELPRESS_HTTP_LISTEN",
                 "MODELPRESS_ADVERTISE_HOST"):
        env.pop(name, None)
    if with_auth:
        env["MODELPRESS_REQUIRE_NATS_AUTH"] = "1"
    for name in TECHNIQUE_SERVICES.values():
        env[f"MODELPRESS_{name.upper()}_TARGET"] = replica_target(ports[name])
    private_folder(state_path(home).parent)
    try:
        for name in SERVICES:
            service_env = service_environment(name, env, home, state.nats_url, worker_user) if with_auth else env
            for replica, port in enumerate(ports[name], start=1):
                process = process_name(name, replica)
                listen = f"127.0.0.1:{port}"
                info = {"listen": listen, "service": name}
                extra = transport_args(name, home) if with_auth else []
                if name == SERVING:
                    info["http"] = f"127.0.0.1:{http_ports[replica - 1]}"
                    extra = [*extra, "--http-listen", info["http"]]
                with private_log(logs / f"{process}.log") as log:
                    proc = subprocess.Popen(
                        [sys.executable, "-m", f"services.{name}", "--listen", listen, "--home", str(home), *extra],
                        stdout=log, stderr=subprocess.STDOUT, env=service_env, start_new_session=True,
                        umask=0o077)  # run_service sets it too; this covers the interpreter's start-up
                state.services[process] = {"pid": proc.pid, **info}
        state_path(home).touch(mode=0o600)
        state_path(home).write_text(json.dumps(asdict(state), indent=2))
        _wait_healthy(state, logs, timeout_s, _probe_credentials(state, home))
    except BaseException:
        down(home)
        for proc in nats_procs:  # down() had no state file to find them by when the failure came first
            if proc.poll() is None:
                proc.kill()
        raise
    return state


def _wait_healthy(state: MeshState, logs: Path, timeout_s: float, tls: grpc.ChannelCredentials | None) -> None:
    deadline = time.monotonic() + timeout_s
    pending = dict(state.services)
    while pending:
        for name, info in list(pending.items()):
            if not _alive(info["pid"]):
                tail = (logs / f"{name}.log").read_text(errors="replace").splitlines()[-5:]
                raise RuntimeError(f"{name} exited during start-up:\n" + "\n".join(tail))
            if _health(info["listen"], info["service"], tls, timeout_s=0.5) == "SERVING":
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
    for index, pid in enumerate(state.nats_pids):
        if _terminate(pid, timeout_s):
            stopped.append("nats" if len(state.nats_pids) == 1 else f"nats-{index + 1}")
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
    report = {}
    tls = _probe_credentials(state, home)
    for index, (pid, url) in enumerate(zip(state.nats_pids, state.nats_url.split(","))):
        name = "nats" if len(state.nats_pids) == 1 else f"nats-{index + 1}"
        report[name] = f"{'running' if _alive(pid) else 'stopped'} ({url}, pid {pid})"
    for name, info in state.services.items():
        http = f", HTTP {info['http']}" if info.get("http") else ""
        report[name] = f"{_health(info['listen'], info['service'], tls)} ({info['listen']}{http}, pid {info['pid']})"
    return report
