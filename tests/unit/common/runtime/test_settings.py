"""Service settings: a flag beats its MODELPRESS_ variable, which beats the declared default."""

from __future__ import annotations

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
