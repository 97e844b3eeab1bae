"""`modelpress up` options that need no process: replica counts and the one target over them, and
what --auth hands each process."""

import re
import stat
from pathlib import Path

import pytest

from services.cli.launcher import (GATEWAY_BUCKETS, LaunchError, ensure_mesh_credentials, mesh_secret_path,
                                   mesh_tls_dir, parse_replicas, process_name, replica_target, transport_args,
                                   worker_nats_user)
from services.common.contract.techniques import TECHNIQUE_SERVICES
from services.common.runtime.settings import ServiceSettings


def test_replicas_parse_per_technique_service():
    assert parse_replicas("quantizer=2, evaluator=3,gateway=2") == {"quantizer": 2, "evaluator": 3, "gateway": 2}
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
    declared = {name for path in (Path(__file__).resolve().parents[3] / "services" / "gateway").glob("*.py")
                for name in re.findall(r'^\w*BUCKET = "(\w+)"', path.read_text(), re.MULTILINE)}
    assert declared == set(GATEWAY_BUCKETS)
    denied = worker_nats_user(tmp_path).deny_publish
    assert all(f"$KV.{bucket}.>" in denied and f"$JS.API.STREAM.DELETE.KV_{bucket}" in denied
               for bucket in GATEWAY_BUCKETS)
    assert worker_nats_user(tmp_path).password == worker_nats_user(tmp_path).password  # made once
