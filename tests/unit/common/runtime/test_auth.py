"""The tokens file: only hashes stored, tenants by shape, tokens added while the gateway runs."""

from __future__ import annotations

import json
import os
import stat

import pytest

from services.common.runtime import auth


def test_a_token_is_stored_as_its_hash_in_a_private_file_and_maps_to_its_principal(tmp_path):
    path = tmp_path / "tokens.json"
    token = auth.add_token(path, name="ci", tenant="acme")
    assert token.startswith(auth.TOKEN_PREFIX) and token not in path.read_text()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    table = auth.TokenTable(path)
    assert table.principal(token) == auth.Principal(tenant="acme", operator=False, name="ci")
    assert table.principal(token + "x") is None and table.principal("") is None


def test_tokens_added_later_are_known_without_a_restart(tmp_path):
    path = tmp_path / "tokens.json"
    auth.add_token(path, name="first", tenant="acme")
    table = auth.TokenTable(path)
    later = auth.add_token(path, name="ops", tenant="ops", role="operator")
    assert table.principal(later).operator


@pytest.mark.parametrize("tenant", ["", "-lead", "a.b", "a" * 65, "t>", "é"])
def test_tenant_names_out_of_shape_are_refused(tmp_path, tenant):
    with pytest.raises(auth.AuthConfigError):
        auth.add_token(tmp_path / "tokens.json", name="x", tenant=tenant)


def test_a_malformed_tokens_file_names_itself(tmp_path):
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"tokens": [{"name": "x", "tenant": "acme", "sha256": "plaintext-token"}]}))
    with pytest.raises(auth.AuthConfigError, match="tokens.json"):
        auth.TokenTable(path)
    with pytest.raises(auth.AuthConfigError, match="does not exist"):
        auth.TokenTable(tmp_path / "missing.json")
    auth.add_token(path := tmp_path / "t2.json", name="x", tenant="acme")
    with pytest.raises(auth.AuthConfigError, match="already has a token named 'x'"):
        auth.add_token(path, name="x", tenant="globex")


@pytest.mark.parametrize("metadata, expected", [
    ((), None),
    ((("authorization", "Bearer abc"),), "abc"),
    ((("authorization", "bearer  abc "),), "abc"),
    ((("authorization", "Basic abc"),), ""),
    ((("authorization", "Bearer "),), ""),
    ((("x-other", "Bearer abc"),), None),
])
def test_bearer_token_reads_only_the_bearer_scheme(metadata, expected):
    assert auth.bearer_token(metadata) == expected
