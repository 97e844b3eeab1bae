"""`modelpress up` options that need no process: replica counts and the one target over them, and
what --auth hands each process."""

import os
import re
import stat
from pathlib import Path

import pytest

from services.cli.launcher import (GATEWAY_BUCKETS, WORKER_NATS_USER, LaunchError, ensure_mesh_credentials,
                                   mesh_secret_path, mesh_tls_dir, parse_replicas, process_name, replica_target,
                                   transport_args, worker_nats_user)
from services.common.contract.techniques import TECHNIQUE_SERVICES
from services.common.runtime.settings import ServiceSettings


def test_replicas_parse_per_technique_service():
    assert parse_replicas("quantizer=2, evaluator=3,gateway=2") == {"quantizer": 2, "evaluator": 3, "gateway": 2}
    assert parse_replicas("serving=3") == {"serving": 3}
    assert parse_replicas("") == {}


@pytest.mark.parametrize("text, needle", [
    ("nats=2", "SERVICE one of"), ("quantizer", "SERVICE=N"), ("quantizer=0", "1 to 8"),
    ("quantizer=9", "1 to 8"), ("quantizer=two", "1 to 8"), ("quantiser=2", "'quantiser=2'"),
])
def test_bad_replica_counts_are_refused_naming_the_item(text, needle):
    with pytest.raises(LaunchError, match=needle):
        parse_replicas(text)


def test_one_target_lists_every_replica_for_round_robin():
    assert replica_target([50052]) == "127.0.0.1:50052"
    assert replica_target([50052, 50152]) == "ipv4:127.0.0.1:50052,127.0.0.1:50152"
    assert [process_name("pruner", i) for i in (1, 2)] == ["pruner", "pruner-2"]


def test_under_auth_workers_ask_for_mutual_tls_and_tickets_and_the_gateway_presents_both(tmp_path):
    worker = transport_args("quantizer", tmp_path)
    tls = mesh_tls_dir(tmp_path)
    assert worker == ["--tls-cert", str(tls / "quantizer.crt"), "--tls-key", str(tls / "quantizer.key"),
                      "--tls-client-ca", str(tls / "ca.crt"), "--mesh-secret", str(mesh_secret_path(tmp_path))]
    gateway = transport_args("gateway", tmp_path)
    # Its own listener keeps no TLS flag: clients reach it as before, with tokens.
    assert gateway == ["--targets-tls-ca", str(tls / "ca.crt"), "--targets-tls-cert", str(tls / "gateway.crt"),
                       "--targets-tls-key", str(tls / "gateway.key"), "--mesh-secret", str(mesh_secret_path(tmp_path))]
    assert ServiceSettings.from_args("gateway", gateway).checks_mesh_tickets is False
    assert ServiceSettings.from_args("quantizer", worker).checks_mesh_tickets is True


def test_mesh_credentials_are_private_and_a_renewal_keeps_the_secret(tmp_path):
    folder = tmp_path / "auth"
    tls = ensure_mesh_credentials(folder)
    secret = (folder / "mesh.secret").read_text()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and stat.S_IMODE((folder / "mesh.secret").stat().st_mode) == 0o600
    assert {path.stem for path in tls.folder.glob("*.key")} == {"gateway", *TECHNIQUE_SERVICES.values()}
    ca = tls.ca.read_bytes()
    renewed = ensure_mesh_credentials(folder, renew=True)
    assert renewed.ca.read_bytes() != ca and (folder / "mesh.secret").read_text() == secret


def test_every_kv_bucket_the_gateway_declares_is_closed_to_the_workers_nats_user(tmp_path):
    declared = {name for path in (Path(__file__).resolve().parents[3] / "services" / "gateway").rglob("*.py")
                for name in re.findall(r'^\w*BUCKET = "(\w+)"', path.read_text(), re.MULTILINE)}
    # The deployment records: written by the gateway alone, declared beside the slots the serving replicas write.
    from services.common.store.serving_slots import DEPLOYMENTS_BUCKET, SLOTS_BUCKET

    declared.add(DEPLOYMENTS_BUCKET)
    assert declared == set(GATEWAY_BUCKETS) and SLOTS_BUCKET not in GATEWAY_BUCKETS
    denied = worker_nats_user(tmp_path).deny_publish
    assert all(f"$KV.{bucket}.>" in denied and f"$JS.API.STREAM.DELETE.KV_{bucket}" in denied
               for bucket in GATEWAY_BUCKETS)
    assert worker_nats_user(tmp_path).password == worker_nats_user(tmp_path).password  # made once


class _Popen:
    """subprocess.Popen as `up` calls it, recording each process's argv and environment."""

    started: list["_Popen"] = []

    def __init__(self, argv, *, env, **_):
        self.argv, self.env, self.pid = argv, env, 40_000 + len(self.started)
        self.started.append(self)

    def poll(self):
        return None


