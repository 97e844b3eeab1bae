"""Which answer a replica gives for a name it does not serve: retryable while it starts or loads
that deployment (UNAVAILABLE / 503), final (NOT_FOUND / 404) otherwise — and never a hint of another
tenant's deployment."""

from __future__ import annotations

import pytest

from services.common.runtime.auth import OPEN, Principal
from services.serving.replica import DeploymentLoading, DeploymentNotFound, Replica

ACME, OTHER = Principal("acme", False), Principal("other", False)


def test_a_starting_replica_asks_callers_to_retry_until_it_has_claimed_its_deployments():
    replica = Replica(starting=True)
    with pytest.raises(DeploymentLoading, match="starting"):
        replica.get("bert", OPEN)
    replica.starting = False
    with pytest.raises(DeploymentNotFound):
        replica.get("bert", OPEN)


def test_a_claimed_deployment_is_loading_for_its_tenant_only_until_it_is_let_go():
    replica = Replica()
    replica.expect("bert", "acme")
    with pytest.raises(DeploymentLoading, match="loading"):
        replica.get("bert", ACME)
    with pytest.raises(DeploymentNotFound):
        replica.get("bert", OTHER)
    assert not replica.ready
    replica.forget("bert")
    with pytest.raises(DeploymentNotFound):
        replica.get("bert", ACME)
