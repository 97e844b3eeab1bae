"""With a tokens file, the serving replica's HTTP routes need a known bearer token (health and metrics
stay public), and a tenant's token reaches only its tenant's deployments: another tenant's model is
not found, as if it did not exist, and /v1/models lists only the caller's."""

from __future__ import annotations

from types import SimpleNamespace

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from services.common.runtime import auth
from services.serving.http_api import build_app
from services.serving.replica import Replica


@pytest.fixture
async def served(tmp_path):
    path = tmp_path / "tokens.json"
    tokens = {"blue": auth.add_token(path, name="alice", tenant="blue"),
              "green": auth.add_token(path, name="bob", tenant="green"),
              "ops": auth.add_token(path, name="ops", tenant="ops", role="operator")}
    replica = Replica()
    for name, tenant in (("blue-model", "blue"), ("green-model", "green")):
        replica.deployments[name] = SimpleNamespace(name=name, kind="encoder", hidden_size=8, close=lambda: None)
        replica.tenants[name] = tenant
    server = TestServer(build_app(replica, auth.TokenTable(path)))
    await server.start_server()
    yield f"http://127.0.0.1:{server.port}", tokens
    await server.close()


async def _get(url: str, token: str | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        return response.status, await response.json(content_type=None)


async def test_routes_need_a_known_token_and_show_only_the_callers_tenant(served):
    base, tokens = served
    assert (await _get(f"{base}/v2/health/live"))[0] == 200
    status, body = await _get(f"{base}/v1/models")
    assert status == 401 and body["error"]["type"] == "authentication_error"
    status, body = await _get(f"{base}/v2/models/blue-model", "not-a-token")
    assert status == 401 and "not known" in body["error"]

    status, body = await _get(f"{base}/v1/models", tokens["blue"])
    assert status == 200 and [m["id"] for m in body["data"]] == ["blue-model"]
    assert (await _get(f"{base}/v2/models/blue-model", tokens["blue"]))[0] == 200
    status, body = await _get(f"{base}/v2/models/green-model", tokens["blue"])
    assert status == 404 and "green-model" in body["error"]
    status, body = await _get(f"{base}/v1/models", tokens["ops"])
    assert [m["id"] for m in body["data"]] == ["blue-model", "green-model"]