@pytest.fixture
def launched(monkeypatch, tmp_path):
    """`up` with its processes recorded instead of started: {process name: _Popen}."""
    import subprocess
    from types import SimpleNamespace

    from services.cli import launcher

    _Popen.started = []
    nats = SimpleNamespace(pid=os.getpid(), poll=lambda: None, kill=lambda: None)
    monkeypatch.setattr(launcher, "subprocess", SimpleNamespace(Popen=_Popen, STDOUT=subprocess.STDOUT))
    monkeypatch.setattr(launcher, "start_nats_server",
                        lambda *_a, credentials=None, **_k: (nats, "nats://" + ("modelpress:pw@" if credentials else "")
                                                             + "127.0.0.1:4222"))
    monkeypatch.setattr(launcher, "_wait_healthy", lambda *_a, **_k: None)

    def up(**options):
        state = launcher.up(tmp_path / "home", **options)
        by_pid = {proc.pid: proc for proc in _Popen.started}
        return state, {name: by_pid[info["pid"]] for name, info in state.services.items()}

    return up


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_up_starts_the_serving_service_with_its_grpc_and_http_ports(launched):
    state, procs = launched(replicas={"serving": 2})
    assert set(procs) == {"gateway", "serving", "serving-2", *TECHNIQUE_SERVICES.values()}
    assert procs["serving"].argv[1:3] == ["-m", "services.serving"]
    assert _flag(procs["serving"].argv, "--listen") == "127.0.0.1:50057"
    assert _flag(procs["serving"].argv, "--http-listen") == "127.0.0.1:8000"
    assert _flag(procs["serving-2"].argv, "--listen") == "127.0.0.1:50157"
    assert _flag(procs["serving-2"].argv, "--http-listen") == "127.0.0.1:8100"
    assert [(s["listen"], s["http"]) for s in state.serving] == [("127.0.0.1:50057", "127.0.0.1:8000"),
                                                                 ("127.0.0.1:50157", "127.0.0.1:8100")]
    assert all("--http-listen" not in proc.argv for name, proc in procs.items() if not name.startswith("serving"))
    assert "MODELPRESS_AUTH_TOKENS" not in procs["serving"].env  # open mesh: nothing asks for tokens


def test_up_free_ports_gives_serving_its_own_free_http_port(launched):
    state, procs = launched(free_ports=True)
    (serving,) = state.serving
    ports = {info["listen"] for info in state.services.values()} | {serving["http"]}
    assert len(ports) == len(state.services) + 1 and serving["http"] != "127.0.0.1:8000"
    assert _flag(procs["serving"].argv, "--http-listen") == serving["http"]


def test_under_auth_serving_checks_the_gateways_tokens_and_reaches_nats_as_a_worker(launched, tmp_path):
    home = tmp_path / "home"
    _, procs = launched(with_auth=True)
    serving, quantizer, gateway = procs["serving"], procs["quantizer"], procs["gateway"]
    # No mesh TLS or tickets: the gateway never calls it, its callers bring tokens on plaintext 127.0.0.1.
    assert "--tls-cert" not in serving.argv and "--mesh-secret" not in serving.argv
    assert transport_args("serving", home) == []
    assert ServiceSettings.from_args("serving", []).checks_mesh_tickets is False
    assert serving.env["MODELPRESS_AUTH_TOKENS"] == gateway.env["MODELPRESS_AUTH_TOKENS"] == \
        str(home / "auth" / "tokens.json")
    assert "MODELPRESS_AUTH_TOKENS" not in quantizer.env
    assert serving.env["MODELPRESS_NATS_URL"] == quantizer.env["MODELPRESS_NATS_URL"]
    assert serving.env["MODELPRESS_NATS_URL"].startswith(f"nats://{WORKER_NATS_USER}:")


def test_health_and_status_probe_serving_in_plaintext_and_show_its_http_port(launched, monkeypatch, tmp_path):
    from services.cli import launcher

    state, _ = launched(with_auth=True)
    probed = {}

    def health_status(listen, timeout_s, credentials):
        probed[listen] = credentials
        return "SERVING"

    monkeypatch.setattr(launcher, "health_status", health_status)
    report = launcher.status(tmp_path / "home")
    services = state.services
    assert probed[services["serving"]["listen"]] is None and probed[services["gateway"]["listen"]] is None
    assert probed[services["quantizer"]["listen"]] is not None  # mutual TLS toward a technique service
    assert report["serving"].startswith("SERVING (127.0.0.1:50057, HTTP 127.0.0.1:8000, pid ")


def test_up_prints_where_the_serving_http_endpoint_is(monkeypatch, tmp_path, capsys):
    from services.cli import launcher
    from services.cli import main as cli

    state = launcher.MeshState(nats_url="nats://127.0.0.1:4222", nats_pids=[1], services={
        "gateway": {"pid": 2, "listen": "127.0.0.1:50051", "service": "gateway"},
        "serving": {"pid": 3, "listen": "127.0.0.1:50057", "service": "serving", "http": "127.0.0.1:8000"}})
    monkeypatch.setenv("MODELPRESS_HOME", str(tmp_path))
    monkeypatch.setattr(launcher, "up", lambda home, **_: state)
    assert cli.main(["up", "--detach"]) == 0
    err = capsys.readouterr().err
    assert ("serving: OIP gRPC 127.0.0.1:50057, HTTP http://127.0.0.1:8000 (OIP REST /v2, OpenAI API /v1, "
            "Prometheus /metrics)") in err
    assert f"and {len(launcher.SERVICES)} services" in err and len(launcher.SERVICES) == 7
