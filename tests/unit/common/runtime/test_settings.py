"""Service settings: a flag beats its MODELPRESS_ variable, which beats the declared default."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from services.common.runtime.settings import ServiceSettings


def test_flag_then_environment_then_default(monkeypatch):
    monkeypatch.setenv("MODELPRESS_MAX_JOBS_PER_TENANT", "5")
    monkeypatch.setenv("MODELPRESS_REQUIRE_NATS_AUTH", "1")
    monkeypatch.setenv("MODELPRESS_GRACE_S", "7")
    settings = ServiceSettings.from_args("gateway", ["--grace-s", "3"])
    assert (settings.grace_s, settings.max_jobs_per_tenant, settings.require_nats_auth) == (3.0, 5, True)
    assert settings.max_upload_bytes == ServiceSettings.model_fields["max_upload_bytes"].default
    monkeypatch.setenv("MODELPRESS_REQUIRE_NATS_AUTH", "0")
    assert ServiceSettings.from_args("quantizer", []).require_nats_auth is False


def test_a_bad_value_names_its_field(monkeypatch):
    monkeypatch.setenv("MODELPRESS_MAX_JOBS_PER_TENANT", "0")
    with pytest.raises(ValidationError, match="max_jobs_per_tenant"):
        ServiceSettings.from_args("gateway", [])


def test_mesh_secret_and_the_gateways_identity_toward_workers_come_from_flags_or_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MODELPRESS_MESH_SECRET", str(tmp_path / "mesh.secret"))
    worker = ServiceSettings.from_args("quantizer", [])
    assert worker.mesh_secret == tmp_path / "mesh.secret" and worker.checks_mesh_tickets
    gateway = ServiceSettings.from_args("gateway", ["--targets-tls-ca", "ca.crt", "--targets-tls-cert", "g.crt",
                                                    "--targets-tls-key", "g.key"])
    assert (gateway.targets_tls_cert, gateway.targets_tls_key) == (Path("g.crt"), Path("g.key"))
    # The gateway signs with the secret; it answers its own clients by their tokens, not tickets.
    assert gateway.mesh_secret is not None and not gateway.checks_mesh_tickets


def test_the_gateways_identity_toward_workers_comes_whole_and_over_tls():
    with pytest.raises(ValidationError, match="targets_tls_cert and targets_tls_key"):
        ServiceSettings(name="gateway", listen="127.0.0.1:0", targets_tls_cert=Path("g.crt"))
    with pytest.raises(ValidationError, match="targets_tls_cert needs targets_tls_ca"):
        ServiceSettings(name="gateway", listen="127.0.0.1:0", targets_tls_cert=Path("g.crt"),
                        targets_tls_key=Path("g.key"))
